"""Synthesise or read data, train a teacher per population, distil one student, evaluate, say where it all is.

Headless in 3D Slicer (the MTSS extension installed)::

    Slicer --no-main-window --python-script train_all.py -- --data DATA --out RUNS [--synth 2] [--quick]

or with plain Python where MTSS is installed (``pip install -e .``)::

    python train_all.py --data DATA --out RUNS --synth 2 --populations GLI,MEN --quick

Both go through :class:`MTSSTrainingLib.logic.MTSSTrainingLogic`, which runs the ``mtss`` commands
(``synth``, ``train-teacher``, ``distill``, ``evaluate``) in child processes: ``PythonSlicer`` inside Slicer,
the running interpreter elsewhere. A teacher whose run folder already holds a bundle is reused, so an
interrupted script can simply be started again (``--resume`` continues a killed run from its last epoch).
With ``--quick`` everything is tiny (4 mm voxels, tiny networks, one epoch of two steps): minutes on a CPU,
for checking the set-up, not for a useful model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
# the libraries beside this script: the source tree (MTSSTraining/, MTSSSegmenter/) or an installed extension
for candidate in (HERE.parents[2], HERE.parents[3] / "MTSSSegmenter", HERE.parents[3] / "MTSSTraining"):
    if (candidate / "MTSSTrainingLib").is_dir() or (candidate / "MTSSSegmenterLib").is_dir():
        if str(candidate) not in sys.path:
            sys.path.insert(0, str(candidate))

QUICK = {"epochs": 1, "stepsPerEpoch": 2, "spacing": 4.0}
ALL_KD = "output,latent,barlow,region,attention"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_all.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="data folder of BraTS case folders (made with --synth if empty)")
    p.add_argument("--out", required=True, help="folder for the runs: teacher-<POP>/, student/, report/")
    p.add_argument("--synth", type=int, metavar="N",
                   help="if DATA is empty or missing, synthesise N cases per population into it")
    p.add_argument("--populations", default=None,
                   help="comma list of populations to train teachers for (default: those in the data)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--nproc", type=int, default=None, help="processes per run under torchrun (e.g. one per GPU)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the commands' defaults)")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--teacher-network", help="network config of the teachers (name or JSON file)")
    p.add_argument("--student", help="network config of the student (name or JSON file)")
    p.add_argument("--kd", default=ALL_KD, help=f"distillation terms (default {ALL_KD})")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs from their last epoch")
    p.add_argument("--no-install", action="store_true",
                   help="do not add the student to MTSSSegmenter's model list (user model folder)")
    p.add_argument("--quick", action="store_true", help="tiny everything, to check the set-up in minutes")
    return p.parse_args(argv)


class Reporter:
    """Progress callback printing one line per change of stage or epoch, at most every few seconds."""

    def __init__(self, what: str, every_s: float = 5.0) -> None:
        self.what, self.every_s, self.last, self.key = what, every_s, 0.0, None

    def __call__(self, state: str, fraction: float, message: str) -> None:
        key = (state, message.split(",")[0:2])
        now = time.monotonic()
        if key != self.key or now - self.last > self.every_s or state in ("done", "failed", "cancelled"):
            print(f"[{self.what}] {state} {100 * fraction:5.1f}%  {message}", flush=True)
            self.key, self.last = key, now


def has_cases(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def is_bundle(folder: Path) -> bool:
    return (folder / "model.json").is_file() and (folder / "model.safetensors").is_file()


def run(args: argparse.Namespace) -> int:
    from MTSSSegmenterLib.errors import Cancelled, MTSSError
    from MTSSTrainingLib.data import discover
    from MTSSTrainingLib.logic import MTSSTrainingLogic

    logic = MTSSTrainingLogic()
    data, out = Path(args.data), Path(args.out)
    common: dict = {"device": args.device, "nproc": args.nproc}
    if args.quick:
        common.update(QUICK)
    if args.epochs is not None:
        common["epochs"] = args.epochs
    if args.steps_per_epoch is not None:
        common["stepsPerEpoch"] = args.steps_per_epoch
    if args.resume:
        common["resume"] = True
    try:
        if not has_cases(data):
            if not args.synth:
                print(f"error: '{data}' holds no case folders; give --synth N to make a synthetic cohort there.",
                      file=sys.stderr)
                return 2
            print(f"Synthesising {args.synth} cases into {data} ...", flush=True)
            synth = {"spacing": common["spacing"]} if args.quick else {}
            if args.populations:
                synth["populations"] = args.populations.split(",")
            logic.synthesize(data, cases=args.synth, seed=0, progressCallback=Reporter("synth"), **synth)
        index = discover(data)
        print(f"Data: {index.summary()}", flush=True)
        populations = args.populations.split(",") if args.populations else index.populations()
        teacher_net = args.teacher_network or ("tiny" if args.quick else None)
        student_net = args.student or ("tiny" if args.quick else None)

        teachers = {}
        for pop in populations:
            run_dir = out / f"teacher-{pop}"
            if is_bundle(run_dir) and not args.resume:
                print(f"Teacher {pop}: reusing {run_dir}", flush=True)
            else:
                print(f"Training teacher {pop} -> {run_dir}", flush=True)
                logic.trainTeacher(data, pop, run_dir, network=teacher_net, installModel=False,
                                   progressCallback=Reporter(f"teacher {pop}"), **common)
            teachers[pop] = run_dir

        student_dir = out / "student"
        print(f"Distilling {', '.join(teachers)} into one student -> {student_dir}", flush=True)
        student = logic.distill(data, teachers, student_dir, kd=args.kd.split(","), student=student_net,
                                installModel=not args.no_install, installName="mtss-student-" + out.resolve().name,
                                progressCallback=Reporter("distill"), **common)

        print("Evaluating the student and the teachers ...", flush=True)
        report = logic.evaluate(data, [student, *teachers.values()], out / "report", device=args.device,
                                progressCallback=Reporter("evaluate"))
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except (MTSSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("")
    print(f"Student bundle: {student}")
    if logic.installedModel is not None:
        print(f"Installed as:   {logic.installedModel} (listed in MTSSSegmenter's model selector)")
    print(f"Teachers:       {', '.join(str(t) for t in teachers.values())}")
    print(f"Report:         {report} and {Path(report).with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":  # Slicer --python-script train_all.py -- --data ...
        argv = argv[1:]
    return run(parse_args(argv))


if __name__ == "__main__":
    status = main()
    slicer = sys.modules.get("slicer")
    if slicer is not None and hasattr(slicer, "app") and hasattr(slicer, "util"):
        slicer.util.exit(status)  # leave a headless Slicer instead of waiting in its event loop
    else:
        sys.exit(status)
