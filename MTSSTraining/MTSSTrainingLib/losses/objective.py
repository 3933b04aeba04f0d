"""The training objective: a weighted sum of registered terms, e.g. ``1.0*gt + 0.5*output(T=2.0)``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import KDBatch, KDLoss
from .registry import accepted_params, available_losses, build_loss, loss_class


class KDObjective(nn.Module):
    """Weighted sum of :class:`KDLoss` terms.

    The terms' trainable parts (projection heads) are parameters of this module: give
    ``objective.parameters()`` to the optimiser and keep ``objective.state_dict()`` in checkpoints.

    Args:
        terms: ``{name: (loss, weight)}``; the order is kept in ``__str__`` and the logged values.
    """

    def __init__(self, terms: dict[str, tuple[KDLoss, float]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("A KDObjective needs at least one term, e.g. {'gt': (GroundTruthLoss(), 1.0)}.")
        self.terms = nn.ModuleDict({name: loss for name, (loss, _) in terms.items()})
        self.weights: dict[str, float] = {}
        for name, (_, weight) in terms.items():
            self.set_weight(name, weight)

    def set_weight(self, name: str, weight: float) -> None:
        """Change one term's weight (e.g. a warm-up schedule); a weight of 0 skips the term's computation."""
        if name not in self.terms:
            raise ValueError(f"No term '{name}' in this objective; it has: {', '.join(self.terms)}.")
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"The weight of KD term '{name}' must be a finite number >= 0, got {weight}.")
        self.weights[name] = weight

    def forward(self, batch: KDBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Returns the weighted total and each term's unweighted value (floats, for logging)."""
        total: torch.Tensor | None = None
        values: dict[str, float] = {}
        for name, loss in self.terms.items():
            weight = self.weights[name]
            if weight == 0.0:
                values[name] = 0.0
                continue
            value = loss(batch)
            values[name] = float(value.detach())
            total = weight * value if total is None else total + weight * value
        if total is None:
            total = batch.student.logits.float().sum() * 0.0
        return total, values

    def __str__(self) -> str:
        return " + ".join(f"{self.weights[name]}*{loss.describe()}" for name, loss in self.terms.items())


def _split_params(names: list[str], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Route options to terms: ``output={"temperature": 2}`` for one term, or a flat ``temperature=2`` that
    goes to every term taking it."""
    per_term: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in params.items():
        if key in per_term:
            if not isinstance(value, dict):
                raise ValueError(f"Options for KD term '{key}' must be a dict, got {value!r}.")
            per_term[key].update(value)
            continue
        takers = [name for name in names if key in accepted_params(name)]
        if not takers:
            offered = {name: accepted_params(name) for name in names}
            raise ValueError(f"No KD term among {names} takes option '{key}'; options by term: {offered}.")
        for name in takers:
            per_term[name].setdefault(key, value)
    return per_term


def build_objective(kd: list[str] | tuple[str, ...] | str, weights: dict[str, float] | None,
                    student_channels: dict[str, int], teacher_channels: dict[str, dict[str, int]],
                    **params: Any) -> KDObjective:
    """Build ``gt`` plus the named KD terms, weighted.

    Args:
        kd: term names (``output latent barlow region attention``; a comma-separated string works too);
            ``gt`` is always included, first.
        weights: ``{term: weight}``; terms not named get their class's ``default_weight`` (1.0).
        student_channels: the student's ``feature_channels``.
        teacher_channels: each teacher's ``feature_channels``, keyed by population code.
        **params: term options, flat (``temperature=2.0``, given to every term that takes it) or per term
            (``output={"temperature": 2.0}``).
    """
    if isinstance(kd, str):
        kd = [t for t in kd.replace(",", " ").split()]
    names = ["gt"]
    for term in kd:
        loss_class(term)  # unknown names fail here, with the near match
        if term not in names:
            names.append(term)
    weights = dict(weights or {})
    stray = sorted(set(weights) - set(names))
    if stray:
        hint = [w for w in stray if w not in available_losses()]
        what = f"unknown term(s) {hint}" if hint else f"term(s) {stray} not selected"
        raise ValueError(f"Weights given for {what}; the objective has: {', '.join(names)}.")
    per_term = _split_params(names, params)
    terms = {}
    for name in names:
        loss = build_loss(name, student_channels, teacher_channels, **per_term[name])
        terms[name] = (loss, weights.get(name, loss.default_weight))
    return KDObjective(terms)
