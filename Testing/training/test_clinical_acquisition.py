"""Clinical acquisitions drawn from an aligned case: own oblique thick-slice grids, head motion, skull."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from MTSSTrainingLib.clinical_acquisition import (
    HEAD_TISSUES,
    clinical_acquisition,
    synthetic_head,
    transform_from_params,
)
from Testing.conftest import make_volume


def aligned_case() -> tuple[dict[str, sitk.Image], sitk.Image]:
    """Four 'series' of one toy head on one 3 mm grid, and a label map (a lesion with a core)."""
    images = {code: make_volume(shape_xyz=(50, 56, 46), seed=i) for i, code in enumerate(("t1n", "t1c", "t2w", "t2f"))}
    arr = sitk.GetArrayFromImage(images["t1c"])
    lesion = arr > 150
    seg = np.where(lesion, 2, 0).astype(np.uint8)
    zz, yy, xx = np.nonzero(lesion)
    c = (int(zz.mean()), int(yy.mean()), int(xx.mean()))
    seg[c[0] - 2:c[0] + 3, c[1] - 2:c[1] + 3, c[2] - 2:c[2] + 3] = 1
    label = sitk.GetImageFromArray(seg)
    label.CopyInformation(images["t1c"])
    return images, label


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def test_series_get_their_own_oblique_thick_grids_and_the_label_follows_t1c():
    images, seg = aligned_case()
    series, seg_c, params = clinical_acquisition(images, seg, np.random.default_rng(3), spacing_range=(4.0, 6.0))
    assert set(series) == set(images) and params["label_grid"] == "t1c"
    grids = set()
    for code, img in series.items():
        sp = np.asarray(img.GetSpacing())
        assert 4.0 <= sp[2] <= 6.0 and sp[0] == sp[1] <= sp[2]
        d = np.asarray(img.GetDirection()).reshape(3, 3)
        assert np.allclose(d @ d.T, np.eye(3), atol=1e-6) and np.linalg.det(d) > 0
        grids.add((img.GetSize(), tuple(np.round(img.GetDirection(), 3))))
        assert img.GetPixelID() == sitk.sitkInt16 and sitk.GetArrayViewFromImage(img).min() >= 0
    assert len(grids) == 4  # every series has its own grid
    assert any(np.abs(np.asarray(img.GetDirection())).max() < 0.999 for img in series.values())  # oblique
    assert seg_c.GetSize() == series["t1c"].GetSize() and seg_c.GetOrigin() == series["t1c"].GetOrigin()
    assert seg_c.GetDirection() == series["t1c"].GetDirection()
    # the label map lies on the t1c series: both brought back through t1c's motion land on the aligned lesion
    tf = transform_from_params(params["series"]["t1c"])
    back = sitk.GetArrayFromImage(sitk.Resample(seg_c, seg, tf, sitk.sitkNearestNeighbor)) > 0
    assert dice(back, sitk.GetArrayViewFromImage(seg) > 0) > 0.75
    json.dumps(params)


def test_each_series_moved_by_its_reported_rigid_transform():
    images, seg = aligned_case()
    series, _, params = clinical_acquisition(images, seg, np.random.default_rng(5), spacing_range=(3.0, 4.0),
                                             bias_strength=(0.0, 0.0))
    for code, img in series.items():
        entry = params["series"][code]
        tf = transform_from_params(entry)
        assert max(abs(a) for a in entry["rotation_deg"]) <= 6.0 and max(map(abs, entry["translation_mm"])) <= 6.0
        back = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), images[code], tf))
        orig = sitk.GetArrayViewFromImage(images[code])
        inside = orig > 50
        assert np.corrcoef(back[inside], orig[inside])[0, 1] > 0.5  # same head, same place (noise is blurred)
        ident = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), images[code]))
        assert np.corrcoef(back[inside], orig[inside])[0, 1] > np.corrcoef(ident[inside], orig[inside])[0, 1]


def test_skull_on_draws_have_a_head_around_the_brain_and_are_reproducible():
    images, seg = aligned_case()
    brain = sitk.Cast(images["t1c"] > 0, sitk.sitkUInt8)
    head = synthetic_head(brain, np.random.default_rng(0))
    labels = np.unique(sitk.GetArrayViewFromImage(head))
    assert set(labels) == set(range(len(HEAD_TISSUES)))
    a, _, pa = clinical_acquisition(images, seg, np.random.default_rng(9), skull=head)
    b, _, _ = clinical_acquisition(images, seg, np.random.default_rng(9), skull=head)
    assert pa["skull"] is True
    for code in a:
        assert np.array_equal(sitk.GetArrayViewFromImage(a[code]), sitk.GetArrayViewFromImage(b[code]))
    ml = {code: np.count_nonzero(sitk.GetArrayViewFromImage(img) > 0.1 * np.percentile(
        sitk.GetArrayViewFromImage(img), 99)) * np.prod(img.GetSpacing()) / 1000 for code, img in a.items()}
    brain_ml = np.count_nonzero(sitk.GetArrayViewFromImage(brain)) * np.prod(brain.GetSpacing()) / 1000
    assert all(v > 1.5 * brain_ml for v in ml.values()), (ml, brain_ml)
