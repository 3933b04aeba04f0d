"""Training patches from prepared cases: crops around tumour and brain, MONAI augmentation, modality dropout.

Each sample is drawn from one :class:`~MTSSTrainingLib.cache.CachedCase` with its own random seed (so a
sample depends only on the run seed, the epoch and its index: resumed and multi-process runs draw the
same samples), in these steps:

1. **Crop** (like MONAI's ``RandCropByPosNegLabel``): the centre is a tumour voxel with probability
   ``pos_fraction``, else a brain voxel outside the tumour; a region somewhat larger than the patch is
   cut out (zero padding at the borders).
2. **Spatial** (MONAI ``RandAffined``, ``RandFlipd``): small rotations and scaling resampled to the patch
   size, flips along every axis; image bilinear, labels and brain mask nearest (soft targets bilinear).
3. **Intensity** (MONAI ``RandScaleIntensityd``, ``RandShiftIntensityd``, ``RandAdjustContrastd``) on
   the image channels, per channel, then zero again outside the brain and in missing modalities, as
   preprocessing leaves them.
4. **Clinical degradations** (off unless ``thick_slice_prob`` / ``bias_prob`` are set): each series is, on
   its own, averaged over thick slices along a random axis (a 2-6 mm slab profile, then back on the
   working grid, as a 5 mm series resampled onto the reference looks) and multiplied by a smooth bias
   field on a raw-like intensity scale before it is z-scored again in the brain, so that the network
   does not depend on the 1 mm BraTS grid or on bias-free inputs (the clinical-MRI issue).
5. **Targets**: the three regions of the label map at the working spacing (nearest neighbour), or with
   ``soft_targets`` the share of each working voxel that each region covers at the label map's own
   resolution (:func:`~MTSSSegmenterLib.preprocess.region_fractions`), which keeps the thin enhancing
   rims and the boundaries that a 3 mm nearest-neighbour label map aliases.
6. **Modality dropout**: with probability ``modality_dropout`` the sample's ``keep`` vector is a random
   non-empty subset of the modalities present, always sometimes FLAIR+T1c and T1c alone (the
   clinically common subsets); the trainer zeros the image and mask channels of dropped modalities for
   the student while teachers see every modality present (Choi et al., CMPB 2023).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from MTSSSegmenterLib.constants import MODALITY_CODES
from MTSSSegmenterLib.preprocess import labels_to_regions

from .cache import CachedCase

#: Subsets drawn more often than the others when modalities are dropped: FLAIR+T1c and T1c alone.
COMMON_SUBSETS: tuple[tuple[str, ...], ...] = (("t1c", "t2f"), ("t1c",))
ALL_SUBSETS: tuple[tuple[str, ...], ...] = tuple(
    s for n in range(1, len(MODALITY_CODES) + 1) for s in itertools.combinations(MODALITY_CODES, n))


@dataclass
class AugmentConfig:
    """How training patches are drawn. Defaults follow nnU-Net's BraTS settings, milder."""

    patch: tuple[int, int, int] = (128, 128, 128)
    pos_fraction: float = 0.67
    spatial_prob: float = 0.3
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    flip: bool = True
    intensity_prob: float = 0.3
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    modality_dropout: float = 0.0
    common_subset_prob: float = 0.5  # of dropped samples, the share drawn among COMMON_SUBSETS
    thick_slice_prob: float = 0.0  # per series: average over thick slices along a random axis
    thick_slice_mm: tuple[float, float] = (2.0, 6.0)
    bias_prob: float = 0.0  # per series: a smooth multiplicative bias field
    bias_strength: float = 0.3  # log-field standard deviation
    soft_targets: bool = False  # region shares of each voxel instead of nearest-neighbour labels
    aligned_labels: bool = False  # shares of synthetic clinical studies from their aligned label map (cache.py)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.patch = tuple(int(p) for p in self.patch)  # type: ignore[assignment]
        if len(self.patch) != 3 or min(self.patch) < 4:
            raise ValueError(f"patch must be three sizes >= 4 voxels, got {list(self.patch)}.")
        for name in ("pos_fraction", "spatial_prob", "intensity_prob", "modality_dropout", "common_subset_prob",
                     "thick_slice_prob", "bias_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}.")
        self.thick_slice_mm = tuple(float(v) for v in self.thick_slice_mm)  # type: ignore[assignment]
        if len(self.thick_slice_mm) != 2 or not 0 < self.thick_slice_mm[0] <= self.thick_slice_mm[1]:
            raise ValueError(f"thick_slice_mm must be (min, max) with 0 < min <= max, got {list(self.thick_slice_mm)}.")
        if self.bias_strength < 0:
            raise ValueError(f"bias_strength must be >= 0, got {self.bias_strength}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        return cls(**{**d, "patch": tuple(d.get("patch", (128, 128, 128))), "scale": tuple(d.get("scale", (0.85, 1.15))),
                      "gamma": tuple(d.get("gamma", (0.7, 1.5))),
                      "thick_slice_mm": tuple(d.get("thick_slice_mm", (2.0, 6.0)))})


