"""MTSSTrainingLogic end to end on CPU: synthesise a tiny cohort, train a teacher, distil a student, segment
a case with the student through MTSSSegmenterLogic on a real MRML scene, evaluate; cancel and resume.

Everything is tiny (4 cases at 4 mm, a tiny network, one epoch of two 32^3 steps): the tests check the
plumbing between Slicer's side and the training commands, not model quality.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from MTSSSegmenterLib.bundle import list_bundles, read_meta
from MTSSSegmenterLib.errors import Cancelled, InputError
from MTSSSegmenterLib.io import find_case_files
from MTSSTrainingLib.logic import MTSSTrainingLogic
from MTSSSegmenterLib.process_tree import descendants, process_exists

TINY = {"epochs": 1, "stepsPerEpoch": 2, "device": "cpu", "spacing": 4.0, "patch": 32, "batch": 1, "workers": 0}


def _cancel_after_first_epoch(logic: MTSSTrainingLogic, data: Path, run: Path) -> dict:
    """Start a 2-epoch teacher run without waiting, cancel it once epoch 1 is committed; what was left."""
    from MTSSSegmenterLib.bundle import user_model_dir

    job = logic.trainTeacher(data, "GLI", run, network="tiny", waitForCompletion=False, **{**TINY, "epochs": 2})
    started_as = job.state
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "last.json").is_file():  # epoch 1 committed: cancel within epoch 2
        state, _, _ = job.poll(0.1)
        if state not in ("starting", "running") or time.monotonic() > deadline:
            raise AssertionError(f"the run ended or stalled before its first checkpoint: {state}\n"
                                 + "\n".join(job.log))
    tree = [job.pid, *descendants(job.pid)]
    job.cancel()
    time.sleep(0.3)
    left = {"started_as": started_as, "job": job, "tree": tree, "alive": [p for p in tree if process_exists(p)],
            "bundle_files": sorted(p.name for p in run.glob("model.*")),
            "installed": (user_model_dir() / run.name).exists(), "is_last_job": job is logic.lastJob}
    try:
        job.result()
    except Cancelled as exc:
        left["result"] = exc
    return left


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthesis -> teacher (cancelled after epoch 1, then resumed) -> student, through the Logic, with the
    user model folder in a temporary home."""
    root = tmp_path_factory.mktemp("training_logic")
    times = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTSS_HOME", str(root / "home"))
        logic = MTSSTrainingLogic()
        t0 = time.perf_counter()
        data = logic.synthesize(root / "data", cases=2, populations=["GLI", "MEN"], spacing=4.0, seed=3)
        times["synth"] = time.perf_counter() - t0
        cancelled = _cancel_after_first_epoch(logic, data, root / "teacher-GLI")
        times["cancel"] = time.perf_counter() - t0 - sum(times.values())
        seen: list[tuple[str, float, str]] = []
        teacher = logic.trainTeacher(data, "GLI", root / "teacher-GLI", network="tiny", resume=True,
                                     progressCallback=lambda *s: seen.append(s), **{**TINY, "epochs": 2})
        teacher_installed = logic.installedModel
        times["resume"] = time.perf_counter() - t0 - sum(times.values())
        student = logic.distill(data, {"GLI": teacher}, root / "student", kd=("output", "latent", "attention"),
                                student="tiny", installName="my-student", **TINY)
        times["student"] = time.perf_counter() - t0 - sum(times.values())
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return {"root": root, "data": data, "teacher": teacher, "student": student, "progress": seen,
            "cancelled": cancelled, "teacher_installed": teacher_installed, "student_installed": logic.installedModel}


