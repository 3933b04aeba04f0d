"""The resolution ceiling: the Dice a perfect network could reach at a given working spacing.

A bundle segments each case at its working spacing (3 mm for the CPU default) and brings the region
probabilities back to the label map's grid by linear interpolation before thresholding. Even a network
that reproduced its training targets exactly would lose what that round trip loses, and thin structures
(an enhancing rim two voxels thick at 1 mm) lose the most. ``mtss ceiling DATA --spacing 3 2`` measures
it: each case's label map is brought to the working spacing as training brings it, either as
nearest-neighbour labels (the default targets) or as the share of each voxel that each region covers
(``--soft-targets``, :func:`~MTSSSegmenterLib.preprocess.region_fractions`), sent back through the same
:func:`~MTSSSegmenterLib.preprocess.restore` as ``mtss segment``, and scored against the original with
Dice; the macro average is over populations, as in ``mtss evaluate``. No network is involved: a trained
model's Dice at that spacing cannot exceed these figures, whatever its training budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch
from MTSSSegmenterLib.constants import POPULATION_CODES, REGION_CODES, reference_modality
from MTSSSegmenterLib.io import read_image, read_labels
from MTSSSegmenterLib.metrics import dice
from MTSSSegmenterLib.preprocess import labels_to_regions, prepare_case, restore

TARGETS = ("nearest", "soft")


def case_ceiling(image: sitk.Image, seg: sitk.Image, spacing: float) -> dict[str, list[float]]:
    """WT, TC, ET Dice of the label map ``seg`` (on ``image``'s grid) after the round trip through a working
    grid of ``spacing`` mm, for each kind of target in :data:`TARGETS`."""
    case = prepare_case({"t1c": image}, {"spacing_mm": [float(spacing)] * 3}, seg=seg)
    truth = labels_to_regions(sitk.GetArrayFromImage(seg))
    if case.seg is None or case.fractions is None:
        raise ValueError("prepare_case returned no targets for a case with a label map.")
    targets = {"nearest": labels_to_regions(torch.from_numpy(case.seg)),
               "soft": torch.from_numpy(case.fractions).float() / 255.0}
    out = {}
    for kind, probabilities in targets.items():
        back = labels_to_regions(sitk.GetArrayFromImage(restore(probabilities, case)))
        out[kind] = [float(dice(back[i], truth[i])) for i in range(len(REGION_CODES))]
    return out


def resolution_ceiling(data: str | Path | Sequence[str | Path], spacings: Sequence[float],
                       progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """:func:`case_ceiling` over every labelled case under ``data`` and each spacing.

    Returns ``{"cases": n, "spacings": {spacing: {target: {"macro": {region: dice}, "populations":
    {code: {region: dice}}}}}}`` (population means, macro = mean of the population means).
    """
    from .data import discover

    index = discover(data)
    if not index.cases:
        raise ValueError(f"No labelled case under {data}.")
    rows: dict[tuple[float, str, str], list[list[float]]] = {}
    for i, record in enumerate(index.cases):
        if progress is not None:
            progress(i, len(index.cases), record.name)
        ref = reference_modality(list(record.files))  # the label map lies on the reference series' grid
        image, seg = read_image(record.files[ref], f"{record.name} {ref}"), read_labels(record.seg)  # type: ignore[arg-type]
        for spacing in spacings:
            for kind, scores in case_ceiling(image, seg, spacing).items():
                rows.setdefault((float(spacing), kind, record.population), []).append(scores)
    result: dict[str, Any] = {"cases": len(index.cases), "spacings": {}}
    for spacing in spacings:
        for kind in TARGETS:
            pops = {p: [statistics.fmean(col) for col in zip(*rows[(float(spacing), kind, p)])]
                    for p in POPULATION_CODES if (float(spacing), kind, p) in rows}
            macro = [statistics.fmean(col) for col in zip(*pops.values())]
            result["spacings"].setdefault(f"{float(spacing):g}", {})[kind] = {
                "macro": dict(zip(REGION_CODES, macro)),
                "populations": {p: dict(zip(REGION_CODES, v)) for p, v in pops.items()}}
    return result


def render_table(result: dict[str, Any]) -> str:
    """Markdown table: spacing, targets, macro WT/TC/ET and each population's mean Dice (WT/TC/ET)."""
    pops = [p for p in POPULATION_CODES
            if any(p in t["populations"] for s in result["spacings"].values() for t in s.values())]
    lines = [f"Resolution ceiling over {result['cases']} cases (Dice of the label map after the round trip "
             "through the working grid; WT/TC/ET)", "",
             "| spacing (mm) | targets | macro WT | macro TC | macro ET | " + " | ".join(pops) + " |",
             "|---|---|---|---|---|" + "---|" * len(pops)]
    for spacing, kinds in result["spacings"].items():
        for kind, r in kinds.items():
            cells = [f"{r['macro'][c]:.3f}" for c in REGION_CODES]
            per = ["/".join(f"{r['populations'][p][c]:.2f}" for c in REGION_CODES) if p in r["populations"] else "-"
                   for p in pops]
            lines.append(f"| {spacing} | {kind} | " + " | ".join(cells + per) + " |")
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ceiling", help="The Dice a perfect network could reach at a working spacing.",
                              description="Bring each label map to the working spacing and back, as training "
                                          "targets (nearest-neighbour labels or region shares) and segmentation "
                                          "do, and score it against the original: the upper bound of a model's "
                                          "Dice at that spacing.")
    p.add_argument("data", nargs="+", help="data folder(s) of labelled BraTS case folders")
    p.add_argument("--spacing", type=float, nargs="+", default=[3.0], metavar="MM", help="working spacing(s) in mm")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("-o", "--output", metavar="JSON", default=None, help="also write the JSON here")
    p.set_defaults(func=run_ceiling)


def run_ceiling(args: argparse.Namespace) -> int:
    from MTSSSegmenterLib.errors import MTSSError

    if any(s <= 0 for s in args.spacing):
        print(f"error: --spacing takes sizes in mm above 0, got {args.spacing}", file=sys.stderr)
        return 2

    def progress(i: int, n: int, name: str) -> None:
        print(f"[{i + 1}/{n}] {name}", file=sys.stderr, flush=True)

    try:
        result = resolution_ceiling(args.data, args.spacing, progress)
    except (MTSSError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2) if args.json else render_table(result))
    return 0


__all__ = ["TARGETS", "case_ceiling", "render_table", "resolution_ceiling"]
