"""Small-component removal (MTSSSegmenterLib.postprocess) and its place in the pipeline."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from MTSSSegmenterLib.bundle import load_bundle, read_meta
from MTSSSegmenterLib.errors import BundleError
from MTSSSegmenterLib.pipeline import segment
from MTSSSegmenterLib.postprocess import min_component_sizes, remove_small_components

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
