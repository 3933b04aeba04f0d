"""Decision thresholds per region, chosen on a run's validation cases (end of training; ``mtss calibrate``).

The network gives one sigmoid probability per region (WT, TC, ET) and the pipeline marks a voxel where the
probability reaches the bundle's threshold. 0.5 is right for a calibrated network, but a small network
trained briefly, or on softened distillation targets, often is not: the default student of 2026-11 gained
0.06 TC Dice on its validation cases from a TC threshold of 0.65. As nnU-Net chooses its post-processing,
the thresholds are chosen on the run's own validation cases, never on a test cohort:

1. every validation case is segmented once (sliding window at the working spacing, as validation does) and
   only the voxels that can matter are kept: those with some probability at or above the lowest candidate
   threshold, or in the ground truth (elsewhere prediction and truth are empty at every threshold);
2. the labels are nested (ET in TC in WT, :func:`MTSSSegmenterLib.preprocess.regions_to_labels`), so WT's
   Dice depends on WT's threshold only, TC's on WT's and TC's, ET's on all three: WT is chosen first, then
   TC given WT, then ET given both;
3. each is the candidate with the best macro Dice (mean over populations of the mean over their cases, as
   the reports average; of equal ones, the closest to 0.5), kept only when it beats 0.5 by at least
   ``min_gain`` (0.005), so that the noise of a few validation cases does not move a threshold for nothing.

The thresholds go into the bundle's ``inference.threshold`` (a list, one per region) and the search into
``metrics.calibration`` (Dice at 0.5 and at the chosen thresholds, the whole table), so that
``model.json`` says what was chosen and why. The weights, and with them their checksum, do not change.

A network trained with modality dropout is meant to take any subset of the inputs, and its probabilities
are not equally sharp with T1c alone as with all four: the shipped student's four-input thresholds lowered
its T1c-only TC Dice on the test cohort (0.497 at 0.5, 0.470 calibrated). Such a run also gets one set of
thresholds per proper input subset (14 for four modalities), chosen the same way on the validation cases
segmented again with only those inputs, in ``inference.subset_thresholds`` (``{"t1c,t2f": [wt, tc, et]}``);
the pipeline takes the set matching the inputs it is given.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from MTSSSegmenterLib.constants import POPULATION_CODES, REGION_CODES
from MTSSSegmenterLib.errors import BundleError, InputError
from MTSSSegmenterLib.inference import predict
from MTSSSegmenterLib.metrics import dice
from MTSSSegmenterLib.preprocess import labels_to_regions

log = logging.getLogger(__name__)

# 0.05 ... 0.95 in steps of 0.05, and finer towards both ends: networks trained briefly without teachers are so
# over-confident that their best TC threshold was still rising at 0.95 (validation Dice 0.670 at 0.95)
CANDIDATES: tuple[float, ...] = (0.01, 0.02, 0.03) + tuple(round(0.05 + 0.05 * i, 2) for i in range(19)) + (0.97, 0.98, 0.99)
MIN_GAIN = 0.005


@dataclass
class CaseVoxels:
    """The voxels of one validation case that can change its Dice: probabilities (3, n) and truth (3, n)."""

    population: str
    probs: np.ndarray
    truth: np.ndarray
    labelled: np.ndarray  # (3,) bool: regions the case's labels mark (partial labels leave some out)


def case_voxels(probabilities: np.ndarray, seg: np.ndarray, label_mask: Sequence[float], population: str,
                lowest: float = CANDIDATES[0]) -> CaseVoxels:
    """Keep the voxels with a probability >= ``lowest`` in some region or with a tumour label."""
    p = np.asarray(probabilities, dtype=np.float32).reshape(3, -1)
    truth = labels_to_regions(np.asarray(seg)).astype(bool).reshape(3, -1)
    keep = (p >= lowest).any(0) | truth.any(0)
    return CaseVoxels(population, p[:, keep], truth[:, keep],
                      np.asarray(label_mask, dtype=np.float32) > 0)


def _macro(rows: list[tuple[str, float]]) -> float:
    """Mean over populations of the mean over their cases (NaN: the region is not labelled there)."""
    means = []
    for code in POPULATION_CODES:
        values = [v for p, v in rows if p == code and math.isfinite(v)]
        if values:
            means.append(float(np.mean(values)))
    return float(np.mean(means)) if means else math.nan


def _volume_bias(rows: list[tuple[str, int, int]]) -> float:
    """Mean over populations of ``log((predicted + 1) / (true + 1))``, voxels summed over their cases."""
    sums: dict[str, list[int]] = {}
    for code, predicted, true in rows:
        s = sums.setdefault(code, [0, 0])
        s[0] += predicted
        s[1] += true
    return float(np.mean([math.log((p + 1) / (t + 1)) for p, t in sums.values()])) if sums else math.nan


def choose_thresholds(cases: Sequence[CaseVoxels], candidates: Sequence[float] = CANDIDATES,
                      min_gain: float = MIN_GAIN, start: Sequence[float] | None = None,
                      volume_ties: bool = False) -> dict[str, Any]:
    """WT, then TC given WT, then ET given both: the candidate with the best macro Dice (see the module doc).

    ``start``: the thresholds (WT, TC, ET) a region keeps unless another beats it by ``min_gain`` (default
    0.5 each; the thick-slice calibration starts from the bundle's own).

    ``volume_ties``: of the candidates within ``min_gain`` of the best Dice (the ones Dice cannot tell apart),
    take the one whose volumes are least biased: the macro mean over populations of
    ``log((predicted + 1) / (true + 1))``, voxels summed over each population's cases, closest to 0
    (``table["<region> volume"]``). The Dice of blurred inputs is flat over a range of thresholds whose
    volumes differ by 10 % and more. Summed, not a mean of per-case ratios: that weighed a 1 mL lesion the
    model over-segments as much as a 100 mL tumour, and on 39 clinical studies it took a WT threshold (0.95
    over 0.9) that cut the large tumours: 26 of 62 clinical draws within 15 % of the aligned result against
    42 (`clinical_check.py`, 2026-11-24).

    Returns ``{"threshold": [wt, tc, et], "candidates": [...], "table": {region: [macro Dice per candidate]},
    "dice_at_0.5": {region: ...}, "dice": {region: ...}, "n_cases": n, "min_gain": ...}``, and with ``start``
    also ``"start"`` and ``"dice_at_start"``.
    """
    if not cases:
        raise InputError("Threshold calibration needs at least one validation case.")
    base = [0.5] * 3 if start is None else [round(float(t), 4) for t in start]
    candidates = sorted({round(float(t), 4) for t in candidates} | {0.5} | set(base))
    chosen: list[float] = []
    table: dict[str, list[float]] = {}
    at_half: dict[str, float | None] = {}
    at_start: dict[str, float | None] = {}
    best: dict[str, float | None] = {}
    for r, region in enumerate(REGION_CODES):
        parents = [np.ones(c.probs.shape[1], dtype=bool) for c in cases]
        for k, t in enumerate(chosen):
            parents = [m & (c.probs[k] >= t) for m, c in zip(parents, cases)]
        scores, bias = [], []
        for t in candidates:
            predicted = [m & (c.probs[r] >= t) for m, c in zip(parents, cases)]
            rows = [(c.population, dice(p[:, None, None], c.truth[r][:, None, None])
                     if c.labelled[r] else math.nan) for p, c in zip(predicted, cases)]  # voxel lists as 3-D
            scores.append(_macro(rows))
            if volume_ties:
                bias.append(_volume_bias([(c.population, np.count_nonzero(p), np.count_nonzero(c.truth[r]))
                                          for p, c in zip(predicted, cases) if c.labelled[r]]))
        table[region] = [None if not math.isfinite(s) else round(s, 4) for s in scores]  # type: ignore[misc]
        if volume_ties:
            table[f"{region} volume"] = [None if not math.isfinite(b) else round(b, 4) for b in bias]  # type: ignore[misc]
        half, here = scores[candidates.index(0.5)], scores[candidates.index(base[r])]
        if not math.isfinite(here):  # no case labels this region: nothing to choose from
            chosen.append(base[r])
            at_half[region] = best[region] = at_start[region] = None
            continue
        top = float(np.nanmax(scores))
        if volume_ties:
            close = [(abs(b), t) for t, s, b in zip(candidates, scores, bias) if math.isfinite(s) and s >= top - min_gain]
            pick = min(close, key=lambda bt: (bt[0], abs(bt[1] - base[r])))[1]
        else:
            tied = [t for t, s in zip(candidates, scores) if math.isfinite(s) and s >= top - 1e-9]
            pick = min(tied, key=lambda t: abs(t - base[r]))  # of equal Dice, the least change
            pick = pick if top >= here + min_gain else base[r]
        chosen.append(pick)
        at_half[region], at_start[region] = round(half, 4), round(here, 4)
        best[region] = round(scores[candidates.index(pick)], 4)
    found = {"threshold": chosen, "candidates": candidates, "table": table, "dice_at_0.5": at_half, "dice": best,
             "n_cases": len(cases), "min_gain": min_gain}
    if start is not None:
        found.update(start=base, dice_at_start=at_start)
    if volume_ties:
        found["volume_ties"] = True
    return found


def calibrate_network(network: torch.nn.Module, cache: Any, names: Sequence[str], roi_size: Sequence[int],
                      device: torch.device, amp: bool, divisor: int, overlap: float = 0.25,
                      progress: Callable[[int, int], None] | None = None,
                      subsets: Sequence[Sequence[str]] = (), mirror: Sequence[int] = (),
                      start: Callable[[str | None], Sequence[float]] | None = None,
                      **kwargs: Any) -> dict[str, Any]:
    """Segment the cached validation cases ``names`` once and choose the thresholds on them.

    ``mirror``: test-time mirroring axes, as the bundle will segment (the thresholds depend on it).

    Each of ``subsets`` (sets of modality codes) gets its own thresholds, chosen on the cases that have
    all of its modalities, segmented again with only those inputs (the other channels zero, as at inference);
    they go into ``result["subsets"]`` keyed as :func:`~MTSSSegmenterLib.bundle.subset_key` names them.
    ``start(key)`` (None: all inputs) gives the thresholds each set starts from (:func:`choose_thresholds`).
    """
    from MTSSSegmenterLib.bundle import subset_key
    from MTSSSegmenterLib.constants import MODALITY_CODES

    runs: list[tuple[str | None, np.ndarray | None]] = [(None, None)]
    for subset in subsets:
        keep = np.array([1.0 if c in subset else 0.0 for c in MODALITY_CODES], dtype=np.float32)
        if 0 < keep.sum() < len(MODALITY_CODES):
            runs.append((subset_key(subset), keep))
    was_training = network.training
    network.eval()
    found: dict[str | None, list[CaseVoxels]] = {}
    total, done = len(names) * len(runs), 0
    try:
        for key, keep in runs:
            for name in names:
                if progress:
                    progress(done, total)
                done += 1
                case = cache.get(name)
                if keep is not None and np.any(keep > np.asarray(case.present)):
                    continue  # the case lacks one of the subset's modalities
                x = torch.from_numpy(case.network_input(keep))[None]
                probs, _, _ = predict(network, x, roi_size, overlap, device, amp=amp, divisor=divisor, mirror=mirror)
                found.setdefault(key, []).append(case_voxels(probs[0].float().cpu().numpy(), case.seg,
                                                             case.label_mask, case.population))
    finally:
        network.train(was_training)
    if progress:
        progress(total, total)
    def starting(key: str | None) -> dict[str, Any]:
        return {} if start is None else {"start": start(key)}

    result = choose_thresholds(found.get(None, []), **starting(None), **kwargs)
    own = {key: choose_thresholds(cases, **starting(key), **kwargs) for key, cases in found.items() if key is not None}
    if own:  # the search tables stay out of model.json for the subsets: thresholds and Dice are enough
        result["subsets"] = {key: {k: v for k, v in c.items() if k not in ("table", "candidates")}
                             for key, c in own.items()}
    return result


def calibrated_subsets(config: Any) -> list[tuple[str, ...]]:
    """The input subsets a run gets its own thresholds for: every proper non-empty subset of the four
    modalities when it trained with modality dropout (it is meant to take them), else none."""
    from MTSSSegmenterLib.constants import MODALITY_CODES

    from .transforms import ALL_SUBSETS

    if not getattr(config, "modality_dropout", 0.0):
        return []
    return [s for s in ALL_SUBSETS if len(s) < len(MODALITY_CODES)]


def apply_calibration(meta: dict[str, Any], calibration: dict[str, Any]) -> dict[str, Any]:
    """Write the chosen thresholds and the search into a bundle's metadata (in place; returned)."""
    inference = meta.setdefault("inference", {})
    inference["threshold"] = [float(t) for t in calibration["threshold"]]
    if calibration.get("subsets"):
        inference["subset_thresholds"] = {k: [float(t) for t in c["threshold"]]
                                          for k, c in calibration["subsets"].items()}
    else:
        inference.pop("subset_thresholds", None)
    meta.setdefault("metrics", {})["calibration"] = calibration
    return meta


def calibration_names(split_val: Sequence[str], index: Any, population: str | None) -> list[str]:
    """The validation cases a run is calibrated on: its own population's for a teacher, else all."""
    return [r.name for r in index.select(list(split_val)) if population is None or r.population == population]


def calibrate_run(run_dir: str | Path, device: str = "auto", min_gain: float = MIN_GAIN,
                  progress: Callable[[int, int], None] | None = None,
                  caches: dict[str, Any] | None = None, subsets: bool = True,
                  mirror: Sequence[str] | None = None) -> dict[str, Any]:
    """Calibrate a finished run's bundle on the run's validation split (from ``run.json`` and ``split.json``)
    and rewrite its ``model.json``; returns the calibration.

    ``mirror`` (axis names, e.g. ``["LR"]``; ``[]`` for none) first sets the bundle's test-time mirroring,
    which the thresholds are then chosen for; None keeps the bundle's own.

    ``caches`` (a dict kept across calls) shares the prepared cases between runs of the same preprocessing
    (a teacher, the joint baseline and the student of one recipe validate on the same cases). ``subsets``:
    also choose thresholds per input subset when the run trained with modality dropout."""
    import copy
    import json

    from MTSSSegmenterLib.bundle import load_bundle, mirror_axes, mirror_axes_of, save_bundle
    from MTSSSegmenterLib.inference import resolve_device

    from .cache import CaseCache
    from .data import discover
    from .runconfig import TrainConfig

    run = Path(run_dir)
    for needed in ("run.json", "split.json"):
        if not (run / needed).is_file():
            raise InputError(f"'{run}' is not a finished training run: it lacks {needed}. Give the folder a "
                             "`mtss train-teacher`, `train-joint` or `distill` run wrote (-o RUN).")
    config = TrainConfig.from_dict(json.loads((run / "run.json").read_text(encoding="utf-8")))
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    bundle = load_bundle(run)
    meta = copy.deepcopy(bundle.meta)
    axes = mirror_axes(meta)
    if mirror is not None:
        try:
            axes = mirror_axes_of(list(mirror), "--mirror")
        except BundleError as exc:
            raise InputError(str(exc)) from exc
        meta["inference"]["mirror"] = list(mirror)
    index = discover(config.data, config.mapping)
    names = calibration_names(split.get("val", []), index, config.population if config.command == "train-teacher" else None)
    if not names:
        raise InputError(f"Run '{run}' has no validation case left in {', '.join(config.data)} to calibrate on "
                         "(trained with --val-fraction 0, or the data moved).")
    aligned_labels = bool(config.augment.get("aligned_labels"))  # the training run's cache folder
    key = json.dumps([config.preprocessing(), config.cache_dir, aligned_labels], sort_keys=True)
    caches = {} if caches is None else caches
    cache = caches.setdefault(key, CaseCache(config.preprocessing(), config.cache_dir, budget_bytes=None,
                                             aligned_labels=aligned_labels))
    broken = cache.fill(index.select(names))
    names = [n for n in names if n in cache]
    if broken:
        log.warning("%d validation case(s) could not be prepared and are left out: %s", len(broken),
                    ", ".join(b.name for b in broken))
    dev = resolve_device(device)
    network = bundle.network.to(dev)
    calibration = calibrate_network(network, cache, names, bundle.meta["inference"].get("roi_size", [128] * 3), dev,
                                    amp=bool(config.amp) and dev.type == "cuda", divisor=bundle.network_config.divisor, progress=progress,
                                    subsets=calibrated_subsets(config) if subsets else (), min_gain=min_gain,
                                    mirror=axes)
    save_bundle(network.cpu(), apply_calibration(meta, calibration), run)
    return calibration


THICK_SLICE_MM = 4.0


def thickest_slice_mm(record: Any) -> float:
    """The coarsest voxel side (mm) among a case's series, read from their headers."""
    import SimpleITK as sitk

    reader, sides = sitk.ImageFileReader(), []
    for path in record.files.values():
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        sides.append(max(reader.GetSpacing()))
    return float(max(sides))


def calibrate_thick_slices(bundle_dir: str | Path, data: Sequence[str | Path], out_dir: str | Path | None = None,
                           min_slice_mm: float = THICK_SLICE_MM, device: str = "auto", min_gain: float = MIN_GAIN,
                           subsets: bool = True, workers: int = 1,
                           progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Choose the thresholds a bundle uses on series with slices of ``min_slice_mm`` or more, and write them
    into its ``model.json`` (``inference.thick_slices``; in ``out_dir`` when given, weights unchanged).

    ``data``: clinical studies the bundle never trained on (``mtss synth --clinical`` with its own seed), each
    segmented as ``mtss segment`` prepares it (registration, brain extraction) and scored against its label
    map at the working resolution. Only studies whose thickest series reaches ``min_slice_mm`` count. Each
    region starts from the bundle's ordinary threshold for the same inputs; of the thresholds within
    ``min_gain`` of the best macro Dice, it takes the one whose volumes are least biased against the label
    maps (:func:`choose_thresholds` with ``volume_ties``). Thick slices smear the tumour's signal into the
    neighbouring slices, and the probabilities spread with it: the default student labelled a median 13 %
    more whole tumour on 4-6 mm clinical draws than on the aligned images they came from, while its Dice was
    the same at thresholds 0.85 and 0.9.
    """
    import copy

    from MTSSSegmenterLib.bundle import load_bundle, mirror_axes, region_thresholds, save_bundle
    from MTSSSegmenterLib.inference import resolve_device
    from MTSSSegmenterLib.pipeline import bundle_preprocessing

    from .cache import CaseCache
    from .data import discover
    from .transforms import ALL_SUBSETS

    if not (isinstance(min_slice_mm, (int, float)) and math.isfinite(min_slice_mm) and min_slice_mm > 0):
        raise InputError(f"--min-slice-mm must be a positive number of millimetres, got {min_slice_mm!r}.")
    bundle = load_bundle(bundle_dir)
    meta = copy.deepcopy(bundle.meta)
    index = discover(list(data))
    records = [r for r in index.cases if thickest_slice_mm(r) >= min_slice_mm]
    if not records:
        raise InputError(f"None of the {len(index.cases)} case(s) under {', '.join(map(str, data))} has a series with "
                         f"slices of {min_slice_mm:g} mm or more; give clinical studies (`mtss synth --clinical`).")
    cache = CaseCache(bundle_preprocessing(bundle), None, budget_bytes=None)
    broken = cache.fill(records, workers=workers)
    if broken:
        log.warning("%d study(ies) could not be prepared and are left out: %s", len(broken),
                    ", ".join(b.name for b in broken))
    names = [r.name for r in records if r.name in cache]
    if not names:
        raise InputError("No study could be prepared for the thick-slice calibration (see the warnings above).")
    any_subset = meta.get("modality_subsets", "any-nonempty") == "any-nonempty"
    dev = resolve_device(device)
    network = bundle.network.to(dev)
    calibration = calibrate_network(
        network, cache, names, meta["inference"].get("roi_size", [128] * 3), dev, amp=False,
        divisor=bundle.network_config.divisor, progress=progress, min_gain=min_gain, mirror=mirror_axes(meta),
        subsets=[s for s in ALL_SUBSETS if len(s) < 4] if subsets and any_subset else (),
        start=lambda key: region_thresholds(meta, None if key is None else key.split(",")), volume_ties=True)
    block = {"min_slice_mm": float(min_slice_mm), "threshold": [float(t) for t in calibration["threshold"]]}
    changed = {k: [float(t) for t in c["threshold"]] for k, c in (calibration.get("subsets") or {}).items()
               if list(c["threshold"]) != list(region_thresholds(meta, k.split(",")))}
    if changed:
        block["subset_thresholds"] = changed
    meta["inference"]["thick_slices"] = block
    meta.setdefault("metrics", {})["thick_slice_calibration"] = {
        **{k: v for k, v in calibration.items() if k != "candidates"},
        "studies": [str(Path(d)) for d in data], "min_slice_mm": float(min_slice_mm)}
    save_bundle(network.cpu(), meta, out_dir or bundle_dir)
    return calibration


def describe(calibration: dict[str, Any]) -> str:
    parts = []
    for r, region in enumerate(REGION_CODES):
        before = calibration.get("dice_at_start", calibration["dice_at_0.5"]).get(region)
        after = calibration["dice"].get(region)
        if before is None:
            parts.append(f"{region} 0.5 (not labelled)")
        else:
            parts.append(f"{region} {calibration['threshold'][r]:g} (Dice {before:.3f} -> {after:.3f})")
    text = f"thresholds on {calibration['n_cases']} validation cases: " + ", ".join(parts)
    own = calibration.get("subsets") or {}
    if own:
        from MTSSSegmenterLib.bundle import subset_thresholds_summary

        text += "; " + subset_thresholds_summary({k: c["threshold"] for k, c in own.items()})
    return text


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from MTSSSegmenterLib.bundle import parse_mirror

    p = subparsers.add_parser("calibrate", help="Choose each region's decision threshold on a run's validation cases.",
                              description="Choose the WT, TC and ET thresholds of finished runs on their own "
                                          "validation cases and write them into the runs' bundles (training does "
                                          "this itself unless --no-calibrate).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="training run folder(s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--min-gain", type=float, default=MIN_GAIN,
                   help=f"keep a threshold other than 0.5 only when it raises the macro Dice by this much (default {MIN_GAIN})")
    p.add_argument("--no-subsets", dest="subsets", action="store_false",
                   help="only the thresholds for all four inputs (default: also one set per input subset for runs "
                        "trained with modality dropout)")
    p.add_argument("--mirror", type=parse_mirror, default=None, metavar="AXES",
                   help="test-time mirroring to calibrate for and write into the bundle: axes among LR, AP, SI "
                        "(e.g. LR; each doubles the network time), or 'none' (default: keep the bundle's own)")
    p.set_defaults(func=run_calibrate)

    q = subparsers.add_parser("calibrate-thick-slices",
                              help="Choose a bundle's thresholds for series with thick slices, on clinical studies.",
                              description="Segment clinical studies the bundle never trained on (mtss synth "
                                          "--clinical, own seed) as mtss segment prepares them, choose the WT, TC "
                                          "and ET thresholds for inputs whose thickest series reaches "
                                          "--min-slice-mm (of those within --min-gain of the best Dice, the one "
                                          "with the least biased volumes), and write them into the bundle's "
                                          "model.json (inference.thick_slices; the weights do not change).")
    q.add_argument("bundle", metavar="BUNDLE", help="model bundle folder (model.json + model.safetensors)")
    q.add_argument("data", nargs="+", metavar="STUDIES", help="folder(s) of clinical studies with label maps")
    q.add_argument("-o", "--out", default=None, metavar="DIR", help="write the bundle here instead of over BUNDLE")
    q.add_argument("--min-slice-mm", type=float, default=THICK_SLICE_MM,
                   help=f"slice thickness from which the thick-slice thresholds hold (default {THICK_SLICE_MM:g})")
    q.add_argument("--device", default="auto")
    q.add_argument("--workers", type=int, default=1, help="processes preparing the studies (registration)")
    q.add_argument("--min-gain", type=float, default=MIN_GAIN)
    q.add_argument("--no-subsets", dest="subsets", action="store_false",
                   help="only the thresholds for all four inputs")
    q.add_argument("--json", default=None, metavar="FILE", help="also write the whole search (Dice per candidate) here")
    q.set_defaults(func=run_calibrate_thick_slices)


def run_calibrate(args: argparse.Namespace) -> int:
    from MTSSSegmenterLib.errors import MTSSError

    status, caches = 0, {}
    for run in args.runs:
        try:
            found = calibrate_run(run, args.device, args.min_gain, caches=caches, subsets=args.subsets,
                                  mirror=args.mirror)
            print(f"{run}: {describe(found)}", flush=True)
        except (MTSSError, OSError, ValueError) as exc:
            print(f"error: {run}: {exc}", file=sys.stderr)
            status = 2
    return status


def write_search(path: str | Path, found: dict[str, Any]) -> None:
    """A calibration's whole search as JSON (``--json FILE`` of the calibrate commands)."""
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(found, indent=2), encoding="utf-8")


def run_calibrate_thick_slices(args: argparse.Namespace) -> int:
    from MTSSSegmenterLib.errors import MTSSError

    try:
        found = calibrate_thick_slices(args.bundle, args.data, args.out, args.min_slice_mm, args.device,
                                       args.min_gain, args.subsets, args.workers)
    except (MTSSError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        write_search(args.json, found)
    start = "/".join(f"{t:g}" for t in found["start"])
    print(f"{args.out or args.bundle}: from {start} for slices of {args.min_slice_mm:g} mm or more, "
          + describe(found).replace("validation cases", "clinical studies"), flush=True)
    return 0


__all__ = ["CANDIDATES", "THICK_SLICE_MM", "calibrate_thick_slices", "thickest_slice_mm", "CaseVoxels", "apply_calibration", "calibrate_network", "calibrate_run",
           "calibrated_subsets", "case_voxels", "choose_thresholds", "write_search"]
