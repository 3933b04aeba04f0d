"""The default model's recipe, end to end on the ``tiny`` profile: every step runs and the report is written.

``train_default.py`` and ``default_report.py`` are what a user with a GPU reruns to make the shipped
student; this runs the same code with a few steps per network on a few 4 mm cases (no ``--install``: the
shipped bundle is left alone).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "MTSSTraining" / "Resources" / "Scripts"
POPULATIONS = ("GLI", "PED", "SSA", "MEN", "MET")
TERMS = ("output", "latent", "barlow", "region", "attention", "kd")


def run(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=1500,
                          check=False)


@pytest.mark.slow
def test_tiny_recipe_runs_every_step_and_writes_the_report(tmp_path):
    work = tmp_path / "work"
    p = run(SCRIPTS / "train_default.py", "--work", work, "--profile", "tiny", "--device", "cpu", "--ablation",
            cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    runs = work / "runs"
    expected = ["teacher-base", "joint", "joint-continued", "student", *(f"teacher-{pop}" for pop in POPULATIONS),
                "student-ablation-all", *(f"student-without-{t}" for t in TERMS)]
    for name in expected:
        assert (runs / name / "model.json").is_file() and (runs / name / "model.safetensors").is_file(), name
    student_meta = json.loads((runs / "student" / "model.json").read_text())
    assert student_meta["training"]["init_from"]["name"] == "joint"  # the student starts from the joint baseline
    assert student_meta["inference"]["mirror"] == ["LR"]  # calibrated for, and segmenting with, mirroring
    # thresholds for thick slices, chosen on clinical studies of their own seed after the student's training
    assert student_meta["inference"]["thick_slices"]["min_slice_mm"] == 4.0
    assert student_meta["metrics"]["thick_slice_calibration"]["studies"] == [str(work / "val-clinical")]
    assert json.loads((work / "reports" / "thick_slices.json").read_text())["n_cases"] >= 1
    # minimum component sizes, on the aligned copies of the same studies, kept beside the thick-slice set
    components = json.loads((work / "reports" / "components.json").read_text())
    assert student_meta["inference"]["min_component_ml"] == components["min_component_ml"]
    assert student_meta["metrics"]["component_calibration"]["n_cases"] == components["n_cases"] >= 1
    # and the thick-slice confident-core rule on the studies as they come, after the sizes
    core = json.loads((work / "reports" / "confident_core.json").read_text())
    record = student_meta["metrics"]["confident_core_calibration"]["t1n,t1c,t2w,t2f"]
    assert record["n_cases"] == core["n_cases"] >= 1 and record["min_component_ml"] == components["min_component_ml"]
    rule = student_meta["inference"]["thick_slices"].get("confident_core")
    if core["min_fraction"]:
        assert rule["min_fraction"]["t1n,t1c,t2w,t2f"] == core["min_fraction"]
    else:
        assert rule is None
    assert json.loads((runs / "joint-continued" / "model.json").read_text())["training"]["init_from"]["name"] == "joint"
    # the joint baseline, its continuation and the student also train on the clinical studies
    clinical = str(work / "train-clinical")
    for name in ("joint", "joint-continued", "student"):
        data = json.loads((runs / name / "model.json").read_text())["training"]["data"]
        assert data == [str(work / "train"), clinical], (name, data)
    assert student_meta["training"]["cases"]["left_out"] == []
    report = json.loads((work / "reports" / "all" / "report.json").read_text())
    roles = [m["role"] for m in report["models"].values()]
    # student, joint, its continuation and the five teachers, plus the teacher ensemble; the ablation runs
    # in a report of their own (evaluated beside the main one)
    assert roles.count("ensemble") == 1 and len(report["models"]) == 3 + len(POPULATIONS) + 1
    ablation = json.loads((work / "reports" / "ablation" / "report.json").read_text())
    assert sorted(Path(m["source"]).name for m in ablation["models"].values()) == sorted(expected[-7:])
    for subset in ("t1c+t2f", "t1c", "t2f"):
        assert (work / "reports" / subset / "report.json").is_file()
    timings = json.loads((work / "timings.json").read_text())
    assert {"synth", "teacher_base", "joint", "student", "joint_continued", "evaluate", "ceiling"} <= set(timings)
    ceiling = json.loads((work / "reports" / "ceiling.json").read_text())
    assert set(ceiling["spacings"]) == {"4"} and ceiling["cases"] == len(POPULATIONS)
    # A rerun skips every finished step (and still evaluates).
    again = run(SCRIPTS / "train_default.py", "--work", work, "--profile", "tiny", "--device", "cpu",
                "--only", "teacher-base,teachers,joint,student", cwd=tmp_path)
    assert again.returncode == 0 and "$ mtss" not in again.stdout, again.stdout[-2000:]
    # The report, into a copy of the student bundle.
    bundle = tmp_path / "bundle"
    shutil.copytree(runs / "student", bundle, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    notes = tmp_path / "notes.md"
    notes.write_text("Seen by eye: nothing.")
    r = run(SCRIPTS / "default_report.py", "--work", work, "--bundle", bundle, "--notes", notes, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = (bundle / "report.md").read_text()
    for heading in ("## Dice per population", "## Student with missing modalities", "## Targets",
                    "## Ablation: one KD term removed at a time", "Seen by eye: nothing.",
                    "### What the working spacing allows", "| 4 | soft |", "### Thresholds per input subset",
                    "| t1c+t2f |", "### Components without a confident core, on thick slices"):
        assert heading in text, heading
    assert "| macro | WT |" in text and "no KD term (ground truth only)" in text
    assert f"train on {len(POPULATIONS)} synthetic clinical studies" in text  # the tiny profile's 1 per population
    assert "synthetic test macro Dice" in json.loads((bundle / "model.json").read_text())["metrics"]["summary"]


def test_unknown_step_is_refused(tmp_path):
    p = run(SCRIPTS / "train_default.py", "--work", tmp_path, "--only", "teachers,bogus", cwd=tmp_path)
    assert p.returncode == 2 and "unknown step(s) bogus" in p.stderr


def test_missing_prerequisite_names_the_run_without_wait(tmp_path):
    p = run(SCRIPTS / "train_default.py", "--work", tmp_path, "--profile", "tiny", "--only", "student", cwd=tmp_path)
    assert p.returncode != 0 and "not finished yet" in (p.stdout + p.stderr) and "--wait" in (p.stdout + p.stderr)


def test_parallel_jobs_share_the_cores_out(monkeypatch):
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("train_default", SCRIPTS / "train_default.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_default", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert module.job_env(8, {"PATH": "/bin"}) == {"PATH": "/bin", "OMP_NUM_THREADS": "2"}
    assert module.job_env(32, {})["OMP_NUM_THREADS"] == "1"
    assert module.job_env(2, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"  # the user's choice stays


def test_real_case_coverage_against_the_flair_lesion(monkeypatch):
    """The report's crude reference on an unlabelled case: the bright FLAIR region, how much of it a
    segmentation covers and how much it marks far away from it."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("default_report", SCRIPTS / "default_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(1)
    flair = rng.normal(100, 5, (40, 40, 40)).astype(np.float32)
    flair[10:20, 10:20, 10:20] += 60  # the lesion
    flair[30:32, 30:32, 30:32] += 60  # a smaller bright spot: not the largest region
    brain = np.ones_like(flair, bool)
    ref = module.flair_lesion(flair, brain)
    assert ref[10:20, 10:20, 10:20].mean() > 0.85 and ref.sum() <= 1000 and not ref[30:32, 30:32, 30:32].any()
    seg = np.zeros_like(brain)
    seg[10:15, 10:20, 10:20] = True  # half the lesion
    seg[35:38, 0:10, 0:10] = True  # 300 voxels far from it
    covered, far = module.coverage(seg, ref, np.array([2.0, 1.0, 1.0]))
    assert abs(covered - 50) < 3
    assert far == 300 * 2.0 / 1000


