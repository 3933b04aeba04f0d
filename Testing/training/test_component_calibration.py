"""Choosing the minimum component sizes and the thick-slice confident-core rule on validation cases
(MTSSTrainingLib.component_calibration)."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from MTSSSegmenterLib.bundle import load_bundle
import pytest

from MTSSTrainingLib.component_calibration import (LabelledCase, choose_confident_core, choose_min_components,
                                                  score_core, score_sizes)

from ..conftest import make_volume


def _tumour(shape=(40, 40, 40)) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    lab[5:30, 5:25, 5:25] = 2
    lab[10:20, 10:20, 10:20] = 1
    lab[10:20, 10:20, 10:12] = 3
    return lab


def _speckled(population: str, name: str) -> LabelledCase:
    """A perfect prediction plus one 8-voxel (0.008 mL) whole-tumour speck far from the tumour."""
    truth = _tumour()
    pred = truth.copy()
    pred[35:37, 35:37, 35:37] = 2
    return LabelledCase(name, population, pred, truth, (1.0, 1.0, 1.0))


def _small_true_lesion(population: str, name: str) -> LabelledCase:
    """A perfect prediction of a tumour and of a second, 0.125 mL lesion."""
    truth = _tumour()
    truth[33:38, 33:38, 33:38] = 2
    return LabelledCase(name, population, truth.copy(), truth, (1.0, 1.0, 1.0))


def test_a_speck_is_removed_at_the_smallest_size_that_removes_it():
    cases = [_speckled("GLI", "a"), _speckled("MEN", "b"), _small_true_lesion("MET", "c")]
    found = choose_min_components(cases)
    assert found["min_component_ml"] == [0.02, 0.0, 0.0]
    assert found["lesion_dice_before"]["WT"] < found["lesion_dice"]["WT"] == 1.0
    table = dict(zip(found["candidates"], found["table"]["WT"]))
    assert table[0.2][0] < 1.0, "0.2 mL removes the true 0.125 mL lesion: lesion-wise Dice falls"
    assert found["dice"]["WT"] >= found["dice_before"]["WT"]


def test_nothing_is_removed_where_only_true_lesions_are_small():
    cases = [_small_true_lesion("MET", "a"), _small_true_lesion("GLI", "b")]
    found = choose_min_components(cases)
    assert found["min_component_ml"] == [0.0, 0.0, 0.0]
    assert found["lesion_dice"] == found["lesion_dice_before"]


def test_a_gain_below_min_gain_moves_nothing():
    cases = [_speckled("GLI", "a"), _small_true_lesion("GLI", "b")]
    lesion0, _ = score_sizes(cases, (0, 0, 0), "WT")
    lesion1, _ = score_sizes(cases, (0.02, 0, 0), "WT")
    gain = lesion1 - lesion0
    assert gain > 0.1
    assert choose_min_components(cases, min_gain=gain + 0.001)["min_component_ml"][0] == 0.0
    assert choose_min_components(cases, min_gain=gain - 0.001)["min_component_ml"][0] == 0.02


def test_the_command_writes_the_sizes_into_the_bundle(tiny_bundle, tmp_path):
    from MTSSSegmenterLib.cli import main

    case = tmp_path / "data" / "BraTS-GLI-99990-000"
    case.mkdir(parents=True)
    for i, code in enumerate(("t1n", "t1c", "t2w", "t2f")):
        sitk.WriteImage(make_volume(seed=i), str(case / f"{case.name}-{code}.nii.gz"))
    ref = make_volume(seed=1)
    seg = sitk.GetImageFromArray(_tumour(sitk.GetArrayViewFromImage(ref).shape))
    seg.CopyInformation(ref)
    sitk.WriteImage(seg, str(case / f"{case.name}-seg.nii.gz"))
    out = tmp_path / "calibrated"
    assert main(["calibrate-components", str(tiny_bundle), str(tmp_path / "data"), "-o", str(out),
                 "--device", "cpu", "--json", str(tmp_path / "search.json")]) == 0
    meta = json.loads((out / "model.json").read_text())
    sizes = meta["inference"]["min_component_ml"]
    assert len(sizes) == 3 and all(v >= 0 for v in sizes)
    assert meta["metrics"]["component_calibration"]["n_cases"] == 1
    assert meta["weights_sha256"] == load_bundle(tiny_bundle).meta["weights_sha256"]
    assert load_bundle(out).meta["inference"]["min_component_ml"] == sizes
    assert json.loads((tmp_path / "search.json").read_text())["min_component_ml"] == sizes


def _with_blob(population: str, name: str, certain: float, true_blob: bool) -> LabelledCase:
    """A perfectly found tumour (p 0.999) plus a 1 mL blob at p 0.93, ``certain`` of it at 0.995; the blob is
    a true second lesion or a false positive."""
    truth = _tumour()
    pred = truth.copy()
    pred[32:37, 30:40, 30:40] = 2
    if true_blob:
        truth[32:37, 30:40, 30:40] = 2
    p = np.where(pred > 0, 0.999, 0.01).astype(np.float32)
    p[32:37, 30:40, 30:40] = 0.93
    view = p[32:37, 30:40, 30:40]
    flat = view.reshape(-1).copy()
    flat[: int(certain * 500)] = 0.995
    p[32:37, 30:40, 30:40] = flat.reshape(view.shape)
    return LabelledCase(name, population, pred, truth, (1.0, 1.0, 1.0), p)


def test_the_core_fraction_separates_false_blobs_from_true_ones():
    cases = [_with_blob("GLI", "a", 0.03, False), _with_blob("MEN", "b", 0.0, False),
             _with_blob("MET", "c", 0.3, True), _with_blob("MET", "d", 0.25, True)]
    found = choose_confident_core(cases)
    assert found["min_fraction"] == 0.05, "the smallest fraction that removes both false blobs and no true one"
    assert found["lesion_dice"] > found["lesion_dice_before"] + 0.1
    assert found["dice"] > found["dice_before"]
    table = dict(zip(found["candidates"], found["table"]))
    assert table[0.3][0] < table[0.05][0], "0.3 removes the true blobs too"


def test_no_rule_where_every_blob_is_true():
    cases = [_with_blob("MET", "a", 0.0, True), _with_blob("GLI", "b", 0.03, True)]
    found = choose_confident_core(cases)
    assert found["min_fraction"] == 0.0 and found["lesion_dice"] == found["lesion_dice_before"]
    with pytest.raises(Exception, match="probability map"):
        score_core([LabelledCase("x", "GLI", _tumour(), _tumour(), (1.0, 1.0, 1.0))], 0.99, 0.1)


def test_the_core_command_writes_the_rule_for_thick_studies_only(tiny_bundle, tmp_path):
    from MTSSSegmenterLib.bundle import save_bundle
    from MTSSSegmenterLib.cli import main

    data = tmp_path / "data"
    for name, spacing in (("BraTS-GLI-99990-000", (3.0, 3.0, 5.0)), ("BraTS-MET-99991-000", (3.0, 3.0, 3.0))):
        case = data / name
        case.mkdir(parents=True)
        for i, code in enumerate(("t1n", "t1c", "t2w", "t2f")):
            sitk.WriteImage(make_volume(seed=i, spacing=spacing), str(case / f"{name}-{code}.nii.gz"))
        ref = make_volume(seed=1, spacing=spacing)
        seg = sitk.GetImageFromArray(_tumour(sitk.GetArrayViewFromImage(ref).shape))
        seg.CopyInformation(ref)
        sitk.WriteImage(seg, str(case / f"{name}-seg.nii.gz"))
    assert main(["calibrate-confident-core", str(tiny_bundle), str(data), "-o", str(tmp_path / "x"),
                 "--device", "cpu"]) == 2, "the tiny bundle has no thick-slice thresholds"
    bundle = load_bundle(tiny_bundle)
    meta = json.loads(json.dumps(bundle.meta))
    meta["inference"]["thick_slices"] = {"min_slice_mm": 4.0, "threshold": 0.5}
    thick = save_bundle(bundle.network, meta, tmp_path / "thick")
    out = tmp_path / "calibrated"
    assert main(["calibrate-confident-core", str(thick), str(data), "-o", str(out), "--device", "cpu",
                 "--modalities", "t2f,t1c", "--json", str(tmp_path / "core.json")]) == 0
    written = json.loads((out / "model.json").read_text())
    record = written["metrics"]["confident_core_calibration"]["t1c,t2f"]
    assert record["n_cases"] == 1, "only the 5 mm study counts"
    assert record["min_slice_mm"] == 4.0
    rule = written["inference"]["thick_slices"].get("confident_core")
    assert rule is None if record["min_fraction"] == 0 else rule["min_fraction"] == {"t1c,t2f": record["min_fraction"]}
    assert written["weights_sha256"] == bundle.meta["weights_sha256"]
    assert json.loads((tmp_path / "core.json").read_text())["inputs"] == "t1c,t2f"
