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


def _run(network: nn.Module, x: torch.Tensor, roi: Sequence[int], overlap: float, batch: int,
         device: torch.device, amp: bool, divisor: int, progress: Progress | None) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    x = x.to(device)
    xp, crop = pad_to_multiple(x, divisor)
    roi = [min(int(r), s) for r, s in zip(roi, xp.shape[2:])]
    roi = [max(divisor, (r // divisor) * divisor) for r in roi]
    ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else torch.autocast(
        device_type=device.type, enabled=False)
    with torch.inference_mode(), ctx:
        if all(r >= s for r, s in zip(roi, xp.shape[2:])):
            out = network(xp)
        else:
            out = sliding_window_inference(xp, roi, batch, network, overlap=overlap, mode="gaussian",
                                           progress=False, sw_device=device, device=device)
    out = out[crop].float()
    if progress:
        progress("segmenting", 1.0)
    return out


def predict(network: nn.Module, x: torch.Tensor, roi_size: Sequence[int], overlap: float = 0.25,
            device: torch.device | str = "cpu", amp: bool | None = None, divisor: int = 16,
            progress: Progress | None = None) -> tuple[torch.Tensor, torch.device, list[str]]:
    """Sigmoid region probabilities (B, 3, *S) for input (B, C, *S).

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
            logits = _run(network, x, roi_size, overlap, b, device, use_amp, divisor, progress)
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
    logits = _run(network, x, roi_size, overlap, 1, torch.device("cpu"), False, divisor, progress)
    return torch.sigmoid(logits), torch.device("cpu"), warnings
