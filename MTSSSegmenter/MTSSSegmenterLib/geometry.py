"""Mapping volumes into the network's canonical frame and back onto the user's grid.

The network works on axis-aligned arrays in a canonical orientation (LPS, i.e. ITK/DICOM axes, stored
by SimpleITK as ``(z, y, x)`` arrays). Whenever the reference volume's direction matrix is a signed
permutation (any voxel order, flipped axes), going there and back is an exact permutation/flip of the
voxels: no interpolation. An oblique volume is resampled onto an axis-aligned grid that covers it; going
back is then a resampling too, whose error :func:`roundtrip_error` measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputError

CANONICAL = "LPS"
_TOL = 1e-4


@dataclass(frozen=True)
class Grid:
    """The geometry of a 3-D image: size (x, y, z), spacing, origin and direction, as ITK stores them."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def reference_image(self, pixel: int = sitk.sitkUInt8) -> sitk.Image:
        return self.apply(sitk.Image(list(self.size), pixel))

    def same_as(self, other: Grid, tol: float = _TOL) -> bool:
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, atol=tol, rtol=0)
                and np.allclose(self.origin, other.origin, atol=tol * 10, rtol=0)
                and np.allclose(self.direction, other.direction, atol=tol, rtol=0))

    def corners(self) -> np.ndarray:
        """Physical (LPS) positions of the 8 corner voxel centres, shape (8, 3)."""
        d = np.asarray(self.direction).reshape(3, 3) * np.asarray(self.spacing)
        idx = np.array([[i, j, k] for i in (0, self.size[0] - 1) for j in (0, self.size[1] - 1)
                        for k in (0, self.size[2] - 1)], dtype=np.float64)
        return idx @ d.T + np.asarray(self.origin)


def is_axis_permutation(direction: tuple[float, ...] | np.ndarray, tol: float = _TOL) -> bool:
    """True when the direction matrix only permutes and flips axes (no obliquity)."""
    d = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    return bool(np.all((np.abs(d) < tol) | (np.abs(d - 1.0) < tol)) and np.allclose(d.sum(0), 1.0, atol=tol))


@dataclass(frozen=True)
class CanonicalFrame:
    """How the reference grid was mapped to the canonical grid, for the way back."""

    original: Grid
    canonical: Grid
    exact: bool  # True: a permutation/flip of voxels; False: a resampling (oblique input)
    orientation: str  # the original orientation code (e.g. 'RAS', 'LPI') when exact


def to_canonical(image: sitk.Image, max_oblique_spacing: float | None = None) -> tuple[sitk.Image, CanonicalFrame]:
    """Reorient (exactly) or resample (oblique) ``image`` onto an axis-aligned LPS grid."""
    original = Grid.of(image)
    if is_axis_permutation(original.direction):
        orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(original.direction)
        canon = sitk.DICOMOrient(image, CANONICAL)
        return canon, CanonicalFrame(original, Grid.of(canon), True, orientation)
    # Oblique: an identity-direction grid covering the image, spacing from the nearest axes.
    d = np.asarray(original.direction).reshape(3, 3)
    nearest = np.argmax(np.abs(d), axis=1)  # world axis i is closest to voxel axis nearest[i]
    spacing = np.asarray(original.spacing)[nearest]
    if max_oblique_spacing is not None:
        spacing = np.minimum(spacing, max_oblique_spacing)
    corners = original.corners()
    lo, hi = corners.min(0), corners.max(0)
    size = np.maximum(np.ceil((hi - lo) / spacing).astype(int) + 1, 2)
    grid = Grid(tuple(int(s) for s in size), tuple(float(s) for s in spacing), tuple(lo.tolist()),
                tuple(np.eye(3).flatten().tolist()))
    canon = sitk.Resample(image, grid.reference_image(sitk.sitkFloat32), sitk.Transform(), sitk.sitkLinear, 0.0,
                          sitk.sitkFloat32)
    return canon, CanonicalFrame(original, grid, False, "oblique")


def onto_canonical(image: sitk.Image, frame: CanonicalFrame, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """Map another image that lies on the frame's original grid onto the same canonical grid."""
    if frame.exact:
        return sitk.DICOMOrient(image, CANONICAL)
    return sitk.Resample(image, frame.canonical.reference_image(sitk.sitkFloat32), sitk.Transform(), interpolator,
                         0.0, sitk.sitkFloat32)


def from_canonical(image: sitk.Image, frame: CanonicalFrame, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """Map an image on the canonical grid back onto the original grid (same size/spacing/origin/direction)."""
    if frame.exact:
        back = sitk.DICOMOrient(image, frame.orientation)
        if tuple(back.GetSize()) != frame.original.size:
            raise RuntimeError(f"Reorientation gave size {back.GetSize()}, expected {frame.original.size}.")
        # The reorientation is exact; copy the header so floating-point rounding cannot creep in.
        return frame.original.apply(back)
    return sitk.Resample(image, frame.original.reference_image(image.GetPixelID()), sitk.Transform(),
                         interpolator, 0.0, image.GetPixelID())


def resample_onto(image: sitk.Image, reference: sitk.Image, interpolator: int = sitk.sitkLinear,
                  transform: sitk.Transform | None = None) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid in physical space (optionally through a transform)."""
    return sitk.Resample(image, reference, transform or sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)


def overlap_fraction(a: Grid, b: Grid) -> float:
    """Fraction of ``a``'s bounding box (physical, axis-aligned) covered by ``b``'s."""
    ca, cb = a.corners(), b.corners()
    lo = np.maximum(ca.min(0), cb.min(0))
    hi = np.minimum(ca.max(0), cb.max(0))
    inter = np.prod(np.clip(hi - lo, 0, None))
    vol = np.prod(np.maximum(ca.max(0) - ca.min(0), 1e-6))
    return float(inter / vol)


def check_overlap(images: dict[str, sitk.Image], reference: str, minimum: float = 0.2) -> None:
    """Raise a clear error when an input does not overlap the reference in physical space."""
    ref = Grid.of(images[reference])
    for code, img in images.items():
        if code == reference:
            continue
        frac = overlap_fraction(ref, Grid.of(img))
        if frac < minimum:
            raise InputError(
                f"Volumes '{code}' and '{reference}' do not overlap in physical space "
                f"({100 * frac:.0f}% of '{reference}' is covered by '{code}'). They do not seem to be of the same "
                "scan session or patient position; check the files (or register them first)."
            )


def roundtrip_error(image: sitk.Image) -> float:
    """Mean absolute difference after canonical mapping and back (0 for permutation/flip directions)."""
    canon, frame = to_canonical(image)
    back = from_canonical(sitk.Cast(canon, sitk.sitkFloat32), frame)
    a = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    b = sitk.GetArrayFromImage(back)
    return float(np.mean(np.abs(a - b)))
