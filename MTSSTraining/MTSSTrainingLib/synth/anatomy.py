"""Real brain anatomy for synthetic cases: the MNI152 2009 templates, varied per case.

The nilearn wheel ships the ICBM 2009c nonlinear symmetric template (Fonov et al., NeuroImage 2011): a
skull-stripped T1 and grey- and white-matter probability maps on a 197x233x189 1 mm grid. CSF is the
brain mask minus GM and WM. The maps are placed in the BraTS frame (240x240x155, 1 mm, LPS voxel
order, the affine of the BraTS 2023 files) and, per case, moved by a random global affine, a smooth
elastic deformation, ventricle enlargement, cortical atrophy and the mass effect of the tumours.

Coordinates: "frame mm" are the voxel indices of the 1 mm BraTS grid (x to the patient's left, y to the
back, z up). The template is read through one backward map, frame mm of the case -> frame mm of the
undeformed template, drawn on a 4 mm grid and interpolated; the tissue maps are then gathered once.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from MTSSSegmenterLib.errors import InputError

from .fields import AxisGrid, covering_grid, resample, smooth_noise

logger = logging.getLogger(__name__)

FRAME_MM: tuple[int, int, int] = (240, 240, 155)
"""Extent of the BraTS frame in mm (= voxels at 1 mm)."""
# The brain centre of the template, in frame mm (affine changes and mass effect pivot here).
BRAIN_CENTRE: tuple[float, float, float] = (119.0, 122.0, 78.0)
# Frame x of the template's mid-sagittal plane (MNI x = 0).
MIDLINE_X = 119.0
# Template voxel (a, b, c) of frame mm (x, y, z): a = 217 - x, b = 239 - y, c = z + 8.
_TEMPLATE_FROM_FRAME = (217.0, 239.0, 8.0)
_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Channels of the packed template (one uint8 each, eight per voxel = one uint64).
CHANNELS: tuple[str, ...] = ("gm", "wm", "csf", "t1", "pvent", "vent", "depth", "vessel")
# The first four channels are interpolated trilinearly, the others taken from the nearest voxel.
OUTPUT_CHANNELS: tuple[str, ...] = ("gm", "wm", "csf", "t1", "pvent", "vessel")
"""The channels a case needs on its grid (the others serve lesion placement in the template)."""


@dataclass(frozen=True)
class OutputGrid:
    """The voxel grid of a case: the BraTS frame at ``spacing`` mm."""

    spacing: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(math.ceil(n / self.spacing - 1e-6) for n in FRAME_MM)  # type: ignore[return-value]

    @property
    def axes(self) -> AxisGrid:
        o = (self.spacing - 1.0) / 2.0
        return AxisGrid((o, o, o), (self.spacing,) * 3, self.shape)  # type: ignore[arg-type]

    @property
    def affine(self) -> np.ndarray:
        """RAS affine: the BraTS 2023 files' ``diag(-1, -1, 1)`` with origin ``(0, 239, 0)`` at 1 mm."""
        s, o = self.spacing, (self.spacing - 1.0) / 2.0
        return np.array([[-s, 0, 0, -o], [0, -s, 0, 239.0 - o], [0, 0, s, o], [0, 0, 0, 1]], dtype=np.float64)


@dataclass
class Template:
    """The packed, cropped MNI152 template and the places where lesions may start.

    Attributes:
        packed: uint64 array, eight uint8 channels per voxel (see ``CHANNELS``), on the cropped grid.
        linear: uint32 array, the first four channels (those interpolated trilinearly).
        crop: template voxel index of ``packed[0, 0, 0]``.
        seeds: candidate lesion centres by region name, (N, 3) frame mm of the undeformed template.
        vent_push: (3, ...) unit-ish vectors pointing into the ventricles on ``push_grid`` (frame mm).
        push_grid: the 4 mm grid of ``vent_push``.
        bounds: (lo, hi) frame mm of the template brain's bounding box.
    """

    packed: np.ndarray
    linear: np.ndarray
    crop: tuple[int, int, int]
    seeds: dict[str, np.ndarray]
    vent_push: np.ndarray
    push_grid: AxisGrid
    bounds: tuple[np.ndarray, np.ndarray]