@pytest.mark.slow
def test_teacher_and_student_bundles_land_where_the_segmenter_looks(trained, monkeypatch):
    from MTSSSegmenterLib.logic import MTSSSegmenterLogic

    data = trained["data"]
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == [
        "BraTS-GLI-00000-000", "BraTS-GLI-00001-000", "BraTS-MEN-00000-000", "BraTS-MEN-00001-000"]
    assert read_meta(trained["teacher"])["role"] == "teacher"
    student_meta = read_meta(trained["student"])
    assert student_meta["role"] == "student" and student_meta["network"]["channels"] == [8, 16, 32]
    # progress came through as (state, fraction, message), the fraction never going back within a stage
    progress = trained["progress"]
    assert progress[-1][0] == "done"
    fractions = [f for s, f, m in progress if m.startswith("training")]
    assert fractions and fractions == sorted(fractions)
    # installed into $MTSS_HOME/models under the run folder's name (or installName)
    monkeypatch.setenv("MTSS_HOME", str(trained["root"] / "home"))
    assert trained["teacher_installed"].name == "teacher-GLI" and trained["student_installed"].name == "my-student"
    assert {p.name for p in list_bundles()} >= {"teacher-GLI", "my-student"}
    listed = {Path(m.path).name for m in MTSSSegmenterLogic.availableModels()}
    assert {"teacher-GLI", "my-student"} <= listed


@pytest.mark.slow
def test_student_segments_a_case_through_the_segmenter_logic(trained, mrml):
    from MTSSSegmenterLib.logic import MTSSSegmenterLogic, imageFromVolume

    files, _ = find_case_files(trained["data"] / "BraTS-GLI-00000-000")
    volumes = {code: mrml.load_volume(path, code) for code, path in files.items() if code in ("t1c", "t2f")}
    logic = MTSSSegmenterLogic(keepWorker=False)
    try:
        seg = logic.process(volumes, modelPath=str(trained["student"]), device="cpu")
    finally:
        logic.shutdown()
    s = seg.GetSegmentation()
    assert [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())] == \
        ["Necrosis", "Edema", "Enhancing tumour"]
    assert seg.GetAttribute("MTSS.model") == "student"
    assert imageFromVolume(volumes["t1c"]).GetSize() == tuple(json.loads(
        (trained["data"] / "cohort.json").read_text())["cases"][0]["shape"])
    # and the result, as a radiologist would correct it, goes back as a training case
    case = MTSSTrainingLogic().addCasesFromScene(volumes, seg, "GLI", trained["root"] / "corrected",
                                                 segmentLabels=None)
    assert (case / f"{case.name}-seg.nii.gz").is_file() and (case / f"{case.name}-t2f.nii.gz").is_file()


@pytest.mark.slow
def test_evaluate_writes_a_report(trained):
    report = MTSSTrainingLogic().evaluate(trained["data"], [trained["student"]], trained["root"] / "report",
                                          device="cpu", overlays=0)
    assert report.name == "report.json" and report.is_file()
    assert (report.parent / "report.md").is_file()


@pytest.mark.slow
def test_cancel_ends_the_tree_and_leaves_no_bundle_then_resume_finishes(trained):
    left = trained["cancelled"]
    assert left["started_as"] == "starting" and left["is_last_job"] and left["job"].state == "cancelled"
    assert len(left["tree"]) >= 1 and left["alive"] == [], "processes of the cancelled run were still alive"
    assert left["bundle_files"] == [] and not left["installed"], "a cancelled run left a bundle behind"
    assert isinstance(left.get("result"), Cancelled)
    # the resumed run continued from the epoch-1 checkpoint: epoch 1 logged once, then epoch 2
    run = trained["teacher"]
    epochs = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    assert epochs == [1, 2]
    assert {re.search(r"epoch \d+/\d+", m).group() for s, _, m in trained["progress"] if m.startswith("training")} \
        == {"epoch 2/2"}


@pytest.mark.slow
def test_unknown_option_and_bad_value_are_refused_before_a_process_starts(trained, tmp_path):
    logic = MTSSTrainingLogic()
    with pytest.raises(InputError, match="Did you mean 'stepsPerEpoch'"):
        logic.trainTeacher(trained["data"], "GLI", tmp_path / "run", stepsPerEpok=2)
    with pytest.raises(InputError, match="invalid int value"):
        logic.trainTeacher(trained["data"], "GLI", tmp_path / "run", epochs="many")
    with pytest.raises(InputError, match="invalid choice"):
        logic.distill(trained["data"], {"GLI": trained["teacher"]}, tmp_path / "run", routing="sometimes")
    assert logic.lastJob is None and not (tmp_path / "run").exists()
