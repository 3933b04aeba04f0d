"""Population-aware teacher weights (MTSS-KDNet): each case's own-population teacher dominates.

The other teachers share the rest by how well they did on the case's population in validation (the
cross-population Dice matrix every ``train-teacher`` run records): a softmax of their Dice over a
temperature. Hard routing sends each case to one teacher only.
"""

from __future__ import annotations

import difflib
import logging
import math

import torch

log = logging.getLogger(__name__)

MODES = ("soft", "hard")


def _dice_row(dice_matrix: dict[str, dict[str, float]] | None, teachers: list[str], population: str) -> list[float] | None:
    """Validation Dice of ``teachers`` on ``population``, or None if the matrix lacks any of them."""
    if dice_matrix is None or not teachers:
        return None
    row = []
    for code in teachers:
        value = dice_matrix.get(code, {}).get(population)
        if value is None or not math.isfinite(float(value)):
            log.warning("No validation Dice of teacher %s on population %s; weighting the other teachers "
                        "uniformly for %s cases.", code, population, population)
            return None
        row.append(float(value))
    return row


def _spread(teachers: list[str], dice: list[float] | None, temperature: float) -> torch.Tensor:
    """Weights over ``teachers`` summing to 1: softmax(dice / temperature), uniform without Dice."""
    if dice is None:
        return torch.full((len(teachers),), 1.0 / len(teachers), dtype=torch.float64)
    return torch.softmax(torch.tensor(dice, dtype=torch.float64) / temperature, dim=0)


def population_weights(populations: list[str], teacher_order: list[str],
                       dice_matrix: dict[str, dict[str, float]] | None, mode: str = "soft",
                       own_weight: float = 0.7, temperature: float = 0.1) -> torch.Tensor:
    """Per-case teacher weights.

    Args:
        populations: the population code of each case (length B).
        teacher_order: the teachers' population codes; the column order of the result.
        dice_matrix: ``dice_matrix[teacher][population]``: that teacher's validation Dice (e.g. the mean
            of WT, TC, ET) on that population; ``None`` for uniform sharing.
        mode: ``soft``: the case's own teacher gets ``own_weight``, the others share ``1 - own_weight``
            by ``softmax(dice / temperature)`` of their Dice on the case's population; a case whose
            population has no teacher puts all its mass on that softmax. ``hard``: one-hot on the own
            teacher, or on the best-Dice teacher when the population has none (uniform if no Dice).
        own_weight: the own teacher's share in soft mode, in [0, 1] (1 when it is the only teacher).
        temperature: softmax temperature on Dice values (> 0; 0.1 makes a Dice gap of 0.1 a factor e).

    Returns:
        ``(B, T)`` float32 tensor whose rows sum to 1.
    """
    if mode not in MODES:
        near = difflib.get_close_matches(str(mode), MODES, n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise ValueError(f"Unknown teacher weighting mode '{mode}'.{hint} Known: {', '.join(MODES)}.")
    if not teacher_order:
        raise ValueError("population_weights needs at least one teacher in teacher_order.")
    if len(set(teacher_order)) != len(teacher_order):
        raise ValueError(f"teacher_order has duplicate population codes: {teacher_order}.")
    if not 0.0 <= own_weight <= 1.0:
        raise ValueError(f"own_weight must be in [0, 1], got {own_weight}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")

    out = torch.zeros(len(populations), len(teacher_order), dtype=torch.float64)
    for b, pop in enumerate(populations):
        if mode == "hard":
            if pop in teacher_order:
                out[b, teacher_order.index(pop)] = 1.0
            else:
                dice = _dice_row(dice_matrix, teacher_order, pop)
                if dice is None:
                    out[b] = 1.0 / len(teacher_order)
                else:
                    out[b, max(range(len(dice)), key=dice.__getitem__)] = 1.0
            continue
        if pop not in teacher_order:
            out[b] = _spread(teacher_order, _dice_row(dice_matrix, teacher_order, pop), temperature)
            continue
        own = teacher_order.index(pop)
        others = [code for code in teacher_order if code != pop]
        if not others:
            out[b, own] = 1.0
            continue
        share = _spread(others, _dice_row(dice_matrix, others, pop), temperature) * (1.0 - own_weight)
        out[b, own] = own_weight
        out[b, [teacher_order.index(code) for code in others]] = share
    return out.float()