def template_dir() -> Path:
    """Folder of the MNI152 files: ``$MTSS_MNI_DIR`` if set, else the data folder of the installed nilearn
    package (found without importing nilearn, which is slow to import)."""
    override = os.environ.get("MTSS_MNI_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("The synthetic cohort needs the MNI152 templates of the nilearn package: "
                         "pip install 'nilearn>=0.10' (or pip install 'mtss[training]'), or set MTSS_MNI_DIR "
                         f"to a folder holding {', '.join(_TEMPLATE_FILES.values())}.")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def read_template_file(path: Path) -> np.ndarray:
    """Read one of the uint8 MNI152 NIfTI-1 files (gzip) with numpy alone, so that generating cases in
    memory needs neither nibabel nor SimpleITK (e.g. on a GPU machine with a bare environment)."""
    if not path.is_file():
        raise InputError(f"MNI152 template '{path}' is missing; reinstall nilearn (pip install 'nilearn>=0.10') "
                         "or point MTSS_MNI_DIR to a folder with the three template files.")
    raw = gzip.decompress(path.read_bytes())
    sizeof_hdr, = struct.unpack_from("<i", raw, 0)
    if sizeof_hdr != 348:
        raise InputError(f"'{path}' is not a little-endian NIfTI-1 file.")
    dims = struct.unpack_from("<8h", raw, 40)
    datatype, = struct.unpack_from("<h", raw, 70)
    offset, = struct.unpack_from("<f", raw, 108)
    if dims[0] != 3 or datatype != 2:
        raise InputError(f"'{path}' is not a 3-D uint8 volume (dims {dims}, datatype {datatype}).")
    shape = tuple(int(n) for n in dims[1:4])
    data = np.frombuffer(raw, np.uint8, count=int(np.prod(shape)), offset=int(offset))
    return data.reshape(shape, order="F")


def _erode6(mask: np.ndarray) -> np.ndarray:
    """Binary erosion with the 6-neighbourhood (fast, by slicing)."""
    out = mask.copy()
    for d in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[d], hi[d] = slice(0, -1), slice(1, None)
        out[tuple(lo)] &= mask[tuple(hi)]
        out[tuple(hi)] &= mask[tuple(lo)]
        edge = [slice(None)] * 3
        edge[d] = slice(0, 1)
        out[tuple(edge)] = False
        edge[d] = slice(-1, None)
        out[tuple(edge)] = False
    return out


def _dilate6(mask: np.ndarray) -> np.ndarray:
    """Binary dilation with the 6-neighbourhood (fast, by slicing)."""
    out = mask.copy()
    for d in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[d], hi[d] = slice(0, -1), slice(1, None)
        out[tuple(lo)] |= mask[tuple(hi)]
        out[tuple(hi)] |= mask[tuple(lo)]
    return out


def _depth(mask: np.ndarray) -> np.ndarray:
    """Distance (mm) to the outside of the brain: exact 1 and 2 mm next to the surface, 2 mm EDT deeper."""
    coarse = ndimage.distance_transform_edt(mask[::2, ::2, ::2]).astype(np.float32) * 2.0
    depth = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    inner1 = _erode6(mask)
    inner2 = _erode6(inner1)
    depth = np.maximum(depth, 3.0)
    depth[mask & ~inner2] = 2.0
    depth[mask & ~inner1] = 1.0
    depth[~mask] = 0.0
    return depth


