"""What a distillation term sees (:class:`KDBatch`) and what it must be (:class:`KDLoss`).

Teachers are keyed by population code (``GLI PED SSA MEN MET``), never by position: the column order of
``teacher_weights`` is spelled out in ``teacher_order``. The registry (:func:`register_loss`,
:func:`build_loss`, :func:`available_losses`) and the weighted sum (:class:`KDObjective`,
:func:`build_objective`) live in ``registry.py`` and ``objective.py`` and can be imported from here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from MTSSSegmenterLib.constants import REGION_CODES
from MTSSSegmenterLib.networks import NetOutput

ALL_REGIONS: tuple[bool, bool, bool] = (True, True, True)


@dataclass
class KDBatch:
    """One training batch as the distillation terms see it.

    Attributes:
        student: the student's output on the (possibly modality-dropped) input: logits ``(B, 3, *S)``,
            deep-supervision logits (finest first) and named features.
        teachers: teacher outputs keyed by population code, computed under ``no_grad`` on the full input;
            their logits have the student's spatial size.
        populations: population code of each batch item (length B).
        target: ``(B, 3, *S)`` float region targets WT, TC, ET.
        label_mask: ``(B, 3)`` float, 1 where that region channel is labelled for that item.
        teacher_weights: ``(B, T)`` population-aware weights (rows sum to 1), columns in ``teacher_order``.
        teacher_order: population codes of the teachers, the column order of ``teacher_weights``.
        expert_regions: per teacher, which region channels (WT, TC, ET) it was trained with labels for;
            a teacher missing here is taken as expert on all three.
        full_student: the student's output on the same case with all four modalities (optional; used by
            single-stage self-distillation and, when given, by the ground-truth term).
    """

    student: NetOutput
    teachers: dict[str, NetOutput]
    populations: list[str]
    target: torch.Tensor
    label_mask: torch.Tensor
    teacher_weights: torch.Tensor
    teacher_order: list[str]
    expert_regions: dict[str, tuple[bool, bool, bool]]
    full_student: NetOutput | None = None

    def __post_init__(self) -> None:
        logits = self.student.logits
        b, n_regions = logits.shape[0], len(REGION_CODES)
        if len(self.populations) != b:
            raise ValueError(f"KDBatch has {len(self.populations)} population codes for a batch of {b}.")
        if tuple(self.target.shape) != tuple(logits.shape):
            raise ValueError(f"KDBatch target shape {tuple(self.target.shape)} differs from the student logits "
                             f"{tuple(logits.shape)}.")
        if tuple(self.label_mask.shape) != (b, n_regions):
            raise ValueError(f"KDBatch label_mask must be ({b}, {n_regions}), got {tuple(self.label_mask.shape)}.")
        if tuple(self.teacher_weights.shape) != (b, len(self.teacher_order)):
            raise ValueError(f"KDBatch teacher_weights must be ({b}, {len(self.teacher_order)}) for teachers "
                             f"{self.teacher_order}, got {tuple(self.teacher_weights.shape)}.")
        missing = [code for code in self.teacher_order if code not in self.teachers]
        if missing:
            raise ValueError(f"KDBatch teacher_order names {missing} but teachers has only {sorted(self.teachers)}.")
        for code, out in self.teachers.items():
            if tuple(out.logits.shape[2:]) != tuple(logits.shape[2:]):
                raise ValueError(f"Teacher '{code}' logits have spatial size {tuple(out.logits.shape[2:])}, the "
                                 f"student's {tuple(logits.shape[2:])}; run teachers on the student's patch.")
        for code, regions in self.expert_regions.items():
            if len(regions) != n_regions:
                raise ValueError(f"expert_regions['{code}'] must have {n_regions} flags (WT, TC, ET), got {regions}.")

    @property
    def batch_size(self) -> int:
        return int(self.student.logits.shape[0])

    def weights(self, like: torch.Tensor) -> torch.Tensor:
        """``teacher_weights`` as float32 on ``like``'s device."""
        return self.teacher_weights.to(device=like.device, dtype=torch.float32)

    def expert(self, code: str) -> tuple[bool, bool, bool]:
        """Region channels teacher ``code`` was trained with labels for (all three when not declared)."""
        return tuple(bool(v) for v in self.expert_regions.get(code, ALL_REGIONS))  # type: ignore[return-value]


def feature(output: NetOutput, key: str, who: str) -> torch.Tensor:
    """``output.features[key]`` as float32, with an error naming what is missing and what exists."""
    try:
        return output.features[key].float()
    except KeyError:
        raise ValueError(f"The {who} output has no feature '{key}' (has: {', '.join(output.features) or 'none'}); "
                         "feature-level KD terms need teacher features, not only cached logits.") from None


def teacher_feature(batch: KDBatch, code: str, key: str) -> torch.Tensor:
    """A teacher's feature, detached (no gradient ever flows into a teacher)."""
    return feature(batch.teachers[code], key, f"teacher '{code}'").detach()


def zero(like: torch.Tensor) -> torch.Tensor:
    """A float32 scalar 0 that stays in ``like``'s autograd graph (keeps DDP and ``backward`` happy)."""
    return like.float().sum() * 0.0


def conv1x1(in_channels: int, out_channels: int, spatial_dims: int = 3) -> nn.Module:
    """The projection head of feature-level terms: a trainable 1x1(x1) convolution."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
    return conv(in_channels, out_channels, kernel_size=1)


def teacher_channel(teacher_channels: dict[str, dict[str, int]], code: str, key: str) -> int:
    try:
        return int(teacher_channels[code][key])
    except KeyError:
        raise ValueError(f"teacher_channels['{code}'] lacks '{key}' (has: {sorted(teacher_channels.get(code, {}))}); "
                         "pass each teacher network's feature_channels.") from None


class KDLoss(nn.Module):
    """Base class of every term of the training objective.

    Contract:
        * a subclass is registered by name with ``@register_loss("name")`` and cites its paper;
        * ``__init__(student_channels, teacher_channels, **params)`` builds any trainable part (projection
          heads, keyed by teacher population code) eagerly from the channel dicts and validates params;
        * ``forward(batch: KDBatch)`` returns a float32 scalar; gradients reach the student and the term's
          own parameters, never a teacher (teacher tensors are detached);
        * a term with nothing to supervise in a batch returns a zero that stays in the graph.

    Attributes:
        name: registry name, set by :func:`register_loss`.
        default_weight: weight used by :func:`build_objective` when none is given.
    """

    name: str = "?"
    default_weight: float = 1.0

    def __init__(self, student_channels: dict[str, int] | None = None,
                 teacher_channels: dict[str, dict[str, int]] | None = None) -> None:
        super().__init__()
        self.student_channels = dict(student_channels or {})
        self.teacher_channels = {k: dict(v) for k, v in (teacher_channels or {}).items()}

    def hparams(self) -> dict[str, Any]:
        """The parameters shown by :meth:`describe` (override in subclasses)."""
        return {}

    def describe(self) -> str:
        """Short text such as ``output(T=2.0)``, used in :class:`KDObjective`'s ``__str__``."""
        params = self.hparams()
        inner = ", ".join(f"{k}={v}" for k, v in params.items())
        return f"{self.name}({inner})" if inner else self.name

    def forward(self, batch: KDBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())


_LAZY = {"register_loss": "registry", "available_losses": "registry", "build_loss": "registry",
         "KDObjective": "objective", "build_objective": "objective"}


def __getattr__(name: str) -> Any:
    """``from MTSSTrainingLib.losses.base import build_objective`` works too (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
