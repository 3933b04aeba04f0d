"""Running a network over a prepared case: device choice, sliding window, mixed precision, OOM fallback."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error."""
    d = (device or "auto").lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d in ("gpu", "cuda") or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError("Device 'cuda' was asked for but no CUDA GPU is usable by this torch "
                             f"({torch.__version__}). Use --device cpu or auto, or install a CUDA build of torch.")
        return torch.device("cuda" if d == "gpu" else d)
    if d == "cpu":
        return torch.device("cpu")
    raise InputError(f"Unknown device '{device}'; use auto, cpu or cuda.")


def free_memory_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the spatial dims of (B, C, *S) to multiples of ``divisor``; returns the crop that undoes it."""
    spatial = x.shape[2:]
    target = [int(math.ceil(s / divisor) * divisor) for s in spatial]
    pads: list[int] = []
    for s, t in reversed(list(zip(spatial, target))):
        pads += [0, t - s]
    crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
    return (F.pad(x, pads) if any(pads) else x), crop


def _window_batch(device: torch.device, roi: Sequence[int], channels: int) -> int:
    free = free_memory_bytes(device)
    if free is None:
        return 1
    per_window = math.prod(roi) * max(channels, 32) * 2 * 24  # activations of a small U-Net, bf16, generous
    return int(max(1, min(8, free * 0.5 // per_window)))


def _starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis: a step of roi * (1 - overlap), the last window flush with the end."""
    if roi >= size:
        return [0]
    step = max(1, int(roi * (1.0 - overlap)))
    starts = list(range(0, size - roi, step))
    return starts + [size - roi]


def gaussian_importance(roi: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Window weights: a Gaussian of sigma ``sigma_scale * roi`` per axis, peak 1 (MONAI's "gaussian" mode)."""
    w = torch.ones(())
    for r in roi:
        c = torch.arange(r, dtype=torch.float32) - (r - 1) / 2.0
        w = w[..., None] * torch.exp(-0.5 * (c / (sigma_scale * r)) ** 2)
    return w.clamp_min(1e-3)


def sliding_window(x: torch.Tensor, roi: Sequence[int], network: Callable[[torch.Tensor], torch.Tensor],
                   overlap: float = 0.25, batch: int = 1, progress: Progress | None = None) -> torch.Tensor:
    """Gaussian-weighted sliding-window inference over (B, C, *S), ``batch`` windows per forward pass.

    Plain torch (MONAI's ``sliding_window_inference`` does the same, but importing MONAI costs seconds).
    """
    spatial = x.shape[2:]
    grid = [_starts(s, r, overlap) for s, r in zip(spatial, roi)]
    corners = [(a, b, c) for a in grid[0] for b in grid[1] for c in grid[2]]
    weight = gaussian_importance(roi).to(x.device)
    out = norm = None
    for i in range(0, len(corners), batch):
        chunk = corners[i:i + batch]
        windows = [tuple(slice(c, c + r) for c, r in zip(corner, roi)) for corner in chunk]
        pred = network(torch.cat([x[(slice(None), slice(None)) + w] for w in windows])).float()
        if out is None:
            out = torch.zeros((x.shape[0], pred.shape[1], *spatial), device=x.device)
            norm = torch.zeros(spatial, device=x.device)
        for j, w in enumerate(windows):
            out[(slice(None), slice(None)) + w] += pred[j * x.shape[0]:(j + 1) * x.shape[0]] * weight
            norm[w] += weight
        if progress:
            progress("segmenting", min(1.0, (i + len(chunk)) / len(corners)))
    assert out is not None and norm is not None
    return out / norm


def mirror_flips(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every combination of flips over the given spatial axes, the identity first (2**len(axes) passes)."""
    flips: list[tuple[int, ...]] = [()]
    for a in sorted(set(int(a) for a in axes)):
        if a not in (0, 1, 2):
            raise InputError(f"Mirror axis {a} is not a spatial axis (0, 1 or 2 of z, y, x).")
        flips += [f + (a,) for f in flips]
    return flips


def _run(network: nn.Module, x: torch.Tensor, roi: Sequence[int], overlap: float, batch: int,
         device: torch.device, amp: bool, divisor: int, progress: Progress | None,
         mirror: Sequence[int] = ()) -> torch.Tensor:
    x = x.to(device)
    xp, crop = pad_to_multiple(x, divisor)
    roi = [min(int(r), s) for r, s in zip(roi, xp.shape[2:])]
    roi = [max(divisor, (r // divisor) * divisor) for r in roi]
    ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else torch.autocast(
        device_type=device.type, enabled=False)
    flips = mirror_flips(mirror)
    whole = all(r >= s for r, s in zip(roi, xp.shape[2:]))  # one window covers the volume
    out = None
    with torch.inference_mode(), ctx:
        for flip in flips:
            dims = [2 + a for a in flip]
            xf = torch.flip(xp, dims) if dims else xp
            if whole:
                o = network(xf).float()
            else:
                o = sliding_window(xf, roi, network, overlap=overlap, batch=batch).float()
            o = torch.flip(o, dims) if dims else o
            out = o if out is None else out + o
    assert out is not None
    out = (out / len(flips))[crop]
    if progress:
        progress("segmenting", 1.0)
    return out


def predict(network: nn.Module, x: torch.Tensor, roi_size: Sequence[int], overlap: float = 0.25,
            device: torch.device | str = "cpu", amp: bool | None = None, divisor: int = 16,
            progress: Progress | None = None,
            mirror: Sequence[int] = ()) -> tuple[torch.Tensor, torch.device, list[str]]:
    """Sigmoid region probabilities (B, 3, *S) for input (B, C, *S).

    ``mirror`` lists spatial axes (0, 1, 2 of z, y, x) for test-time mirroring: the logits of every
    combination of flips over them are averaged (each axis doubles the network time).

    A CUDA out-of-memory error retries with one window at a time, then on the CPU, with a warning.
    Returns the probabilities (on the CPU), the device that finally ran, and warnings.
    """
    device = torch.device(device)
    warnings: list[str] = []
    use_amp = (device.type == "cuda") if amp is None else amp
    batches = [_window_batch(device, roi_size, x.shape[1])] if device.type == "cuda" else [1]
    if device.type == "cuda" and batches[0] > 1:
        batches.append(1)
    for b in batches:
        try:
            network.to(device)
            logits = _run(network, x, roi_size, overlap, b, device, use_amp, divisor, progress, mirror)
            return torch.sigmoid(logits).cpu(), device, warnings
        except torch.OutOfMemoryError:
            if device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            warnings.append(f"GPU out of memory with {b} window(s) at a time; retrying with fewer.")
            log.warning(warnings[-1])
    warnings.append("GPU out of memory even with one window at a time; ran on the CPU instead (slower).")
    log.warning(warnings[-1])
    network.to("cpu")
    torch.cuda.empty_cache()
    logits = _run(network, x, roi_size, overlap, 1, torch.device("cpu"), False, divisor, progress, mirror)
    return torch.sigmoid(logits), torch.device("cpu"), warnings
