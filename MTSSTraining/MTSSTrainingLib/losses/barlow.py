"""Barlow Twins between the missing-modality student and a full-modality reference, at the bottleneck.

Zbontar et al., "Barlow Twins: self-supervised learning via redundancy reduction", ICML 2021; used for
missing-modality KD by Choi, Al-masni et al., "A single stage knowledge distillation network for brain
tumor segmentation on limited MR image modalities", CMPB 2023. The reference is the case's own-population
teacher (which sees all four modalities); when there is none and ``batch.full_student`` is given, the
student's own full-modality output (detached), the single-stage / self-distillation option.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import KDBatch, KDLoss, conv1x1, feature, teacher_channel, teacher_feature, zero
from .functional import batch_standardise, resample
from .registry import register_loss

SELF = "_full"  # head towards the student's own full-modality features (not a population code)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> torch.Tensor:
    """``Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij²`` with ``C = BN(z1)ᵀ BN(z2) / N``.

    Args:
        z1, z2: ``(N, D)`` embeddings of the same N samples.
        lambd: off-diagonal (redundancy) weight.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"barlow_twins_loss needs two (N, D) tensors of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}.")
    n = z1.shape[0]
    with torch.autocast(z1.device.type, enabled=False):  # a D x D correlation wants float32
        c = batch_standardise(z1.float(), eps).T @ batch_standardise(z2.float(), eps) / n
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off


def as_samples(x: torch.Tensor) -> torch.Tensor:
    """``(B, D, *S)`` → ``(B·ΠS, D)``: every spatial position of every item is a sample."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


@register_loss("barlow")
class BarlowTwinsLoss(KDLoss):
    """Barlow Twins KD from the own-population teacher (or the full-modality student) to the student.

    The student's bottleneck goes through a 1x1x1 projection head (one per reference: each teacher, keyed
    by population code, and ``_full`` for the student's own full-modality features), is resampled to the
    reference's grid, and both become ``(positions × items, D)`` samples. Items are grouped by reference;
    each group's loss is weighted by its number of items.

    Args:
        lambd: off-diagonal weight λ (0.0051 as in Zbontar et al.).
        normalize: divide by D (the embedding size) so the value is O(1) whatever the channels; False gives
            the paper's sum.
        feature_key: the feature compared (``bottleneck``).
        spatial_dims: 3 for volumes.
    """

    def __init__(self, student_channels: dict[str, int] | None = None,
                 teacher_channels: dict[str, dict[str, int]] | None = None, *, lambd: float = 0.0051,
                 normalize: bool = True, feature_key: str = "bottleneck", spatial_dims: int = 3) -> None:
        super().__init__(student_channels, teacher_channels)
        if feature_key not in self.student_channels:
            raise ValueError(f"The student has no feature '{feature_key}' (has: {sorted(self.student_channels)}).")
        if lambd < 0:
            raise ValueError(f"Barlow Twins lambd must be >= 0, got {lambd}.")
        self.lambd, self.normalize, self.feature_key = float(lambd), bool(normalize), feature_key
        cs = self.student_channels[feature_key]
        heads = {code: conv1x1(cs, teacher_channel(self.teacher_channels, code, feature_key), spatial_dims)
                 for code in self.teacher_channels}
        heads[SELF] = conv1x1(cs, cs, spatial_dims)
        self.heads = nn.ModuleDict(heads)

    def reference(self, batch: KDBatch, item: int) -> str | None:
        """Which reference supervises ``item``: its population's teacher, else ``_full``, else none."""
        pop = batch.populations[item]
        if pop in batch.teachers:
            return pop
        return SELF if batch.full_student is not None else None

    def forward(self, batch: KDBatch) -> torch.Tensor:
        student = feature(batch.student, self.feature_key, "student")
        groups: dict[str, list[int]] = {}
        for b in range(batch.batch_size):
            ref = self.reference(batch, b)
            if ref is not None:
                groups.setdefault(ref, []).append(b)
        loss = zero(student)
        for ref, items in groups.items():
            if ref not in self.heads:
                raise ValueError(f"No Barlow Twins head for teacher '{ref}'; heads exist for {sorted(self.heads)}.")
            if ref == SELF:
                target = feature(batch.full_student, self.feature_key, "full-modality student").detach()
            else:
                target = teacher_feature(batch, ref, self.feature_key)
            idx = torch.tensor(items, device=student.device)
            target = target[idx]
            z1 = as_samples(resample(self.heads[ref](student[idx]).float(), target.shape[2:]))
            z2 = as_samples(target)
            if z1.shape[0] < 2:
                continue  # one sample has no batch statistics
            value = barlow_twins_loss(z1, z2, self.lambd)
            if self.normalize:
                value = value / z1.shape[1]
            loss = loss + value * len(items) / batch.batch_size
        # Heads unused in this batch stay in the graph with a zero gradient (DDP needs every parameter used).
        unused = [p for ref, head in self.heads.items() if ref not in groups for p in head.parameters()]
        if unused:
            loss = loss + 0.0 * sum(p.sum() for p in unused)
        return loss

    def hparams(self) -> dict:
        return {"lambda": self.lambd}
