"""Command-line front ends: ``mtss train-teacher``, ``train-joint``, ``distill`` and ``evaluate``.

Thin wrappers (nnU-Net style): parse options into a :class:`~.runconfig.TrainConfig`, call the library,
print. Errors print ``error: ...`` and return 2; a run stopped by a NaN loss returns 3; Ctrl-C returns
130 and keeps the checkpoints (continue with ``--resume``). Under ``torchrun`` only rank 0 prints.
Progress: a bar on a terminal, or ``MTSS-PROGRESS {json}`` lines on stdout with ``MTSS_PROGRESS=lines``.

Also runnable as ``python -m MTSSTrainingLib.commands <command> ...`` (what ``torchrun`` and the Slicer
logic can start when the ``mtss`` script is not on the path).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from MTSSSegmenterLib.bundle import parse_mirror
from MTSSSegmenterLib.errors import Cancelled, InputError, MTSSError

DEFAULT_NETWORKS = {"train-teacher": "teacher_resunet", "train-joint": "student_small", "distill": "student_small"}
DEFAULT_DROPOUT = {"train-teacher": 0.0, "train-joint": 0.5, "distill": 0.5}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    level = logging.INFO if _rank() == 0 else logging.ERROR
    for name in ("MTSSTrainingLib", "MTSSSegmenterLib"):
        logging.getLogger(name).setLevel(level)


def _weights(text: str | None) -> dict[str, float]:
    """``"output=1,latent=0.1"`` -> ``{"output": 1.0, "latent": 0.1}``."""
    out: dict[str, float] = {}
    for item in (text or "").replace(" ", ",").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise MTSSError(f"--kd-weights takes name=weight pairs separated by commas (e.g. output=1,latent=0.1); "
                            f"got '{item}'.")
    return out


def _kd_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``["temperature=2", "region.feature_weight=0.5"]`` -> flat and per-term options for build_objective."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise MTSSError(f"--kd-option takes KEY=VALUE or TERM.KEY=VALUE (e.g. output.temperature=2); got '{item}'.")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        term, dot, name = key.partition(".")
        if dot:
            out.setdefault(term, {})[name] = parsed
        else:
            out[key] = parsed
    return out


def _training_options(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("data", nargs="+", help="data folder(s) of BraTS case folders (or `mtss synth` output, e.g. an "
                                           "aligned and a --clinical cohort together)")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run folder (checkpoints, logs, final bundle)")
    p.add_argument("--network", metavar="CONFIG", default=None,
                   help=f"network config: JSON file or shipped name (default {DEFAULT_NETWORKS[command]}"
                        + ("; in distill: the full-modality network of --single-stage)" if command == "distill" else ")"))
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--steps-per-epoch", type=int, default=250)
    p.add_argument("--patch", type=int, nargs="+", default=[128], metavar="N", help="patch size (one or three sizes)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=("cosine", "poly"), default="cosine")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN from its last finished epoch")
    p.add_argument("--init", metavar="BUNDLE", default=None, help="start from this bundle's weights (fine-tuning)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes per training process")
    p.add_argument("--time-limit", dest="time_limit_min", type=float, default=None, metavar="MIN",
                   help="wall-clock budget in minutes: the learning-rate schedule follows whichever of steps and "
                        "time is further along, and training stops once it is spent (the epoch is saved)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each population held out for validation")
    p.add_argument("--spacing", type=float, default=1.0, help="working spacing in mm")
    p.add_argument("--mapping", metavar="JSON", default=None,
                   help="JSON {case: population} and/or labelled regions per dataset (see data.py)")
    p.add_argument("--cache-gb", type=float, default=None, help="RAM for prepared cases (default: a third of free memory)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="keep every prepared case in DIR and reuse it in other runs with the same working spacing "
                        "(clinical studies take seconds each to register; default: prepare them again per run)")
    p.add_argument("--modality-dropout", type=float, default=None,
                   help=f"probability of a random modality subset per sample (default {DEFAULT_DROPOUT[command]})")
    p.add_argument("--clinical-augment", type=float, default=0.0, metavar="P",
                   help="probability per series of clinical degradations: thick 2-6 mm slices along a random axis "
                        "and a smooth bias field (default 0: off)")
    p.add_argument("--name", default=None, help="bundle name (default teacher-POP, joint or student)")
    p.add_argument("--soft-targets", action="store_true",
                   help="train on the share of each working voxel that each region covers in the label map instead "
                        "of nearest-neighbour labels (keeps thin enhancing rims at a coarse working spacing)")
    p.add_argument("--aligned-labels", action="store_true",
                   help="with --soft-targets: take the shares of a synthetic clinical study (mtss synth --clinical) from "
                        "the aligned label map it was drawn from, through the drawn head motion, instead of its "
                        "thick-slice label map")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="keep the 0.5 decision threshold instead of choosing one per region on the validation cases")
    p.add_argument("--mirror", type=parse_mirror, default=[], metavar="AXES",
                   help="test-time mirroring the bundle will segment with, e.g. LR (axes among LR, AP, SI; each "
                        "doubles the network time); the thresholds are chosen for it (default: none)")
    default_subsets = [] if command == "train-teacher" else ["t1c,t2f"]
    p.add_argument("--val-subsets", nargs="*", default=default_subsets, metavar="MODS",
                   help="also validate from these modality subsets, e.g. t1c,t2f t1c (default: "
                        f"{' '.join(default_subsets) or 'none'})")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the four commands on the ``mtss`` sub-command parser."""
    p = subparsers.add_parser("train-teacher", help="Train one population's teacher network.",
                              description="Train a population teacher (Dice+BCE, deep supervision); the bundle lands in RUN.")
    _training_options(p, "train-teacher")
    p.add_argument("--population", required=True, help="GLI, PED, SSA, MEN or MET")
    p.set_defaults(func=run_train_teacher)

    p = subparsers.add_parser("train-joint", help="Train one network on all populations together (the baseline).",
                              description="Train the joint baseline on all populations without distillation.")
    _training_options(p, "train-joint")
    p.set_defaults(func=run_train_joint)

    p = subparsers.add_parser("distill", help="Distil population teachers into one small student.",
                              description="Multi-teacher knowledge distillation into one small student.")
    _training_options(p, "distill")
    p.add_argument("--student", metavar="CONFIG", default=None, help="student network config (default student_small)")
    p.add_argument("--teachers", nargs="+", metavar="POP=RUN", default=[], help="teacher bundles by population")
    p.add_argument("--kd", default="output,latent,barlow,region,attention",
                   help="comma list of KD terms (ground truth always included); '' for none")
    p.add_argument("--kd-weights", default=None, metavar="NAME=W,...", help="term weights, e.g. output=1,latent=0.1")
    p.add_argument("--kd-option", action="append", metavar="[TERM.]KEY=VALUE", help="term option, e.g. output.temperature=2")
    p.add_argument("--routing", choices=("soft", "hard"), default="soft", help="population-aware teacher weighting")
    p.add_argument("--single-stage", action="store_true", help="co-train a full-modality network beside the student")
    p.add_argument("--teacher-cache", action="store_true", help="cache teacher outputs on disk (float16)")
    p.set_defaults(func=run_distill)

    p = subparsers.add_parser("evaluate", help="Evaluate models on labelled cases: Dice, HD95, lesion-wise, per population.",
                              description="Every model on every case: Dice, HD95, lesion-wise metrics per population.")
    p.add_argument("data", help="data folder of labelled BraTS case folders")
    p.add_argument("--model", action="append", default=[], metavar="BUNDLE", help="bundle path or installed name (repeat)")
    p.add_argument("--ensemble", nargs="+", metavar="POP=RUN", default=None, help="average of these teachers as one model")
    p.add_argument("-o", "--output", required=True, metavar="REPORT", help="report folder")
    p.add_argument("--modalities", default=None, help="use only these inputs, e.g. t1c,t2f")
    p.add_argument("--device", default="auto")
    p.add_argument("--mapping", default=None, metavar="JSON")
    p.add_argument("--overlays", type=int, default=3, help="number of overlay PNGs")
    p.set_defaults(func=run_evaluate)