def _frame_of_template(abc: np.ndarray) -> np.ndarray:
    """Frame mm of template voxel indices (a, b, c) along the last axis."""
    t = np.asarray(_TEMPLATE_FROM_FRAME)
    return np.stack([t[0] - abc[..., 0], t[1] - abc[..., 1], abc[..., 2] - t[2]], axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Load, derive and pack the template once per process (about 1.5 s)."""
    folder = template_dir()
    raw = {key: read_template_file(folder / name).astype(np.float32) / 255.0 for key, name in _TEMPLATE_FILES.items()}
    gm, wm, t1 = raw["gm"], raw["wm"], raw["t1"]
    mask = (t1 > 0) | (gm + wm > 0.5)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - 3, 0)
    hi = np.minimum(idx.max(0) + 4, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    gm, wm, csf, t1, mask = gm[box], wm[box], csf[box], t1[box], mask[box]
    depth = _depth(mask)
    mni = _mni_coordinates(mask.shape, lo)
    vent = _ventricles(csf, depth, mni)
    vessel = _vessels(csf, depth, vent, mni)
    # depth channel: 0 far outside, 1 on the one-voxel shell around the brain, 1 + mm inside
    shell = _dilate6(mask) & ~mask
    depth_code = np.where(mask, np.minimum(depth + 1.0, 255.0), shell.astype(np.float32))
    # periventricular white matter (where FLAIR caps and rims show in older brains)
    pvent = np.clip(ndimage.gaussian_filter(vent.astype(np.float32), 1.5) * 3.0, 0, 1) * (1 - vent) * wm
    channels = {"gm": gm, "wm": wm, "csf": csf, "pvent": pvent, "vent": vent.astype(np.float32),
                "depth": depth_code / 255.0, "t1": t1, "vessel": vessel}
    packed = np.empty(mask.shape + (8,), dtype=np.uint8)
    for c, name in enumerate(CHANNELS):
        packed[..., c] = np.clip(np.rint(channels[name] * 255.0), 0, 255).astype(np.uint8)
    seeds = _seed_regions(gm, wm, csf, depth, mni, lo)
    push, push_grid = _ventricle_push(vent, lo)
    frame_corners = _frame_of_template(np.array([lo, hi - 1], dtype=np.float32))
    bounds = (frame_corners.min(0), frame_corners.max(0))
    logger.debug("MNI152 template loaded: crop %s, %d brain voxels", mask.shape, int(mask.sum()))
    linear = np.ascontiguousarray(packed[..., :4]).view(np.uint32)[..., 0]
    return Template(packed.view(np.uint64)[..., 0], linear, tuple(int(v) for v in lo), seeds, push, push_grid,
                    bounds)  # type: ignore[arg-type]


def _mni_coordinates(shape: tuple[int, ...], lo: np.ndarray) -> list[np.ndarray]:
    """MNI world mm (x right, y front, z up) along each axis of the cropped grid, as broadcastable arrays."""
    origin = (-98.0, -134.0, -72.0)
    out = []
    for d in range(3):
        v = (np.arange(shape[d]) + lo[d] + origin[d]).astype(np.float32)
        s = [1, 1, 1]
        s[d] = -1
        out.append(v.reshape(s))
    return out


def _ventricles(csf: np.ndarray, depth: np.ndarray, mni: list[np.ndarray]) -> np.ndarray:
    x, y, z = mni
    central = (np.abs(x) < 32) & (y > -50) & (y < 35) & (z > -12) & (z < 38)
    cand = (csf > 0.5) & (depth > 10) & central
    lab, n = ndimage.label(cand)
    if n == 0:
        return cand
    sizes = ndimage.sum(cand, lab, range(1, n + 1))
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:3] if sizes[i] > 500]
    return ndimage.binary_dilation(np.isin(lab, keep)) & (csf > 0.35)


def _vessels(csf: np.ndarray, depth: np.ndarray, vent: np.ndarray, mni: list[np.ndarray]) -> np.ndarray:
    """Normal enhancing structures for T1c: cortical veins, the dural sinuses, the falx, the choroid plexus."""
    rng = np.random.default_rng(20240917)  # fixed: the template's vessels; cases differ by deformation
    x, y, z = mni
    n1 = smooth_noise(rng, csf.shape, 2.2)
    n2 = smooth_noise(rng, csf.shape, 2.2)
    tube = np.exp(-(n1 * n1 + n2 * n2) / (2 * 0.18**2))
    sulcal = ndimage.gaussian_filter(csf, 0.7) * (depth < 22)
    vessel = tube * np.clip(sulcal * 1.6, 0, 1)
    sinus = _dural_sinuses(depth, csf, mni)
    choroid = vent & (y > -48) & (y < -22) & (z > -2) & (z < 24) & (np.abs(x) > 12)
    choroid = _erode6(_erode6(choroid)) & (n1 > -0.3)
    vessel = np.maximum(vessel, 0.9 * sinus)
    vessel = np.maximum(vessel, 0.45 * np.clip(_falx(csf, vent, mni) * 1.5, 0, 1))
    vessel = np.maximum(vessel, 0.5 * ndimage.gaussian_filter(choroid.astype(np.float32), 0.8))
    return vessel.astype(np.float32)


def _tube(mni: list[np.ndarray], points: list[tuple[float, float, float]], radius: float) -> np.ndarray:
    """Voxels within ``radius`` mm of a polyline through ``points`` (MNI mm)."""
    x, y, z = mni
    dist = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), np.inf, dtype=np.float32)
    for a, b in zip(points[:-1], points[1:]):
        a_, d = np.asarray(a, np.float32), np.asarray(b, np.float32) - np.asarray(a, np.float32)
        t = np.clip(((x - a_[0]) * d[0] + (y - a_[1]) * d[1] + (z - a_[2]) * d[2]) / float(d @ d), 0, 1)
        dist = np.minimum(dist, np.sqrt((x - a_[0] - t * d[0]) ** 2 + (y - a_[1] - t * d[1]) ** 2
                                        + (z - a_[2] - t * d[2]) ** 2))
    return dist < radius


def _dural_sinuses(depth: np.ndarray, csf: np.ndarray, mni: list[np.ndarray]) -> np.ndarray:
    """The dural venous sinuses as BraTS brain masks keep them: bright on T1c, at the brain's surface.

    The superior sagittal sinus is a triangle (base outwards) on the midline that widens and thickens from
    front to back (about 5 mm wide in front, 16 mm at the back) and curves down the occipital pole to the
    confluence; the transverse sinuses run from there along the tentorium, the straight sinus from the vein
    of Galen to the confluence. Real skull-stripped scans show all of them bright on T1c (the default student
    took the posterior sagittal sinus for tumour before they were drawn).
    """
    x, y, z = mni
    back = np.clip((50.0 - y) / 150.0, 0.0, 1.0)  # 0 in front, 1 at the occipital pole
    half_width = 3.5 + 5.0 * back
    thickness = 5.0 + 6.0 * back
    sss = (depth > 0) & (depth < thickness) & (np.abs(x) < half_width * (1.0 - depth / (thickness + 1.0)))
    sss &= (z > -4) & (y < 70)
    confluence = _tube(mni, [(0.0, -99.0, 3.0), (0.0, -97.0, -3.0)], 7.0) & (depth > 0) & (depth < 10)
    transverse = np.zeros_like(sss)
    for side in (-1.0, 1.0):
        path = [(0.0, -98.0, 0.0), (side * 22, -94.0, -6.0), (side * 40, -82.0, -12.0), (side * 52, -62.0, -18.0)]
        transverse |= _tube(mni, path, 4.5) & (depth > 0) & (depth < 6)
    straight = _tube(mni, [(0.0, -50.0, 6.0), (0.0, -75.0, 4.0), (0.0, -97.0, 1.0)], 2.5) & (csf > 0.05)
    return sss | confluence | transverse | straight


def _falx(csf: np.ndarray, vent: np.ndarray, mni: list[np.ndarray]) -> np.ndarray:
    """The falx cerebri: a thin dural sheet in the interhemispheric fissure above the corpus callosum.

    Dura enhances mildly on T1c, so real skull-stripped scans show a bright line along the whole midline on
    the upper slices (with the sagittal sinus over it at the vertex); the default student trained without
    it marked 13 mL at the vertex midline of the real case as tumour.
    """
    x, y, z = mni
    sheet = (np.abs(x) < 1.5) & (csf > 0.35) & (z > 12) & (y > -95) & (y < 60) & ~_dilate6(vent)
    return ndimage.gaussian_filter(sheet.astype(np.float32), 0.6)


def _seed_regions(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, depth: np.ndarray,
                  mni: list[np.ndarray], lo: np.ndarray) -> dict[str, np.ndarray]:
    """Candidate lesion centres per anatomical region (frame mm of the undeformed template)."""
    x, y, z = mni
    ax = np.abs(x)
    supra = z > -8
    infra = (z < -18) & (y < -42)
    regions = {
        "deep_wm": (wm > 0.75) & (depth > 14) & supra & (ax > 10),
        "lobar_wm": (wm > 0.6) & (depth > 8) & supra & (ax > 12),
        "gw_junction": (gm > 0.3) & (gm < 0.7) & (wm > 0.25) & (depth > 5) & (supra | infra),
        "brainstem": (ax < 7) & (y > -38) & (y < -14) & (z > -44) & (z < -14) & (gm + wm > 0.85),
        "cerebellum": infra & (ax < 30) & (depth > 10) & (gm + wm > 0.8),
        "thalamus": (ax > 5) & (ax < 20) & (y > -30) & (y < -8) & (z > -2) & (z < 16) & (gm + wm > 0.85),
        "hemisphere": (gm + wm > 0.8) & (depth > 12) & supra & (ax > 12),
        "convexity": (depth >= 1) & (depth <= 2.5) & (z > -5) & (ax > 18),
        "parasagittal": (depth >= 1) & (depth <= 2.5) & (ax < 14) & (z > 25),
        "skull_base": (depth >= 1) & (depth <= 2.5) & (z < -8) & (z > -40) & (y > -25) & (ax > 15),
        "posterior_fossa": (depth >= 1) & (depth <= 2.5) & infra & (ax > 15),
    }
    out = {}
    for name, region in regions.items():
        idx = np.argwhere(region)
        if len(idx) == 0:  # pragma: no cover - the template is fixed
            raise RuntimeError(f"template region '{name}' is empty")
        out[name] = _frame_of_template(idx.astype(np.float32) + lo)
    return out


def _ventricle_push(vent: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, AxisGrid]:
    """Unit-scaled vectors pointing into the ventricles, on a 4 mm grid of frame mm."""
    soft = ndimage.gaussian_filter(vent[::2, ::2, ::2].astype(np.float32), 2.0)
    grads = np.stack(np.gradient(soft))  # d/da, d/db, d/dc at 2 mm
    grads[0] *= -1.0  # frame x = 217 - a, frame y = 239 - b
    grads[1] *= -1.0
    mag = np.sqrt((grads**2).sum(0))
    grads /= max(float(mag.max()), 1e-6)
    # 2 mm template grid -> frame mm grid, reversed along x and y
    grads = grads[:, ::-1, ::-1, :]
    n = grads.shape[1:]
    corner = _frame_of_template(np.array([lo[0] + 2 * (n[0] - 1), lo[1] + 2 * (n[1] - 1), lo[2]], np.float32))
    grid = AxisGrid(tuple(float(v) for v in corner), (2.0, 2.0, 2.0), n)  # type: ignore[arg-type]
    return np.ascontiguousarray(grads, dtype=np.float32), grid


@dataclass
class AnatomyParams:
    """How one case's brain differs from the template.

    Attributes:
        matrix: 3x3 linear part (rotation and scaling) of the forward affine template -> case.
        translation: frame mm added after the linear part.
        elastic: (3, ...) backward displacement (mm) on ``grid``.
        grid: the 4 mm grid of the backward map.
        ventricle_mm: how far the ventricle walls move out.
        atrophy: 0-1, how much sulci and the subarachnoid space widen (see ``_widen_sulci``).
    """

    matrix: np.ndarray
    translation: np.ndarray
    elastic: np.ndarray
    grid: AxisGrid
    ventricle_mm: float
    atrophy: float

    def forward(self, points: np.ndarray) -> np.ndarray:
        """Approximate case position (frame mm) of undeformed template points (N, 3)."""
        c = np.asarray(BRAIN_CENTRE, np.float32)
        return (points - c) @ self.matrix.T.astype(np.float32) + c + self.translation.astype(np.float32)

    def midline(self) -> tuple[np.ndarray, np.ndarray]:
        """The mid-sagittal plane in case frame mm: (unit normal, point)."""
        normal = np.linalg.inv(self.matrix).T @ np.array([1.0, 0.0, 0.0])
        normal /= np.linalg.norm(normal)
        point = self.forward(np.array([[MIDLINE_X, BRAIN_CENTRE[1], BRAIN_CENTRE[2]]], np.float32))[0]
        return normal.astype(np.float32), point

    def summary(self) -> dict:
        scale = np.cbrt(abs(np.linalg.det(self.matrix)))
        return {"scale": round(float(scale), 3), "ventricle_mm": round(self.ventricle_mm, 2),
                "atrophy": round(self.atrophy, 3), "elastic_mm": round(float(np.abs(self.elastic).max()), 2)}


def rotation(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrix from angles about x, y, z (degrees)."""
    a, b, c = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sample_anatomy(rng: np.random.Generator, scale_range: tuple[float, float], atrophy_range: tuple[float, float],
                   ventricle_range: tuple[float, float]) -> AnatomyParams:
    """Draw one case's global affine, elastic field, ventricle enlargement and atrophy."""
    angles = rng.normal(0.0, [6.0, 4.0, 5.0])
    iso = rng.uniform(*scale_range)
    scale = iso * rng.uniform(0.94, 1.06, 3)
    matrix = rotation(angles) @ np.diag(scale)
    translation = rng.normal(0.0, [3.0, 4.0, 3.0])
    grid = covering_grid((0, 0, 0), np.asarray(FRAME_MM, float) - 1.0, 4.0)
    amp = rng.uniform(0.5, 2.2)  # mm, std of each displacement component
    elastic = np.stack([smooth_noise(rng, grid.shape, 3.0) for _ in range(3)]) * np.float32(amp)
    return AnatomyParams(matrix, translation, elastic, grid, float(rng.uniform(*ventricle_range)),
                         float(rng.uniform(*atrophy_range)))


def backward_map(params: AnatomyParams, template: Template, extra: np.ndarray | None = None) -> np.ndarray:
    """(3, ...) frame mm of the undeformed template for each sample of ``params.grid``.

    ``extra`` is a further backward displacement on the same grid (the tumours' mass effect).
    """
    grid = params.grid
    u = np.stack(np.meshgrid(*[grid.axis(d) for d in range(3)], indexing="ij"))
    c = np.asarray(BRAIN_CENTRE, np.float32).reshape(3, 1, 1, 1)
    inv = np.linalg.inv(params.matrix).astype(np.float32)
    t = params.translation.astype(np.float32).reshape(3, 1, 1, 1)
    src = np.einsum("ij,j...->i...", inv, u - c - t) + c
    src += params.elastic
    if extra is not None:
        src += extra
    if params.ventricle_mm > 0:
        pts = src.reshape(3, -1)
        push_idx = [(pts[d] - template.push_grid.origin[d]) / template.push_grid.step[d] for d in range(3)]
        push = np.stack([ndimage.map_coordinates(template.vent_push[d], push_idx, order=1, mode="nearest")
                         for d in range(3)]).reshape(src.shape)
        src += push * np.float32(params.ventricle_mm)
    return src.astype(np.float32)


@dataclass
class Tissues:
    """Tissue maps of one case on a box of its output grid (float32, 0..1 unless stated).

    Attributes:
        box: the sub-grid of the output grid the maps cover (all brain voxels lie inside).
        lo: index of the box's first voxel in the output grid.
        maps: channel name (``CHANNELS``) -> array; ``depth`` in mm.
    """

    box: AxisGrid
    lo: tuple[int, int, int]
    maps: dict[str, np.ndarray]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(self.lo[d], self.lo[d] + self.box.shape[d]) for d in range(3))  # type: ignore[return-value]

    def crop(self, mask: np.ndarray, margin: int = 1) -> tuple[Tissues, tuple[slice, ...]]:
        """The tissues on the bounding box of ``mask`` (box-shaped) plus ``margin`` voxels, and its slices."""
        idx = np.argwhere(mask)
        if len(idx) == 0:
            return self, tuple(slice(0, n) for n in self.box.shape)
        lo = np.maximum(idx.min(0) - margin, 0)
        hi = np.minimum(idx.max(0) + 1 + margin, self.box.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        maps = {k: np.ascontiguousarray(v[sl]) for k, v in self.maps.items()}
        box = self.box.sub(tuple(int(v) for v in lo), tuple(int(v) for v in hi))  # type: ignore[arg-type]
        return Tissues(box, tuple(int(a + b) for a, b in zip(self.lo, lo)), maps), sl  # type: ignore[arg-type]


def _template_index(src: np.ndarray, template: Template) -> list[np.ndarray]:
    """Fractional index in the cropped template grid of frame mm points (3, ...), clipped inside it."""
    t = _TEMPLATE_FROM_FRAME
    out = []
    for d, (sign, off) in enumerate(((-1.0, t[0]), (-1.0, t[1]), (1.0, t[2]))):
        f = src[d].astype(np.float32, copy=True).reshape(-1)
        f *= np.float32(sign)
        f += np.float32(off - template.crop[d])
        np.clip(f, 0.0, template.packed.shape[d] - 1.001, out=f)
        out.append(f)
    return out


def brain_box(params: AnatomyParams, template: Template, src_map: np.ndarray, grid: AxisGrid,
              margin_mm: float = 6.0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Index range of ``grid`` that holds the deformed brain, found on the 4 mm backward map."""
    idx = _template_index(src_map, template)
    near = template.packed.reshape(-1)[np.ravel_multi_index([np.rint(f).astype(np.intp) for f in idx],
                                                            template.packed.shape)]
    inside = (near.view(np.uint8).reshape(-1, 8)[:, CHANNELS.index("depth")] > 0).reshape(src_map.shape[1:])
    cells = np.argwhere(inside)
    g = params.grid
    if len(cells) == 0:  # pragma: no cover - the template always has a brain
        return grid.index_box(np.zeros(3), np.asarray(FRAME_MM, float))
    lo = np.asarray(g.origin) + cells.min(0) * np.asarray(g.step) - margin_mm
    hi = np.asarray(g.origin) + cells.max(0) * np.asarray(g.step) + margin_mm
    return grid.index_box(lo, hi)


def warp(template: Template, params: AnatomyParams, src_map: np.ndarray, grid: AxisGrid,
         lo: tuple[int, ...], hi: tuple[int, ...]) -> Tissues:
    """Gather the template channels at the case voxels ``grid[lo:hi]`` through the backward map.

    Voxels whose nearest template voxel is far outside the brain stay zero; the others get GM, WM, CSF
    and T1 by trilinear interpolation and the remaining channels from the nearest voxel.
    """
    box = grid.sub(lo, hi)  # type: ignore[arg-type]
    shape = template.packed.shape
    flat = template.packed.reshape(-1)
    idx = _template_index(np.stack([resample(src_map[d], params.grid, box) for d in range(3)]), template)
    near = flat[np.ravel_multi_index([np.rint(f).astype(np.intp) for f in idx], shape)].view(np.uint8)
    near = near.reshape(-1, 8)
    inside = np.flatnonzero(near[:, CHANNELS.index("depth")] > 0)
    near = near[inside]
    idx = [f[inside] for f in idx]
    n = len(inside)
    i0 = [np.floor(f).astype(np.intp) for f in idx]
    w = [f - i for f, i in zip(idx, i0)]
    base = (i0[0] * shape[1] + i0[1]) * shape[2] + i0[2]
    del i0, idx
    lin = template.linear.reshape(-1)
    acc = np.zeros((n, 4), np.float32)
    tmp = np.empty((n, 4), np.float32)
    for da in (0, 1):
        wa = w[0] if da else 1.0 - w[0]
        for db in (0, 1):
            wab = wa * (w[1] if db else 1.0 - w[1])
            for dc in (0, 1):
                wt = wab * (w[2] if dc else 1.0 - w[2])
                vals = np.take(lin, base + ((da * shape[1] + db) * shape[2] + dc)).view(np.uint8).reshape(n, 4)
                np.multiply(vals, wt[:, None], out=tmp)
                acc += tmp
    acc *= np.float32(1.0 / 255.0)
    if params.atrophy > 0:
        _widen_sulci(acc, params.atrophy)
    size = int(np.prod(box.shape))
    out: dict[str, np.ndarray] = {}
    for c, name in enumerate(CHANNELS):
        if name not in OUTPUT_CHANNELS:
            continue
        if c < 4:
            vals = acc[:, c]
        else:
            vals = near[:, c].astype(np.float32)
            if name == "depth":
                vals = np.maximum(vals - 1.0, 0.0)
            else:
                vals *= np.float32(1.0 / 255.0)
        full = np.zeros(size, np.float32)
        full[inside] = vals
        out[name] = full.reshape(box.shape)
    return Tissues(box, tuple(lo), out)  # type: ignore[arg-type]


def _widen_sulci(acc: np.ndarray, atrophy: float) -> None:
    """Atrophy in place on (n, 4) GM, WM, CSF, T1 fractions: CSF shares above 3 % are raised to the power
    ``1 - atrophy`` (sulci and the subarachnoid space widen) and GM and WM shrink to keep the total."""
    gm, wm, csf = acc[:, 0], acc[:, 1], acc[:, 2]
    total = gm + wm + csf
    share = csf / np.maximum(total, np.float32(1e-3))
    wide = np.clip((share - np.float32(0.03)) * np.float32(1 / 0.97), 0.0, 1.0) ** np.float32(1.0 - atrophy)
    np.maximum(wide, share, out=wide)
    keep = (1.0 - wide) / np.maximum(1.0 - share, np.float32(1e-3))
    gm *= keep
    wm *= keep
    acc[:, 2] = wide * total
