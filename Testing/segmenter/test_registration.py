"""Rigid registration of series to the reference: known transforms recovered, partial coverage, wrong patient.

The real BraTS case (skull-stripped, aligned) at 2 mm is the patient; each series is moved by a known
rigid transform and resampled onto its own thick (5 mm) oblique slices, as a scanner would acquire it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MTSSSegmenterLib.registration import (
    RegistrationConfig,
    normalised_mutual_information,
    register,
    register_series,
    rotation_angle_deg,
    transform_from_summary,
    working_image,
)
from Testing.conftest import requires_real

pytestmark = requires_real


def euler(angles_deg, shift_mm, center) -> sitk.Euler3DTransform:
    tf = sitk.Euler3DTransform()
    tf.SetCenter([float(c) for c in center])
    tf.SetRotation(*[math.radians(a) for a in angles_deg])
    tf.SetTranslation([float(v) for v in shift_mm])
    return tf


def acquire(image: sitk.Image, motion: sitk.Transform, tilt_deg=(0.0, 0.0, 0.0), spacing=(1.5, 1.5, 5.0),
            keep: tuple[float, float] = (0.0, 1.0)) -> sitk.Image:
    """``image`` seen by a scanner after the head moved by ``motion`` (fixed -> moving): thick oblique slices.

    ``keep`` is the fraction range of the slice stack acquired (partial coverage).
    """
    d = np.asarray(euler(tilt_deg, (0, 0, 0), (0, 0, 0)).GetMatrix()).reshape(3, 3)
    arr = sitk.GetArrayViewFromImage(image)
    idx = np.argwhere(arr > 0.1 * arr.max())[:, ::-1]  # the head's bounding box (x, y, z indices)
    lo_i, hi_i = idx.min(0), idx.max(0)
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(i), float(j), float(k)])
                        for i in (lo_i[0], hi_i[0]) for j in (lo_i[1], hi_i[1]) for k in (lo_i[2], hi_i[2])])
    moved = np.array([motion.TransformPoint(p.tolist()) for p in corners]) @ d  # in the slice frame
    lo, hi = moved.min(0) - 5, moved.max(0) + 5
    lo[2], hi[2] = lo[2] + keep[0] * (hi[2] - lo[2]), lo[2] + keep[1] * (hi[2] - lo[2])
    sp = np.asarray(spacing, dtype=float)
    n = np.ceil((hi - lo) / sp).astype(int) + 1
    profile = sitk.SmoothingRecursiveGaussian(image, [max(1e-3, math.sqrt(max(s * s - 4.0, 0)) / 2.355)
                                                      for s in (2.0, 2.0, spacing[2])])
    return sitk.Resample(profile, [int(v) for v in n], motion.GetInverse(), sitk.sitkLinear, (d @ lo).tolist(),
                         sp.tolist(), d.flatten().tolist(), 0.0, sitk.sitkFloat32)


def point_error(found: sitk.Transform, truth: sitk.Transform, center: np.ndarray, radius: float = 60.0) -> float:
    """Largest distance between the two transforms' images of points within ``radius`` mm of ``center``."""
    offsets = radius * np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    return max(float(np.linalg.norm(np.subtract(found.TransformPoint((center + o).tolist()),
                                                truth.TransformPoint((center + o).tolist()))))
               for o in offsets)


@pytest.fixture(scope="module")
def patient(brats_2mm) -> dict[str, sitk.Image]:
    return brats_2mm


def brain_center(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayViewFromImage(image)
    idx = np.argwhere(arr > 0.1 * arr.max())[:, ::-1].mean(0)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(idx.tolist()))


@pytest.mark.slow
def test_known_motions_of_thick_oblique_series_are_recovered(patient):
    c = brain_center(patient["t1c"])
    reference = acquire(patient["t1c"], sitk.Euler3DTransform(), tilt_deg=(8, 0, 0), spacing=(1.5, 1.5, 5.0))
    motions = {"t1n": euler((4, -3, 2), (3, -4, 2), c), "t2w": euler((-2, 5, -3), (-5, 2, 4), c),
               "t2f": euler((3, 2, 5), (2, 5, -3), c)}
    series = {"t1c": reference}
    for code, tf in motions.items():
        series[code] = acquire(patient[code], tf, tilt_deg=(-10, 15, 0) if code == "t2w" else (0, 12, 20),
                               spacing=(1.2, 1.2, 5.0) if code != "t2f" else (2.0, 2.0, 4.0))
    found = register_series(series, reference="t1c")
    assert set(found) == {"t1n", "t2w", "t2f"}
    for code, reg in found.items():
        truth = motions[code]
        assert reg.ok and reg.warning is None, reg.summary()
        assert point_error(reg.transform, truth, c) < 2.0, (code, reg.summary())
        assert abs(reg.rotation_deg - rotation_angle_deg(truth)) < 2.0
        moved = np.subtract(truth.TransformPoint(c.tolist()), c)
        assert np.linalg.norm(np.subtract(reg.transform.TransformPoint(c.tolist()), c) - moved) < 2.0
        # resampling through the transform puts the series back on the patient (fixed -> moving convention)
        back = sitk.Resample(series[code], patient["t1c"], reg.transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        a, b = sitk.GetArrayViewFromImage(patient[code]), sitk.GetArrayViewFromImage(back)
        inside = a > 0.1 * a.max()
        assert np.corrcoef(a[inside], b[inside])[0, 1] > 0.85
        rebuilt = transform_from_summary(json.loads(json.dumps(reg.summary())))  # e.g. for a Slicer transform node
        assert point_error(rebuilt, reg.transform, c) < 1e-6


@pytest.mark.slow
def test_a_series_covering_part_of_the_head_still_registers(patient):
    c = brain_center(patient["t1c"])
    motion = euler((-3, 4, 2), (4, -3, 3), c)
    part = acquire(patient["t2f"], motion, spacing=(1.2, 1.2, 5.0), keep=(0.5, 1.0))  # the upper half of the head
    reg = register(patient["t1c"], part, "t2f")
    assert reg.ok, reg.summary()
    assert reg.extra["overlap"] < 0.7  # it really is partial
    assert point_error(reg.transform, motion, c, radius=40.0) < 2.0


@pytest.mark.slow
def test_a_series_of_another_head_gets_a_clear_warning(patient):
    import nilearn.datasets

    other = sitk.ReadImage(str(Path(nilearn.datasets.__file__).parent / "data" /
                               "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    other = working_image(other, 2.0)
    shift = brain_center(patient["t1c"]) - brain_center(other)
    other.SetOrigin((np.asarray(other.GetOrigin()) + shift).tolist())  # placed where the patient's head is
    reg = register(patient["t1c"], other, "t1n")
    assert not reg.ok
    assert "likely failed" in reg.warning and "'t1n'" in reg.warning
    same = register(patient["t1c"], patient["t1n"], "t1n")
    assert same.ok and same.sharpness > reg.sharpness


def test_normalised_mutual_information_bounds():
    rng = np.random.default_rng(0)
    a = rng.normal(size=20000)
    assert normalised_mutual_information(a, a) == pytest.approx(2.0, abs=0.02)
    assert normalised_mutual_information(a, rng.normal(size=20000)) < 1.02
    assert normalised_mutual_information(a, np.zeros(20000)) <= 1.0 + 1e-9


def test_config_is_validated():
    with pytest.raises(ValueError, match="same length"):
        RegistrationConfig(shrink_factors=(4, 2), smoothing_mm=(2.0,))
    with pytest.raises(ValueError, match="sampling"):
        RegistrationConfig(sampling=0.0)