def _config(args: argparse.Namespace, command: str, **extra: Any) -> Any:
    from .runconfig import TrainConfig, resolve_network

    network_spec = args.network
    if command == "distill":
        network_spec = args.student
    if network_spec is None and args.init:
        from MTSSSegmenterLib.bundle import read_meta

        network = read_meta(args.init)["network"]
    else:
        network = resolve_network(network_spec or DEFAULT_NETWORKS[command]).to_dict()
    dropout = DEFAULT_DROPOUT[command] if args.modality_dropout is None else args.modality_dropout
    from .evaluate import parse_modalities

    subsets = [parse_modalities(text) for text in args.val_subsets]
    if args.aligned_labels and not args.soft_targets:
        raise InputError("--aligned-labels changes the soft targets of clinical studies; add --soft-targets.")
    return TrainConfig(command=command, data=list(args.data), out=args.output, network=network, epochs=args.epochs,
                       steps_per_epoch=args.steps_per_epoch, patch=tuple(args.patch), batch=args.batch, lr=args.lr,
                       schedule=args.schedule, device=args.device, amp=args.amp, seed=args.seed, workers=args.workers,
                       val_fraction=args.val_fraction, spacing=args.spacing, mapping=args.mapping, init=args.init,
                       cache_gb=args.cache_gb, cache_dir=args.cache_dir, time_limit_min=args.time_limit_min, modality_dropout=dropout, name=args.name, val_subsets=subsets,
                       calibrate=args.calibrate, mirror=args.mirror,
                       augment={**_clinical_augment(args.clinical_augment),
                                **({"soft_targets": True} if args.soft_targets else {}),
                                **({"aligned_labels": True} if args.aligned_labels else {})}, **extra)


