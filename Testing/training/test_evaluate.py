"""``mtss evaluate``: report structure, paired comparison, modality subsets, ensembles, errors."""

from __future__ import annotations

import json

import pytest
import torch
from MTSSSegmenterLib.errors import InputError
from MTSSSegmenterLib.pipeline import segment_folder
from MTSSTrainingLib import commands
from MTSSTrainingLib.ensemble import EnsembleNetwork, load_ensemble, parse_assignments
from MTSSTrainingLib.evaluate import compare, evaluate, parse_modalities, wilcoxon_p

from .cohort import fake_bundle, one_thread, write_fake_case  # noqa: F401  (autouse)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    for i in range(2):
        write_fake_case(data, f"BraTS-GLI-{i:05d}-000", i)
        write_fake_case(data, f"BraTS-MET-{i:05d}-000", 30 + i)
    write_fake_case(data / "wt_only", "BraTS-MEN-00000-000", 40, labels=(2,))
    (data / "wt_only" / "cohort.json").write_text(json.dumps({"labels": ["WT"]}))
    a = fake_bundle(root / "a", "GLI", seed=0)
    b = fake_bundle(root / "b", "MET", seed=1)
    return {"root": root, "data": data, "a": a, "b": b}


def _row(case: str, model: str, pop: str, wt: float) -> dict:
    return {"case": case, "model": model, "population": pop,
            **{r: {"dice": wt, "lesion_dice": wt} for r in ("WT", "TC", "ET")}}


def test_compare_gives_mean_difference_and_wilcoxon():
    rows = []
    for i, (a, b) in enumerate([(0.5, 0.7), (0.6, 0.65), (0.4, 0.7), (0.8, 0.81), (0.3, 0.55), (0.7, 0.85)]):
        rows += [_row(f"c{i}", "A", "GLI" if i < 3 else "MET", a), _row(f"c{i}", "B", "GLI" if i < 3 else "MET", b)]
    c = compare(rows, "A", "B")
    wt = c["regions"]["WT"]["dice"]
    assert c["n_cases"] == 6
    assert wt["mean_difference"] == pytest.approx((0.2 + 0.05 + 0.3 + 0.01 + 0.25 + 0.15) / 6)
    assert wt["by_population"]["GLI"] == pytest.approx(0.55 / 3) and wt["by_population"]["MET"] == pytest.approx(0.41 / 3)
    assert wt["wilcoxon_p"] == pytest.approx(0.03125)  # all six differences positive: 2 / 2^6
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0 and wilcoxon_p([0.1]) is None


def test_parse_modalities_and_assignments():
    assert parse_modalities("flair,t1c") == ["t1c", "t2f"]
    assert parse_modalities(None) is None
    with pytest.raises(InputError, match="Did you mean"):
        parse_modalities("t1c,flar")
    assert parse_assignments(["gli=a", "MET=b"]) == {"GLI": "a", "MET": "b"}
    with pytest.raises(InputError, match="POPULATION=PATH"):
        parse_assignments(["GLI"])
    with pytest.raises(InputError, match="twice"):
        parse_assignments(["GLI=a", "gli=b"])


def test_ensemble_averages_member_probabilities(setup):
    ens = load_ensemble({"GLI": str(setup["a"]), "MET": str(setup["b"])})
    x = torch.randn(1, 8, 16, 16, 16)
    members = [m(x) for m in ens.network.members.values()]
    expected = (torch.sigmoid(members[0]) + torch.sigmoid(members[1])) / 2
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(ens.network(x)), expected, atol=1e-5, rtol=1e-4)
    assert isinstance(ens.network, EnsembleNetwork) and ens.meta["role"] == "ensemble"
    assert ens.name == "ensemble-GLI-MET" and set(ens.meta["members"]) == {"GLI", "MET"}
    result = segment_folder(setup["data"] / "BraTS-GLI-00000-000", model=ens, device="cpu")
    assert result.model_name == "ensemble-GLI-MET"
    other = fake_bundle(setup["root"] / "c", "MEN", spacing=2.0)
    with pytest.raises(InputError, match="same --spacing"):
        load_ensemble({"GLI": str(setup["a"]), "MEN": str(other)})


def test_evaluate_writes_report_with_subset_of_modalities(setup):
    out = setup["root"] / "report"
    ens = load_ensemble({"GLI": str(setup["a"]), "MET": str(setup["b"])})
    report = evaluate(setup["data"], [setup["a"], setup["b"]], out, modalities="t1c,t2f", ensemble=ens, device="cpu",
                      overlays=1)
    assert report["modalities"] == ["t1c", "t2f"] and report["n_cases"] == 4
    assert list(report["summary"]) == ["untrained-teacher-GLI", "untrained-teacher-MET", "ensemble-GLI-MET"]
    for s in report["summary"].values():
        assert set(s["populations"]) == {"GLI", "MET"}
        for region in ("WT", "TC", "ET"):
            assert set(s["macro"][region]) == {"dice", "hd95", "lesion_dice", "lesion_hd95"}
    assert all(r["inputs"] == ["t1c", "t2f"] for r in report["cases"])
    assert len(report["cases"]) == 12 and len(report["comparison"]) == 2
    assert [b["name"] for b in report["left_out"]] == ["BraTS-MEN-00000-000"]  # partial labels are not scored
    saved = json.loads((out / "report.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    md = (out / "report.md").read_text()
    assert "| untrained-teacher-GLI | GLI | 2 |" in md and "Cases left out" in md
    assert sorted(report["figures"]) == sorted(["population_dice.png", "model_comparison.png",
                                                "overlay_BraTS-GLI-00000-000.png"])
    assert all((out / f).stat().st_size > 1000 for f in report["figures"])


def test_evaluate_command_and_errors(setup, tmp_path, capsys):
    assert commands.main(["evaluate", str(setup["data"]), "--model", str(setup["a"]), "-o", str(tmp_path / "r"),
                          "--overlays", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "untrained-teacher-GLI: macro Dice WT" in out and "report.md" in out
    assert commands.main(["evaluate", str(setup["data"]), "-o", str(tmp_path / "r2")]) == 2
    assert "No model to evaluate" in capsys.readouterr().err
    assert commands.main(["evaluate", str(setup["data"]), "--model", str(tmp_path / "nope"), "-o",
                          str(tmp_path / "r3")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert commands.main(["evaluate", str(setup["data"]), "--ensemble", "GLI", "-o", str(tmp_path / "r4")]) == 2
    assert "POPULATION=PATH" in capsys.readouterr().err
