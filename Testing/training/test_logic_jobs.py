"""The Logic's process plumbing: arguments from camelCase keywords, progress lines, failure, cancel of a tree.

The child processes here are small Python scripts written into ``tmp_path`` that behave like a training
command (progress lines, log lines, a grandchild in a session of its own as ``torchrun`` makes).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

import pytest

from MTSSSegmenterLib.errors import Cancelled, InputError, MTSSError
from MTSSTrainingLib.arguments import build_argv, camel, kebab, mtss_command
from MTSSTrainingLib.jobs import PROGRESS_PREFIX, TrainingJob, parse_progress
from MTSSSegmenterLib.process_tree import descendants, process_exists


def distill_like_parser() -> argparse.ArgumentParser:
    """Options shaped like ``mtss distill`` / ``mtss evaluate`` (independent of the real command line)."""
    p = argparse.ArgumentParser(prog="mtss distill")
    p.add_argument("data")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--teachers", nargs="+", metavar="POP=RUN")
    p.add_argument("--kd", default="output")
    p.add_argument("--kd-weights")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--model", action="append")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True)
    return p


def test_names_convert_both_ways():
    assert kebab("stepsPerEpoch") == "steps-per-epoch"
    assert kebab("kdWeights") == "kd-weights"
    assert kebab("singleStage") == "single-stage"
    assert kebab("steps_per_epoch") == "steps-per-epoch"
    assert camel("--steps-per-epoch") == "stepsPerEpoch"


def test_build_argv_formats_each_kind_of_option():
    argv = build_argv("distill", ["DATA"], {
        "output": Path("RUN"), "teachers": {"GLI": "t/gli", "MEN": "t/men"}, "kd": ("output", "latent"),
        "kdWeights": {"output": 1.0, "latent": 0.5}, "epochs": 2, "stepsPerEpoch": 3, "device": "cpu",
        "amp": True, "resume": False, "lr": None, "model": ["a", "b"], "cache": False,
    }, parser=distill_like_parser())
    assert argv[:2] == ["distill", "DATA"]
    joined = " ".join(argv)
    assert "--output RUN" in joined
    assert "--teachers GLI=t/gli MEN=t/men" in joined
    assert "--kd output,latent" in joined
    assert "--kd-weights output=1.0,latent=0.5" in joined
    assert "--epochs 2" in joined and "--steps-per-epoch 3" in joined and "--device cpu" in joined
    assert "--amp" in argv and "--resume" not in argv and "--lr" not in argv
    assert argv.count("--model") == 2 and "--no-cache" in argv
    parsed = distill_like_parser().parse_args(argv[1:])
    assert parsed.teachers == ["GLI=t/gli", "MEN=t/men"] and parsed.model == ["a", "b"] and parsed.cache is False


@pytest.mark.parametrize("options, words", [
    ({"output": "R", "stepsPerEpok": 2}, ["stepsPerEpok", "Did you mean 'stepsPerEpoch'"]),
    ({"output": "R", "device": "gpu"}, ["invalid choice", "gpu"]),
    ({"output": "R", "epochs": "many"}, ["invalid int value", "many"]),
    ({"output": "R", "amp": "yes"}, ["switch"]),
    ({}, ["required", "--output"]),
])
def test_bad_options_are_refused_before_anything_starts(options, words):
    with pytest.raises(InputError) as err:
        build_argv("distill", ["DATA"], options, parser=distill_like_parser())
    for word in words:
        assert word in str(err.value)


def test_progress_lines_are_parsed_and_others_ignored():
    p = parse_progress(PROGRESS_PREFIX + '{"stage": "training", "epoch": 3, "epochs": 12, "step": 12, '
                                         '"fraction": 0.25, "loss": 0.5, "eta_s": 300}')
    assert (p.stage, p.epoch, p.step, p.fraction, p.loss, p.eta_s) == ("training", 3, 12, 0.25, 0.5, 300.0)
    assert "epoch 3/12" in p.text() and "loss 0.5" in p.text() and "25%" in p.text() and "5 min" in p.text()
    assert parse_progress("[rank0]: " + PROGRESS_PREFIX + '{"stage": "x", "fraction": 2}').fraction == 1.0
    assert parse_progress("epoch 3 loss 0.5") is None
    counter = parse_progress("[3/20] BraTS-GLI-00002-000", stage="synth")
    assert (counter.stage, counter.fraction, counter.details["item"]) == ("synth", 0.15, "BraTS-GLI-00002-000")
    assert parse_progress(PROGRESS_PREFIX + "{not json") is None


def test_torchrun_command_line():
    cmd = mtss_command(["train-teacher", "D"], nproc=2, python=["py"])
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd and cmd[cmd.index("-m", 3) + 1] == "MTSSSegmenterLib.cli"
    assert cmd[-2:] == ["train-teacher", "D"]
    assert mtss_command(["x"], python=["py"]) == ["py", "-m", "MTSSSegmenterLib.cli", "x"]
    with pytest.raises(InputError):
        mtss_command(["x"], nproc=0, python=["py"])


def fake_training(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "fake_training.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, subprocess, sys, time
        P = {PROGRESS_PREFIX!r}
        def progress(**kw):
            print(P + json.dumps(kw), flush=True)
    """) + textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_job_streams_progress_and_returns_the_finish_result(tmp_path):
    argv = fake_training(tmp_path, """
        print("loading data", flush=True)
        for i in range(1, 5):
            progress(stage="training", epoch=i, fraction=i / 4, loss=1.0 / i, eta_s=4 - i)
        open(sys.argv[1], "w").write("bundle")
    """) + [str(tmp_path / "out.txt")]
    seen = []
    job = TrainingJob(argv, "fake", finish=lambda: (tmp_path / "out.txt").read_text()).start()
    result = job.wait(lambda state, fraction, message: seen.append((state, fraction, message)))
    assert result == "bundle" and job.state == "done" and job.progress == 1.0
    fractions = [f for s, f, _ in seen if s == "running"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 1
    assert any("epoch" in m and "loss" in m for _, _, m in seen)
    assert seen[-1][0] == "done"
    assert "loading data" in job.log and not any(PROGRESS_PREFIX in line for line in job.log)
    assert job.details.epoch == 4


def test_failure_quotes_the_commands_error(tmp_path):
    argv = fake_training(tmp_path, """
        print("some log", flush=True)
        print("error: The data folder 'x' holds no GLI case.", file=sys.stderr, flush=True)
        sys.exit(2)
    """)
    job = TrainingJob(argv, "mtss train-teacher").start()
    with pytest.raises(MTSSError, match=r"train-teacher failed \(exit status 2\): The data folder 'x' holds no GLI"):
        job.wait()
    assert job.state == "failed"


def test_finish_error_fails_the_job(tmp_path):
    def finish():
        raise MTSSError("no bundle in the run folder")

    job = TrainingJob(fake_training(tmp_path, "pass"), "fake", finish=finish).start()
    with pytest.raises(MTSSError, match="no bundle"):
        job.wait()


def test_unexpected_error_in_finish_fails_the_job_instead_of_hanging(tmp_path):
    def finish():
        raise KeyError("boom")

    job = TrainingJob(fake_training(tmp_path, "pass"), "fake", finish=finish).start()
    with pytest.raises(MTSSError, match="handling its result failed: KeyError"):
        job.wait(timeout=60)


def _pids(path: Path, count: int, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            pids = [int(x) for x in path.read_text().split()]
            if len(pids) >= count:
                return pids
        time.sleep(0.05)
    raise AssertionError(f"the fake training did not report {count} pids")


TREE_BODY = """
    # a worker in its own session, as torchrun starts them, and its own child
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']);"
            "open(sys.argv[1], 'a').write(f' {c.pid}'); time.sleep(300)")
    worker = subprocess.Popen([sys.executable, "-c", code, sys.argv[1] + ".grand"], start_new_session=True)
    open(sys.argv[1], "w").write(f"{os.getpid()} {worker.pid}")
    for i in range(100000):
        progress(stage="training", epoch=1, step=i, fraction=min(i / 1000, 1.0), loss=0.5)
        time.sleep(0.05)
"""


def test_cancel_ends_the_whole_tree_including_other_sessions(tmp_path):
    pidfile = tmp_path / "pids"
    job = TrainingJob(fake_training(tmp_path, TREE_BODY) + [str(pidfile)], "fake").start()
    root, worker = _pids(pidfile, 2)
    grandchild = _pids(Path(str(pidfile) + ".grand"), 1)[0]
    assert {worker, grandchild} <= set(descendants(root))
    while job.poll(0.5)[1] == 0.0:
        pass
    job.cancel()
    assert job.state == "cancelled"
    time.sleep(0.2)
    assert not any(process_exists(p) for p in (root, worker, grandchild))
    with pytest.raises(Cancelled):
        job.result()


def test_cancelled_raised_in_the_callback_cancels(tmp_path):
    pidfile = tmp_path / "pids"
    job = TrainingJob(fake_training(tmp_path, TREE_BODY) + [str(pidfile)], "fake").start()

    def callback(state, fraction, message):
        if fraction > 0:
            raise Cancelled("user clicked Cancel")

    with pytest.raises(Cancelled):
        job.wait(callback)
    root, worker = _pids(pidfile, 2)
    time.sleep(0.2)
    assert job.state == "cancelled" and not process_exists(root) and not process_exists(worker)


def test_poll_is_non_blocking(tmp_path):
    job = TrainingJob(fake_training(tmp_path, "time.sleep(3)"), "fake").start()
    t0 = time.perf_counter()
    state, fraction, message = job.poll()
    assert time.perf_counter() - t0 < 0.5 and state == "starting" and "Starting" in message
    with pytest.raises(RuntimeError, match="still"):
        job.result()
    job.cancel()


def test_output_keyword_maps_to_the_o_option_whatever_its_long_name():
    p = argparse.ArgumentParser()
    p.add_argument("-o", "--out", required=True)
    assert build_argv("x", [], {"output": "RUN"}, parser=p) == ["x", "--out", "RUN"]
    q = argparse.ArgumentParser()
    q.add_argument("-o", dest="out", required=True)
    assert build_argv("x", [], {"output": "RUN"}, parser=q) == ["x", "-o", "RUN"]
