"""The training objective: ground truth plus registered knowledge-distillation terms.

Terms (each a small ``KDLoss`` in its own file, registered by name):

- ``gt``: Dice + BCE on WT, TC, ET with deep supervision, respecting partial labels (nnU-Net).
- ``output``: temperature-scaled per-region output KD, population-aware teacher mixture (MTSS-KDNet).
- ``latent``: bottleneck feature KD through a projection head per teacher (FitNets, MTSS-KDNet).
- ``barlow``: Barlow Twins between the missing-modality student and a full-modality reference (Choi et al. 2023).
- ``region``: expert-region and agreed-background supervision (MS-KD, Feng et al. 2021).
- ``attention``: coarse and fine attention-map transfer (Teach-Former, Hossain et al. 2025).

Typical use::

    objective = build_objective(["output", "latent"], {"latent": 0.1}, student.feature_channels,
                                {code: t.feature_channels for code, t in teachers.items()}, temperature=2.0)
    weights = population_weights(pops, order, dice_matrix)
    total, parts = objective(KDBatch(...))
"""

from __future__ import annotations

from . import attention, barlow, gt, latent, output, region  # noqa: F401  (registers the terms)
from .base import KDBatch, KDLoss
from .objective import KDObjective, build_objective
from .registry import available_losses, build_loss, register_loss
from .weighting import population_weights

__all__ = [
    "KDBatch",
    "KDLoss",
    "KDObjective",
    "available_losses",
    "build_loss",
    "build_objective",
    "population_weights",
    "register_loss",
]