def sample_seed(*keys: int) -> int:
    """A 32-bit seed from integers (run seed, epoch, index...), independent of process and worker."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


def choose_subset(rng: np.random.Generator, present: np.ndarray, dropout: float, common_prob: float) -> np.ndarray:
    """A ``keep`` vector (4,) in {0,1}: a non-empty subset of ``present`` (all of it without dropout)."""
    if dropout <= 0 or rng.random() >= dropout:
        return present.astype(np.float32).copy()
    pool = COMMON_SUBSETS if rng.random() < common_prob else ALL_SUBSETS
    subset = pool[int(rng.integers(len(pool)))]
    keep = np.array([1.0 if m in subset else 0.0 for m in MODALITY_CODES], dtype=np.float32) * present
    return keep if keep.any() else present.astype(np.float32).copy()


def thick_slices(channel: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """Average a (Z, Y, X) channel over slabs ``factor`` voxels thick along ``axis`` and interpolate back:
    what a series with slices ``factor`` times the working spacing looks like on the working grid."""
    if factor <= 1.0:
        return channel
    n = channel.shape[axis]
    coarse = max(1, round(n / factor))
    size = list(channel.shape)
    size[axis] = coarse
    x = channel[None, None].float()
    low = torch.nn.functional.adaptive_avg_pool3d(x, size)
    return torch.nn.functional.interpolate(low, size=channel.shape, mode="trilinear", align_corners=False)[0, 0]


def bias_field(shape: Sequence[int], rng: np.random.Generator, strength: float) -> torch.Tensor:
    """A smooth positive field exp(f) on ``shape``: a random 3x3x3 grid of log gains upsampled trilinearly
    (a field that varies slowly over the head, as a receive coil gives), ``f`` scaled to ``strength`` std."""
    knots = torch.from_numpy(rng.standard_normal((1, 1, 3, 3, 3)).astype(np.float32))
    field = torch.nn.functional.interpolate(knots, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0]
    return torch.exp(strength * field / field.std().clamp_min(1e-6))


def degrade(image: torch.Tensor, brain: torch.Tensor, rng: np.random.Generator, config: AugmentConfig,
            spacing_zyx: Sequence[float], present: Sequence[float] | None = None) -> torch.Tensor:
    """Clinical degradations of z-scored channels (4, Z, Y, X) in place of a clinical acquisition: per
    channel, thick slices and/or a bias field, then z-scored again within ``brain`` (as preprocessing does).
    Channels whose ``present`` entry is 0 (a modality the case lacks: zeros) are left alone."""
    inside = brain > 0.5
    if not bool(inside.any()):
        return image
    out = image.clone()
    for c in range(image.shape[0]):
        if present is not None and not present[c]:
            continue
        x = out[c]
        changed = False
        if rng.random() < config.bias_prob:
            # z-scores back to a raw-like positive scale (brain mean about 3.5 standard deviations above 0),
            # times the field, then normalised again.
            raw = (x * 1.0 + 3.5).clamp_min(0.0)
            x = raw * bias_field(x.shape, rng, config.bias_strength)
            changed = True
        if rng.random() < config.thick_slice_prob:
            axis = int(rng.integers(3))
            thickness = float(rng.uniform(*config.thick_slice_mm))
            x = thick_slices(x, axis, thickness / float(spacing_zyx[axis]))
            changed = True
        if changed:
            v = x[inside]
            x = (x - v.mean()) / v.std().clamp_min(1e-6)
            out[c] = x
    return out


def _crop(arrays: dict[str, np.ndarray], start: Sequence[int], size: Sequence[int]) -> dict[str, np.ndarray]:
    """Cut ``size`` voxels from ``start`` (may lie outside) of every (C, Z, Y, X) array, zero-padding outside."""
    out = {}
    for key, arr in arrays.items():
        src, dst = [], []
        for lo, s, n in zip(start, size, arr.shape[1:]):
            a, b = max(int(lo), 0), min(int(lo) + s, n)
            src.append(slice(a, max(a, b)))
            dst.append(slice(a - int(lo), a - int(lo) + max(0, b - a)))
        box = np.zeros((arr.shape[0],) + tuple(size), dtype=arr.dtype)
        box[(slice(None),) + tuple(dst)] = arr[(slice(None),) + tuple(src)]
        out[key] = box
    return out


Extras = Callable[[str], dict[str, tuple[np.ndarray, int]]]


class PatchSampler:
    """Draws augmented patches from prepared cases; ``sampler(case, seed)`` -> a sample dict.

    The sample holds ``image`` (4, *patch) float32 (every modality present; zeros where missing),
    ``present`` and ``keep`` (4,), ``target`` (3, *patch) float32 region masks WT/TC/ET, ``label_mask``
    (3,), ``population`` and ``case``.

    Args:
        config: the augmentation settings.
        extras: optional ``extras(case name) -> {key: (array (C, z, y, x), stride)}``: arrays on the case's
            grid subsampled by ``stride`` (e.g. cached teacher logits, stride 1, and bottleneck features,
            stride 16). They are cut out with every patch (``sample["extras"][key]``, shape
            ``(C, *patch / stride)``); the crop is then aligned to the largest stride, and rotation and
            scaling are off (flips stay, applied to the extras too).
    """

    def __init__(self, config: AugmentConfig, extras: Extras | None = None) -> None:
        from monai.transforms import (
            Compose,
            RandAdjustContrastd,
            RandAffined,
            RandFlipd,
            RandScaleIntensityd,
            RandShiftIntensityd,
        )

        self.config = c = config
        self.extras = extras
        spatial: list[Any] = []
        if c.spatial_prob > 0 and extras is None:
            rot = math.radians(c.rotate_deg)
            spatial.append(RandAffined(keys=["image", "label", "brain"], spatial_size=c.patch, prob=c.spatial_prob,
                                       rotate_range=(rot, rot, rot),
                                       scale_range=tuple((c.scale[0] - 1.0, c.scale[1] - 1.0) for _ in range(3)),
                                       mode=("bilinear", "bilinear" if c.soft_targets else "nearest", "nearest"),
                                       padding_mode="zeros", cache_grid=True))
        if c.flip and extras is None:
            spatial += [RandFlipd(keys=["image", "label", "brain"], prob=0.5, spatial_axis=a) for a in range(3)]
        intensity: list[Any] = []
        if c.intensity_prob > 0:
            intensity = [
                RandScaleIntensityd(keys="image", factors=c.intensity_scale, prob=c.intensity_prob, channel_wise=True),
                RandShiftIntensityd(keys="image", offsets=c.intensity_shift, prob=c.intensity_prob, channel_wise=True),
                RandAdjustContrastd(keys="image", prob=c.intensity_prob, gamma=c.gamma, retain_stats=True),
            ]
        self._spatial = Compose(spatial) if spatial else None
        self._intensity = Compose(intensity) if intensity else None
        margin = 1.25 if spatial and c.spatial_prob > 0 else 1.0
        self._crop_size = tuple(math.ceil(p * margin) for p in c.patch)

    def centre(self, case: CachedCase, rng: np.random.Generator) -> tuple[int, int, int]:
        seg = np.asarray(case.seg)
        tumour = seg > 0
        if tumour.any() and rng.random() < self.config.pos_fraction:
            pool = tumour
        else:
            pool = np.asarray(case.brain) & ~tumour
            if not pool.any():
                pool = np.ones_like(tumour)
        idx = np.flatnonzero(pool.ravel())
        flat = int(idx[int(rng.integers(len(idx)))])
        return tuple(int(v) for v in np.unravel_index(flat, seg.shape))  # type: ignore[return-value]

    def __call__(self, case: CachedCase, seed: int) -> dict[str, Any]:
        from monai.data import get_track_meta, set_track_meta

        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: MONAI's metadata costs more than the transforms here
        try:
            return self._sample(case, seed)
        finally:
            set_track_meta(tracking)

    def _sample(self, case: CachedCase, seed: int) -> dict[str, Any]:
        c = self.config
        rng = np.random.default_rng(seed)
        centre = self.centre(case, rng)
        label = np.asarray(case.fractions) if c.soft_targets else np.asarray(case.seg)[None]
        main = {"image": np.asarray(case.image), "label": label, "brain": np.asarray(case.brain)[None]}
        extras = self.extras(case.name) if self.extras is not None else {}
        if extras:
            stride = max(s for _, s in extras.values())
            start = [(ctr - p // 2) // stride * stride for ctr, p in zip(centre, c.patch)]
            arrays = _crop(main, start, c.patch)
            cut = {k: _crop({k: a}, [s0 // s for s0 in start], [p // s for p in c.patch])[k]
                   for k, (a, s) in extras.items()}
        else:
            arrays = _crop(main, [ctr - s // 2 for ctr, s in zip(centre, self._crop_size)], self._crop_size)
            cut = {}
        data: dict[str, Any] = {"image": torch.from_numpy(arrays["image"].astype(np.float32)),
                                "label": torch.from_numpy(arrays["label"].astype(np.float32)),
                                "brain": torch.from_numpy(arrays["brain"].astype(np.float32))}
        more = {k: torch.from_numpy(v.astype(np.float32)) for k, v in cut.items()}
        if self._spatial is not None:
            self._spatial.set_random_state(seed=int(rng.integers(2**31)))
            data = self._spatial(data)
        elif extras and c.flip:
            for axis in range(3):
                if rng.random() < 0.5:
                    data = {k: torch.flip(_plain(v), dims=(axis + 1,)) for k, v in data.items()}
                    more = {k: torch.flip(v, dims=(axis + 1,)) for k, v in more.items()}
        if self._intensity is not None:
            self._intensity.set_random_state(seed=int(rng.integers(2**31)))
            data = self._intensity(data)
        image, label, brain = (_plain(data[k]) for k in ("image", "label", "brain"))
        if tuple(image.shape[1:]) != c.patch:  # no affine resampling: centre-crop the margin away
            image, label, brain = (_centre_crop(t, c.patch) for t in (image, label, brain))
        if c.thick_slice_prob > 0 or c.bias_prob > 0:
            image = degrade(image.float(), brain[0], rng, c, case.spacing_zyx, case.present)
        image = image * (brain > 0.5) * torch.from_numpy(case.present)[:, None, None, None]
        keep = choose_subset(rng, case.present, c.modality_dropout, c.common_subset_prob)
        if c.soft_targets:
            target = (label.float() / 255.0).clamp(0.0, 1.0).contiguous()
        else:
            target = labels_to_regions(label[0].round().clamp(0, 3).to(torch.uint8))
        sample = {"image": image.float().contiguous(), "present": torch.from_numpy(case.present.copy()),
                  "keep": torch.from_numpy(keep), "target": target,
                  "label_mask": torch.from_numpy(case.label_mask.copy()), "population": case.population,
                  "case": case.name}
        if more:
            sample["extras"] = {k: v.contiguous() for k, v in more.items()}
        return sample


def _plain(x: Any) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _centre_crop(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    sl = [slice(None)]
    for n, s in zip(t.shape[1:], size):
        a = (n - s) // 2
        sl.append(slice(a, a + s))
    return t[tuple(sl)]


def network_inputs(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, 8, *S) network input from (B, 4, *S) images and a (B, 4) modality vector (zeros dropped ones)."""
    k = keep.to(image.dtype)[:, :, None, None, None]
    return torch.cat([image * k, k.expand_as(image)], dim=1)
