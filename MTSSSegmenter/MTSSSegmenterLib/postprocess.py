"""Small-component removal: the specks a radiologist would otherwise delete by hand.

A network thresholded voxel by voxel leaves a few isolated specks of "tumour" away from the lesion (a
vessel bright on T1c, a fold of FLAIR-bright cortex). Each one is a false-positive lesion in the BraTS 2023
lesion-wise metrics, which average over lesions, so one 0.1 mL speck halves the lesion-wise Dice of a case
with one tumour. BraTS 2023 solutions removed them with per-region minimum sizes chosen on validation data;
MTSS does the same with sizes in millilitres (so they hold on any output grid: 1 mm, 5 mm slices), chosen by
``mtss calibrate-components`` and kept in the bundle's ``inference.min_component_ml`` ([WT, TC, ET]).

The regions are nested (ET inside TC inside WT), and removal keeps them so, region by region:

- a whole-tumour component below the WT size is erased (label 0);
- a tumour-core component (labels 1 and 3) below the TC size becomes oedema (label 2): it stays tumour;
- an enhancing component (label 3) below the ET size becomes necrosis (label 1): it stays core.

Components are 26-connected, as in the lesion-wise metrics.

On thick slices a second rule removes whole-tumour components **without a confident core**: thick slices
smear the signal, and a bias-shaded or FLAIR-bright area away from the tumour can pass the threshold as a
component of several millilitres whose probability hardly ever reaches certainty. On the default model's
40 clinical validation studies (2-6 mm series), 4 of the 7 false-positive whole-tumour components of 1 mL or
more had at most 6 % of their voxels at a whole-tumour probability of 0.99 or more (the other 3: 20-27 %);
of the 51 true ones, all but a 1 mL metastasis (0 %) had 19 % or more. The bundle keeps the rule in
``inference.thick_slices.confident_core`` (:func:`MTSSSegmenterLib.bundle.confident_core_rule`), chosen by
``mtss calibrate-confident-core`` on clinical studies it never trained on; a removed component is erased with
everything inside it. The largest
component always stays: the rule is for the extra components away from the tumour, and a large tumour can be
doubtful all through (a 115 mL one on a synthetic test draw had under 10 % of its voxels at 0.99, and a first
version of the rule erased it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .constants import REGION_CODES
from .errors import BundleError

_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connected

# region -> (labels it holds, label its removed voxels take)
_RULES: dict[str, tuple[tuple[int, ...], int]] = {"WT": ((1, 2, 3), 0), "TC": ((1, 3), 2), "ET": ((3,), 1)}


def min_component_sizes(meta: dict[str, Any]) -> tuple[float, float, float] | None:
    """A bundle's ``inference.min_component_ml`` as (WT, TC, ET) millilitres, checked (None: none set)."""
    value = (meta.get("inference") or {}).get("min_component_ml")
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                       for v in value)):
        raise BundleError("inference.min_component_ml must be three non-negative volumes in mL (WT, TC, ET), "
                          f"got {value!r}; remove it to keep every component.")
    return (float(value[0]), float(value[1]), float(value[2]))


