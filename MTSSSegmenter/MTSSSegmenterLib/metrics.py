"""Segmentation metrics: Dice, HD95 and the BraTS 2023 lesion-wise Dice and HD95.

The lesion-wise metrics follow the official BraTS 2023 evaluation (Saluja et al., "BraTS 2023
lesion-wise performance metrics", github.com/rachitsaluja/BraTS-2023-Metrics; used for ranking in all
BraTS 2023 segmentation challenges), per region WT, TC, ET:

1. ground-truth and predicted connected components, 26-connected;
2. the ground truth is dilated with ``generate_binary_structure(3, 2)`` for the population's number of
   iterations (3 for GLI, SSA, PED; 1 for MEN, MET) and truth components that fall in one dilated
   component are merged into one lesion;
3. every predicted component touching a lesion's dilated footprint is its match; Dice and HD95 are
   computed between the union of the matches and the undilated lesion; an unmatched lesion scores
   Dice 0 and HD95 374 mm;
4. predicted components matching no lesion are false positives, whatever their size;
5. lesions of volume at or below the population's threshold (50 mm^3; 2 mm^3 for MET) leave both sums,
   and the predicted components matching them are not false positives;
6. Dice = sum Dice_i / (L + FP), HD95 = (sum HD95_i + 374 FP) / (L + FP); with L + FP = 0 (nothing to
   score) Dice is 1 and HD95 0.

HD95, as in the official script (DeepMind ``surface_distance.compute_robust_hausdorff(.., 95)``), is
the larger of the two directed 95th percentiles of surface-to-surface distances, each percentile taken
as an observed distance (no interpolation). Surfaces here are the mask voxels with a 6-connected
background neighbour (``mask & ~binary_erosion(mask)``) and distances are exact Euclidean distances in
mm between surface voxel centres (what ``distance_transform_edt(.., sampling=spacing)`` gives, found
with a k-d tree); the official script weights surface elements by area on the voxel-corner grid, so
values can differ from it by a fraction of a voxel.

Everything is computed on a crop around the masks (exact, since nothing outside can change the result),
so a 240x240x155 case takes well under a second per region.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np
from scipy import ndimage, spatial

from . import constants
from .constants import Population
from .errors import InputError

logger = logging.getLogger(__name__)

#: HD95 (mm) given when exactly one of prediction and truth is empty, to an unmatched lesion and to
#: each false positive: the BraTS convention (about the diagonal of the 240x240x155 1 mm volume).
BRATS_HD95_PENALTY_MM = 374.0
#: Metrics per region that :func:`summarise` aggregates.
SUMMARY_KEYS: tuple[str, ...] = ("dice", "hd95", "lesion_dice", "lesion_hd95")

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)


class LesionScore(NamedTuple):
    """One ground-truth lesion (after merging by dilation)."""

    volume_mm3: float
    dice: float
    hd95: float


@dataclass
class LesionWiseResult:
    """BraTS 2023 lesion-wise scores of one region of one case.

    Attributes:
        dice: lesion-wise Dice.
        hd95: lesion-wise HD95 in mm.
        n_lesions: lesions above the volume threshold (the L of the formulas).
        n_false_positives: predicted components matching no lesion (the FP of the formulas).
        lesions: every lesion, small ones included, as (volume_mm3, dice, hd95).
        n_detected: lesions above the threshold with at least one matching predicted component.
        n_small_lesions: lesions at or below the volume threshold, left out of both sums.
    """

    dice: float
    hd95: float
    n_lesions: int
    n_false_positives: int
    lesions: list[LesionScore] = field(default_factory=list)
    n_detected: int = 0
    n_small_lesions: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        out = asdict(self)
        out["lesions"] = [list(map(float, lesion)) for lesion in self.lesions]
        return out


# --------------------------------------------------------------------------- input checks


def _as_mask(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"The {name} mask has shape {array.shape}; a 3-D array is needed.")
    return array.astype(bool, copy=False)


def _as_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _as_mask(pred, "predicted"), _as_mask(truth, "ground-truth")
    if pred.shape != truth.shape:
        raise InputError(
            f"The prediction has shape {pred.shape} but the ground truth {truth.shape}; "
            "resample the prediction onto the ground-truth grid first."
        )
    return pred, truth


def _as_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(
            f"Voxel spacing {tuple(spacing)} is not valid; give three positive sizes in mm, "
            "one per array axis."
        )
    return values  # type: ignore[return-value]


def _as_population(population: str | Population) -> Population:
    return population if isinstance(population, Population) else constants.population(population)


# --------------------------------------------------------------------------- geometry helpers


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` voxels (clipped to the array), or None if empty."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + margin + 1, mask.shape[axis])))
    return tuple(box)


def _grow(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (or on the array border)."""
    return mask & ~ndimage.binary_erosion(mask)


def _observed_percentile(distances: np.ndarray, percent: float) -> float:
    """The smallest distance with at least ``percent`` % of the distances at or below it."""
    return float(np.percentile(distances, percent, method="inverted_cdf"))


