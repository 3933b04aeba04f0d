"""Minimum component sizes per region, chosen on validation cases (``mtss calibrate-components``).

The pipeline removes each region's connected components below the bundle's ``inference.min_component_ml``
(:mod:`MTSSSegmenterLib.postprocess`). The sizes are chosen as nnU-Net chooses its post-processing and as
BraTS 2023 solutions chose theirs, on labelled cases the bundle never trained on, never on a test cohort:

1. every case is segmented once with :func:`MTSSSegmenterLib.pipeline.segment`, keeping every component;
2. removal is nested (a removed whole-tumour speck takes its core with it), so WT's size is chosen first,
   then TC's given WT's, then ET's given both;
3. each is the candidate with the best macro lesion-wise Dice (the BraTS 2023 ranking metric: mean over
   populations of the mean over their cases) among those that keep the macro Dice within ``max_dice_loss``
   of keeping everything, and of those within 0.001 of the best, the smallest; it is kept only when it
   raises the lesion-wise Dice by ``min_gain`` (0.005) or more, else nothing is removed for that region.

The sizes go into ``inference.min_component_ml`` and the search into ``metrics.component_calibration``; the
weights do not change.

``mtss calibrate-confident-core`` chooses the thick-slice rule that removes whole-tumour components without a
confident core (:func:`MTSSSegmenterLib.postprocess.remove_unconfident_components`) the same way, on clinical
studies (``mtss synth --clinical``, the series as they come, only those whose thickest series reaches the
bundle's thick-slice limit), after the bundle's minimum sizes: the smallest fraction of a component's voxels
at p >= 0.99 with the best macro lesion-wise whole-tumour Dice, within ``max_dice_loss`` of the macro Dice
and kept only for a gain of ``min_gain``. It goes into ``inference.thick_slices.confident_core`` for the
input set it was chosen on, and the search into ``metrics.confident_core_calibration``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from MTSSSegmenterLib.constants import REGION_CODES
from MTSSSegmenterLib.errors import InputError, MTSSError
from MTSSSegmenterLib.metrics import dice, lesion_wise, region_mask
from MTSSSegmenterLib.postprocess import min_component_sizes, remove_small_components, remove_unconfident_components

from .calibration import _macro, thickest_slice_mm, write_search

log = logging.getLogger(__name__)

SIZE_CANDIDATES_ML: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
CORE_FRACTIONS: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
CORE_PROBABILITY = 0.99
MIN_GAIN = 0.005
MAX_DICE_LOSS = 0.002
_TIE = 0.001


@dataclass
class LabelledCase:
    """One validation case's predicted and true label maps (BraTS 2023 values, one grid)."""

    name: str
    population: str
    labels: np.ndarray
    truth: np.ndarray
    spacing: tuple[float, float, float]
    wt_probability: np.ndarray | None = None  # the network's, on the label map's grid (confident-core search)


def score_sizes(cases: Sequence[LabelledCase], sizes: Sequence[float], region: str) -> tuple[float, float]:
    """(macro lesion-wise Dice, macro Dice) of ``region`` after removing components below ``sizes``."""
    lesion, plain = [], []
    for case in cases:
        cleaned, _ = remove_small_components(case.labels, case.spacing, sizes)
        pred, truth = region_mask(cleaned, region), region_mask(case.truth, region)
        lesion.append((case.population, lesion_wise(pred, truth, case.spacing, case.population).dice))
        plain.append((case.population, dice(pred, truth)))
    return _macro(lesion), _macro(plain)


def _pick(scores: Sequence[tuple[float, float]], min_gain: float, max_dice_loss: float) -> int:
    """Index of the chosen candidate among (macro lesion-wise Dice, macro Dice) scores, the first being "remove
    nothing": the best lesion-wise Dice among those within ``max_dice_loss`` of the first's Dice, and of those
    within ``_TIE`` of it the earliest; 0 unless it gains ``min_gain``."""
    base_lesion, base_dice = scores[0]
    allowed = [i for i, (_, d) in enumerate(scores) if d >= base_dice - max_dice_loss]
    top = max(scores[i][0] for i in allowed)
    if top < base_lesion + min_gain:
        return 0
    return min(i for i in allowed if scores[i][0] >= top - _TIE)


def only(region: int, size: float) -> list[float]:
    """Sizes (WT, TC, ET) removing components of one region only (index ``region``)."""
    return [size if r == region else 0.0 for r in range(len(REGION_CODES))]