def remove_small_components(labels: np.ndarray, spacing: Sequence[float], min_ml: Sequence[float]
                            ) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Remove each region's connected components smaller than its size (see the module docstring).

    Args:
        labels: BraTS 2023 label map (0 background, 1 NCR, 2 ED, 3 ET), any integer dtype.
        spacing: voxel size in mm (any axis order: only the product is used).
        min_ml: (WT, TC, ET) minimum component volumes in mL; 0 keeps every component of that region.

    Returns:
        The new label map (a copy, same dtype) and, per region, the number and volume (mL) of the
        components it removed: ``{"WT": {"components": 2, "ml": 0.12}, ...}``.
    """
    out = np.array(labels, copy=True)
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    if not voxel_ml > 0:
        raise ValueError(f"Voxel spacing must be positive, got {tuple(spacing)}.")
    removed: dict[str, dict[str, float]] = {}
    boxes = ndimage.find_objects((out > 0).astype(np.uint8))  # nothing outside the tumour's box can change
    view = out[boxes[0]] if boxes and boxes[0] is not None else out[:0]
    for region, limit in zip(REGION_CODES, min_ml):
        held, becomes = _RULES[region]
        count, volume = 0, 0.0
        mask = np.isin(view, held)
        if limit > 0 and mask.any():
            components, n = ndimage.label(mask, structure=_CONNECTIVITY)
            sizes = np.bincount(components.ravel(), minlength=n + 1)
            small = np.flatnonzero(sizes * voxel_ml < limit)
            small = small[small > 0]
            if small.size:
                view[np.isin(components, small)] = becomes
                count, volume = int(small.size), float(sizes[small].sum()) * voxel_ml
        removed[region] = {"components": count, "ml": round(volume, 4)}
    return out, removed


def remove_unconfident_components(labels: np.ndarray, wt_probability: np.ndarray, spacing: Sequence[float],
                                  probability: float, min_fraction: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Erase the whole-tumour components less than ``min_fraction`` of whose voxels reach a whole-tumour
    probability of ``probability``, except the largest (see the module docstring).

    Args:
        labels: BraTS 2023 label map (0 background, 1 NCR, 2 ED, 3 ET).
        wt_probability: the network's whole-tumour probability on the label map's grid.
        spacing: voxel size in mm (any axis order: only the product is used).
        probability, min_fraction: the rule; ``min_fraction`` 0 keeps everything.

    Returns:
        The new label map (a copy) and ``{"components": n, "ml": volume, "largest_ml": volume}`` removed.
    """
    labels = np.asarray(labels)
    wt_probability = np.asarray(wt_probability)
    if wt_probability.shape != labels.shape:
        raise ValueError(f"The probability map {wt_probability.shape} is not on the label map's grid {labels.shape}.")
    out = np.array(labels, copy=True)
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    found: dict[str, Any] = {"components": 0, "ml": 0.0, "largest_ml": 0.0}
    boxes = ndimage.find_objects((out > 0).astype(np.uint8))
    if min_fraction <= 0 or not boxes or boxes[0] is None:
        return out, found
    view, p = out[boxes[0]], wt_probability[boxes[0]]
    components, n = ndimage.label(view > 0, structure=_CONNECTIVITY)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sure = np.bincount(components.ravel(), weights=(p >= probability).ravel(), minlength=n + 1)
    doubtful = np.flatnonzero(sure < min_fraction * sizes)
    doubtful = doubtful[(doubtful > 0) & (doubtful != np.argmax(sizes[1:]) + 1)]  # the largest stays
    if doubtful.size:
        view[np.isin(components, doubtful)] = 0
        found = {"components": int(doubtful.size), "ml": round(float(sizes[doubtful].sum()) * voxel_ml, 4),
                 "largest_ml": round(float(sizes[doubtful].max()) * voxel_ml, 4)}
    return out, found


def describe_removed(summary: dict[str, Any]) -> str:
    """``"WT 2 (0.12 mL), TC 1 (0.05 mL), below 1/0.1/0 mL (WT/TC/ET); 1 whole-tumour component (8.23 mL)
    without a confident core (under 10 % of it at p >= 0.99)"`` from a segmentation summary's
    ``small_components_removed``, ``min_component_ml``, ``unconfident_components_removed`` and
    ``confident_core``; empty when nothing was removed."""
    removed = summary.get("small_components_removed") or {}
    parts = [f"{region} {r['components']} ({r['ml']:.2f} mL)" for region, r in removed.items() if r.get("components")]
    text = ""
    if parts:
        sizes = "/".join(f"{v:g}" for v in summary.get("min_component_ml") or [])
        text = ", ".join(parts) + (f", below {sizes} mL (WT/TC/ET)" if sizes else "")
    doubtful, rule = summary.get("unconfident_components_removed") or {}, summary.get("confident_core") or {}
    if doubtful.get("components"):
        n = doubtful["components"]
        text += ("; " if text else "") + (
            f"{n} whole-tumour component{'s' if n > 1 else ''} ({doubtful['ml']:.2f} mL) without a confident core"
            + (f" (under {rule['min_fraction']:.0%} of it at p >= {rule['probability']:g})" if rule else ""))
    return text


__all__ = ["describe_removed", "min_component_sizes", "remove_small_components", "remove_unconfident_components"]
