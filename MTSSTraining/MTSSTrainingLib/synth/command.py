"""``mtss synth``: write a synthetic five-population BraTS-like cohort.

    mtss synth OUT_DIR --cases N [--populations GLI PED SSA MEN MET] [--seed S] [--spacing MM]
               [--workers K] [--preview] [--clinical [--skull-prob P]]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from MTSSSegmenterLib.constants import POPULATION_CODES
from MTSSSegmenterLib.errors import MTSSError

EPILOG = """\
Cases follow the BraTS 2023 layout: OUT_DIR/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz,
240x240x155 at 1 mm (or the same field of view at --spacing), labels 1 NCR/NETC, 2 ED/SNFH, 3 ET, plus
OUT_DIR/cohort.json with each case's parameters. The same --seed gives identical files; use different
seeds for training, validation and test cohorts. The data are synthetic: MNI152 anatomy with simulated
tumours and acquisitions.

With --clinical each case is written as a scanner gives it: every series on its own oblique grid (2-6 mm
slices), moved by a small head motion, with a bias field, scanner-like int16 intensities and, with
probability --skull-prob, the skull and scalp; the label map lies on the t1c series' grid. The aligned case
it was drawn from is kept for scoring in OUT_DIR/<case>/aligned/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz, and
the drawn parameters (per-series rigid transform aligned -> series in LPS mm, grid, skull, bias) in
OUT_DIR/<case>/acquisition.json and the case's entry in cohort.json.

examples:
  mtss synth /tmp/cohort --cases 4 --spacing 2 --workers 2 --preview
  mtss synth /tmp/clinical --cases 2 --spacing 2 --clinical --skull-prob 0.5
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``synth`` on the ``mtss`` command line."""
    parser = subparsers.add_parser(
        "synth", help="Write a synthetic five-population BraTS-like cohort (MNI152 anatomy, simulated tumours).",
        description="Write a synthetic BraTS-like cohort (GLI, PED, SSA, MEN, MET) on real MNI152 anatomy.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the case folders into")
    parser.add_argument("--cases", type=int, required=True, metavar="N", help="cases per population")
    parser.add_argument("--populations", nargs="+", default=list(POPULATION_CODES), metavar="POP",
                        help=f"populations to draw (default: {' '.join(POPULATION_CODES)})")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="cohort seed (default 0)")
    parser.add_argument("--spacing", type=float, default=1.0, metavar="MM",
                        help="voxel size in mm (default 1: 240x240x155; 2 gives 120x120x78)")
    parser.add_argument("--workers", type=int, default=1, metavar="K",
                        help=f"parallel processes (default 1; this machine has {os.cpu_count()} cores)")
    parser.add_argument("--preview", action="store_true",
                        help="also write OUT_DIR/preview_<POP>.png contact sheets")
    parser.add_argument("--clinical", action="store_true",
                        help="write clinical studies (own grid per series, head motion, bias, maybe a skull) "
                             "with the aligned case in <case>/aligned/")
    parser.add_argument("--skull-prob", type=float, default=None, metavar="P",
                        help="with --clinical, probability that a case shows the skull and scalp (default 0.5)")
    parser.add_argument("--first-index", type=int, default=0, metavar="I",
                        help="number of each population's first case (default 0; e.g. 1000 for a second cohort "
                             "trained beside the first, whose case names must differ)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``mtss synth``; 0 on success, 2 on a bad argument or an unwritable folder."""
    from .cohort import write_cohort

    if args.skull_prob is not None and not args.clinical:
        print("error: --skull-prob applies to clinical studies; add --clinical (or leave --skull-prob out).",
              file=sys.stderr)
        return 2
    skull_prob = 0.5 if args.skull_prob is None else args.skull_prob
    start = time.perf_counter()

    tty = sys.stderr.isatty()

    def progress(done: int, total: int, case_id: str) -> None:
        if args.quiet:
            return
        if tty:
            print(f"\r[{done}/{total}] {case_id}", end="" if done < total else "\n", file=sys.stderr, flush=True)
        else:
            print(f"[{done}/{total}] {case_id}", file=sys.stderr, flush=True)

    try:
        doc = write_cohort(args.out_dir, cases=args.cases, populations=args.populations, seed=args.seed,
                           spacing=args.spacing, workers=args.workers, preview=args.preview, progress=progress,
                           clinical=args.clinical, skull_prob=skull_prob, first_index=args.first_index)
    except (MTSSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    n = len(doc["cases"])
    if not args.quiet:
        kind = "clinical " if args.clinical else ""
        print(f"wrote {n} synthetic {kind}cases ({', '.join(doc['populations'])}) to {args.out_dir} in {elapsed:.1f} s "
              f"({elapsed / n:.2f} s per case, {args.workers} worker{'s' if args.workers != 1 else ''})")
        for path in doc.get("previews", []):
            print(f"preview: {path}")
    return 0
