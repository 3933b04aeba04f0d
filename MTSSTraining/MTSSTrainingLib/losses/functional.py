"""Tensor helpers shared by the distillation terms: resampling, normalisation, masked means, Dice, KL.

Everything here is stateless and works for 2-D or 3-D tensors shaped ``(B, C, *S)``. Losses are computed
in float32 whatever the autocast dtype of the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resample(x: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Linear (trilinear in 3-D) resampling of ``(B, C, *S)`` to ``size``; no-op when already there."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    return F.interpolate(x, size=size, mode=_LINEAR_MODES[len(size)], align_corners=False)


def downsample_target(target: torch.Tensor, size: tuple[int, ...] | torch.Size, mode: str = "nearest") -> torch.Tensor:
    """Bring a binary/soft target ``(B, C, *S)`` to a coarser grid ``size``.

    Args:
        target: region targets at full resolution.
        size: the spatial size of the coarse logits.
        mode: ``nearest`` (nearest-exact, as nnU-Net and MONAI's DeepSupervisionLoss) or ``maxpool`` (a
            coarse voxel is positive when any voxel under it is; falls back to nearest for non-integer
            ratios).
    """
    size = tuple(int(s) for s in size)
    full = tuple(target.shape[2:])
    if full == size:
        return target
    if mode == "maxpool" and all(f % s == 0 for f, s in zip(full, size)):
        kernel = tuple(f // s for f, s in zip(full, size))
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(size)]
        return pool(target, kernel_size=kernel, stride=kernel)
    return F.interpolate(target, size=size, mode="nearest-exact")


def resample_mask(mask: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Nearest-neighbour resampling of a float mask ``(B, C, *S)``."""
    size = tuple(int(s) for s in size)
    if tuple(mask.shape[2:]) == size:
        return mask
    return F.interpolate(mask, size=size, mode="nearest-exact")


def standardise(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per item and channel, zero mean and unit variance over space (instance norm without affine)."""
    dims = tuple(range(2, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (broadcast); 0 (still in the graph) when the mask is empty."""
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """``-(p log p + (1-p) log(1-p))`` with ``0 log 0 = 0``."""
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def binary_kl_with_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Element-wise ``KL(Bernoulli(target) || Bernoulli(sigmoid(logits)))``.

    Equals binary cross-entropy minus the target's entropy: same gradient as BCE, but exactly zero when
    the student's probability equals the target.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce - binary_entropy(target)


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth_nr: float = 1e-5,
                   smooth_dr: float = 1e-5, batch: bool = False) -> torch.Tensor:
    """MONAI ``DiceLoss`` semantics (sigmoid outputs given as ``probs``), not reduced.

    Args:
        probs: ``(B, C, *S)`` probabilities.
        target: ``(B, C, *S)`` targets in [0, 1].
        smooth_nr, smooth_dr: added to numerator and denominator (an empty channel predicted empty is 0).
        batch: sum over the batch before the ratio (nnU-Net "batch Dice"); then the result is ``(1, C)``.

    Returns:
        ``(B, C)`` (or ``(1, C)``) Dice losses ``1 - (2|P∩T| + nr) / (|P| + |T| + dr)``.
    """
    dims = tuple(range(2, probs.ndim))
    inter = (probs * target).sum(dim=dims)
    denom = probs.sum(dim=dims) + target.sum(dim=dims)
    if batch:
        inter, denom = inter.sum(0, keepdim=True), denom.sum(0, keepdim=True)
    return 1.0 - (2.0 * inter + smooth_nr) / (denom + smooth_dr)


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention map of Zagoruyko & Komodakis (ICLR 2017): channel mean of ``|F|^p``, ``(B, 1, *S)``."""
    return features.float().abs().pow(p).mean(dim=1, keepdim=True)


def batch_standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardise ``(N, D)`` samples along N (``BatchNorm1d(affine=False)`` in training mode)."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)