def choose_min_components(cases: Sequence[LabelledCase], candidates: Sequence[float] = SIZE_CANDIDATES_ML,
                          min_gain: float = MIN_GAIN, max_dice_loss: float = MAX_DICE_LOSS,
                          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """WT, then TC given WT, then ET given both (see the module docstring).

    Returns ``{"min_component_ml": [wt, tc, et], "candidates": [...], "table": {region: [[lesion Dice, Dice]
    per candidate]}, "lesion_dice_before": {...}, "lesion_dice": {...}, "dice_before": {...}, "dice": {...},
    "n_cases": n, "min_gain": ..., "max_dice_loss": ...}``.
    """
    if not cases:
        raise InputError("Component-size calibration needs at least one labelled validation case.")
    candidates = sorted({round(float(c), 4) for c in candidates} | {0.0})
    if candidates[0] < 0:
        raise InputError(f"Component sizes are volumes in mL (>= 0), got {candidates[0]}.")
    chosen = [0.0, 0.0, 0.0]
    found: dict[str, Any] = {"candidates": candidates, "table": {}, "lesion_dice_before": {}, "lesion_dice": {},
                             "dice_before": {}, "dice": {}}
    steps, done = len(REGION_CODES) * len(candidates), 0
    for r, region in enumerate(REGION_CODES):
        if r:  # the regions chosen so far removed once, not again for every candidate of this one
            cases = [replace(c, labels=remove_small_components(c.labels, c.spacing, only(r - 1, chosen[r - 1]))[0])
                     for c in cases]
        scores = []
        for size in candidates:
            scores.append(score_sizes(cases, only(r, size), region))
            done += 1
            if progress:
                progress(done, steps)
        pick = _pick(scores, min_gain, max_dice_loss)
        chosen[r] = candidates[pick]
        found["table"][region] = [[round(a, 4), round(b, 4)] for a, b in scores]
        found["lesion_dice_before"][region] = round(scores[0][0], 4)
        found["dice_before"][region] = round(scores[0][1], 4)
        found["lesion_dice"][region], found["dice"][region] = round(scores[pick][0], 4), round(scores[pick][1], 4)
    found.update(min_component_ml=chosen, n_cases=len(cases), min_gain=min_gain, max_dice_loss=max_dice_loss)
    return found


def score_core(cases: Sequence[LabelledCase], probability: float, fraction: float) -> tuple[float, float]:
    """(macro lesion-wise Dice, macro Dice) of the whole tumour after removing its components with under
    ``fraction`` of their voxels at ``probability`` or more."""
    lesion, plain = [], []
    for case in cases:
        if case.wt_probability is None:
            raise InputError(f"{case.name}: the confident-core search needs the whole-tumour probability map.")
        cleaned, _ = remove_unconfident_components(case.labels, case.wt_probability, case.spacing, probability,
                                                   fraction)
        pred, truth = cleaned > 0, case.truth > 0
        lesion.append((case.population, lesion_wise(pred, truth, case.spacing, case.population).dice))
        plain.append((case.population, dice(pred, truth)))
    return _macro(lesion), _macro(plain)


def choose_confident_core(cases: Sequence[LabelledCase], candidates: Sequence[float] = CORE_FRACTIONS,
                          probability: float = CORE_PROBABILITY, min_gain: float = MIN_GAIN,
                          max_dice_loss: float = MAX_DICE_LOSS,
                          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The smallest confident-core fraction with the best macro lesion-wise whole-tumour Dice (see the module
    docstring). Returns ``{"probability": p, "min_fraction": f, "candidates": [...], "table": [[lesion Dice,
    Dice] per candidate], "lesion_dice_before", "lesion_dice", "dice_before", "dice", "n_cases", ...}``."""
    if not cases:
        raise InputError("The confident-core calibration needs at least one labelled clinical study.")
    if not 0.0 < probability < 1.0:
        raise InputError(f"The core probability must lie in (0, 1), got {probability}.")
    candidates = sorted({round(float(c), 4) for c in candidates} | {0.0})
    if candidates[-1] > 1:
        raise InputError(f"Core fractions lie in [0, 1], got {candidates[-1]}.")
    scores = []
    for i, fraction in enumerate(candidates):
        scores.append(score_core(cases, probability, fraction))
        if progress:
            progress(i + 1, len(candidates))
    pick = _pick(scores, min_gain, max_dice_loss)
    return {"probability": probability, "min_fraction": candidates[pick], "candidates": candidates,
            "table": [[round(a, 4), round(b, 4)] for a, b in scores],
            "lesion_dice_before": round(scores[0][0], 4), "lesion_dice": round(scores[pick][0], 4),
            "dice_before": round(scores[0][1], 4), "dice": round(scores[pick][1], 4), "n_cases": len(cases),
            "min_gain": min_gain, "max_dice_loss": max_dice_loss}


def aligned_records(roots: Sequence[str | Path]) -> list[tuple[str, str, dict[str, Path], Path]]:
    """(name, population, files, label map) of the aligned copy (``<study>/aligned/``) of every clinical study
    under ``roots`` (``mtss synth --clinical``)."""
    from MTSSSegmenterLib.io import find_case_files

    from .data import population_from_name

    found = []
    for root in map(Path, roots):
        studies = sorted(d for d in root.iterdir() if (d / "aligned").is_dir()) if root.is_dir() else []
        if not studies:
            raise InputError(f"No clinical study with an 'aligned' folder under '{root}'; give a cohort written by "
                             "`mtss synth --clinical`, or leave out --aligned for BraTS case folders.")
        for study in studies:
            pop = population_from_name(study.name)
            try:
                files, seg = find_case_files(study / "aligned")
            except InputError as exc:
                log.warning("left out %s: %s", study.name, exc)
                continue
            if pop is None or seg is None:
                log.warning("left out %s: %s", study.name, "no label map" if seg is None else "unknown population")
                continue
            found.append((study.name, pop, files, seg))
    return found


def segment_cases(bundle: Any, data: Sequence[str | Path], device: str = "auto", aligned: bool = False,
                  progress: Callable[[int, int], None] | None = None, modalities: Sequence[str] | None = None,
                  min_slice_mm: float | None = None, probability: bool = False) -> list[LabelledCase]:
    """Segment every labelled case under ``data`` with every component kept (broken cases are left out).

    ``aligned``: ``data`` are clinical cohorts; use each study's clean aligned copy (:func:`aligned_records`).
    ``modalities``: give the network only these series. ``min_slice_mm``: only the cases whose thickest series
    has voxels this long or longer. ``probability``: keep the whole-tumour probability map as well."""
    import SimpleITK as sitk
    from MTSSSegmenterLib.io import read_labels
    from MTSSSegmenterLib.pipeline import read_inputs, segment

    from .data import discover

    if aligned:
        records = aligned_records(data)
    else:
        index = discover(list(data))
        for broken in index.broken:
            log.warning("left out %s: %s", broken.name, broken.reason)
        records = [(r.name, r.population, r.files, r.seg) for r in index.cases
                   if min_slice_mm is None or thickest_slice_mm(r) >= min_slice_mm]
    if modalities:
        records = [(name, pop, {c: f for c, f in files.items() if c in modalities}, seg)
                   for name, pop, files, seg in records if set(modalities) <= set(files)]
    cases = []
    for i, (name, population, files, seg) in enumerate(records):
        try:
            truth = read_labels(seg)
            result = segment(read_inputs(files), model=bundle, device=device, keep_small_components=True,
                             probability_out=probability)
        except MTSSError as exc:
            log.warning("left out %s: %s", name, exc)
            continue
        labels = sitk.GetArrayFromImage(result.label)
        want = sitk.GetArrayFromImage(truth)
        if labels.shape != want.shape:
            log.warning("left out %s: its label map is not on the grid of its %s series", name, result.reference)
            continue
        cases.append(LabelledCase(name, population, labels, want,
                                  tuple(float(s) for s in truth.GetSpacing()[::-1]),  # type: ignore[arg-type]
                                  sitk.GetArrayFromImage(result.wt_probability) if probability else None))
        if progress:
            progress(i + 1, len(records))
    if not cases:
        raise InputError(f"No labelled case under {', '.join(map(str, data))} could be segmented.")
    return cases


def calibrate_components(bundle_dir: str | Path, data: Sequence[str | Path], out_dir: str | Path | None = None,
                         device: str = "auto", min_gain: float = MIN_GAIN, max_dice_loss: float = MAX_DICE_LOSS,
                         aligned: bool = False) -> dict[str, Any]:
    """Choose a bundle's minimum component sizes on labelled cases it never trained on and write them into
    its ``model.json`` (in ``out_dir`` when given; the weights do not change)."""
    from MTSSSegmenterLib.bundle import load_bundle, save_bundle

    bundle = load_bundle(bundle_dir)
    cases = segment_cases(bundle, data, device, aligned)
    found = choose_min_components(cases, min_gain=min_gain, max_dice_loss=max_dice_loss)
    meta = copy.deepcopy(bundle.meta)
    meta["inference"]["min_component_ml"] = [float(v) for v in found["min_component_ml"]]
    meta.setdefault("metrics", {})["component_calibration"] = {
        **found, "studies": [str(Path(d)) + ("/*/aligned" if aligned else "") for d in data]}
    save_bundle(bundle.network, meta, out_dir or bundle_dir)
    return found


def calibrate_confident_core(bundle_dir: str | Path, data: Sequence[str | Path], out_dir: str | Path | None = None,
                             device: str = "auto", modalities: Sequence[str] | None = None,
                             min_gain: float = MIN_GAIN, max_dice_loss: float = MAX_DICE_LOSS) -> dict[str, Any]:
    """Choose a bundle's thick-slice confident-core rule for one input set (all four by default) on clinical
    studies it never trained on, and write it into ``inference.thick_slices.confident_core`` (in ``out_dir``
    when given; the weights do not change). A fraction of 0 (no gain) takes the input set out of the rule."""
    from MTSSSegmenterLib.bundle import load_bundle, save_bundle, subset_key, thick_slice_limit
    from MTSSSegmenterLib.constants import MODALITY_CODES, modality

    bundle = load_bundle(bundle_dir)
    limit = thick_slice_limit(bundle.meta)
    if limit is None:
        raise InputError(f"Model '{bundle.name}' has no thick-slice thresholds to go with a confident-core rule; "
                         "run `mtss calibrate-thick-slices` on the same clinical studies first.")
    codes = [modality(m).code for m in modalities] if modalities else list(MODALITY_CODES)
    key = subset_key(codes)
    cases = segment_cases(bundle, data, device, modalities=codes, min_slice_mm=limit, probability=True)
    sizes = min_component_sizes(bundle.meta)
    if sizes and any(sizes):  # the pipeline removes small components first
        cases = [replace(c, labels=remove_small_components(c.labels, c.spacing, sizes)[0]) for c in cases]
    found = choose_confident_core(cases, min_gain=min_gain, max_dice_loss=max_dice_loss)
    meta = copy.deepcopy(bundle.meta)
    thick = meta["inference"]["thick_slices"]
    core = thick.get("confident_core") or {"probability": found["probability"], "min_fraction": {}}
    if core["probability"] != found["probability"]:  # one probability per bundle: the other sets were for another
        core = {"probability": found["probability"], "min_fraction": {}}
    core["min_fraction"].pop(key, None)
    if found["min_fraction"] > 0:
        core["min_fraction"][key] = found["min_fraction"]
    if core["min_fraction"]:
        thick["confident_core"] = core
    else:
        thick.pop("confident_core", None)
    record = meta.setdefault("metrics", {}).setdefault("confident_core_calibration", {})
    record[key] = {**found, "studies": [str(Path(d)) for d in data], "min_slice_mm": limit,
                   "min_component_ml": list(sizes) if sizes else None}
    save_bundle(bundle.network, meta, out_dir or bundle_dir)
    found["inputs"] = key
    return found


def describe_core(found: dict[str, Any]) -> str:
    rule = (f"components with under {found['min_fraction']:.0%} of their voxels at p >= {found['probability']:g} "
            "removed" if found["min_fraction"] else "no confident-core rule (no fraction gained enough)")
    return (f"thick slices, inputs {found.get('inputs', 'all')}: {rule}, on {found['n_cases']} clinical studies "
            f"(whole-tumour lesion-wise Dice {found['lesion_dice_before']:.3f} -> {found['lesion_dice']:.3f}, "
            f"Dice {found['dice_before']:.3f} -> {found['dice']:.3f})")


def describe(found: dict[str, Any]) -> str:
    parts = []
    for region, size in zip(REGION_CODES, found["min_component_ml"]):
        before, after = found["lesion_dice_before"][region], found["lesion_dice"][region]
        parts.append(f"{region} {size:g} mL (lesion-wise Dice {before:.3f} -> {after:.3f}, Dice "
                     f"{found['dice_before'][region]:.3f} -> {found['dice'][region]:.3f})")
    return f"smallest components kept, on {found['n_cases']} validation cases: " + ", ".join(parts)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate-components",
                              help="Choose a bundle's minimum component sizes on labelled validation cases.",
                              description="Segment labelled cases the bundle never trained on, choose for WT, TC "
                                          "and ET the smallest connected component to keep (the size that best "
                                          "raises the lesion-wise Dice without costing Dice) and write the sizes "
                                          "into the bundle's model.json (inference.min_component_ml).")
    p.add_argument("bundle", metavar="BUNDLE", help="model bundle folder (model.json + model.safetensors)")
    p.add_argument("data", nargs="+", metavar="CASES", help="folder(s) of labelled validation cases (BraTS layout)")
    p.add_argument("-o", "--out", default=None, metavar="DIR", help="write the bundle here instead of over BUNDLE")
    p.add_argument("--aligned", action="store_true",
                   help="CASES are clinical cohorts (mtss synth --clinical): use each study's aligned/ copy")
    p.add_argument("--device", default="auto")
    p.add_argument("--min-gain", type=float, default=MIN_GAIN,
                   help=f"remove components of a region only when its lesion-wise Dice gains this much "
                        f"(default {MIN_GAIN})")
    p.add_argument("--max-dice-loss", type=float, default=MAX_DICE_LOSS,
                   help=f"largest loss of macro Dice a size may cost (default {MAX_DICE_LOSS})")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the whole search here")
    p.set_defaults(func=run_calibrate_components)
    add_core_parser(subparsers)


def add_core_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate-confident-core",
                              help="Choose a bundle's thick-slice rule for whole-tumour components without a "
                                   "confident core, on labelled clinical studies.",
                              description="Segment labelled clinical studies the bundle never trained on (only "
                                          "those with series as thick as its thick-slice limit), and choose the "
                                          "fraction of a whole-tumour component's voxels that must reach p >= "
                                          f"{CORE_PROBABILITY:g} for it to stay (the one that best raises the "
                                          "lesion-wise Dice without costing Dice); written into model.json "
                                          "(inference.thick_slices.confident_core) for the input set used.")
    p.add_argument("bundle", metavar="BUNDLE", help="model bundle folder (model.json + model.safetensors)")
    p.add_argument("data", nargs="+", metavar="STUDIES",
                   help="folder(s) of labelled clinical studies (mtss synth --clinical)")
    p.add_argument("-o", "--out", default=None, metavar="DIR", help="write the bundle here instead of over BUNDLE")
    p.add_argument("--modalities", default=None, metavar="CODES",
                   help="choose the rule for this input set only, e.g. t1c,t2f (default: all four series)")
    p.add_argument("--device", default="auto")
    p.add_argument("--min-gain", type=float, default=MIN_GAIN,
                   help=f"adopt a rule only when the lesion-wise Dice gains this much (default {MIN_GAIN})")
    p.add_argument("--max-dice-loss", type=float, default=MAX_DICE_LOSS,
                   help=f"largest loss of macro Dice the rule may cost (default {MAX_DICE_LOSS})")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the whole search here")
    p.set_defaults(func=run_calibrate_confident_core)


def _run(args: argparse.Namespace, search: Callable[[], dict[str, Any]],
         describe_found: Callable[[dict[str, Any]], str]) -> int:
    """Run a search for a command: its error as one line (exit 2), else the JSON file and a summary line."""
    try:
        found = search()
    except (MTSSError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        write_search(args.json, found)
    print(f"{args.out or args.bundle}: {describe_found(found)}", flush=True)
    return 0


def run_calibrate_confident_core(args: argparse.Namespace) -> int:
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    return _run(args, lambda: calibrate_confident_core(args.bundle, args.data, args.out, args.device, modalities,
                                                       args.min_gain, args.max_dice_loss), describe_core)


def run_calibrate_components(args: argparse.Namespace) -> int:
    return _run(args, lambda: calibrate_components(args.bundle, args.data, args.out, args.device, args.min_gain,
                                                   args.max_dice_loss, args.aligned), describe)


__all__ = ["CORE_FRACTIONS", "CORE_PROBABILITY", "LabelledCase", "SIZE_CANDIDATES_ML", "aligned_records",
           "calibrate_components", "calibrate_confident_core", "choose_confident_core", "choose_min_components",
           "score_core", "score_sizes", "segment_cases"]
