"""Ground-truth term: Dice + BCE on the WT, TC, ET region channels with deep supervision.

Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 2021 (Dice + cross-entropy, deep supervision with weights halving per level,
normalised). Dice follows MONAI's ``DiceLoss(sigmoid=True)``; partially labelled datasets are handled by
``label_mask``: an unlabelled (item, region) pair contributes nothing, not even a gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from MTSSSegmenterLib.networks import NetOutput

from .base import KDBatch, KDLoss, zero
from .functional import downsample_target, soft_dice_loss
from .registry import register_loss

DOWNSAMPLE_MODES = ("nearest", "maxpool")


@register_loss("gt")
class GroundTruthLoss(KDLoss):
    """Masked Dice + BCE with deep supervision.

    Args:
        dice_weight, bce_weight: the two parts' weights.
        downsample: how targets reach the deep-supervision grids, ``nearest`` or ``maxpool``.
        batch_dice: Dice over the whole batch per channel (nnU-Net's batch Dice) instead of per item.
        full_student_weight: when ``batch.full_student`` is given (single-stage training, Choi et al. 2023),
            its own ground-truth loss is added with this weight.
    """

    def __init__(self, student_channels: dict[str, int] | None = None,
                 teacher_channels: dict[str, dict[str, int]] | None = None, *, dice_weight: float = 1.0,
                 bce_weight: float = 1.0, downsample: str = "nearest", batch_dice: bool = False,
                 full_student_weight: float = 1.0) -> None:
        super().__init__(student_channels, teacher_channels)
        if downsample not in DOWNSAMPLE_MODES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES}, got '{downsample}'.")
        if min(dice_weight, bce_weight, full_student_weight) < 0:
            raise ValueError(f"gt weights must be >= 0, got dice {dice_weight}, bce {bce_weight}, "
                             f"full_student {full_student_weight}.")
        self.dice_weight, self.bce_weight = float(dice_weight), float(bce_weight)
        self.downsample, self.batch_dice = downsample, bool(batch_dice)
        self.full_student_weight = float(full_student_weight)

    def level(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Dice + BCE at one resolution; ``mask`` ``(B, C)`` selects labelled channels."""
        logits = logits.float()
        target = downsample_target(target.float(), logits.shape[2:], self.downsample)
        spatial = tuple(range(2, logits.ndim))
        # Unlabelled channels are cut out of the graph so they get an exact zero gradient.
        keep = mask[(...,) + (None,) * len(spatial)]
        probs = torch.sigmoid(logits) * keep
        target = target * keep
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = (bce * keep).mean(dim=spatial)  # (B, C)
        count = mask.sum().clamp_min(1.0)
        loss = self.bce_weight * (bce * mask).sum() / count
        dice = soft_dice_loss(probs, target, batch=self.batch_dice)
        if self.batch_dice:
            labelled = (mask.sum(0, keepdim=True) > 0).float()
            loss = loss + self.dice_weight * (dice * labelled).sum() / labelled.sum().clamp_min(1.0)
        else:
            loss = loss + self.dice_weight * (dice * mask).sum() / count
        return loss

    def network_loss(self, output: NetOutput, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Deep-supervised loss of one output: levels finest first, weights 1, 1/2, 1/4... normalised."""
        levels = [output.logits, *output.aux_logits]
        weights = [0.5**i for i in range(len(levels))]
        total = sum(w * self.level(lg, target, mask) for w, lg in zip(weights, levels))
        return total / sum(weights)

    def forward(self, batch: KDBatch) -> torch.Tensor:
        mask = batch.label_mask.to(device=batch.student.logits.device, dtype=torch.float32)
        if mask.sum() == 0:
            return zero(batch.student.logits)
        loss = self.network_loss(batch.student, batch.target, mask)
        if batch.full_student is not None and self.full_student_weight > 0:
            loss = loss + self.full_student_weight * self.network_loss(batch.full_student, batch.target, mask)
        return loss