def _hd95_both_present(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """HD95 of two non-empty masks that do not touch the array border unless the image's own.

    Nearest-surface distances are exact Euclidean distances between surface voxel centres in mm,
    found with a k-d tree: the same values as ``distance_transform_edt(~surface, sampling=spacing)``
    read at the other surface, without a pass over every voxel of the crop (which for a speckled
    prediction is the whole volume).
    """
    scale = np.asarray(spacing, dtype=np.float64)
    pred_points = np.argwhere(_surface(pred)) * scale
    truth_points = np.argwhere(_surface(truth)) * scale
    to_truth, _ = spatial.KDTree(truth_points).query(pred_points, k=1)
    to_pred, _ = spatial.KDTree(pred_points).query(truth_points, k=1)
    return max(_observed_percentile(to_truth, 95.0), _observed_percentile(to_pred, 95.0))


# --------------------------------------------------------------------------- voxel-wise metrics


def region_mask(label_map: np.ndarray, region_code: str) -> np.ndarray:
    """Boolean mask of an evaluation region (``WT``, ``TC`` or ``ET``) in a BraTS 2023 label map."""
    return np.isin(np.asarray(label_map), constants.region(region_code).labels)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|P&T| / (|P| + |T|); 1.0 when both masks are empty."""
    pred, truth = _as_pair(pred, truth)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95 % Hausdorff distance in mm (the larger of the two directed 95th percentiles).

    Both empty gives 0.0; exactly one empty gives :data:`BRATS_HD95_PENALTY_MM` (374).
    """
    pred, truth = _as_pair(pred, truth)
    spacing = _as_spacing(spacing)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if not has_pred or not has_truth:
        return BRATS_HD95_PENALTY_MM
    box = _bbox(pred | truth, margin=1)
    return _hd95_both_present(pred[box], truth[box], spacing)


# --------------------------------------------------------------------------- lesion-wise metrics


def lesion_wise(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    population: str | Population,
) -> LesionWiseResult:
    """BraTS 2023 lesion-wise Dice and HD95 of one region (see the module docstring for the rules).

    Args:
        pred: predicted region mask, 3-D.
        truth: ground-truth region mask, same shape.
        spacing: voxel size in mm along the array axes.
        population: BraTS population code (``GLI PED SSA MEN MET``) or a :class:`Population`, giving
            the dilation iterations and the lesion volume threshold.
    """
    pred, truth = _as_pair(pred, truth)
    spacing = _as_spacing(spacing)
    pop = _as_population(population)
    iterations = int(pop.lesion_dilation)
    voxel_mm3 = float(np.prod(spacing))

    box = _bbox(pred | truth, margin=iterations + 1)
    if box is None:
        return LesionWiseResult(dice=1.0, hd95=0.0, n_lesions=0, n_false_positives=0)
    pred, truth = pred[box], truth[box]

    pred_cc, n_pred = ndimage.label(pred, structure=_CONNECTIVITY_26)
    footprints = ndimage.binary_dilation(truth, _DILATION_STRUCTURE, iterations) if iterations > 0 else truth
    # Each component of the dilated truth is exactly the dilation of the truth voxels inside it, so
    # it is both the merged lesion's extent and the lesion's own dilated footprint.
    footprint_cc, n_found = ndimage.label(footprints, structure=_CONNECTIVITY_26)
    lesion_cc = np.where(truth, footprint_cc, 0)

    overlap = (footprint_cc > 0) & (pred_cc > 0)
    pairs = np.unique(footprint_cc[overlap].astype(np.int64) * (n_pred + 1) + pred_cc[overlap])
    pair_lesion, pair_pred = pairs // (n_pred + 1), pairs % (n_pred + 1)
    n_false_positives = n_pred - int(np.unique(pair_pred).size)

    voxels = np.bincount(lesion_cc.ravel(), minlength=n_found + 1)
    lesion_boxes = ndimage.find_objects(lesion_cc, max_label=n_found)
    pred_boxes = ndimage.find_objects(pred_cc, max_label=n_pred)

    lesions: list[LesionScore] = []
    dice_sum = hd95_sum = 0.0
    n_lesions = n_detected = n_small = 0
    for lesion_id in range(1, n_found + 1):
        volume = float(voxels[lesion_id]) * voxel_mm3
        matched = pair_pred[pair_lesion == lesion_id]
        if matched.size == 0:
            score = LesionScore(volume, 0.0, BRATS_HD95_PENALTY_MM)
        else:
            local = lesion_boxes[lesion_id - 1]
            for pred_id in matched:
                local = _union(local, pred_boxes[pred_id - 1])
            local = _grow(local, 1, lesion_cc.shape)
            lesion = lesion_cc[local] == lesion_id
            match = np.isin(pred_cc[local], matched)
            score = LesionScore(volume, dice(match, lesion), _hd95_both_present(match, lesion, spacing))
        lesions.append(score)
        if volume <= pop.lesion_volume_threshold_mm3:
            n_small += 1
            continue
        n_lesions += 1
        n_detected += int(matched.size > 0)
        dice_sum += score.dice
        hd95_sum += score.hd95

    denominator = n_lesions + n_false_positives
    if denominator == 0:
        lesion_dice, lesion_hd95 = 1.0, 0.0
    else:
        lesion_dice = dice_sum / denominator
        lesion_hd95 = (hd95_sum + BRATS_HD95_PENALTY_MM * n_false_positives) / denominator
    logger.debug(
        "lesion-wise (%s): %d lesions (%d small), %d detected, %d false positives",
        pop.code, n_lesions, n_small, n_detected, n_false_positives,
    )
    return LesionWiseResult(
        dice=float(lesion_dice),
        hd95=float(lesion_hd95),
        n_lesions=n_lesions,
        n_false_positives=n_false_positives,
        lesions=lesions,
        n_detected=n_detected,
        n_small_lesions=n_small,
    )


# --------------------------------------------------------------------------- per case and summaries


def _check_labels(label_map: np.ndarray, name: str) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise InputError(f"The {name} label map has shape {label_map.shape}; a 3-D array is needed.")
    if label_map.size:
        low, high = label_map.min(), label_map.max()
        if low < 0 or high > 3 or (label_map.dtype.kind == "f" and not np.all(label_map == np.round(label_map))):
            hint = " (BraTS 2018-2022 labels: convert 4 to 3 first)" if high == 4 else ""
            raise InputError(
                f"The {name} label map holds values from {low} to {high}; BraTS 2023 labels 0-3 are "
                f"needed{hint}."
            )
    return label_map


def case_metrics(
    pred_labels: np.ndarray,
    truth_labels: np.ndarray,
    spacing: Sequence[float],
    population: str | Population,
) -> dict[str, Any]:
    """All metrics of one case, per region, as plain JSON-ready values.

    Returns:
        ``{"population": code, "WT": {...}, "TC": {...}, "ET": {...}}`` where each region holds
        ``dice, hd95, lesion_dice, lesion_hd95`` (HD95 in mm), ``n_lesions, n_false_positives`` and
        ``pred_volume_ml, truth_volume_ml``.
    """
    pred_labels = _check_labels(pred_labels, "predicted")
    truth_labels = _check_labels(truth_labels, "ground-truth")
    spacing = _as_spacing(spacing)
    pop = _as_population(population)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, Any] = {"population": pop.code}
    for region in constants.REGION_CODES:
        pred, truth = region_mask(pred_labels, region), region_mask(truth_labels, region)
        lesions = lesion_wise(pred, truth, spacing, pop)
        out[region] = {
            "dice": float(dice(pred, truth)),
            "hd95": float(hd95(pred, truth, spacing)),
            "lesion_dice": lesions.dice,
            "lesion_hd95": lesions.hd95,
            "n_lesions": lesions.n_lesions,
            "n_false_positives": lesions.n_false_positives,
            "pred_volume_ml": int(pred.sum()) * voxel_ml,
            "truth_volume_ml": int(truth.sum()) * voxel_ml,
        }
    return out


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": float(statistics.fmean(values)), "median": float(statistics.median(values))}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and median of :data:`SUMMARY_KEYS` per population and region, and a macro average.

    Args:
        rows: one dict per case as :func:`case_metrics` returns (extra keys such as ``"case"`` are
            ignored).

    Returns:
        ``{"n_cases": N, "populations": {code: {"n_cases": n, region: {key: {"mean", "median"}}}},
        "all": {region: {key: {"mean", "median"}}}, "macro": {region: {key: mean of the population
        means}}}``; populations appear in BraTS order, only those present.
    """
    values: dict[tuple[str, str, str], list[float]] = {}
    for index, row in enumerate(rows):
        if row.get("population") is None:
            raise ValueError(f"Row {index} has no 'population'; rows must come from case_metrics().")
        code = _as_population(row["population"]).code
        for region in constants.REGION_CODES:
            for key in SUMMARY_KEYS:
                try:
                    value = float(row[region][key])
                except (KeyError, TypeError) as exc:
                    raise ValueError(
                        f"Row {index} ({row.get('case', code)}) lacks {region}/{key}; rows must come "
                        "from case_metrics()."
                    ) from exc
                values.setdefault((code, region, key), []).append(value)

    order = [p for p in constants.POPULATION_CODES if (p, "WT", "dice") in values]
    cells = [(region, key) for region in constants.REGION_CODES for key in SUMMARY_KEYS] if order else []
    populations: dict[str, Any] = {code: {"n_cases": len(values[(code, "WT", "dice")])} for code in order}
    pooled: dict[str, Any] = {}
    macro: dict[str, Any] = {}
    for region, key in cells:
        for code in order:
            populations[code].setdefault(region, {})[key] = _stats(values[(code, region, key)])
        pooled.setdefault(region, {})[key] = _stats([v for code in order for v in values[(code, region, key)]])
        means = [populations[code][region][key]["mean"] for code in order]
        macro.setdefault(region, {})[key] = float(statistics.fmean(means))
    return {"n_cases": len(rows), "populations": populations, "all": pooled, "macro": macro}
