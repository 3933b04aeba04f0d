"""MS-KD: region-based supervision from teachers trained on differently labelled datasets.

Feng et al., "MS-KD: multi-organ segmentation with multiple binary-labeled datasets", 2021 (arXiv
2108.02559): each teacher supervises the student only in its expert region (the region channels it was
trained with labels for, on cases of its own population) and, elsewhere, only where all teachers agree
on background, at logit level and at feature level. This is how whole-tumour-only teachers are used.

Agreement per channel uses the nesting of the regions (ET ⊂ TC ⊂ WT): a teacher's vote on channel c is
its probability on the innermost channel it is expert for that contains c, so a whole-tumour-only
teacher votes on TC and ET with its WT output (WT background implies TC and ET background), and a
teacher with no expert channel containing c abstains. Agreed background = every voting teacher < 0.5.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import KDBatch, KDLoss, conv1x1, feature, teacher_channel, teacher_feature, zero
from .functional import binary_kl_with_logits, resample, resample_mask, standardise
from .registry import register_loss


def agreed_background(batch: KDBatch) -> torch.Tensor:
    """``(B, C, *S)`` bool: every teacher voting on channel c puts the voxel below 0.5 (see module doc)."""
    logits = batch.student.logits
    agree = torch.ones_like(logits, dtype=torch.bool)
    voted = torch.zeros(logits.shape[1], dtype=torch.bool)
    for code in batch.teacher_order:
        probs = torch.sigmoid(batch.teachers[code].logits.detach().float())
        expert = batch.expert(code)
        for c in range(logits.shape[1]):
            inner = [j for j in range(c + 1) if expert[j]]
            if inner:
                agree[:, c] &= probs[:, inner[-1]] < 0.5
                voted[c] = True
    agree[:, ~voted.to(agree.device)] = False
    return agree


@register_loss("region")
class RegionKDLoss(KDLoss):
    """Expert-region + agreed-background KD at logit and feature (``dec0``) level.

    For teacher k: on its own population's cases and its expert channels, the student's probabilities
    follow the teacher's everywhere (binary KL = BCE minus the target's entropy); on every other
    (case, channel), only agreed-background voxels are supervised, towards 0. The feature term matches
    the projected student ``dec0`` to the teacher's (both standardised per channel) on the voxels any
    channel supervises.

    Args:
        feature_weight: weight of the feature-level part (0 turns it off).
        feature_key: decoder feature used (``dec0``, the finest).
        spatial_dims: 3 for volumes.
    """

    def __init__(self, student_channels: dict[str, int] | None = None,
                 teacher_channels: dict[str, dict[str, int]] | None = None, *, feature_weight: float = 1.0,
                 feature_key: str = "dec0", spatial_dims: int = 3) -> None:
        super().__init__(student_channels, teacher_channels)
        if feature_weight < 0:
            raise ValueError(f"region feature_weight must be >= 0, got {feature_weight}.")
        self.feature_weight, self.feature_key = float(feature_weight), feature_key
        self.heads = nn.ModuleDict()
        if self.feature_weight > 0:
            if feature_key not in self.student_channels:
                raise ValueError(f"The student has no feature '{feature_key}' (has: {sorted(self.student_channels)}).")
            cs = self.student_channels[feature_key]
            for code in self.teacher_channels:
                self.heads[code] = conv1x1(cs, teacher_channel(self.teacher_channels, code, feature_key), spatial_dims)

    def teacher_terms(self, batch: KDBatch) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per teacher: (summed logit KL, number of supervised elements, ``(B, C, *S)`` supervision mask)."""
        logits = batch.student.logits.float()
        spatial = (None,) * (logits.ndim - 2)
        background = agreed_background(batch)
        terms = {}
        for code in batch.teacher_order:
            expert = torch.tensor(batch.expert(code), device=logits.device)
            own = torch.tensor([p == code for p in batch.populations], device=logits.device)
            in_expert = (own[:, None] & expert[None, :])[(...,) + spatial].expand_as(logits)  # (B, C, *S)
            mask = in_expert | background
            probs = torch.sigmoid(batch.teachers[code].logits.detach().float())
            target = torch.where(in_expert, probs, torch.zeros_like(probs))
            kl = binary_kl_with_logits(logits, target) * mask
            terms[code] = (kl.sum(), mask.sum().float(), mask)
        return terms

    def feature_term(self, batch: KDBatch, code: str, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed masked MSE of standardised features and its count, for teacher ``code``."""
        if code not in self.heads:
            raise ValueError(f"No region projection head for teacher '{code}'; heads exist for {sorted(self.heads)}.")
        student = feature(batch.student, self.feature_key, "student")
        target = standardise(resample(teacher_feature(batch, code, self.feature_key), student.shape[2:]))
        projected = standardise(self.heads[code](student).float())
        where = resample_mask(mask.any(dim=1, keepdim=True).float(), student.shape[2:])
        mse = (projected - target).pow(2).mean(dim=1, keepdim=True)
        return (mse * where).sum(), where.sum()

    def forward(self, batch: KDBatch) -> torch.Tensor:
        if not batch.teacher_order:
            return zero(batch.student.logits)
        terms = self.teacher_terms(batch)
        total = sum(t[0] for t in terms.values())
        count = sum(t[1] for t in terms.values())
        loss = total / count.clamp_min(1.0)
        if self.feature_weight > 0:
            parts = [self.feature_term(batch, code, mask) for code, (_, _, mask) in terms.items()]
            f_total = sum(p[0] for p in parts)
            f_count = sum(p[1] for p in parts)
            loss = loss + self.feature_weight * f_total / f_count.clamp_min(1.0)
        return loss

    def hparams(self) -> dict:
        return {"feature": self.feature_weight} if self.feature_weight != 1.0 else {}
