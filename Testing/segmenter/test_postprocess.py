"""Small-component and confident-core removal (MTSSSegmenterLib.postprocess) and their place in the pipeline."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from MTSSSegmenterLib.bundle import load_bundle, read_meta
from MTSSSegmenterLib.errors import BundleError
from MTSSSegmenterLib.pipeline import segment
from MTSSSegmenterLib.bundle import confident_core_rule
from MTSSSegmenterLib.postprocess import (describe_removed, min_component_sizes, remove_small_components,
                                         remove_unconfident_components)

from ..conftest import make_volume


def _tumour() -> np.ndarray:
    """A 10 mL tumour (1 mm voxels): oedema around a necrotic core with an enhancing rim part."""
    lab = np.zeros((40, 40, 40), dtype=np.uint8)
    lab[5:30, 5:25, 5:25] = 2  # 10 000 voxels = 10 mL
    lab[10:20, 10:20, 10:20] = 1
    lab[10:20, 10:20, 10:12] = 3
    return lab


def test_a_distant_speck_is_erased_and_the_tumour_kept():
    lab = _tumour()
    lab[35:37, 35:37, 35:37] = 2  # 8 voxels = 0.008 mL, touching nothing
    out, removed = remove_small_components(lab, (1, 1, 1), (0.05, 0, 0))
    assert out[35:37, 35:37, 35:37].max() == 0
    assert np.array_equal(out[:32, :32, :32], lab[:32, :32, :32])
    assert removed["WT"] == {"components": 1, "ml": 0.008}
    assert removed["TC"]["components"] == removed["ET"]["components"] == 0
    assert lab[35, 35, 35] == 2, "the input must not be changed in place"


def test_diagonal_neighbours_are_one_component():
    lab = np.zeros((10, 10, 10), dtype=np.uint8)
    lab[2, 2, 2] = lab[3, 3, 3] = 2  # touch at a corner only: 26-connected, one 2-voxel component
    out, removed = remove_small_components(lab, (1, 1, 1), (0.0015, 0, 0))
    assert removed["WT"]["components"] == 0 and out.sum() == lab.sum()


def test_a_small_core_becomes_oedema_and_a_small_enhancing_part_necrosis():
    lab = _tumour()
    lab[26:28, 20:22, 20:22] = 1  # an 8-voxel core islet inside the oedema
    out, removed = remove_small_components(lab, (1, 1, 1), (0, 0.05, 0.5))
    assert (out[26:28, 20:22, 20:22] == 2).all(), "the islet stays tumour, as oedema"
    assert not (out == 3).any() and (out[10:20, 10:20, 10:12] == 1).all(), "a 0.2 mL ET part below 0.5 mL -> NCR"
    assert (out > 0).sum() == (lab > 0).sum(), "TC and ET removal never shrinks the whole tumour"
    assert removed["TC"]["components"] == 1 and removed["ET"] == {"components": 1, "ml": 0.2}


def test_sizes_are_physical_volumes():
    lab = _tumour()
    lab[35:37, 35:37, 35:37] = 2
    _, fine = remove_small_components(lab, (1, 1, 1), (0.05, 0, 0))
    _, thick = remove_small_components(lab, (1, 1, 5), (0.05, 0, 0))  # 8 voxels of 5 uL = 0.04 mL: still small
    _, coarse = remove_small_components(lab, (2, 2, 5), (0.05, 0, 0))  # 0.16 mL: kept
    assert fine["WT"]["components"] == thick["WT"]["components"] == 1 and coarse["WT"]["components"] == 0


def test_zero_sizes_and_an_empty_map_change_nothing():
    lab = _tumour()
    lab[35, 35, 35] = 3
    out, removed = remove_small_components(lab, (1, 1, 1), (0, 0, 0))
    assert np.array_equal(out, lab) and all(r["components"] == 0 for r in removed.values())
    empty = np.zeros((8, 8, 8), dtype=np.uint8)
    out, removed = remove_small_components(empty, (1, 1, 1), (1, 1, 1))
    assert not out.any() and all(r["components"] == 0 for r in removed.values())


@pytest.mark.parametrize("value", [[0.1, 0.1], [0.1, -1, 0], ["0.1", 0, 0], [float("nan"), 0, 0], 0.1])
def test_a_bad_size_list_is_refused_when_the_bundle_is_read(tiny_bundle, tmp_path, value):
    folder = tmp_path / "b"
    shutil.copytree(tiny_bundle, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["inference"]["min_component_ml"] = value
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="min_component_ml"):
        read_meta(folder)


def test_the_pipeline_applies_the_bundle_sizes_unless_asked_to_keep(tiny_bundle, tmp_path):
    images = {c: make_volume(seed=i) for i, c in enumerate(("t1n", "t1c", "t2w", "t2f"))}
    kept = segment(images, model=tiny_bundle, device="cpu")
    assert kept.details["small_components_removed"] is None and kept.details["min_component_ml"] is None
    folder = tmp_path / "b"
    shutil.copytree(tiny_bundle, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["inference"]["min_component_ml"] = [0.0, 0.5, 1.0]
    (folder / "model.json").write_text(json.dumps(meta))
    bundle = load_bundle(folder)
    assert min_component_sizes(bundle.meta) == (0.0, 0.5, 1.0)
    assert "Smallest components kept WT/TC/ET: 0/0.5/1 mL" in bundle.card()
    cleaned = segment(images, model=bundle, device="cpu")
    same = segment(images, model=bundle, device="cpu", keep_small_components=True)
    raw = sitk.GetArrayFromImage(same.label)
    assert np.array_equal(raw, sitk.GetArrayFromImage(kept.label))
    expected, removed = remove_small_components(raw, same.label.GetSpacing(), (0.0, 0.5, 1.0))
    assert removed["TC"]["components"] > 0, "the untrained network's speckled core should give something to remove"
    assert np.array_equal(sitk.GetArrayFromImage(cleaned.label), expected)
    assert not np.array_equal(expected, raw)
    assert cleaned.details["small_components_removed"] == removed
    assert cleaned.details["min_component_ml"] == [0.0, 0.5, 1.0]
    assert cleaned.volumes_ml["WT"] == pytest.approx(same.volumes_ml["WT"]), "core/ET removal keeps the tumour"
    assert cleaned.volumes_ml["TC"] < same.volumes_ml["TC"]
    assert cleaned.label.GetOrigin() == same.label.GetOrigin() and cleaned.label.GetSpacing() == same.label.GetSpacing()


def _two_components() -> tuple[np.ndarray, np.ndarray]:
    """A tumour whose probability is mostly certain, and a distant 1 mL blob that only just passes."""
    lab = _tumour()
    lab[32:37, 30:40, 30:40] = 2  # 500 voxels: a separate component
    lab[33:35, 32:35, 32:35] = 1  # with a "core" of its own, erased with it
    p = np.where(lab > 0, 0.999, 0.01).astype(np.float32)
    p[32:37, 30:40, 30:40] = 0.93
    p[32, 30, 30:35] = 0.995  # 5 of 500 voxels (1 %) certain
    return lab, p


def test_a_component_without_a_confident_core_is_erased_with_its_core():
    lab, p = _two_components()
    out, found = remove_unconfident_components(lab, p, (1.0, 2.0, 1.0), 0.99, 0.1)
    assert np.array_equal(out[:31], lab[:31]), "the confident tumour stays as it was"
    assert not out[31:].any()
    assert found == {"components": 1, "ml": 1.0, "largest_ml": 1.0}  # 500 voxels of 2 mm3
    kept, none = remove_unconfident_components(lab, p, (1.0, 1.0, 1.0), 0.99, 0.01)  # 1 % is enough
    assert np.array_equal(kept, lab) and none["components"] == 0
    same, _ = remove_unconfident_components(lab, p, (1.0, 1.0, 1.0), 0.99, 0.0)
    assert np.array_equal(same, lab)
    with pytest.raises(ValueError, match="grid"):
        remove_unconfident_components(lab, p[:-1], (1.0, 1.0, 1.0), 0.99, 0.1)


def test_the_largest_component_stays_however_doubtful():
    lab, p = _two_components()
    p[p > 0.99] = 0.95  # nothing is certain now, the tumour included
    out, found = remove_unconfident_components(lab, p, (1.0, 1.0, 1.0), 0.99, 0.1)
    assert np.array_equal(out[:31], lab[:31]) and not out[31:].any()
    assert found["components"] == 1
    alone = np.where(np.arange(40)[:, None, None] < 31, lab, 0)
    same, none = remove_unconfident_components(alone, p, (1.0, 1.0, 1.0), 0.99, 0.1)
    assert np.array_equal(same, alone) and none["components"] == 0


def test_the_summary_line_names_both_rules():
    text = describe_removed({"small_components_removed": {"WT": {"components": 2, "ml": 0.12}},
                             "min_component_ml": [1, 0.1, 0], "unconfident_components_removed":
                             {"components": 1, "ml": 8.23, "largest_ml": 8.23},
                             "confident_core": {"probability": 0.99, "min_fraction": 0.1}})
    assert text == ("WT 2 (0.12 mL), below 1/0.1/0 mL (WT/TC/ET); 1 whole-tumour component (8.23 mL) without a "
                    "confident core (under 10% of it at p >= 0.99)")
    assert describe_removed({"unconfident_components_removed": {"components": 0, "ml": 0.0}}) == ""


def _with_core(meta: dict, min_slice_mm: float = 4.0, rule=None) -> dict:
    meta = json.loads(json.dumps(meta))
    meta["inference"]["thick_slices"] = {"min_slice_mm": min_slice_mm, "threshold": 0.5, "confident_core": rule or {
        "probability": 0.99, "min_fraction": {"t1n,t1c,t2w,t2f": 0.1, "t1c,t2f": 0.05}}}
    return meta


def test_the_rule_holds_on_thick_slices_for_the_input_sets_it_was_chosen_for(tiny_bundle):
    meta = _with_core(read_meta(tiny_bundle))
    four = ["t1n", "t1c", "t2w", "t2f"]
    assert confident_core_rule(meta, four, 5.0) == (0.99, 0.1)
    assert confident_core_rule(meta, ["t2f", "t1c"], 4.0) == (0.99, 0.05)
    assert confident_core_rule(meta, four, 3.0) is None, "thinner than the thick-slice limit"
    assert confident_core_rule(meta, ["t1c"], 5.0) is None, "not chosen for T1c alone"
    assert confident_core_rule(read_meta(tiny_bundle), four, 5.0) is None


@pytest.mark.parametrize("rule, words", [
    ({"probability": 1.0, "min_fraction": {"t1n,t1c,t2w,t2f": 0.1}}, "probability"),
    ({"probability": 0.99, "min_fraction": {"t1c,t1n": 0.1}}, "t1c,t1n"),
    ({"probability": 0.99, "min_fraction": {"t1n,t1c,t2w,t2f": 1.5}}, "fraction in"),
    ({"probability": 0.99, "min_fraction": 0.1}, "min_fraction"),
])
def test_a_bad_rule_is_refused_when_the_bundle_is_read(tiny_bundle, tmp_path, rule, words):
    folder = tmp_path / "b"
    shutil.copytree(tiny_bundle, folder)
    (folder / "model.json").write_text(json.dumps(_with_core(read_meta(tiny_bundle), rule=rule)))
    with pytest.raises(BundleError, match="confident_core") as err:
        read_meta(folder)
    assert words in str(err.value)


def test_the_pipeline_removes_doubtful_components_on_thick_slices_only(tiny_bundle, tmp_path):
    images = {c: make_volume(seed=i) for i, c in enumerate(("t1n", "t1c", "t2w", "t2f"))}  # 3 mm voxels
    raw = segment(images, model=tiny_bundle, device="cpu", probability_out=True)
    prob = sitk.GetArrayFromImage(raw.wt_probability)
    labels = sitk.GetArrayFromImage(raw.label)
    assert prob.shape == labels.shape and raw.wt_probability.GetSpacing() == raw.label.GetSpacing()
    assert labels.any(), "the untrained network should label something"
    assert np.array_equal(prob >= 0.5, labels > 0), "the map is the one the labels were thresholded from"
    folder = tmp_path / "core"
    shutil.copytree(tiny_bundle, folder)
    # the untrained network's probabilities hover around 0.6: a thick-slice threshold of 0.6 breaks its
    # "tumour" into many components, a core probability of 0.65 leaves some without a confident core
    meta = _with_core(read_meta(tiny_bundle), 3.0, {"probability": 0.65, "min_fraction": {"t1n,t1c,t2w,t2f": 0.2}})
    meta["inference"]["thick_slices"]["threshold"] = 0.6
    (folder / "model.json").write_text(json.dumps(meta))
    bundle = load_bundle(folder)
    assert "under 20% of their voxels at p >= 0.65" in bundle.card()
    kept = segment(images, model=bundle, device="cpu", keep_small_components=True, probability_out=True)
    assert kept.details["unconfident_components_removed"] is None
    thick = sitk.GetArrayFromImage(kept.label)
    assert np.array_equal(sitk.GetArrayFromImage(kept.wt_probability), prob), "the same network, the same map"
    cleaned = segment(images, model=bundle, device="cpu")
    expected, found = remove_unconfident_components(thick, prob, kept.label.GetSpacing(), 0.65, 0.2)
    assert found["components"] >= 1
    assert np.array_equal(sitk.GetArrayFromImage(cleaned.label), expected)
    assert cleaned.details["unconfident_components_removed"] == found
    assert cleaned.details["confident_core"] == {"probability": 0.65, "min_fraction": 0.2}
    assert cleaned.volumes_ml["WT"] == pytest.approx(kept.volumes_ml["WT"] - found["ml"], abs=1e-3)
    thin = {c: sitk.Resample(img, make_volume(spacing=(2.5, 2.5, 2.5), shape_xyz=(48, 52, 44)))
            for c, img in images.items()}
    untouched = segment(thin, model=bundle, device="cpu")
    assert untouched.details["unconfident_components_removed"] is None, "2.5 mm is below the 3 mm limit"
