"""Turn an aligned, skull-stripped BraTS-like case into what a scanner gives a radiologist.

A clinical study differs from BraTS data in ways the student must not depend on: each series has its own
grid (often 4-6 mm slices in an oblique plane), the head moves a little between series, the skull and
scalp are on, a smooth bias field modulates the intensities (Sled et al., IEEE TMI 1998), and the
intensity range is the scanner's. :func:`clinical_acquisition` draws all of these for one case;
:func:`synthetic_head` grows a scalp, skull and CSF rim around a brain mask for the skull-on draws.

Conventions: a series' transform maps points of the aligned case to points of that series (the head sits
at ``T(p)`` in the series where it sat at ``p`` in the aligned case), i.e. what a rigid registration of
the series onto the aligned case should find. The label map is put on the t1c series' grid, through the
t1c transform, so it matches the t1c series voxel for voxel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

# Head tissues of synthetic_head, and their intensity relative to the brain's median, per sequence.
HEAD_TISSUES = ("outside", "csf", "bone", "marrow", "fat", "soft")
_CONTRAST = {  # csf, bone, marrow, fat, soft tissue / muscle / skin
    "t1n": (0.35, 0.07, 0.9, 1.45, 0.65),
    "t1c": (0.35, 0.07, 0.9, 1.40, 0.75),
    "t2w": (1.90, 0.06, 0.7, 1.00, 0.55),
    "t2f": (0.25, 0.06, 0.7, 1.10, 0.60),
}


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    return field / max(float(field.std()), 1e-6)


def _pad(image: sitk.Image, pad_mm: float) -> sitk.Image:
    sp = np.asarray(image.GetSpacing())
    n = np.ceil(pad_mm / sp).astype(int).tolist()
    return sitk.ConstantPad(image, n, n, 0)


def synthetic_head(brain: sitk.Image, rng: np.random.Generator, pad_mm: float = 30.0) -> sitk.Image:
    """Head tissue labels (see :data:`HEAD_TISSUES`) grown around a brain mask, on a padded copy of its grid.

    Layers outward from the brain: CSF rim (1-3 mm), skull (4-8 mm, marrow in its middle third), scalp fat
    (3-7 mm), skin and muscle (1.5-3 mm), each thickness modulated by a smooth random field; below the
    brain a neck of soft tissue continues to the edge of the grid. Label 0 is the brain and the air.

    Args:
        brain: binary brain mask (any 3-D grid).
        rng: random generator (one draw per call).
        pad_mm: the grid is padded by this much on every side so the head fits.
    """
    mask = _pad(sitk.Cast(brain > 0, sitk.sitkUInt8), pad_mm)
    sp = np.asarray(mask.GetSpacing())[::-1]  # zyx
    m = sitk.GetArrayFromImage(mask).astype(bool)
    out_dist = ndimage.distance_transform_edt(~m, sampling=sp).astype(np.float32)
    wobble = _smooth_field(rng, m.shape, 12.0 / float(sp.mean()))
    t_csf, t_bone, t_fat, t_soft = rng.uniform(1, 3), rng.uniform(4, 8), rng.uniform(3, 7), rng.uniform(1.5, 3)
    d = out_dist + 0.25 * t_bone * wobble
    edges = np.cumsum([t_csf, t_bone, t_fat, t_soft])
    labels = np.zeros(m.shape, dtype=np.uint8)
    labels[(d > 0) & (d <= edges[0])] = 1
    bone = (d > edges[0]) & (d <= edges[1])
    labels[bone] = 2
    labels[bone & (d > edges[0] + t_bone / 3) & (d <= edges[0] + 2 * t_bone / 3)] = 3
    labels[(d > edges[1]) & (d <= edges[2])] = 4
    labels[(d > edges[2]) & (d <= edges[3])] = 5
    labels[m] = 0
    # Neck: a soft-tissue cylinder (radius 40-55 mm) under the posterior half of the brain, from the lower
    # third of the brain down to the edge of the grid, outside the skull.
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    zi = int(np.argmax(np.abs(direction[2])))  # voxel axis (xyz) closest to the patient's S axis
    yi = int(np.argmax(np.abs(direction[1])))  # ... and to the P axis
    xi = 3 - zi - yi
    axes = [2 - xi, 2 - yi, 2 - zi]  # array axes (zyx order) of x, y, z
    idx = np.nonzero(m)
    lo = [float(idx[a].min()) for a in axes]
    hi = [float(idx[a].max()) for a in axes]
    grids = np.meshgrid(*[np.arange(n) for n in m.shape], indexing="ij")
    coord = [grids[a].astype(np.float32) * float(sp[a]) for a in axes]  # mm along x, y, z (array order signs)
    up = np.sign(direction[2, zi])
    back = np.sign(direction[1, yi])
    cx = (lo[0] + hi[0]) / 2 * sp[axes[0]]
    cy = (lo[1] + (0.6 if back > 0 else 0.4) * (hi[1] - lo[1])) * sp[axes[1]]
    cut = (lo[2] + 0.3 * (hi[2] - lo[2])) * sp[axes[2]] if up > 0 else (hi[2] - 0.3 * (hi[2] - lo[2])) * sp[axes[2]]
    below = coord[2] < cut if up > 0 else coord[2] > cut
    radius = rng.uniform(40, 55)
    neck = below & ((coord[0] - cx) ** 2 + (coord[1] - cy) ** 2 < radius ** 2) & (labels == 0) & ~m
    labels[neck] = 5
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(mask)
    return out


def paint_head(image: sitk.Image, head: sitk.Image, code: str, rng: np.random.Generator,
               brain: sitk.Image | None = None) -> sitk.Image:
    """``image`` (skull-stripped, modality ``code``) with the head tissues of ``head`` painted around it.

    Intensities are the brain's median times a per-tissue ratio (jittered by 15 %), with smooth texture;
    the result lies on ``head``'s grid.
    """
    img = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), head, sitk.Transform(), sitk.sitkLinear, 0.0)
    arr = sitk.GetArrayFromImage(img)
    lab = sitk.GetArrayFromImage(head)
    inside = arr > 0.05 * float(arr.max()) if brain is None else sitk.GetArrayFromImage(
        sitk.Resample(brain, head, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    median = float(np.median(arr[inside])) if inside.any() else 1.0
    texture = 1.0 + 0.08 * _smooth_field(rng, arr.shape, 2.0)
    ratios = _CONTRAST.get(code, _CONTRAST["t1n"])
    for t, ratio in enumerate(ratios, start=1):
        sel = lab == t
        arr[sel] = median * ratio * rng.uniform(0.85, 1.15) * texture[sel]
    out = sitk.GetImageFromArray(np.clip(arr, 0, None).astype(np.float32))
    out.CopyInformation(head)
    return out


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    tf = sitk.Euler3DTransform()
    tf.SetRotation(*[math.radians(float(a)) for a in angles_deg])
    return np.asarray(tf.GetMatrix()).reshape(3, 3)


def _points(image: sitk.Image, max_points: int = 20000) -> np.ndarray:
    """Physical positions (n, 3) of (a subsample of) the image's non-zero voxels."""
    arr = sitk.GetArrayViewFromImage(image)
    idx = np.argwhere(arr > 0)[:, ::-1].astype(np.float64)
    if idx.size == 0:
        idx = np.array([[0, 0, 0], np.asarray(image.GetSize()) - 1], dtype=np.float64)
    idx = idx[:: max(1, len(idx) // max_points)]
    d = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    return idx @ d.T + np.asarray(image.GetOrigin())


def series_grid(points: np.ndarray, direction: np.ndarray, spacing: np.ndarray, margin_mm: float = 10.0) -> sitk.Image:
    """An empty float image on a grid of ``direction`` and ``spacing`` covering ``points`` (n, 3) with a margin."""
    local = points @ direction  # coordinates along the grid axes (columns of direction)
    llo, lhi = local.min(0) - margin_mm, local.max(0) + margin_mm
    size = np.ceil((lhi - llo) / spacing).astype(int) + 1
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin((direction @ llo).tolist())
    return grid


def _bias(image: sitk.Image, rng: np.random.Generator, strength: float) -> sitk.Image:
    """Multiply by exp(strength * smooth field), the field varying over ~15 cm (coil sensitivity)."""
    arr = sitk.GetArrayFromImage(image)
    sp = np.asarray(image.GetSpacing())[::-1]
    coarse = tuple(max(int(np.ceil(n * s / 80.0)), 2) for n, s in zip(arr.shape, sp))
    field = ndimage.zoom(rng.standard_normal(coarse), np.asarray(arr.shape) / np.asarray(coarse), order=3,
                         mode="nearest")[: arr.shape[0], : arr.shape[1], : arr.shape[2]]
    field = ndimage.gaussian_filter(field, 2.0)
    field = (field - field.mean()) / max(float(field.std()), 1e-6)
    out = sitk.GetImageFromArray((arr * np.exp(strength * field)).astype(np.float32))
    out.CopyInformation(image)
    return out


def clinical_acquisition(images: dict[str, sitk.Image], seg: sitk.Image, rng: np.random.Generator,
                         skull: sitk.Image | None = None, spacing_range: tuple[float, float] = (2.0, 6.0),
                         max_rotation_deg: float = 6.0, max_shift_mm: float = 6.0, max_tilt_deg: float = 25.0,
                         bias_strength: tuple[float, float] = (0.05, 0.25),
                         background_noise: bool = True) -> tuple[dict[str, sitk.Image], sitk.Image, dict[str, Any]]:
    """Draw a clinical acquisition of an aligned case.

    Each series gets: the head tissues of ``skull`` painted on (when given), a multiplicative bias field, a
    scanner-like intensity range (a random scale, stored as int16-like values), a small rigid head motion,
    and its own grid: an oblique plane (up to ``max_tilt_deg`` from an axial, coronal or sagittal
    orientation) with in-plane spacing 0.5-1 x the slice spacing and slice spacing in ``spacing_range``.
    Thick slices are simulated by smoothing along the slice axis before sampling (slice profile).

    Args:
        images: ``{modality: image}`` on one aligned grid (skull-stripped BraTS-like).
        seg: label map on the same grid.
        rng: random generator.
        skull: head tissue labels from :func:`synthetic_head` (None: the series stay skull-stripped).

    Returns:
        ``(series, seg_on_t1c, params)``: the series on their own grids, the label map on the grid of the
        t1c series (else of the first series), and the drawn parameters (JSON-serialisable), including each
        series' rigid transform (``fixed -> moving`` Euler parameters and centre).
    """
    if not images:
        raise ValueError("clinical_acquisition needs at least one image.")
    codes = list(images)
    first = images[codes[0]]
    head = skull if skull is not None else sitk.Cast(first > 0, sitk.sitkUInt8)
    points = _points(head if skull is not None else first)
    centre = (points.min(0) + points.max(0)) / 2
    series: dict[str, sitk.Image] = {}
    params: dict[str, Any] = {"skull": skull is not None, "series": {}}
    ref_code = "t1c" if "t1c" in images else codes[0]
    ref_transform: sitk.Euler3DTransform | None = None
    ref_grid: sitk.Image | None = None
    for code in codes:
        img = sitk.Cast(images[code], sitk.sitkFloat32)
        if skull is not None:
            img = paint_head(img, skull, code, rng)
        strength = float(rng.uniform(*bias_strength))
        img = _bias(img, rng, strength)
        angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
        shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
        tf = sitk.Euler3DTransform()
        tf.SetCenter(centre.tolist())
        tf.SetRotation(*[math.radians(float(a)) for a in angles])
        tf.SetTranslation(shift.tolist())
        plane = int(rng.integers(3))  # slice axis: 0 sagittal (x), 1 coronal (y), 2 axial (z)
        base = np.eye(3)[:, [(plane + 1) % 3, (plane + 2) % 3, plane]]
        tilt = rng.uniform(-max_tilt_deg, max_tilt_deg, 3) * np.array([1.0, 1.0, 0.5])
        direction = _rotation(tilt) @ base
        if np.linalg.det(direction) < 0:
            direction[:, 0] *= -1
        thick = float(rng.uniform(*spacing_range))
        inplane = float(np.clip(thick * rng.uniform(0.3, 1.0), 0.8, thick))
        spacing = np.array([inplane, inplane, thick])
        moved = points @ np.asarray(tf.GetMatrix()).reshape(3, 3).T + (np.asarray(tf.TransformPoint(
            [0.0, 0.0, 0.0])))
        grid = series_grid(moved, direction, spacing)
        sigma = np.sqrt(np.maximum(spacing ** 2 - np.asarray(img.GetSpacing()).min() ** 2, 0)) / 2.355
        world_sigma = np.abs(direction) @ sigma  # approximate slice profile along the world axes
        smooth = sitk.SmoothingRecursiveGaussian(img, [float(max(s, 1e-3)) for s in world_sigma])
        out = sitk.Resample(smooth, grid, tf.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        arr = sitk.GetArrayFromImage(out)
        top = float(np.percentile(arr[arr > 0], 99)) if (arr > 0).any() else 1.0
        scale = float(rng.uniform(300, 3000)) / max(top, 1e-6)
        arr *= scale
        if background_noise and skull is not None:
            sigma_n = 0.01 * float(np.percentile(arr[arr > 0], 90)) if (arr > 0).any() else 1.0
            arr = np.hypot(arr + sigma_n * rng.standard_normal(arr.shape), sigma_n * rng.standard_normal(arr.shape))
        final = sitk.GetImageFromArray(np.rint(np.clip(arr, 0, 32767)).astype(np.int16))
        final.CopyInformation(grid)
        series[code] = final
        params["series"][code] = {
            "rotation_deg": angles.round(3).tolist(), "translation_mm": shift.round(3).tolist(),
            "center_mm": centre.round(3).tolist(), "euler_parameters": list(tf.GetParameters()),
            "direction": direction.round(6).flatten().tolist(), "spacing_mm": spacing.round(3).tolist(),
            "slice_axis": "xyz"[plane], "tilt_deg": tilt.round(2).tolist(), "bias_strength": round(strength, 3),
            "intensity_scale": scale,
        }
        if code == ref_code:
            ref_transform, ref_grid = tf, final
    assert ref_transform is not None and ref_grid is not None
    seg_out = sitk.Resample(seg, ref_grid, ref_transform.GetInverse(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    params["label_grid"] = ref_code
    return series, seg_out, params


def transform_from_params(entry: dict[str, Any]) -> sitk.Euler3DTransform:
    """The ``fixed -> moving`` transform of one series from ``params['series'][code]``."""
    tf = sitk.Euler3DTransform()
    tf.SetCenter(entry["center_mm"])
    tf.SetParameters(entry["euler_parameters"])
    return tf


__all__ = ["clinical_acquisition", "synthetic_head", "paint_head", "series_grid", "transform_from_params",
           "HEAD_TISSUES"]