def test_cpu_profile_distils_from_specialists_of_the_generalist(tmp_path):
    """The shipped model's recipe: joint -> generalist-1 -> generalist-2; each teacher is generalist-2 (the
    student's network) fine-tuned on its population; the student and its control both start from generalist-2."""
    p = run(SCRIPTS / "train_default.py", "--work", tmp_path, "--profile", "cpu", "--dry-run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = {line.split(" -o ")[1].split()[0]: line for line in p.stdout.splitlines() if " -o " in line}

    def init(run_dir: str) -> str:
        args = lines[str(tmp_path / run_dir)].split()
        return args[args.index("--init") + 1] if "--init" in args else ""

    runs = tmp_path / "runs"
    assert init("runs/generalist-1") == str(runs / "joint") and init("runs/generalist-2") == str(runs / "generalist-1")
    for pop in POPULATIONS:
        assert init(f"runs/teacher-{pop}") == str(runs / "generalist-2")
        assert "student_default.json" in lines[str(runs / f"teacher-{pop}")]
    assert init("runs/student") == init("runs/joint-continued") == str(runs / "generalist-2")
    trains = [line for line in lines.values() if " train-" in line or " distill " in line]
    assert len(trains) >= 10 and all("--mirror LR" in line for line in trains)  # every run mirrors alike
    assert not (runs / "student").exists()  # nothing ran
