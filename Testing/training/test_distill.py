"""Multi-teacher distillation: the full chain on the synthetic cohort, quality, options and errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from MTSSSegmenterLib.bundle import load_bundle
from MTSSSegmenterLib.io import find_case_files
from MTSSSegmenterLib.metrics import dice
from MTSSSegmenterLib.pipeline import read_inputs, segment
from MTSSTrainingLib import commands
from MTSSTrainingLib.distill import distill
from MTSSTrainingLib.ensemble import load_ensemble
from MTSSTrainingLib.evaluate import evaluate
from MTSSTrainingLib.runconfig import TrainConfig
from MTSSTrainingLib.synth import write_cohort
from MTSSTrainingLib.teacher import train_teacher

from .cohort import fake_bundle, one_thread, write_fake_case  # noqa: F401  (autouse)

KD_ALL = ["output", "latent", "barlow", "region", "attention"]
NET = {"kind": "resunet", "channels": [8, 16, 32, 64], "deep_supervision": 2}
POPS = ("GLI", "SSA")


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """Synthetic cohort -> two population teachers -> student with all five KD terms (CPU, 4 mm)."""
    root = tmp_path_factory.mktemp("chain")
    t0 = time.perf_counter()
    train, test = root / "train", root / "test"
    write_cohort(train, cases=6, populations=POPS, seed=3, spacing=4.0)
    write_cohort(test, cases=3, populations=POPS, seed=9, spacing=4.0)  # held out: other case seeds
    timings = {"cohort_s": time.perf_counter() - t0}
    common = {"data": [str(train)], "network": NET, "patch": (32, 32, 32), "batch": 4, "spacing": 4.0,
              "val_fraction": 0.34, "lr": 3e-3, "seed": 1}
    teachers = {}
    for pop in POPS:
        t = time.perf_counter()
        train_teacher(TrainConfig(command="train-teacher", out=str(root / f"teacher-{pop}"), population=pop,
                                  epochs=2, steps_per_epoch=25, **common))
        teachers[pop] = str(root / f"teacher-{pop}")
        timings[f"teacher_{pop}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    result = distill(TrainConfig(command="distill", out=str(root / "student"), epochs=3, steps_per_epoch=25,
                                 kd=KD_ALL, teachers=teachers, modality_dropout=0.5, val_subsets=[["t1c", "t2f"]],
                                 **common))
    timings["student_s"] = time.perf_counter() - t
    t = time.perf_counter()
    report = evaluate(test, [root / "student", root / "teacher-GLI"], root / "report",
                      ensemble=load_ensemble(teachers), device="cpu")
    timings["evaluate_s"] = time.perf_counter() - t
    print("chain timings:", {k: round(v, 1) for k, v in timings.items()})
    print("held-out WT Dice:", {m: {p: round(v["WT"]["dice"]["mean"], 3) for p, v in s["populations"].items()}
                                for m, s in report["summary"].items()})
    return {"root": root, "test": test, "teachers": teachers, "result": result, "report": report}


@pytest.mark.slow
def test_distilled_student_reaches_whole_tumour_dice_on_held_out_cases(chain):
    student = chain["report"]["summary"]["student"]
    assert student["n_cases"] == 6
    wt = student["macro"]["WT"]["dice"]
    assert wt >= 0.5, f"student macro WT Dice {wt:.3f} on held-out synthetic cases"


@pytest.mark.slow
def test_chain_bundle_records_teachers_terms_and_validation(chain):
    meta = load_bundle(chain["root"] / "student").meta
    training = meta["training"]
    assert meta["role"] == "student" and meta["populations"] == list(POPS)
    assert training["synthetic"] is True and meta["trained_on"].startswith("synthetic data")
    assert training["kd"] == KD_ALL
    assert set(training["kd_weights"]) == {"gt", *KD_ALL}
    assert set(training["teachers"]) == set(POPS)
    for pop in POPS:
        row = training["teachers"][pop]["validation_dice"]
        assert set(row) == set(POPS)  # the cross-population matrix came from the teacher bundles
    val = meta["metrics"]["validation"]
    assert set(val["populations"]) == set(POPS) and "t1c+t2f" in val["subsets"]
    assert (chain["root"] / "student" / "training_curves.png").is_file()


@pytest.mark.slow
def test_chain_report_compares_models(chain):
    report, out = chain["report"], chain["root"] / "report"
    labels = list(report["summary"])
    assert labels == ["student", "teacher-GLI", "ensemble-GLI-SSA"]
    assert {c["model"] for c in report["comparison"]} == {"teacher-GLI", "ensemble-GLI-SSA"}
    for c in report["comparison"]:
        p = c["regions"]["WT"]["dice"]["wilcoxon_p"]
        assert p is None or 0.0 <= p <= 1.0
        assert c["n_cases"] == 6
    for pop in POPS:
        assert report["summary"]["student"]["populations"][pop]["n_cases"] == 3
    md = (out / "report.md").read_text()
    assert "## Macro average over populations" in md and "student" in md and "Wilcoxon" in md
    for fig in report["figures"]:
        assert (out / fig).stat().st_size > 1000
    assert len([f for f in report["figures"] if f.startswith("overlay_")]) == 2


@pytest.mark.slow
def test_student_segments_from_flair_and_t1c_alone(chain):
    case = next(p for p in sorted(chain["test"].iterdir()) if "GLI" in p.name)
    files, seg_path = find_case_files(case)
    result = segment(read_inputs({m: files[m] for m in ("t1c", "t2f")}), model=chain["root"] / "student", device="cpu")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path)))
    pred = sitk.GetArrayFromImage(result.label)
    assert pred.shape == truth.shape
    assert result.details["missing_modalities"] == ["t1n", "t2w"]
    assert dice(pred > 0, truth > 0) > 0.3


@pytest.fixture(scope="module")
def fake_setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("kd")
    data = root / "data"
    for i in range(2):
        write_fake_case(data, f"BraTS-GLI-{i:05d}-000", i)
        write_fake_case(data, f"BraTS-MEN-{i:05d}-000", 20 + i)
    teachers = {"GLI": fake_bundle(root / "tGLI", "GLI", dice={"GLI": 0.8, "MEN": 0.5}),
                "MEN": fake_bundle(root / "tMEN", "MEN", labelled=("WT",), seed=1, dice={"GLI": 0.4, "MEN": 0.7})}
    return {"root": root, "data": data, "teachers": teachers}


def _args(setup: dict, out: Path, *extra: str) -> list[str]:
    return ["distill", str(setup["data"]), "-o", str(out), "--student", "tiny", "--patch", "16", "--spacing", "4",
            "--epochs", "1", "--steps-per-epoch", "2", "--val-fraction", "0.5",
            "--teachers", *(f"{k}={v}" for k, v in setup["teachers"].items()), *extra]


def test_distill_with_teacher_cache_and_wt_only_teacher(fake_setup, tmp_path, capsys):
    out = tmp_path / "cached"
    assert commands.main(_args(fake_setup, out, "--teacher-cache", "--kd", "output,latent,barlow,region",
                               "--kd-weights", "latent=0.5", "--routing", "hard")) == 0
    assert f"bundle: {out}" in capsys.readouterr().out
    training = load_bundle(out).meta["training"]
    assert training["teacher_cache"] is True and training["routing"] == "hard"
    assert training["kd_weights"]["latent"] == 0.5
    assert training["teachers"]["MEN"]["expert_regions"] == ["WT"]  # a whole-tumour-only teacher
    cached = sorted(p.name for p in (out / "teacher_cache" / "MEN").iterdir())
    assert cached and all(name.endswith((".logits.npy", ".bottleneck.npy")) for name in cached)
    logits = np.load(next((out / "teacher_cache" / "GLI").glob("*.logits.npy")))
    assert logits.dtype == np.float16 and logits.shape[0] == 3


def test_single_stage_trains_a_full_modality_network(fake_setup, tmp_path):
    config = TrainConfig(command="distill", data=[str(fake_setup["data"])], out=str(tmp_path / "ss"),
                         network={"channels": [8, 16, 32], "deep_supervision": 1}, patch=(16, 16, 16), spacing=4.0,
                         epochs=1, steps_per_epoch=2, val_fraction=0.0, kd=["barlow"], single_stage=True,
                         modality_dropout=1.0)
    result = distill(config)
    assert result.validation is None
    full = load_bundle(tmp_path / "ss" / "full_modality")
    assert full.meta["name"] == "student-full_modality"
    training = load_bundle(tmp_path / "ss").meta["training"]
    assert training["single_stage"] is True and training["teachers"] == {}


def test_distill_errors_are_clear(fake_setup, tmp_path, capsys):
    assert commands.main(_args(fake_setup, tmp_path / "a", "--kd", "outptu")) == 2
    assert "Unknown KD term 'outptu'. Did you mean 'output'?" in capsys.readouterr().err
    assert commands.main(_args(fake_setup, tmp_path / "b", "--teacher-cache")) == 2
    assert "'attention' term needs their fine decoder maps" in capsys.readouterr().err
    args = _args(fake_setup, tmp_path / "c")
    args[args.index("--teachers") + 1] = f"GLI={tmp_path / 'missing'}"
    assert commands.main(args) == 2
    assert "Teacher GLI" in capsys.readouterr().err
    args[args.index("--teachers") + 1] = "XYZ=somewhere"
    assert commands.main(args) == 2
    assert "Unknown population 'XYZ'" in capsys.readouterr().err
    no_teachers = _args(fake_setup, tmp_path / "d")[: _args(fake_setup, tmp_path / "d").index("--teachers")]
    assert commands.main(no_teachers + ["--kd", "output"]) == 2
    assert "--teachers" in capsys.readouterr().err
