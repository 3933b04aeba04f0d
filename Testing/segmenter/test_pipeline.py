"""The segmentation pipeline end to end with an UNTRAINED tiny bundle: geometry, inputs, messages."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MTSSSegmenterLib.errors import Cancelled, InputError
from MTSSSegmenterLib.geometry import Grid
from MTSSSegmenterLib.pipeline import segment
from MTSSSegmenterLib.preprocess import labels_to_regions, prepare_case, regions_to_labels
from Testing.conftest import make_volume


def _four(**kw):
    return {c: make_volume(seed=i, **kw) for i, c in enumerate(("t1n", "t1c", "t2w", "t2f"))}


def test_result_lies_exactly_on_the_reference_grid(tiny_bundle):
    images = _four()
    images["t2f"] = sitk.Resample(images["t2f"], [30, 30, 30], sitk.Transform(), sitk.sitkLinear,
                                  images["t2f"].GetOrigin(), (4.0, 4.0, 4.0), images["t2f"].GetDirection())
    r = segment(images, model=tiny_bundle, device="cpu")
    assert r.reference == "t1c"
    assert Grid.of(r.label) == Grid.of(images["t1c"])
    assert r.label.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(r.label))) <= {0, 1, 2, 3}
    assert any("resampled onto the grid of 't1c'" in w for w in r.warnings)


def test_any_subset_and_reference_override(tiny_bundle):
    images = _four()
    for subset in (["t1c"], ["t2f"], ["t1c", "t2f"], ["t1n", "t2w"]):
        r = segment({k: images[k] for k in subset}, model=tiny_bundle, device="cpu")
        assert r.inputs == tuple(c for c in ("t1n", "t1c", "t2w", "t2f") if c in subset)
    assert segment(images, model=tiny_bundle, reference="t2w").reference == "t2w"


def test_same_images_in_another_voxel_order_give_the_same_physical_result(tiny_bundle):
    images = _four()
    flip = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)
    permuted = {}
    for k, img in images.items():
        # same voxels at the same physical points, stored in another order
        canon = sitk.DICOMOrient(img, "LPS")
        permuted[k] = sitk.DICOMOrient(canon, sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(flip.flatten().tolist()))
    a = segment(images, model=tiny_bundle)
    b = segment(permuted, model=tiny_bundle)
    assert Grid.of(b.label) == Grid.of(permuted["t1c"])
    back = sitk.Resample(b.label, a.label, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(a.label))


def test_prepared_input_has_mask_channels_for_missing_modalities():
    images = _four()
    case = prepare_case({"t1c": images["t1c"], "t2f": images["t2f"]}, {"spacing_mm": [3, 3, 3]})
    assert case.image.shape[0] == 8
    assert not case.image[0].any() and not case.image[2].any()  # t1n, t2w zero
    assert case.image[5].min() == 1 and case.image[4].max() == 0  # mask t1c present, t1n absent
    inside = case.image[1][case.brain]
    assert abs(inside.mean()) < 0.1 and abs(inside.std() - 1) < 0.1


def test_regions_labels_roundtrip():
    labels = np.array([0, 1, 2, 3, 2, 1], np.uint8)
    assert np.array_equal(regions_to_labels(labels_to_regions(labels)), labels)


@pytest.mark.parametrize("make, message", [
    (lambda: {}, "No input volume"),
    (lambda: {"t1x": make_volume()}, "Unknown modality 't1x'"),
    (lambda: {"t1c": sitk.GetImageFromArray(np.zeros((1, 20, 20), np.float32))}, "2-D"),
    (lambda: {"t1c": make_volume(), "t2f": make_volume(origin=(900.0, 900.0, 900.0))}, "do not overlap"),
    (lambda: {"t1c": sitk.GetImageFromArray(np.full((20, 20, 20), np.nan, np.float32))}, "NaN"),
    (lambda: {"t1c": sitk.GetImageFromArray(np.full((20, 20, 20), 7, np.float32))}, "constant"),
])
def test_bad_inputs_get_clear_messages(tiny_bundle, make, message):
    with pytest.raises(InputError, match=message):
        segment(make(), model=tiny_bundle, device="cpu")


def test_empty_brain_among_others(tiny_bundle):
    zero = sitk.GetImageFromArray(np.zeros((20, 20, 20), np.float32))
    with pytest.raises(InputError, match="constant"):
        segment({"t1c": zero}, model=tiny_bundle)


def test_progress_callback_sees_stages_and_can_cancel(tiny_bundle):
    seen = []
    segment(_four(), model=tiny_bundle, progress=lambda s, f: seen.append(s))
    assert {"loading model", "preparing", "segmenting", "finishing"} <= set(seen)

    def cancel(stage, fraction):
        if stage == "segmenting":
            raise Cancelled()
    with pytest.raises(Cancelled):
        segment(_four(), model=tiny_bundle, progress=cancel)


def test_cuda_without_gpu_is_explained(tiny_bundle):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="no CUDA GPU"):
        segment(_four(), model=tiny_bundle, device="cuda")