def _clinical_augment(p: float) -> dict[str, Any]:
    if not 0.0 <= p <= 1.0:
        raise InputError(f"--clinical-augment is a probability in [0, 1], got {p}.")
    return {"thick_slice_prob": p, "bias_prob": p} if p > 0 else {}


def _guard(body: Callable[[], int], run_dir: str | None = None) -> int:
    """Run ``body``; turn errors into ``error: ...`` and return codes."""
    from .trainer import TrainingDiverged

    _setup_logging()
    try:
        return body()
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (MTSSError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        where = f" in {run_dir}" if run_dir else ""
        print(f"\ninterrupted: the checkpoints of finished epochs are kept{where}; continue with --resume.",
              file=sys.stderr)
        return 130


def _printer() -> Any:
    from .progress import ProgressPrinter

    return ProgressPrinter() if _rank() == 0 else None


def _train(args: argparse.Namespace, command: str, fn_name: str, **extra: Any) -> int:
    def body() -> int:
        import importlib

        config = _config(args, command, **extra)
        module = importlib.import_module(f"MTSSTrainingLib.{ {'train-teacher': 'teacher', 'train-joint': 'joint', 'distill': 'distill'}[command] }")
        printer = _printer()
        try:
            result = getattr(module, fn_name)(config, progress=printer, resume=args.resume)
        finally:
            if printer is not None:
                printer.close()
        if _rank() == 0:
            if result.data.broken:
                print(f"{len(result.data.broken)} case(s) were left out:\n{result.data.broken_report()}", file=sys.stderr)
            v = result.validation
            score = f"; validation macro Dice {v['macro']['mean']:.3f}" if v and v["macro"]["mean"] is not None else ""
            print(f"bundle: {result.bundle}{score}")
        return 0

    return _guard(body, args.output)


def run_train_teacher(args: argparse.Namespace) -> int:
    return _train(args, "train-teacher", "train_teacher", population=args.population)


def run_train_joint(args: argparse.Namespace) -> int:
    return _train(args, "train-joint", "train_joint")


def run_distill(args: argparse.Namespace) -> int:
    def extra() -> dict[str, Any]:
        from .ensemble import parse_assignments
        from .runconfig import resolve_network

        kd = [t for t in args.kd.replace(" ", ",").split(",") if t]
        return {"kd": kd, "kd_weights": _weights(args.kd_weights), "kd_params": _kd_options(args.kd_option),
                "routing": args.routing, "teachers": parse_assignments(args.teachers),
                "single_stage": args.single_stage, "teacher_cache": args.teacher_cache,
                "full_network": resolve_network(args.network).to_dict() if args.network else None}

    try:
        options = extra()
    except (MTSSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _train(args, "distill", "distill", **options)


def run_evaluate(args: argparse.Namespace) -> int:
    def body() -> int:
        from .ensemble import load_ensemble
        from .evaluate import evaluate

        ensemble = load_ensemble(args.ensemble) if args.ensemble else None
        printer = _printer()
        try:
            report = evaluate(args.data, args.model, args.output, modalities=args.modalities, ensemble=ensemble,
                              device=args.device, mapping=args.mapping, overlays=args.overlays, progress=printer)
        finally:
            if printer is not None:
                printer.close()
        for label, s in report["summary"].items():
            macro = ", ".join(f"{r} {s['macro'][r]['dice']:.3f}" for r in ("WT", "TC", "ET") if r in s["macro"])
            print(f"{label}: macro Dice {macro}")
        print(f"report: {os.path.join(args.output, 'report.md')}")
        return 0

    return _guard(body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MTSSTrainingLib.commands")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
