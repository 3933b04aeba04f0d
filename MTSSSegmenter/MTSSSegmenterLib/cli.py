"""The ``mtss`` command line: ``segment`` and ``segment-batch`` here; other packages add sub-commands.

Sub-commands from other packages (training, synthesis, evaluation, benchmarks) are discovered through the
``mtss.commands`` entry-point group, so this library never imports the training library.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .constants import MODALITIES
from .errors import Cancelled, MTSSError

log = logging.getLogger("mtss")


class ProgressBar:
    """A one-line progress display on a terminal; silent otherwise. Usable as a progress callback."""

    def __init__(self, stream: Any = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.perf_counter()

    def __call__(self, stage: str, fraction: float) -> None:
        if not self.enabled:
            return
        width = 24
        done = int(round(width * max(0.0, min(1.0, fraction))))
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {stage:<14} {elapsed:6.1f}s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="Segment one case (any subset of T1, T1c, T2, FLAIR).",
                       description="Segment a brain tumour. Give a case folder (BraTS 2023 or 2021 naming) or "
                                   "the volumes one by one; any non-empty subset works.")
    p.add_argument("case_dir", nargs="?", help="case folder with <case>-t1n.nii.gz ... or <case>_t1.nii.gz ...")
    for m in MODALITIES:
        flags = [f"--{m.code}"] + [f"--{a}" for a in m.aliases if a != m.code and a in (m.brats2021,)]
        p.add_argument(*flags, dest=m.code, metavar="FILE", help=f"{m.title} volume")
    p.add_argument("-o", "--output", required=True, help="output label map (.nii.gz, .nrrd, .mha)")
    p.add_argument("--model", help="bundle folder or installed bundle name (default: the default bundle)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--reference", help="modality whose grid the result lies on (default t1c>t1n>t2w>t2f)")
    p.add_argument("--no-register", action="store_true",
                   help="do not register the series to the reference (default: registered when their grids differ)")
    p.add_argument("--n4", action=argparse.BooleanOptionalAction, default=None,
                   help="N4 bias-field correction of every series first (default: when the series are registered)")
    p.add_argument("--brain-mask", metavar="OUT", help="also write the brain mask the model saw (uint8, label grid)")
    p.add_argument("--output-spacing", type=float, metavar="MM",
                   help="write the label map on an isotropic MM grid aligned with the reference")
    p.add_argument("--keep-small-components", action="store_true",
                   help="keep every connected component (default: those below the model's minimum sizes, chosen "
                        "on validation cases, are removed, and on thick slices the whole-tumour components "
                        "without a confident core)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=cmd_segment)


def _add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment-batch", help="Segment every case folder under a root folder.",
                       description="Writes OUTPUT_ROOT/<case>.nii.gz (BraTS submission naming) and summary.json/.tsv. "
                                   "Broken cases are reported and skipped; finished cases are not redone. Run under "
                                   "`torchrun --nproc_per_node=N --no-python mtss segment-batch ...` to use N GPUs.")
    p.add_argument("input_root")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--model")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    p.add_argument("--keep-small-components", action="store_true",
                   help="keep every connected component (default: the model's minimum sizes and thick-slice "
                        "confident-core rule apply)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_segment_batch)


def _print_result(result: Any, output: Path, as_json: bool) -> None:
    summary = result.summary()
    summary["output"] = str(output)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"Wrote {output} (on the {result.reference} grid, {'x'.join(map(str, result.label.GetSize()))})")
    print(f"Model: {result.model_name} on {result.device}; inputs: {', '.join(result.inputs)}")
    print("Volumes (mL): " + "  ".join(f"{k} {v:.1f}" for k, v in result.volumes_ml.items()))
    print("Time (s):     " + "  ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items()))
    _print_study(result.details)
    for w in result.warnings:
        print(f"warning: {w}")


def _print_study(details: dict[str, Any]) -> None:
    """Registration, skull and resolution lines of the text summary."""
    from .postprocess import describe_removed

    reg = details.get("registration")
    if isinstance(reg, dict):
        for code, r in reg.items():
            state = "ok" if r.get("ok") else "LIKELY FAILED"
            print(f"Registration: {code} rotation {r['rotation_deg']:.1f} deg, translation "
                  f"{'/'.join(f'{v:.1f}' for v in r['translation_mm'])} mm, metric {r['metric']:.3f} ({state})")
    elif reg is not None:
        print(f"Registration: {reg}")
    if details.get("skull_detected") is not None:
        brain = details.get("extracted_brain_ml")
        print("Skull: " + (f"detected, brain extracted{f' ({brain:.0f} mL)' if brain is not None else ''}"
                           if details["skull_detected"] else "stripped (brain only)"))
    if "working_spacing_mm" in details:
        print("Working resolution (mm): " + " x ".join(f"{v:g}" for v in details["working_spacing_mm"]))
    if details.get("test_time_mirroring"):
        print("Test-time mirroring: " + ", ".join(details["test_time_mirroring"]))
    removed = describe_removed(details)
    if removed:
        print(f"Components removed: {removed} (--keep-small-components keeps them)")
    if details.get("thick_slice_thresholds"):
        print(f"Thresholds WT/TC/ET: {'/'.join(f'{t:g}' for t in details['thresholds'])}, the model's set for "
              f"thick slices (the thickest series has {details['thickest_slice_mm']:g} mm voxels)")


def cmd_segment(args: argparse.Namespace) -> int:
    from .io import find_case_files, write_image
    from .pipeline import read_inputs, segment

    files = {m.code: getattr(args, m.code) for m in MODALITIES if getattr(args, m.code)}
    if args.case_dir:
        if files:
            raise MTSSError("Give either a case folder or --t1n/--t1c/--t2w/--t2f files, not both.")
        files, _seg = find_case_files(args.case_dir)
    if not files:
        raise MTSSError("No input: give a case folder or at least one of --t1n (--t1), --t1c (--t1ce), "
                        "--t2w (--t2), --t2f (--flair).")
    output = Path(args.output)
    _check_writable(output.parent if str(output.parent) else Path("."))
    t0 = time.perf_counter()
    bar = ProgressBar(enabled=False if args.json else None)
    images = read_inputs(files)
    if args.brain_mask:
        _check_writable(Path(args.brain_mask).parent)
    try:
        result = segment(images, model=args.model, device=args.device, progress=bar, reference=args.reference,
                         register=False if args.no_register else None, n4=args.n4,
                         brain_mask_out=bool(args.brain_mask), output_spacing=args.output_spacing,
                         keep_small_components=args.keep_small_components)
    finally:
        bar.close()
    write_image(result.label, output)
    if args.brain_mask and result.brain_mask is not None:
        write_image(result.brain_mask, args.brain_mask)
    result.timings_s["files_in_to_file_out"] = time.perf_counter() - t0
    _print_result(result, output, args.json)
    return 0


def _check_writable(folder: Path) -> None:
    from .errors import OutputError

    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise OutputError(f"Cannot write to '{folder}' (no permission). Choose a writable output folder.")


def _distributed() -> tuple[int, int, int]:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank, world, int(os.environ.get("LOCAL_RANK", 0))


def cmd_segment_batch(args: argparse.Namespace) -> int:
    from .io import find_case_files, write_image
    from .pipeline import get_bundle, read_inputs, segment

    root, out = Path(args.input_root), Path(args.output)
    if not root.is_dir():
        raise MTSSError(f"Input root '{root}' is not a folder.")
    _check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    if not cases:
        raise MTSSError(f"No case folders found under '{root}'.")
    rank, world, local = _distributed()
    device = args.device
    if world > 1 and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{local % torch.cuda.device_count()}"
    bundle = get_bundle(args.model)
    mine = cases[rank::world]
    rows: list[dict[str, Any]] = []
    for i, case in enumerate(mine):
        target = out / f"{case.name}.nii.gz"
        row: dict[str, Any] = {"case": case.name, "output": str(target)}
        if target.exists() and not args.overwrite:
            row["status"] = "done earlier"
            rows.append(row)
            continue
        try:
            files, _seg = find_case_files(case)
            result = segment(read_inputs(files), model=bundle, device=device,
                             keep_small_components=args.keep_small_components)
            write_image(result.label, target)
            row.update(status="ok", inputs=",".join(result.inputs), seconds=round(result.timings_s["total"], 3),
                       **{f"{k}_ml": round(v, 2) for k, v in result.volumes_ml.items()})
        except (MTSSError, RuntimeError, OSError) as exc:
            row.update(status="failed", error=str(exc))
            print(f"warning: case {case.name} skipped: {exc}", file=sys.stderr)
        rows.append(row)
        if not args.json:
            print(f"[{i + 1}/{len(mine)}] {case.name}: {row['status']}", file=sys.stderr)
    part = out / f".summary.rank{rank}.json"
    part.write_text(json.dumps(rows))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
    if rank == 0:
        all_rows = []
        for r in range(world):
            p = out / f".summary.rank{r}.json"
            all_rows += json.loads(p.read_text())
            p.unlink()
        all_rows.sort(key=lambda r: r["case"])
        (out / "summary.json").write_text(json.dumps(all_rows, indent=2))
        keys = ["case", "status", "inputs", "seconds", "WT_ml", "TC_ml", "ET_ml", "error"]
        lines = ["\t".join(keys)] + ["\t".join(str(r.get(k, "")) for k in keys) for r in all_rows]
        (out / "summary.tsv").write_text("\n".join(lines) + "\n")
        failed = [r for r in all_rows if r["status"] == "failed"]
        if args.json:
            print(json.dumps(all_rows, indent=2))
        else:
            print("\n".join(lines))
            print(f"{len(all_rows) - len(failed)} cases segmented or already done, {len(failed)} failed; "
                  f"summary in {out / 'summary.tsv'}")
        return 1 if failed and len(failed) == len(all_rows) else 0
    return 0


SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "sample"
CLINICAL_SAMPLE_DIR = SAMPLE_DIR / "clinical"  # the same case as a scanner gives it (README.txt there)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Segment the bundled sample case with the default model and draw the result.")
    p.add_argument("-o", "--output", default="mtss-demo", help="output folder (default ./mtss-demo)")
    p.add_argument("--model", help="bundle to use instead of the default")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--clinical", action="store_true",
                   help="segment the sample as a scanner gives it (skull on, each series on its own oblique 5 mm "
                        "grid, head motion) and compare with the result on the aligned sample")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .io import find_case_files, write_image
    from .overlay import render_overlay
    from .pipeline import read_inputs, segment

    files, _seg = find_case_files(CLINICAL_SAMPLE_DIR if args.clinical else SAMPLE_DIR)
    images = read_inputs(files)
    bar = ProgressBar()
    try:
        result = segment(images, model=args.model, device=args.device, progress=bar)
    finally:
        bar.close()
    out = Path(args.output)
    name = "clinical-sample" if args.clinical else "sample"
    label_path = write_image(result.label, out / f"{name}-seg.nii.gz")
    what = "as a scanner gives it (skull on, own 5 mm oblique grids)" if args.clinical else "case"
    png = render_overlay(images.get("t2f", images[result.reference]), result.label, out / f"{name}-overlay.png",
                         f"MTSS sample {what} - model {result.model_name}")
    _print_result(result, label_path, False)
    if args.clinical:  # the same images, BraTS-preprocessed: the clinical issue's comparison
        aligned = segment(read_inputs(find_case_files(SAMPLE_DIR)[0]), model=args.model, device=args.device)
        wt, wt0 = result.volumes_ml["WT"], aligned.volumes_ml["WT"]
        ratio = f"{wt / wt0:.3f}" if wt0 else "undefined (no tumour found on the aligned sample)"
        print(f"Whole tumour: {wt:.1f} mL here, {wt0:.1f} mL on the aligned, skull-stripped sample (ratio {ratio})")
    print(f"Picture of the result: {png}")
    return 0


FALLBACK_PROVIDERS = {"training": "MTSSTrainingLib.cli:register"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtss", description="MTSS brain-tumour segmentation by multi-teacher "
                                     "knowledge distillation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_segment(sub)
    _add_batch(sub)
    _add_demo(sub)
    providers = {ep.name: ep.value for ep in entry_points(group="mtss.commands")}
    # A Slicer extension install has no package metadata, hence no entry points: fall back to the
    # known providers, imported only if present.
    for name, value in (providers or FALLBACK_PROVIDERS).items():
        module, _, attr = value.partition(":")
        try:
            getattr(importlib.import_module(module), attr)(sub)
        except ImportError as exc:  # an optional package whose dependencies are missing
            log.debug("mtss commands from %s unavailable: %s", name, exc)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MTSSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
