"""Attention-map distillation from a coarse encoder map and a fine decoder map.

Zagoruyko & Komodakis, "Paying more attention to attention", ICLR 2017 (attention transfer: the map is the
channel mean of ``|F|^p``, flattened and L2-normalised); Hossain et al. 2025, Teach-Former (several
teachers distilled into a light student through a coarse encoder map and a fine decoder map). Teacher maps
are resampled to the student's grid, so teachers and student may differ in architecture and depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import KDBatch, KDLoss, feature, teacher_feature, zero
from .functional import attention_map, resample
from .registry import register_loss


def normalised_map(features: torch.Tensor, p: float, size: tuple[int, ...] | torch.Size | None = None) -> torch.Tensor:
    """``(B, N)`` attention vector: channel mean of ``|F|^p``, resampled to ``size``, L2-normalised."""
    amap = attention_map(features, p)
    if size is not None:
        amap = resample(amap, size)
    return F.normalize(amap.flatten(1), dim=1)


@register_loss("attention")
class AttentionKDLoss(KDLoss):
    """``Σ_k w_bk Σ_maps ‖a_s - a_t,k‖²`` averaged over the batch (maps: coarse and fine).

    The squared distance of two unit vectors lies in [0, 4] whatever the grid; RepDistiller's ``AT``
    takes the mean over positions instead (the same up to the factor N, hence its weight of 1000).

    Args:
        p: exponent of the attention map (2).
        coarse_key: coarse map feature (``bottleneck``; a deepest encoder stage ``encN`` works too).
        fine_key: fine map feature (``dec0``).
    """

    def __init__(self, student_channels: dict[str, int] | None = None,
                 teacher_channels: dict[str, dict[str, int]] | None = None, *, p: float = 2.0,
                 coarse_key: str = "bottleneck", fine_key: str = "dec0") -> None:
        super().__init__(student_channels, teacher_channels)
        if not p > 0:
            raise ValueError(f"The attention map exponent p must be > 0, got {p}.")
        for key in (coarse_key, fine_key):
            if self.student_channels and key not in self.student_channels:
                raise ValueError(f"The student has no feature '{key}' (has: {sorted(self.student_channels)}).")
        self.p, self.keys = float(p), (coarse_key, fine_key)

    def forward(self, batch: KDBatch) -> torch.Tensor:
        logits = batch.student.logits
        if not batch.teacher_order:
            return zero(logits)
        weights = batch.weights(logits)
        loss = zero(logits)
        for key in self.keys:
            student = feature(batch.student, key, "student")
            a_s = normalised_map(student, self.p)
            for t, code in enumerate(batch.teacher_order):
                a_t = normalised_map(teacher_feature(batch, code, key), self.p, student.shape[2:])
                loss = loss + (weights[:, t] * (a_s - a_t).pow(2).sum(1)).mean()
        return loss

    def hparams(self) -> dict:
        return {"p": self.p} if self.p != 2.0 else {}
