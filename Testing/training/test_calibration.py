"""Decision thresholds per region chosen on validation cases: the search, the bundle field, the pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import pytest
import SimpleITK as sitk
from MTSSSegmenterLib.bundle import load_bundle, read_meta, region_thresholds
from MTSSSegmenterLib.errors import BundleError
from MTSSSegmenterLib.pipeline import segment_folder
from MTSSTrainingLib.calibration import CaseVoxels, case_voxels, choose_thresholds
from MTSSTrainingLib.cli import register  # noqa: F401  (the command is registered with the others)
from MTSSTrainingLib.runconfig import TrainConfig, resolve_network
from MTSSTrainingLib.teacher import train_teacher

from .cohort import one_thread, write_fake_case  # noqa: F401  (autouse)


def _case(pop: str, p_tumour: tuple[float, float, float], p_background: float = 0.1, labelled=(True, True, True),
          n_in: int = 50, n_out: int = 200) -> CaseVoxels:
    """A case whose tumour voxels (all ET, so in every region) get ``p_tumour`` and the rest ``p_background``."""
    probs = np.concatenate([np.tile(np.asarray(p_tumour, np.float32)[:, None], (1, n_in)),
                            np.full((3, n_out), p_background, np.float32)], axis=1)
    truth = np.concatenate([np.ones((3, n_in), bool), np.zeros((3, n_out), bool)], axis=1)
    return CaseVoxels(pop, probs, truth, np.asarray(labelled))


def test_an_under_confident_region_gets_a_lower_threshold_and_a_calibrated_one_keeps_half():
    # WT probabilities of the tumour sit at 0.42: at 0.5 nothing is found (Dice 0), at <= 0.4 all of it.
    cases = [_case("GLI", (0.42, 0.9, 0.9)), _case("MET", (0.42, 0.9, 0.9))]
    cal = choose_thresholds(cases)
    assert cal["threshold"][0] == 0.4  # of the candidates that find the whole tumour, the closest to 0.5
    assert cal["dice_at_0.5"]["WT"] == 0.0 and cal["dice"]["WT"] == 1.0
    # TC and ET are chosen given WT: with WT found, 0.5 is already perfect and stays
    assert cal["threshold"][1:] == [0.5, 0.5] and cal["dice"]["TC"] == 1.0
    assert cal["n_cases"] == 2 and 0.5 in cal["candidates"]
    assert len(cal["table"]["WT"]) == len(cal["candidates"])


def test_later_regions_are_chosen_given_the_earlier_ones():
    # ET is confident, but sits inside WT only if WT's threshold finds it: chosen after WT, ET keeps 0.5.
    cal = choose_thresholds([_case("GLI", (0.37, 0.33, 0.8))])
    assert cal["threshold"] == [0.35, 0.3, 0.5]
    assert cal["dice"] == {"WT": 1.0, "TC": 1.0, "ET": 1.0}


def test_a_gain_below_the_minimum_keeps_half():
    # One population gains a little from 0.45, the other loses nothing: below min_gain it stays at 0.5.
    good = _case("GLI", (0.9, 0.9, 0.9))
    tiny = _case("MET", (0.9, 0.9, 0.9), n_in=1000)
    tiny.probs[0, :3] = 0.47  # 3 of 1,000 tumour voxels just under 0.5: Dice 0.9985 at 0.5
    cal = choose_thresholds([good, tiny], min_gain=0.005)
    assert cal["threshold"][0] == 0.5
    assert choose_thresholds([good, tiny], min_gain=0.0)["threshold"][0] == 0.45


def test_populations_weigh_equally_whatever_their_case_counts():
    # Three GLI cases need >= 0.45 (background at 0.4); one MET case needs <= 0.35. Weighted by case, 0.45+
    # would win (0.75 against 0.5); macro over populations picks 0.35 (0.67 against 0.5).
    gli = [_case("GLI", (0.9, 0.9, 0.9), p_background=0.4) for _ in range(3)]  # 0.4 background: false positives below
    met = [_case("MET", (0.38, 0.9, 0.9))]
    assert choose_thresholds(gli + met)["threshold"][0] == 0.35


def test_unlabelled_regions_keep_half():
    cal = choose_thresholds([_case("MEN", (0.4, 0.4, 0.4), labelled=(True, False, False))])
    assert cal["threshold"] == [0.4, 0.5, 0.5]
    assert cal["dice_at_0.5"]["TC"] is None and cal["table"]["TC"][0] is None


def test_case_voxels_keeps_only_what_can_change_the_dice():
    probs = np.zeros((3, 4, 5, 6), np.float32)
    probs[:, 0, 0, 0] = 0.8  # a false positive at every threshold
    seg = np.zeros((4, 5, 6), np.uint8)
    seg[1, 1, 1] = 3  # a missed ET voxel
    cv = case_voxels(probs, seg, [1, 1, 1], "GLI")
    assert cv.probs.shape == (3, 2) and cv.truth.sum() == 3
    cal = choose_thresholds([cv])
    assert cal["dice_at_0.5"]["WT"] == 0.0


def test_no_case_is_an_error():
    with pytest.raises(Exception, match="at least one validation case"):
        choose_thresholds([])


def test_bundle_threshold_field_is_a_number_or_three(tiny_bundle):
    meta = read_meta(tiny_bundle)
    assert region_thresholds(meta) == (0.5, 0.5, 0.5)
    assert region_thresholds({"inference": {"threshold": [0.4, 0.6, 0.55]}}) == (0.4, 0.6, 0.55)
    for bad in ([0.5, 0.5], 1.5, "0.5", [0.5, 0.0, 0.5], True):
        with pytest.raises(BundleError, match="inference.threshold"):
            region_thresholds({"inference": {"threshold": bad}})


def test_a_bundle_with_a_broken_threshold_is_refused_on_load(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["inference"]["threshold"] = [0.5, 2]
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"inference.threshold must be a number in \(0, 1\) or a list of three"):
        load_bundle(copy)


def test_the_pipeline_thresholds_each_region_with_its_own(tiny_bundle, small_case, tmp_path):
    import shutil

    base = segment_folder(small_case, model=tiny_bundle, device="cpu")
    probs_high = tmp_path / "high"
    shutil.copytree(tiny_bundle, probs_high)
    meta = json.loads((probs_high / "model.json").read_text())
    meta["inference"]["threshold"] = [0.5, 0.999, 0.999]  # TC and ET (nearly) never reached
    (probs_high / "model.json").write_text(json.dumps(meta))
    high = segment_folder(small_case, model=probs_high, device="cpu")
    a, b = sitk.GetArrayFromImage(base.label), sitk.GetArrayFromImage(high.label)
    np.testing.assert_array_equal(a > 0, b > 0)  # WT: the same threshold, the same voxels
    assert np.isin(b, (1, 3)).sum() <= np.isin(a, (1, 3)).sum()
    assert np.isin(b, (1, 3)).sum() < np.isin(a, (1, 3)).sum() or np.isin(a, (1, 3)).sum() == 0


def _tiny_run(tmp_path, **kw):
    data = tmp_path / "data"
    for i in range(3):
        write_fake_case(data, f"BraTS-GLI-{i:05d}-000", i)
    for i in range(2):
        write_fake_case(data, f"BraTS-MET-{i:05d}-000", 10 + i)
    config = {"command": "train-teacher", "data": [str(data)], "out": str(tmp_path / "run"),
              "network": resolve_network("tiny").to_dict(), "population": "GLI", "epochs": 1, "steps_per_epoch": 2,
              "patch": (16, 16, 16), "batch": 2, "spacing": 4.0, "val_fraction": 0.4, "seed": 5, **kw}
    events = []
    train_teacher(TrainConfig(**config), progress=events.append)
    return tmp_path / "run", events


def test_training_calibrates_on_the_teachers_own_population(tmp_path):
    run, events = _tiny_run(tmp_path)
    meta = read_meta(run)
    cal = meta["metrics"]["calibration"]
    split = json.loads((run / "split.json").read_text())
    assert cal["n_cases"] == sum(n.startswith("BraTS-GLI") for n in split["val"]) >= 1
    assert meta["inference"]["threshold"] == cal["threshold"] and len(cal["threshold"]) == 3
    assert all(t in cal["candidates"] for t in cal["threshold"])
    for region in ("WT", "TC", "ET"):
        if cal["dice_at_0.5"][region] is not None:
            assert cal["dice"][region] >= cal["dice_at_0.5"][region]
    assert "calibrating" in [e["stage"] for e in events]


def test_calibrate_command_rewrites_the_bundle_of_an_uncalibrated_run(tmp_path, capsys):
    from MTSSSegmenterLib.cli import main

    run, _ = _tiny_run(tmp_path, calibrate=False)
    before = read_meta(run)
    assert before["inference"]["threshold"] == 0.5 and "calibration" not in before["metrics"]
    assert main(["calibrate", str(run), "--device", "cpu", "--min-gain", "0"]) == 0
    out = capsys.readouterr().out
    assert "thresholds on" in out and "validation cases" in out
    after = load_bundle(run).meta  # still loads: the weights and their checksum did not change
    assert after["weights_sha256"] == before["weights_sha256"]
    assert len(after["inference"]["threshold"]) == 3 and after["metrics"]["calibration"]["n_cases"] >= 1
    assert not math.isnan(float(after["inference"]["threshold"][0]))
    card = load_bundle(run).card()
    if tuple(after["inference"]["threshold"]) != (0.5, 0.5, 0.5):
        assert "Thresholds WT/TC/ET: " in card and "(chosen on validation cases)" in card
    else:
        assert "Thresholds" not in card


def test_calibrate_command_names_a_folder_that_is_no_run(tmp_path, capsys):
    from MTSSSegmenterLib.cli import main

    assert main(["calibrate", str(tmp_path), "--device", "cpu"]) == 2
    assert "is not a finished training run: it lacks run.json" in capsys.readouterr().err


def test_the_model_card_shows_thresholds_other_than_half():
    from MTSSSegmenterLib.bundle import model_card

    calibrated = {"inference": {"threshold": [0.5, 0.65, 0.5]}, "metrics": {"calibration": {"n_cases": 30}}}
    assert "Thresholds WT/TC/ET: 0.5/0.65/0.5 (chosen on validation cases)" in model_card(calibrated, "m")
    assert "Thresholds" not in model_card({"inference": {"threshold": 0.5}}, "m")


def test_subset_thresholds_apply_to_their_exact_inputs_and_are_checked():
    meta = {"inference": {"threshold": [0.5, 0.65, 0.5], "subset_thresholds": {"t1c": [0.4, 0.45, 0.5],
                                                                                 "t1c,t2f": 0.55}}}
    assert region_thresholds(meta) == (0.5, 0.65, 0.5)
    assert region_thresholds(meta, ("t1c",)) == (0.4, 0.45, 0.5)
    assert region_thresholds(meta, ("t2f", "t1c")) == (0.55, 0.55, 0.55)  # order of the inputs does not matter
    assert region_thresholds(meta, ("t1n", "t1c", "t2w", "t2f")) == (0.5, 0.65, 0.5)
    assert region_thresholds(meta, ("t2w",)) == (0.5, 0.65, 0.5)  # no own set: the four-input thresholds
    for key, value, match in (("t2f,t1c", 0.5, "keys are modality codes"), ("flair", 0.5, "keys are modality codes"),
                              ("t1c", [0.5, 1.0, 0.5], r"subset_thresholds\['t1c'\] must be")):
        with pytest.raises(BundleError, match=match):
            region_thresholds({"inference": {"subset_thresholds": {key: value}}}, ("t1c",))


class _Cache:
    """Cached validation cases: a cube of enhancing tumour, bright on T1c."""

    def __init__(self, n: int = 3):
        from MTSSTrainingLib.cache import CachedCase

        self.cases = {}
        for i in range(n):
            seg = np.zeros((16, 16, 16), np.uint8)
            seg[4 + i:10 + i, 5:11, 4:10] = 3
            image = np.zeros((4, 16, 16, 16), np.float16)
            image[1][seg == 3] = 1.0
            self.cases[f"c{i}"] = CachedCase(f"c{i}", "GLI", image, np.ones(4, np.float32), seg, np.ones(seg.shape, bool),
                                             np.ones(3, np.float32), (4.0, 4.0, 4.0), np.zeros((3, 16, 16, 16), np.uint8))

    def get(self, name):
        return self.cases[name]


class _Unsure(torch.nn.Module):
    """Tumour where T1c is bright: probability 0.8 with all four inputs, 0.425 with T1c alone; background 0.01."""

    def forward(self, x):
        full = x[:, 4:8].mean(dim=1, keepdim=True)
        p = torch.where(x[:, 1:2] > 0.5, 0.3 + 0.5 * full, torch.full_like(full, 0.01))
        return torch.logit(p).expand(-1, 3, -1, -1, -1)


def test_each_input_subset_gets_thresholds_chosen_with_only_those_inputs():
    from MTSSTrainingLib.calibration import apply_calibration, calibrate_network, calibrated_subsets, describe

    subsets = calibrated_subsets(TrainConfig(command="train-joint", data=["d"], out="o", modality_dropout=0.5))
    assert len(subsets) == 14 and ("t1c",) in subsets and ("t1n", "t1c", "t2w", "t2f") not in subsets
    assert calibrated_subsets(TrainConfig(command="train-teacher", data=["d"], out="o", population="GLI")) == []
    cal = calibrate_network(_Unsure(), _Cache(), ["c0", "c1", "c2"], (16, 16, 16), torch.device("cpu"), False, 4,
                            subsets=[("t1c",), ("t1c", "t2f"), ("t2w",)])
    assert cal["threshold"] == [0.5, 0.5, 0.5]  # sure with all four inputs
    own = cal["subsets"]
    assert set(own) == {"t1c", "t1c,t2f", "t2w"} and own["t1c"]["n_cases"] == 3
    assert own["t1c"]["threshold"] == [0.4, 0.4, 0.4] and own["t1c"]["dice"]["WT"] == pytest.approx(1.0)
    assert own["t1c"]["dice_at_0.5"]["WT"] == pytest.approx(0.0)  # 0.425 never reaches 0.5
    assert own["t1c,t2f"]["threshold"] == [0.5, 0.5, 0.5]  # 0.55 on the tumour: 0.5 is already right
    assert own["t2w"]["threshold"] == [0.5, 0.5, 0.5]  # nothing to find without T1c: no threshold helps
    assert "table" not in own["t1c"] and "own thresholds for 3 input subsets" in describe(cal)
    meta = apply_calibration({"inference": {"threshold": 0.5}}, cal)
    assert meta["inference"]["subset_thresholds"]["t1c"] == [0.4, 0.4, 0.4]
    assert region_thresholds(meta, ("t1c",)) == (0.4, 0.4, 0.4) and region_thresholds(meta) == (0.5, 0.5, 0.5)
    from MTSSSegmenterLib.bundle import model_card

    assert "Own thresholds for 3 input subsets (e.g. t1c,t2f: 0.5/0.5/0.5)" in model_card(meta, "m")


def test_the_pipeline_takes_the_thresholds_of_the_inputs_it_is_given(tiny_bundle, small_case, tmp_path):
    import shutil

    from MTSSSegmenterLib.pipeline import read_inputs, segment

    strict = tmp_path / "strict"
    shutil.copytree(tiny_bundle, strict)
    meta = json.loads((strict / "model.json").read_text())
    meta["inference"]["subset_thresholds"] = {"t1c": [0.999, 0.999, 0.999]}  # (nearly) never reached
    (strict / "model.json").write_text(json.dumps(meta))
    t1c = read_inputs({"t1c": small_case / f"{small_case.name}-t1c.nii.gz"})
    both = read_inputs({m: small_case / f"{small_case.name}-{m}.nii.gz" for m in ("t1c", "t2f")})
    alone = sitk.GetArrayFromImage(segment(t1c, model=strict, device="cpu").label)
    alone_half = sitk.GetArrayFromImage(segment(t1c, model=tiny_bundle, device="cpu").label)
    assert (alone > 0).sum() < (alone_half > 0).sum()
    pair = sitk.GetArrayFromImage(segment(both, model=strict, device="cpu").label)
    pair_half = sitk.GetArrayFromImage(segment(both, model=tiny_bundle, device="cpu").label)
    np.testing.assert_array_equal(pair, pair_half)  # no own thresholds for FLAIR+T1c: the usual ones


def test_calibrate_mirror_writes_the_mirroring_the_thresholds_were_chosen_for(tmp_path, capsys):
    from MTSSSegmenterLib.bundle import mirror_axes
    from MTSSSegmenterLib.cli import main

    run, _ = _tiny_run(tmp_path, calibrate=False)
    assert main(["calibrate", str(run), "--device", "cpu", "--mirror", "LR"]) == 0
    meta = load_bundle(run).meta
    assert meta["inference"]["mirror"] == ["LR"] and mirror_axes(meta) == (2,)
    assert "Test-time mirroring: LR (2 network passes)" in load_bundle(run).card()
    assert main(["calibrate", str(run), "--device", "cpu", "--mirror", "none"]) == 0
    assert load_bundle(run).meta["inference"]["mirror"] == []
    assert main(["calibrate", str(run), "--device", "cpu", "--mirror", "LR,UP"]) == 2
    assert "--mirror must be a list of distinct axes among SI, AP, LR" in capsys.readouterr().err


def test_a_bundle_with_a_broken_mirror_is_refused_on_load(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["inference"]["mirror"] = "LR"
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="inference.mirror must be a list"):
        load_bundle(copy)


def test_the_pipeline_mirrors_as_the_bundle_says(tiny_bundle, small_case, tmp_path, monkeypatch):
    import shutil

    from MTSSSegmenterLib import pipeline

    seen = []
    real = pipeline.predict
    monkeypatch.setattr(pipeline, "predict", lambda *a, **k: seen.append(tuple(k.get("mirror", ()))) or real(*a, **k))
    mirrored = tmp_path / "mirrored"
    shutil.copytree(tiny_bundle, mirrored)
    meta = json.loads((mirrored / "model.json").read_text())
    meta["inference"]["mirror"] = ["LR", "SI"]
    (mirrored / "model.json").write_text(json.dumps(meta))
    plain = segment_folder(small_case, model=tiny_bundle, device="cpu")
    both = segment_folder(small_case, model=mirrored, device="cpu")
    assert seen == [(), (0, 2)]
    assert plain.label.GetSize() == both.label.GetSize()
    assert plain.details["test_time_mirroring"] == [] and both.details["test_time_mirroring"] == ["LR", "SI"]


def test_a_run_trained_with_mirror_is_calibrated_for_it_and_its_bundle_mirrors(tmp_path, monkeypatch):
    from MTSSSegmenterLib.errors import InputError
    from MTSSTrainingLib import trainer

    seen = []
    real = trainer.calibrate_network
    monkeypatch.setattr(trainer, "calibrate_network", lambda *a, **k: seen.append(k.get("mirror")) or real(*a, **k))
    run, _ = _tiny_run(tmp_path, mirror=["lr"])
    assert seen == [(2,)]
    meta = load_bundle(run).meta
    assert meta["inference"]["mirror"] == ["LR"] and len(meta["inference"]["threshold"]) == 3
    with pytest.raises(InputError, match="--mirror must be a list of distinct axes among SI, AP, LR"):
        TrainConfig(command="train-joint", data=["d"], out="o", mirror=["LR", "XY"])


def test_a_start_other_than_half_is_kept_unless_another_threshold_beats_it():
    # The tumour's WT probability is 0.42 and the background's 0.1: every threshold in (0.1, 0.42] is perfect.
    cases = [_case("GLI", (0.42, 0.9, 0.9)), _case("MET", (0.42, 0.9, 0.9))]
    kept = choose_thresholds(cases, start=[0.3, 0.5, 0.5])
    assert kept["threshold"] == [0.3, 0.5, 0.5] and kept["start"] == [0.3, 0.5, 0.5]
    assert kept["dice_at_start"]["WT"] == 1.0 and kept["dice_at_0.5"]["WT"] == 0.0
    moved = choose_thresholds(cases, start=[0.6, 0.5, 0.5])  # 0.6 finds nothing: the perfect one nearest to it
    assert moved["threshold"][0] == 0.4 and moved["dice_at_start"]["WT"] == 0.0 and moved["dice"]["WT"] == 1.0


def test_thick_slice_thresholds_hold_from_their_slice_thickness_and_are_checked():
    from MTSSSegmenterLib.bundle import chosen_thresholds, model_card, thick_slice_limit

    meta = {"inference": {"threshold": [0.85, 0.9, 0.9], "subset_thresholds": {"t1c": [0.5, 0.85, 0.5],
                                                                                "t1c,t2f": [0.8, 0.8, 0.8]},
                          "thick_slices": {"min_slice_mm": 4.0, "threshold": [0.95, 0.9, 0.9],
                                           "subset_thresholds": {"t1c": [0.6, 0.9, 0.5]}}}}
    four = ("t1n", "t1c", "t2w", "t2f")
    assert thick_slice_limit(meta) == 4.0 and thick_slice_limit({"inference": {}}) is None
    assert region_thresholds(meta, four, 5.0) == (0.95, 0.9, 0.9) == region_thresholds(meta, four, 4.0)
    assert region_thresholds(meta, four, 3.9) == (0.85, 0.9, 0.9) == region_thresholds(meta, four)
    assert region_thresholds(meta, ("t1c",), 5.0) == (0.6, 0.9, 0.5)  # its own thick-slice set
    assert region_thresholds(meta, ("t1c", "t2f"), 5.0) == (0.8, 0.8, 0.8)  # none: the subset's ordinary set
    assert region_thresholds(meta, ("t2w",), 5.0) == (0.85, 0.9, 0.9)
    assert chosen_thresholds(meta, four, 5.0) == ((0.95, 0.9, 0.9), True)
    assert chosen_thresholds(meta, ("t1c",), 5.0) == ((0.6, 0.9, 0.5), True)
    assert chosen_thresholds(meta, ("t1c", "t2f"), 5.0) == ((0.8, 0.8, 0.8), False)  # not a thick-slice set
    assert chosen_thresholds(meta, four, 3.0) == ((0.85, 0.9, 0.9), False)
    assert "Series with slices of 4 mm or more: thresholds WT/TC/ET 0.95/0.9/0.9" in model_card(meta, "m")
    for thick, match in (({"threshold": 0.9}, "min_slice_mm"), ({"min_slice_mm": -1, "threshold": 0.9}, "min_slice_mm"),
                         ({"min_slice_mm": 4, "threshold": [0.9, 1.2, 0.9]}, r"thick_slices\.threshold must be"),
                         ({"min_slice_mm": 4, "subset_thresholds": {"flair": 0.5}}, "keys are modality codes"),
                         ([4, 0.9], "min_slice_mm")):
        with pytest.raises(BundleError, match=match):  # checked whatever the inputs are
            region_thresholds({"inference": {"threshold": 0.5, "thick_slices": thick}}, four)


def test_the_pipeline_takes_the_thick_slice_thresholds_from_their_slice_thickness(tiny_bundle, small_case, tmp_path):
    import shutil

    from MTSSSegmenterLib.pipeline import read_inputs, segment

    images = read_inputs({m: small_case / f"{small_case.name}-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f")})
    thickest = max(max(img.GetSpacing()) for img in images.values())  # 3 mm
    bundles = {}
    for name, limit in (("thick", thickest), ("thin-only", thickest + 0.5)):
        bundles[name] = tmp_path / name
        shutil.copytree(tiny_bundle, bundles[name])
        meta = json.loads((bundles[name] / "model.json").read_text())
        meta["inference"]["thick_slices"] = {"min_slice_mm": limit, "threshold": [0.999, 0.999, 0.999]}
        (bundles[name] / "model.json").write_text(json.dumps(meta))
    usual = segment(images, model=tiny_bundle, device="cpu")
    thick = segment(images, model=bundles["thick"], device="cpu")
    thin = segment(images, model=bundles["thin-only"], device="cpu")
    assert thick.details["thick_slice_thresholds"] and thick.details["thresholds"] == [0.999] * 3
    assert thick.details["thickest_slice_mm"] == pytest.approx(thickest)
    assert (sitk.GetArrayViewFromImage(thick.label) > 0).sum() < (sitk.GetArrayViewFromImage(usual.label) > 0).sum()
    assert not thin.details["thick_slice_thresholds"] and thin.details["thresholds"] == [0.5] * 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(thin.label), sitk.GetArrayFromImage(usual.label))


def test_calibrate_thick_slices_chooses_on_the_thick_studies_only_and_keeps_the_weights(tiny_bundle, tmp_path, capsys):
    from MTSSSegmenterLib.cli import main

    data = tmp_path / "clinical"
    for i in range(3):
        write_fake_case(data, f"BraTS-GLI-0000{i}-000", seed=i, spacing=4.5, shape_xyz=(28, 30, 24))
    write_fake_case(data, "BraTS-MET-00000-000", seed=7, spacing=2.0, shape_xyz=(48, 52, 40))  # thin: left out
    out = tmp_path / "calibrated"
    assert main(["calibrate-thick-slices", str(tiny_bundle), str(data), "-o", str(out), "--device", "cpu",
                 "--no-subsets", "--min-gain", "0"]) == 0
    assert "for slices of 4 mm or more" in capsys.readouterr().out
    before, after = read_meta(tiny_bundle), load_bundle(out).meta  # loads: weights and checksum unchanged
    assert after["weights_sha256"] == before["weights_sha256"]
    block = after["inference"]["thick_slices"]
    assert block["min_slice_mm"] == 4.0 and len(block["threshold"]) == 3
    cal = after["metrics"]["thick_slice_calibration"]
    assert cal["n_cases"] == 3 and cal["start"] == [0.5, 0.5, 0.5] and cal["studies"] == [str(data)]
    assert region_thresholds(after, slice_mm=4.5) == tuple(block["threshold"])
    assert main(["calibrate-thick-slices", str(tiny_bundle), str(data), "--min-slice-mm", "6", "--device", "cpu"]) == 2
    assert "has a series with slices of 6 mm or more" in capsys.readouterr().err
    assert "thick_slices" not in read_meta(tiny_bundle)["inference"]  # nothing was written over the bundle


def test_volume_ties_take_the_least_biased_of_the_thresholds_dice_cannot_tell_apart():
    # 100 tumour voxels at 0.95, and a blurred shell of 10 background voxels at 0.87: at 0.85 the shell is
    # labelled (Dice 0.952, volume +10 %), at 0.9 it is not (Dice 1.0). With min_gain 0.06 both count as equal.
    probs = np.concatenate([np.full((3, 100), 0.95, np.float32), np.full((3, 10), 0.87, np.float32),
                            np.full((3, 300), 0.01, np.float32)], axis=1)
    truth = np.concatenate([np.ones((3, 100), bool), np.zeros((3, 310), bool)], axis=1)
    cases = [CaseVoxels("GLI", probs, truth, np.ones(3, bool))]
    plain = choose_thresholds(cases, min_gain=0.06, start=[0.85, 0.85, 0.85])
    assert plain["threshold"][0] == 0.85 and "WT volume" not in plain["table"]  # no gain of 0.06: stays
    tied = choose_thresholds(cases, min_gain=0.06, start=[0.85, 0.85, 0.85], volume_ties=True)
    assert tied["threshold"][0] == 0.9 and tied["volume_ties"]  # as good by Dice, and the volume is right
    k = tied["candidates"].index(0.85)
    assert tied["table"]["WT volume"][k] == pytest.approx(np.log(111 / 101), abs=1e-4)
    assert tied["table"]["WT volume"][tied["candidates"].index(0.9)] == pytest.approx(0.0)


def test_volume_ties_weigh_a_small_lesion_by_its_size():
    # A 1000-voxel tumour whose rim (100 voxels) is at 0.92, and a 10-voxel lesion with 20 false voxels at 0.92
    # around it. At 0.95 the small lesion is exact and the large tumour loses its rim; at 0.9 the tumour is exact
    # and the lesion triples. A mean of per-case log ratios (0.52 against -0.05) took 0.95 and cut the large
    # tumour; over the voxels the population holds, 0.9 is off by 2 % and 0.95 by 10 %.
    large_p = np.concatenate([np.full((3, 900), 0.97), np.full((3, 100), 0.92), np.full((3, 50), 0.01)], axis=1)
    large_t = np.concatenate([np.ones((3, 1000), bool), np.zeros((3, 50), bool)], axis=1)
    small_p = np.concatenate([np.full((3, 10), 0.97), np.full((3, 20), 0.92), np.full((3, 50), 0.01)], axis=1)
    small_t = np.concatenate([np.ones((3, 10), bool), np.zeros((3, 70), bool)], axis=1)
    cases = [CaseVoxels("GLI", large_p.astype(np.float32), large_t, np.ones(3, bool)),
             CaseVoxels("GLI", small_p.astype(np.float32), small_t, np.ones(3, bool))]
    tied = choose_thresholds(cases, candidates=[0.9, 0.95], min_gain=0.5, start=[0.9, 0.9, 0.9], volume_ties=True)
    assert tied["table"]["WT"][tied["candidates"].index(0.95)] > tied["table"]["WT"][tied["candidates"].index(0.9)]
    assert tied["threshold"][0] == 0.9
    k = tied["candidates"].index(0.95)
    assert tied["table"]["WT volume"][k] == pytest.approx(np.log(911 / 1011), abs=1e-4)
