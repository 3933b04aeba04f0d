#!/usr/bin/env python3
"""Train the default MTSS student from scratch: synthetic cohort -> five teachers -> joint baseline ->
distilled student (all KD terms) -> evaluation -> bundle in the segmenter's package data.

Anyone can rerun it. Three profiles:

* ``--profile gpu``: the full recipe for a CUDA GPU (1.5 mm working spacing, large teachers, many steps).
* ``--profile cpu``: what fits a 2-core CPU in about 1.5 hours with two processes sharing the steps (3 mm
  working spacing, small networks, about a thousand steps per network). The bundle shipped today was made
  with it: no GPU was lent to the sessions that made it.
* ``--profile tiny``: every step for a few seconds, for the test suite.

The student starts from the joint baseline's weights (distilling it from scratch with all five KD terms
collapsed to constant outputs on the CPU budget); ``joint-continued`` trains the joint baseline for the
same extra steps without teachers, the fair comparison.

Usage::

    python MTSSTraining/Resources/Scripts/train_default.py --work /tmp/mtss-default --profile cpu [--install]

Every step is a plain ``mtss`` command (printed before it runs), so each can be rerun or resumed alone
(training steps are resumable with ``--resume``; finished steps are skipped on a rerun).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

POPULATIONS = ("GLI", "PED", "SSA", "MEN", "MET")
KD_TERMS = ("output", "latent", "barlow", "region", "attention")
HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parents[1] / "MTSSTrainingLib" / "configs"

# Steps in order; ``--only`` runs a subset (two processes can share the work: see the README).
STEPS = ("synth", "teacher-base", "teachers", "joint", "student", "joint-continued", "ablation", "evaluate", "install")

PROFILES = {
    # A 2-core CPU in about 1.5 hours when two processes of one thread each share the steps
    # (``--only teacher-base,teachers,student`` beside ``--only joint,ablation --wait``).
    "cpu": {"cases": 24, "test_cases": 6, "synth_spacing": 2.0, "spacing": 3.0, "patch": 48, "batch": 2, "lr": 2e-3,
            "teacher": "teacher_cpu", "student": "student_default", "teacher_base_steps": (8, 125),
            "teacher_steps": (1, 150), "joint_steps": (8, 110), "student_steps": (4, 110), "student_init": "joint",
            "ablation_steps": (1, 150), "ablation_init": "joint", "clinical_augment": 0.3, "amp": False},
    "gpu": {"cases": 200, "test_cases": 20, "synth_spacing": 1.0, "spacing": 1.5, "patch": 128, "batch": 2, "lr": 1e-3,
            "teacher": "teacher_resunet", "student": "student_default", "teacher_base_steps": None,
            "teacher_steps": (20, 100), "joint_steps": (40, 100), "student_steps": (30, 100), "student_init": "joint",
            "ablation_steps": (20, 100), "ablation_init": None, "clinical_augment": 0.3, "amp": True},
    # Every step for a few seconds each: the test suite runs the whole recipe with it.
    "tiny": {"cases": 2, "test_cases": 1, "synth_spacing": 4.0, "spacing": 4.0, "patch": 16, "batch": 1, "lr": 1e-3,
             "teacher": "tiny", "student": "tiny", "teacher_base_steps": (1, 2), "teacher_steps": (1, 1),
             "joint_steps": (1, 2), "student_steps": (1, 1), "student_init": "joint", "ablation_steps": (1, 1),
             "ablation_init": "joint", "clinical_augment": 0.3, "amp": False},
}


def mtss(*args: object, log: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "MTSSSegmenterLib.cli"] + [str(a) for a in args]
    print("$ mtss " + " ".join(str(a) for a in args), flush=True)
    t = time.time()
    with open(log, "a") if log else open("/dev/null", "w") as f:
        p = subprocess.run(cmd, check=False, stdout=f if log else None, stderr=subprocess.STDOUT if log else None)
    if p.returncode != 0:
        raise SystemExit(f"step failed ({p.returncode}) after {time.time() - t:.0f} s: {' '.join(cmd)}")
    print(f"  done in {time.time() - t:.0f} s", flush=True)


def train_opts(p: dict, steps: tuple[int, int], device: str) -> list[object]:
    opts: list[object] = ["--epochs", steps[0], "--steps-per-epoch", steps[1], "--patch", p["patch"],
                          "--batch", p["batch"], "--spacing", p["spacing"], "--device", device, "--lr", p["lr"]]
    return opts + (["--amp"] if p["amp"] else [])


def done(run: Path) -> bool:
    return (run / "model.json").is_file() and (run / "model.safetensors").is_file()


def wait_for(runs: list[Path], wait: bool) -> None:
    """Return when every run has its bundle; without ``wait``, fail naming the missing ones."""
    missing = [r for r in runs if not done(r)]
    if missing and not wait:
        raise SystemExit("these runs are not finished yet: " + ", ".join(str(r) for r in missing)
                         + " (run their steps first, or pass --wait when another process is running them)")
    if missing:
        print("waiting for " + ", ".join(r.name for r in missing), flush=True)
    while any(not done(r) for r in runs):
        time.sleep(20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, type=Path, help="working folder (data, runs, reports)")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--install", action="store_true", help="copy the student into the package data as 'default'")
    ap.add_argument("--ablation", action="store_true", help="also distil once without each KD term")
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma list of steps to run, among {', '.join(STEPS)}")
    ap.add_argument("--wait", action="store_true", help="wait for runs another process is training instead of failing")
    args = ap.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(only) - set(STEPS))
    if unknown:
        ap.error(f"unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    if "ablation" in only and not args.ablation:
        only.remove("ablation")
    p = PROFILES[args.profile]
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    log = w / ("recipe.log" if only == list(STEPS) else f"recipe-{'-'.join(only)}.log")
    timings: dict[str, float] = {}
    t0 = time.time()

    def step(name: str, fn) -> None:
        t = time.time()
        fn()
        timings[name] = round(time.time() - t, 1)
        save_timings()

    def save_timings() -> None:  # merged with what another process sharing the steps wrote
        path = w / "timings.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**old, **timings}, indent=2))

    train, test = w / "train", w / "test"
    if "synth" in only and not (train / "cohort.json").is_file():
        step("synth", lambda: mtss("synth", train, "--cases", p["cases"], "--spacing", p["synth_spacing"],
                                   "--seed", 1000, "--workers", 2, log=log))
    if "synth" in only and not (test / "cohort.json").is_file():
        step("synth_test", lambda: mtss("synth", test, "--cases", p["test_cases"], "--spacing", p["synth_spacing"],
                                        "--seed", 2000, "--workers", 2, log=log))
    runs = w / "runs"
    init: list[object] = []
    if p["teacher_base_steps"]:
        # Small budgets: a teacher-sized network trained on every population, then fine-tuned per population
        # (--init), instead of five teachers from scratch.
        base = runs / "teacher-base"
        init = ["--init", base]
        if "teacher-base" in only and not done(base):
            resume = ["--resume"] if (base / "run.json").is_file() else []
            step("teacher_base", lambda: mtss("train-joint", train, "-o", base, "--network",
                                              CONFIGS / f"{p['teacher']}.json", "--seed", 2, "--name", "teacher-base",
                                              *resume, *train_opts(p, p["teacher_base_steps"], args.device), log=log))
    teachers = {pop: runs / f"teacher-{pop}" for pop in POPULATIONS}
    if "teachers" in only and p["teacher_base_steps"]:
        wait_for([base], args.wait)
    for pop, run in teachers.items():
        if "teachers" in only and not done(run):
            resume = ["--resume"] if (run / "run.json").is_file() else []
            step(f"teacher_{pop}", lambda run=run, pop=pop, resume=resume: mtss(
                "train-teacher", train, "--population", pop, "-o", run, "--network", CONFIGS / f"{p['teacher']}.json",
                "--seed", 1, *init, *resume, *train_opts(p, p["teacher_steps"], args.device), log=log))
    joint = runs / "joint"
    if p["joint_steps"] is None:
        # Small budgets: the teacher base (same network as the student, trained on every population without
        # distillation) is the joint baseline, and the student starts from it (--init).
        joint = runs / "teacher-base"
    elif "joint" in only and not done(joint):
        resume = ["--resume"] if (joint / "run.json").is_file() else []
        step("joint", lambda: mtss("train-joint", train, "-o", joint, "--network", CONFIGS / f"{p['student']}.json",
                                   "--seed", 1, "--modality-dropout", 0.5, "--clinical-augment", p["clinical_augment"],
                                   *resume, *train_opts(p, p["joint_steps"], args.device), log=log))
    teacher_args = [f"{pop}={teachers[pop]}" for pop in POPULATIONS]
    student = runs / "student"

    # On the CPU budget, distilling the student from scratch with all five KD terms collapsed (constant
    # outputs, validation Dice 0 from the third epoch), so it starts from the joint baseline's weights; the
    # fair comparison is then the joint baseline trained for the same extra steps without distillation
    # ("joint-continued").
    student_init = ["--init", joint] if p["joint_steps"] is None or p["student_init"] == "joint" else []
    continued = runs / "joint-continued"

    def distil(run: Path, kd: tuple[str, ...], steps: tuple[int, int], init: list[object]) -> None:
        resume = ["--resume"] if (run / "run.json").is_file() else []
        mtss("distill", train, "--teachers", *teacher_args, "-o", run, "--student", CONFIGS / f"{p['student']}.json",
             "--kd", ",".join(kd), "--seed", 1, "--name", "mtss-default" if run == student else run.name, *resume,
             "--clinical-augment", p["clinical_augment"], *init, *train_opts(p, steps, args.device), log=log)

    if "student" in only and not done(student):
        wait_for(list(teachers.values()) + ([joint] if student_init else []), args.wait)
        step("student", lambda: distil(student, KD_TERMS, p["student_steps"], student_init))
    if p["student_init"] == "joint" and "joint-continued" in only and not done(continued):
        wait_for([joint], args.wait)
        resume = ["--resume"] if (continued / "run.json").is_file() else []
        step("joint_continued", lambda: mtss(
            "train-joint", train, "-o", continued, "--network", CONFIGS / f"{p['student']}.json", "--seed", 1,
            "--modality-dropout", 0.5, "--clinical-augment", p["clinical_augment"], "--name", "joint-continued",
            "--init", joint, *resume, *train_opts(p, p["student_steps"], args.device), log=log))
    # The ablation: one run with every KD term and one without each, all with the same budget (and, on the
    # CPU profile, all fine-tuned from the joint baseline, so that they differ only in the KD terms).
    ablations = []
    if args.ablation:
        ablation_init = ["--init", joint] if p["ablation_init"] == "joint" else []
        variants = {"student-ablation-all": KD_TERMS}
        variants.update({f"student-without-{t}": tuple(k for k in KD_TERMS if k != t) for t in KD_TERMS})
        variants["student-without-kd"] = ()  # ground truth only: the same fine-tuning without any teacher
        for name, kd in variants.items():
            run = runs / name
            ablations.append(run)
            if "ablation" in only and not done(run):
                wait_for(list(teachers.values()) + ([joint] if ablation_init else []), args.wait)
                step(f"ablation_{name}", lambda run=run, kd=kd: distil(run, kd, p["ablation_steps"], ablation_init))
    if "evaluate" not in only and "install" not in only:
        print(json.dumps(timings, indent=2))
        return 0
    reports = w / "reports"
    if "evaluate" in only:
        wait_for([student, joint, *teachers.values(), *ablations] + ([continued] if p["student_init"] == "joint" else []),
                 args.wait)
    controls = [continued] if p["student_init"] == "joint" else []
    models = list(dict.fromkeys([student, joint, *controls] + [teachers[pop] for pop in POPULATIONS] + ablations))
    model_args = [a for m in models for a in ("--model", m)]
    if "evaluate" in only:
        step("evaluate", lambda: mtss("evaluate", test, *model_args, "--ensemble", *teacher_args, "-o", reports / "all",
                                      "--device", args.device, log=log))
    for subset in ("t1c,t2f", "t1c", "t2f") if "evaluate" in only else ():
        step(f"evaluate_{subset}", lambda subset=subset: mtss(
            "evaluate", test, "--model", student, "--modalities", subset, "-o", reports / subset.replace(",", "+"),
            "--device", args.device, "--overlays", 0, log=log))
    timings["total_" + "-".join(only)] = round(time.time() - t0, 1)
    save_timings()
    if args.install and "install" in only:
        import MTSSSegmenterLib

        target = Path(MTSSSegmenterLib.__file__).parent / "data" / "default"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for f in ("model.safetensors", "model.json"):
            shutil.copy2(student / f, target / f)
        print(f"installed the student as {target}")
    print(json.dumps(timings, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
