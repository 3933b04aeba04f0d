"""Bias-field correction (N4) of a series, estimated on a shrunk copy and applied at full resolution.

MR intensities are modulated by a smooth multiplicative field from the receive coils (strongest with
surface-coil arrays at 3 T). N4 (Tustison et al., IEEE TMI 2010), the successor of N3 (Sled et al., IEEE TMI
1998), models the log intensity as the log of the true image plus a smooth B-spline field and sharpens the
intensity histogram iteratively. The field is smooth, so it is estimated on a copy shrunk to ~6 mm voxels
(2-3 s of CPU per series) and evaluated on the full grid; the corrected image is the input divided by
``exp(log field)``.

Two fitting levels, not the customary four: each level doubles the B-spline mesh, and after four (8 spans,
about 25 mm across a head) the field is flexible enough to take a large lesion for bias. On synthetic clinical
draws it flattened a 110 mL glioma's FLAIR contrast from 1.73 to 1.16 times the brain's, and ``--n4`` then
found a sixth of the tumour; with two levels (2 spans) the contrast stays (1.84) and a smooth field is still
removed (test_bias.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from .registration import head_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class N4Config:
    """Settings of the N4 correction.

    Attributes:
        shrink_to_mm: the estimate runs on a copy with voxels of about this size (never finer than the input).
        iterations: iterations per fitting level (one entry per level, coarse to fine B-spline meshes; each
            level doubles the mesh, so more levels fit a less smooth field, lesions included).
        control_points: B-spline control points per axis at the first level.
        convergence: stop a level when the field changes less than this.
    """

    shrink_to_mm: float = 6.0
    iterations: tuple[int, ...] = (50, 50)
    control_points: int = 4
    convergence: float = 1e-3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> N4Config:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def __post_init__(self) -> None:
        if self.shrink_to_mm <= 0 or not self.iterations or any(i < 1 for i in self.iterations):
            raise ValueError(f"N4Config needs shrink_to_mm > 0 and positive iterations, got {self.shrink_to_mm}, "
                             f"{self.iterations}.")
        if self.control_points < 4:
            raise ValueError(f"control_points={self.control_points}: a cubic B-spline needs at least 4 per axis.")


def n4_correct(image: sitk.Image, mask: sitk.Image | None = None,
               config: N4Config | None = None) -> tuple[sitk.Image, sitk.Image]:
    """Correct the bias field of ``image``.

    Args:
        image: a 3-D MR series (any grid).
        mask: where to estimate the field (same grid; default: the image's foreground).
        config: :class:`N4Config`.

    Returns:
        ``(corrected, log_field)`` on ``image``'s grid, float32. ``corrected = image / exp(log_field)``; the
        field is normalised to a mean log of 0 inside the mask, so the intensity range stays the input's.
    """
    config = config or N4Config()
    t0 = time.perf_counter()
    img = sitk.Cast(image, sitk.sitkFloat32)
    top = float(np.percentile(sitk.GetArrayViewFromImage(img), 99.9))
    positive = sitk.Clamp(img, sitk.sitkFloat32, max(top, 1e-6) * 1e-3, 1e30)  # N4 works on log intensities
    if mask is None:
        mask = head_mask(img)
    mask = sitk.Cast(mask > 0, sitk.sitkUInt8)
    spacing = np.asarray(img.GetSpacing())
    factors = [int(max(1, round(config.shrink_to_mm / s))) for s in spacing]
    small = sitk.Shrink(positive, factors)
    small_mask = sitk.Cast(sitk.Resample(mask, small, sitk.Transform(), sitk.sitkNearestNeighbor), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(small_mask)):
        log.warning("N4 skipped: the mask is empty at %s mm.", config.shrink_to_mm)
        return img, img * 0.0
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(config.iterations))
    n4.SetNumberOfControlPoints([config.control_points] * 3)
    n4.SetConvergenceThreshold(config.convergence)
    n4.Execute(small, small_mask)
    log_field = sitk.Cast(n4.GetLogBiasFieldAsImage(img), sitk.sitkFloat32)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    field = sitk.GetArrayFromImage(log_field)
    field -= float(field[inside].mean()) if inside.any() else 0.0
    log_field = sitk.GetImageFromArray(field)
    log_field.CopyInformation(img)
    corrected = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(img) / np.exp(field))
    corrected.CopyInformation(img)
    log.info("N4 on %s voxels (shrink %s): %.1f s", "x".join(map(str, small.GetSize())), factors,
             time.perf_counter() - t0)
    return sitk.Cast(corrected, sitk.sitkFloat32), log_field


def coefficient_of_variation(image: sitk.Image, mask: sitk.Image) -> float:
    """Standard deviation / mean of the intensities inside ``mask`` (a measure of bias-field inhomogeneity)."""
    v = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0].astype(np.float64)
    return float(v.std() / v.mean()) if v.size and v.mean() != 0 else 0.0


__all__ = ["N4Config", "n4_correct", "coefficient_of_variation"]
