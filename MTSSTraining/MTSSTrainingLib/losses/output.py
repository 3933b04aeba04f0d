"""Output-level KD, per region and population-aware.

Hinton et al., "Distilling the knowledge in a neural network", 2015 (temperature, the T² factor), for
sigmoid region outputs: each channel is a Bernoulli, softened as ``sigmoid(z / T)``. The teacher target
is the mixture of the teachers' softened probabilities with the population-aware ``teacher_weights``
(MTSS-KDNet: the case's own-population teacher dominates).
"""

from __future__ import annotations

import torch

from .base import KDBatch, KDLoss, zero
from .functional import binary_kl_with_logits, masked_mean
from .registry import register_loss


def expert_mixture(batch: KDBatch, weights: torch.Tensor, respect_experts: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (item, channel, teacher) mixing weights, renormalised over the teachers expert on that channel.

    Returns:
        ``(B, C, T)`` weights (rows sum to 1 or 0) and a ``(B, C)`` mask of channels with any weight.
    """
    n_channels = batch.student.logits.shape[1]
    w = weights[:, None, :].expand(-1, n_channels, -1)
    if respect_experts:
        experts = torch.tensor([batch.expert(code) for code in batch.teacher_order], dtype=w.dtype,
                               device=w.device).T  # (C, T)
        w = w * experts[None]
    total = w.sum(-1, keepdim=True)
    valid = total[..., 0] > 0
    return w / total.clamp_min(1e-12), valid


@register_loss("output")
class OutputKDLoss(KDLoss):
    """``T² · KL(mix_k w_k σ(z_k/T) ‖ σ(z_s/T))`` per voxel and region channel, averaged.

    Zero when the student's logits equal every teacher's. Teacher logits are detached.

    Args:
        temperature: softening temperature T (> 0).
        respect_experts: mix, per channel, only teachers trained with labels for that channel
            (``batch.expert_regions``); a whole-tumour-only teacher then says nothing about TC and ET.
    """

    def __init__(self, student_channels: dict[str, int] | None = None,
                 teacher_channels: dict[str, dict[str, int]] | None = None, *, temperature: float = 2.0,
                 respect_experts: bool = True) -> None:
        super().__init__(student_channels, teacher_channels)
        if not temperature > 0:
            raise ValueError(f"The output KD temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)
        self.respect_experts = bool(respect_experts)

    def teacher_target(self, batch: KDBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixed softened teacher probabilities ``(B, C, *S)`` and the ``(B, C)`` valid mask."""
        logits = batch.student.logits
        w, valid = expert_mixture(batch, batch.weights(logits), self.respect_experts)
        target = torch.zeros_like(logits, dtype=torch.float32)
        spatial = (None,) * (logits.ndim - 2)
        for t, code in enumerate(batch.teacher_order):
            probs = torch.sigmoid(batch.teachers[code].logits.detach().float() / self.temperature)
            target = target + w[(..., t) + spatial] * probs
        return target, valid

    def forward(self, batch: KDBatch) -> torch.Tensor:
        logits = batch.student.logits
        if not batch.teacher_order:
            return zero(logits)
        target, valid = self.teacher_target(batch)
        kl = binary_kl_with_logits(logits.float() / self.temperature, target.clamp(0.0, 1.0))
        mask = valid.float()[(...,) + (None,) * (logits.ndim - 2)]
        return self.temperature**2 * masked_mean(kl, mask)

    def hparams(self) -> dict:
        return {"T": self.temperature}
