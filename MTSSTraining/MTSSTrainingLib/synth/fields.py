"""Random smooth fields and fast axis-aligned resampling for the synthetic cohort.

Everything smooth in a synthetic case (deformations, bias fields, texture, lesion shapes) is drawn on a
coarse grid fixed in millimetres and interpolated to the output voxels. Drawing on a grid fixed in mm
keeps a case the same anatomy at every ``--spacing`` (only voxel noise differs), and interpolating with
separable linear weights costs a few gathers per output voxel instead of a general ``map_coordinates``.

All arrays are float32; all grids are aligned with the axes of the case frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AxisGrid:
    """Sample positions of a regular 3-D grid, in frame millimetres, axis by axis.

    Attributes:
        origin: position (mm) of voxel 0 along each axis.
        step: spacing (mm) along each axis.
        shape: number of samples along each axis.
    """

    origin: tuple[float, float, float]
    step: tuple[float, float, float]
    shape: tuple[int, int, int]

    def axis(self, d: int) -> np.ndarray:
        """Positions (mm) of the samples along axis ``d``."""
        return (self.origin[d] + self.step[d] * np.arange(self.shape[d])).astype(np.float32)

    def sub(self, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> AxisGrid:
        """The sub-grid of voxels ``lo <= index < hi``."""
        return AxisGrid(
            tuple(self.origin[d] + self.step[d] * lo[d] for d in range(3)),  # type: ignore[arg-type]
            self.step,
            tuple(hi[d] - lo[d] for d in range(3)),  # type: ignore[arg-type]
        )

    def index_box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Index range ``[lo, hi)`` of the samples inside the box ``[lo_mm, hi_mm]``, clipped to the grid."""
        lo = [int(np.clip(np.ceil((lo_mm[d] - self.origin[d]) / self.step[d]), 0, self.shape[d])) for d in range(3)]
        hi = [int(np.clip(np.floor((hi_mm[d] - self.origin[d]) / self.step[d]) + 1, lo[d], self.shape[d]))
              for d in range(3)]
        return tuple(lo), tuple(hi)


def covering_grid(lo_mm: np.ndarray | tuple, hi_mm: np.ndarray | tuple, step: float) -> AxisGrid:
    """A grid of spacing ``step`` mm whose samples cover ``[lo_mm, hi_mm]`` with one sample to spare."""
    lo = np.asarray(lo_mm, dtype=np.float64) - step
    n = np.ceil((np.asarray(hi_mm, dtype=np.float64) + step - lo) / step).astype(int) + 1
    return AxisGrid(tuple(float(v) for v in lo), (float(step),) * 3, tuple(int(v) for v in n))  # type: ignore[arg-type]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """White Gaussian noise smoothed with a Gaussian of ``sigma`` voxels, rescaled to unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="reflect")
    std = float(field.std())
    return field / (std if std > 0 else 1.0)


def _axis_weights(src: AxisGrid, dst_axis: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    pos = (dst_axis.astype(np.float64) - src.origin[d]) / src.step[d]
    pos = np.clip(pos, 0.0, src.shape[d] - 1.000001)
    i0 = np.floor(pos).astype(np.intp)
    if src.shape[d] == 1:
        return np.zeros_like(i0), np.zeros(pos.shape, np.float32)
    return i0, (pos - i0).astype(np.float32)


def resample(field: np.ndarray, src: AxisGrid, dst: AxisGrid) -> np.ndarray:
    """Trilinear interpolation of ``field`` (on ``src``) at the samples of ``dst``; clamps at the edges.

    Separable: three passes of two gathers each, so the cost is a few operations per output voxel.
    A field that is linear in position (an affine map) is reproduced exactly.
    """
    out = field.astype(np.float32, copy=False)
    for d in range(3):
        i0, w = _axis_weights(src, dst.axis(d), d)
        i1 = np.minimum(i0 + 1, src.shape[d] - 1)
        shape = [1, 1, 1]
        shape[d] = -1
        wb = w.reshape(shape)
        a = np.take(out, i0, axis=d)
        b = np.take(out, i1, axis=d)
        b -= a
        b *= wb
        a += b
        out = a
    return out


def zoom_to(field: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resample a field to ``shape`` with grid corners aligned (for fields without a frame position)."""
    src = AxisGrid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), field.shape)  # type: ignore[arg-type]
    step = tuple((field.shape[d] - 1) / max(shape[d] - 1, 1) for d in range(3))
    return resample(field, src, AxisGrid((0.0, 0.0, 0.0), step, shape))  # type: ignore[arg-type]


def soft_step(value: np.ndarray, width: float) -> np.ndarray:
    """0 below ``-width/2``, 1 above ``width/2``, linear between: a partial-volume edge."""
    out = value * np.float32(1.0 / width)
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out
