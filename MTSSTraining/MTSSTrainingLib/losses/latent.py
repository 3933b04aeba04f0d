"""Latent (bottleneck) feature KD through one small projection head per teacher.

FitNets (Romero et al., ICLR 2015: a trainable regressor maps student features to the teacher's) at the
bottleneck, as MTSS-KDNet's latent-level supervision; each teacher's term is weighted per case by the
population-aware ``teacher_weights``.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import KDBatch, KDLoss, conv1x1, feature, teacher_channel, teacher_feature, zero
from .functional import resample, standardise
from .registry import register_loss


@register_loss("latent")
class LatentKDLoss(KDLoss):
    """``Σ_k w_bk · MSE(norm(P_k(s_b)), norm(t_kb))`` averaged over the batch.

    ``P_k`` is a 1x1x1 convolution (student bottleneck channels → teacher ``k``'s), the projected student
    map is resampled (trilinear) to the teacher's bottleneck grid when they differ, and both are
    standardised per channel over space so teachers of different scale count alike.

    Args:
        feature_key: which feature to match (``bottleneck`` by default).
        spatial_dims: 3 for volumes (2 for tests on images).
    """

    def __init__(self, student_channels: dict[str, int] | None = None,
                 teacher_channels: dict[str, dict[str, int]] | None = None, *, feature_key: str = "bottleneck",
                 spatial_dims: int = 3) -> None:
        super().__init__(student_channels, teacher_channels)
        if feature_key not in self.student_channels:
            raise ValueError(f"The student has no feature '{feature_key}' (has: {sorted(self.student_channels)}).")
        if not self.teacher_channels:
            raise ValueError("The latent KD term needs teacher_channels: {population code: feature_channels}.")
        self.feature_key = feature_key
        cs = self.student_channels[feature_key]
        self.heads = nn.ModuleDict({code: conv1x1(cs, teacher_channel(self.teacher_channels, code, feature_key),
                                                  spatial_dims)
                                    for code in self.teacher_channels})

    def forward(self, batch: KDBatch) -> torch.Tensor:
        student = feature(batch.student, self.feature_key, "student")
        if not batch.teacher_order:
            return zero(student)
        weights = batch.weights(student)
        loss = zero(student)
        for t, code in enumerate(batch.teacher_order):
            if code not in self.heads:
                raise ValueError(f"No latent projection head for teacher '{code}'; heads exist for "
                                 f"{sorted(self.heads)} (the teacher_channels given when the term was built).")
            target = standardise(teacher_feature(batch, code, self.feature_key))
            projected = resample(self.heads[code](student).float(), target.shape[2:])
            mse = (standardise(projected) - target).pow(2).flatten(1).mean(1)  # (B,)
            loss = loss + (weights[:, t] * mse).mean()
        return loss

    def hparams(self) -> dict:
        return {} if self.feature_key == "bottleneck" else {"feature": self.feature_key}
