"""Validation during training: held-out cases of every population, per-population Dice matrix.

Each held-out case is segmented whole with the inference path's sliding window
(:func:`MTSSSegmenterLib.inference.predict`), thresholded at 0.5 into nested labels (the thresholds a bundle
ships with are chosen after training, :mod:`.calibration`), and
scored with :func:`MTSSSegmenterLib.metrics.dice` per region, at the working spacing (no resampling
back to the original grid: fast, and what training optimises). Regions a case's labels do not mark
(partial labels) are left out of its scores. Under ``torchrun`` the processes score disjoint shares and
gather them.

The result, kept in a bundle's ``meta["metrics"]["validation"]``::

    {"populations": {"GLI": {"WT": 0.91, "TC": 0.85, "ET": 0.80, "mean": 0.853, "n_cases": 4}, ...},
     "macro": {"WT": ..., "TC": ..., "ET": ..., "mean": ...}, "subsets": {"t1c+t2f": {...same...}}}

For a teacher this row set is the cross-population Dice matrix that population-aware distillation weighs
teachers with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from MTSSSegmenterLib.constants import MODALITY_CODES, POPULATION_CODES, REGION_CODES
from MTSSSegmenterLib.inference import predict
from MTSSSegmenterLib.metrics import dice
from MTSSSegmenterLib.preprocess import labels_to_regions, regions_to_labels

from .cache import CaseCache
from .distributed import DistContext

log = logging.getLogger(__name__)


def subset_name(modalities: Sequence[str]) -> str:
    return "+".join(m for m in MODALITY_CODES if m in modalities)


def keep_vector(modalities: Sequence[str] | None) -> np.ndarray | None:
    if modalities is None:
        return None
    return np.array([1.0 if m in modalities else 0.0 for m in MODALITY_CODES], dtype=np.float32)


def score_case(network: torch.nn.Module, case: Any, roi_size: Sequence[int], device: torch.device, amp: bool,
               divisor: int, modalities: Sequence[str] | None = None, overlap: float = 0.25) -> dict[str, float]:
    """Dice per labelled region of one cached case (NaN for regions its labels do not mark)."""
    keep = keep_vector(modalities)
    if keep is not None and not (keep * case.present).any():
        return {r: math.nan for r in REGION_CODES}
    x = torch.from_numpy(case.network_input(keep))[None]
    probs, _, _ = predict(network, x, roi_size, overlap, device, amp=amp, divisor=divisor)
    pred = labels_to_regions(regions_to_labels(probs[0] >= 0.5)).astype(bool)
    truth = labels_to_regions(np.asarray(case.seg)).astype(bool)
    return {r: (float(dice(pred[i], truth[i])) if case.label_mask[i] > 0 else math.nan)
            for i, r in enumerate(REGION_CODES)}


def _nanmean(values: list[float | None]) -> float | None:
    """Mean of the finite values; None (JSON null) when there is none (e.g. TC of whole-tumour-only data)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarise_scores(rows: list[tuple[str, dict[str, float]]]) -> dict[str, Any]:
    """``[(population, {region: dice})]`` -> per-population means, ``mean`` over regions, and macro.

    Regions no case's labels mark are None (valid JSON, unlike NaN)."""
    pops: dict[str, Any] = {}
    for code in POPULATION_CODES:
        mine = [s for p, s in rows if p == code]
        if not mine:
            continue
        entry = {r: _nanmean([s[r] for s in mine]) for r in REGION_CODES}
        entry["mean"] = _nanmean([entry[r] for r in REGION_CODES])
        entry["n_cases"] = len(mine)
        pops[code] = entry
    macro = {r: _nanmean([pops[p][r] for p in pops]) for r in REGION_CODES}
    macro["mean"] = _nanmean([macro[r] for r in REGION_CODES])
    return {"populations": pops, "macro": macro}


def validate(network: torch.nn.Module, cache: CaseCache, names: Sequence[str], roi_size: Sequence[int],
             device: torch.device, amp: bool, divisor: int, dist: DistContext | None = None,
             subsets: Sequence[Sequence[str]] = (), overlap: float = 0.25) -> dict[str, Any]:
    """Per-population Dice of ``network`` on the cached cases ``names`` (all modalities, then ``subsets``)."""
    dist = dist or DistContext()
    was_training = network.training
    network.eval()
    mine = list(names)[dist.rank::dist.world]
    rows: dict[str, list[tuple[str, dict[str, float]]]] = {"all": []}
    for subset in subsets:
        rows[subset_name(subset)] = []
    for name in mine:
        case = cache.get(name)
        rows["all"].append((case.population, score_case(network, case, roi_size, device, amp, divisor, None, overlap)))
        for subset in subsets:
            rows[subset_name(subset)].append(
                (case.population, score_case(network, case, roi_size, device, amp, divisor, subset, overlap)))
    network.train(was_training)
    gathered = dist.gather(rows)
    merged = {key: [row for part in gathered for row in part[key]] for key in rows}
    out = summarise_scores(merged["all"])
    if subsets:
        out["subsets"] = {key: summarise_scores(value) for key, value in merged.items() if key != "all"}
    out["n_cases"] = len(merged["all"])
    return out


def dice_matrix_row(validation: dict[str, Any]) -> dict[str, float]:
    """``{population: mean Dice}`` from a validation result (a teacher's row of the Dice matrix)."""
    return {p: float(v["mean"]) for p, v in validation.get("populations", {}).items()
            if v.get("mean") is not None and math.isfinite(float(v["mean"]))}
