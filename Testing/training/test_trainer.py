"""The shared training loop: bundles, logs, checkpoints, resume after a kill, NaN stop, progress lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from MTSSSegmenterLib.bundle import load_bundle
from MTSSSegmenterLib.errors import MTSSError
from MTSSSegmenterLib.pipeline import segment_folder
from MTSSTrainingLib import commands
from MTSSTrainingLib.checkpoint import load_checkpoint, save_checkpoint
from MTSSTrainingLib.progress import ProgressPrinter, parse_progress_line, read_log
from MTSSTrainingLib.runconfig import TrainConfig, resolve_network
from MTSSTrainingLib.teacher import SupervisedModule, train_teacher

from .cohort import fake_bundle, one_thread, write_fake_case  # noqa: F401  (autouse)

TINY = resolve_network("tiny").to_dict()


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fake") / "data"
    for i in range(3):
        write_fake_case(root, f"BraTS-GLI-{i:05d}-000", i)
    for i in range(2):
        write_fake_case(root, f"BraTS-MET-{i:05d}-000", 10 + i)
    return root


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = {"command": "train-teacher", "data": [str(data)], "out": str(out), "network": TINY, "population": "GLI",
            "epochs": 2, "steps_per_epoch": 2, "patch": (16, 16, 16), "batch": 2, "spacing": 4.0, "val_fraction": 0.4,
            "seed": 5}
    base.update(kw)
    return TrainConfig(**base)


def test_teacher_run_writes_bundle_logs_and_leaves_out_a_broken_case(fake_data, tmp_path):
    data = tmp_path / "data"
    import shutil

    shutil.copytree(fake_data, data)
    broken = data / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t1c.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated download
    events = []
    result = train_teacher(_config(data, tmp_path / "run"), progress=events.append)
    run = tmp_path / "run"
    bundle = load_bundle(run)
    meta = bundle.meta
    assert meta["role"] == "teacher" and meta["populations"] == ["GLI"]
    assert meta["preprocessing"]["spacing_mm"] == [4.0, 4.0, 4.0]
    val = meta["metrics"]["validation"]["populations"]
    assert set(val) == {"GLI", "MET"}  # validated on every population: the cross-population row
    assert all(0.0 <= val[p]["WT"] <= 1.0 for p in val)
    training = meta["training"]
    assert training["cases"]["left_out"] == ["BraTS-GLI-00002-000"]
    assert training["labelled_regions"] == ["WT", "TC", "ET"] and training["seed"] == 5
    assert training["epochs"] == 2 and training["steps_per_epoch"] == 2 and training["world_size"] == 1
    data_json = json.loads((run / "data.json").read_text())
    assert data_json["broken"][0]["name"] == "BraTS-GLI-00002-000" and "t1c" in data_json["broken"][0]["reason"]
    split = json.loads((run / "split.json").read_text())
    assert "BraTS-GLI-00002-000" not in split["train"] + split["val"]
    assert [r["epoch"] for r in read_log(run)] == [1, 2]
    assert (run / "training_curves.png").stat().st_size > 1000
    assert any((run / "tensorboard").iterdir())
    assert json.loads((run / "checkpoints" / "last.json").read_text())["epoch"] == 2
    assert result.bundle == run and [b.name for b in result.data.broken] == ["BraTS-GLI-00002-000"]
    stages = [e["stage"] for e in events]
    assert stages[0] == "preparing" and stages[-1] == "done" and "validating" in stages
    fractions = [e["fraction"] for e in events if e["stage"] == "training"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # the bundle segments a case through the real pipeline
    case = fake_data / "BraTS-MET-00000-000"
    seg = segment_folder(case, model=run, device="cpu")
    ref = sitk.ReadImage(str(case / "BraTS-MET-00000-000-t1c.nii.gz"))
    assert seg.label.GetSize() == ref.GetSize() and seg.model_name == "teacher-GLI"


def test_training_on_cases_prepared_in_memory(tmp_path):
    from MTSSTrainingLib.cache import memory_data, prepare_arrays
    from MTSSTrainingLib.joint import train_joint

    config = _config(tmp_path / "unused", tmp_path / "run", command="train-joint", population=None, epochs=1)
    cases = []
    for i, pop in enumerate(("GLI", "GLI", "PED", "PED")):
        folder = write_fake_case(tmp_path / "arrays", f"case{i}", i)
        arrays = {m: np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"case{i}-{m}.nii.gz"))), (2, 1, 0))
                  for m in ("t1n", "t1c", "t2w", "t2f", "seg")}
        seg = arrays.pop("seg")
        cases.append((f"mem-{i}", pop, prepare_arrays(arrays, seg, np.diag([4.0, 4.0, 4.0, 1.0]), config.preprocessing())))
    result = train_joint(config, data=memory_data(cases, config.preprocessing()))
    meta = load_bundle(tmp_path / "run").meta
    assert meta["role"] == "joint" and meta["populations"] == ["GLI", "PED"]
    assert set(result.validation["populations"]) == {"GLI", "PED"}
    assert not (tmp_path / "run" / "cache").exists()


def test_existing_run_needs_resume_and_resume_needs_a_run(fake_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(_config(fake_data, run).to_dict()))
    def args(out, population="GLI", patch="16", *extra):
        return ["train-teacher", str(fake_data), "-o", str(out), "--population", population, "--network", "tiny",
                "--patch", patch, "--spacing", "4", "--epochs", "1", "--steps-per-epoch", "1", *extra]

    assert commands.main(args(run)) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert commands.main(args(tmp_path / "new", "GLI", "16", "--resume")) == 2
    assert "no training run" in capsys.readouterr().err
    assert commands.main(args(tmp_path / "x", "GLX")) == 2
    assert "Did you mean 'GLI'" in capsys.readouterr().err
    assert commands.main(args(tmp_path / "x", "GLI", "18")) == 2
    assert "multiple of 4" in capsys.readouterr().err


def test_fine_tuning_from_a_bundle_on_whole_tumour_only_data(tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(3):
        write_fake_case(data / "men_wt", f"BraTS-MEN-{i:05d}-000", 60 + i, labels=(2,))
    (data / "men_wt" / "cohort.json").write_text(json.dumps({"labels": ["WT"]}))
    for i in range(2):
        write_fake_case(data / "glioma", f"BraTS-GLI-{i:05d}-000", 70 + i)
    init = fake_bundle(tmp_path / "init", "MEN")  # the network of configs/tiny.json
    common = ["--population", "MEN", "--patch", "16", "--spacing", "4", "--epochs", "1", "--steps-per-epoch", "2",
              "--val-fraction", "0.5", "--init", str(init)]
    assert commands.main(["train-teacher", str(data), "-o", str(tmp_path / "run"), *common]) == 0
    meta = load_bundle(tmp_path / "run").meta
    assert meta["training"]["labelled_regions"] == ["WT"]  # its expert region, for MS-KD
    assert meta["training"]["init_from"]["name"] == "untrained-teacher-MEN"
    men = meta["metrics"]["validation"]["populations"]["MEN"]
    assert men["TC"] is None and men["ET"] is None and men["mean"] == men["WT"]
    assert meta["metrics"]["validation"]["populations"]["GLI"]["TC"] is not None
    assert "NaN" not in (tmp_path / "run" / "model.json").read_text()
    capsys.readouterr()
    assert commands.main(["train-teacher", str(data), "-o", str(tmp_path / "run2"), "--network", "student_small",
                          *common]) == 2
    assert "--init bundle" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_and_keeps_checkpoints(fake_data, tmp_path, monkeypatch, capsys):
    from MTSSTrainingLib import progress

    def interrupt(self, event):
        if event.get("stage") == "training" and event.get("epoch") == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.ProgressPrinter, "__call__", interrupt)
    run = tmp_path / "run"
    code = commands.main(["train-teacher", str(fake_data), "-o", str(run), "--population", "GLI", "--network", "tiny",
                          "--patch", "16", "--spacing", "4", "--epochs", "3", "--steps-per-epoch", "2"])
    assert code == 130
    assert "--resume" in capsys.readouterr().err
    assert json.loads((run / "checkpoints" / "last.json").read_text())["epoch"] == 1
    assert not (run / "model.json").exists()


def _last_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    return load_file(str(run / "checkpoints" / meta["weights"]))


@pytest.mark.slow
def test_resume_after_a_killed_run_gives_the_same_weights(fake_data, tmp_path):
    epochs = {"epochs": 3, "steps_per_epoch": 3}
    train_teacher(_config(fake_data, tmp_path / "straight", **epochs))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "MTSSTrainingLib.commands", "train-teacher", str(fake_data), "-o", str(run),
           "--population", "GLI", "--network", "tiny", "--patch", "16", "--spacing", "4", "--val-fraction", "0.4",
           "--seed", "5", "--batch", "2", "--epochs", "3", "--steps-per-epoch", "3"]
    env = {**os.environ, "MTSS_PROGRESS": "lines", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    events = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            event = parse_progress_line(line)
            if event:
                events.append(event)
            last = run / "checkpoints" / "last.json"
            if event and event["stage"] == "training" and event["epoch"] >= 2 and last.is_file():
                os.killpg(proc.pid, signal.SIGKILL)  # killed mid-run, after epoch 1 was saved
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert {"stage", "epoch", "step", "fraction", "loss", "eta_s"} <= set(events[-1])
    done = json.loads((run / "checkpoints" / "last.json").read_text())["epoch"]
    assert 1 <= done < 3 and not (run / "model.json").exists()
    train_teacher(_config(fake_data, run, **{**epochs, "workers": 1}), resume=True)
    a, b = _last_weights(tmp_path / "straight"), _last_weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit for bit
    assert [r["epoch"] for r in read_log(run)] == [1, 2, 3]
    assert load_bundle(run).meta["training"]["epochs"] == 3


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(fake_data, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    original = SupervisedModule.forward

    def poisoned(self, batch):
        loss, terms = original(self, batch)
        calls["n"] += 1
        return (loss * float("nan"), terms) if calls["n"] > 2 else (loss, terms)  # epoch 2 diverges

    monkeypatch.setattr(SupervisedModule, "forward", poisoned)
    run = tmp_path / "run"
    code = commands.main(["train-teacher", str(fake_data), "-o", str(run), "--population", "GLI", "--network", "tiny",
                          "--patch", "16", "--spacing", "4", "--epochs", "3", "--steps-per-epoch", "2"])
    err = capsys.readouterr().err
    assert code == 3
    assert "NaN or infinite at epoch 2" in err and "epoch 1" in err and "--resume" in err and "--lr" in err
    assert not (run / "model.json").exists()
    state = load_checkpoint(run / "checkpoints", "last", SupervisedModule(
        __import__("MTSSSegmenterLib.networks", fromlist=["x"]).build_network(TINY), torch.nn.Identity()))
    assert state["epoch"] == 1
    assert any(r.get("event") == "diverged" for r in read_log(run))


def test_checkpoint_round_trip_keeps_optimiser_state_and_refuses_tampering(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).sum().backward()
        opt.step()
    save_checkpoint(tmp_path, "last", net, opt, {"epoch": 3, "global_step": 9})
    assert not list(tmp_path.glob("*.pt*")) and (tmp_path / "last-0003.safetensors").is_file()
    net2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt2 = torch.optim.AdamW(net2.parameters(), lr=0.5)
    state = load_checkpoint(tmp_path, "last", net2, opt2)
    assert state["global_step"] == 9 and opt2.param_groups[0]["lr"] == 0.01
    for p, q in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(p, q)
        for k in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt.state[p][k], opt2.state[q][k])
    weights = tmp_path / "last-0003.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(MTSSError, match="checksum"):
        load_checkpoint(tmp_path, "last", net2, opt2)


def test_progress_lines_are_machine_readable():
    import io

    stream = io.StringIO()
    printer = ProgressPrinter(mode="lines", stream=stream, min_interval_s=0.0)
    printer({"stage": "training", "epoch": 1, "step": 3, "fraction": 0.25, "loss": 0.5, "eta_s": float("inf")})
    printer({"stage": "done", "fraction": 1.0, "final": True})
    lines = stream.getvalue().splitlines()
    assert all(line.startswith("MTSS-PROGRESS ") for line in lines)
    first = parse_progress_line(lines[0])
    assert first == {"stage": "training", "epoch": 1, "step": 3, "fraction": 0.25, "loss": 0.5}
    assert parse_progress_line("INFO: something") is None
    assert np.isclose(parse_progress_line(lines[1])["fraction"], 1.0)


def test_time_limit_stops_after_the_step_that_spends_it_and_resume_adds_nothing(fake_data, tmp_path):
    """--time-limit: the run ends early (its epoch validated and saved), the bundle says so, and a resume of
    a run whose budget is spent trains no further step."""
    run = tmp_path / "run"
    train_teacher(_config(fake_data, run, epochs=40, steps_per_epoch=3, time_limit_min=1e-4))
    training = load_bundle(run).meta["training"]
    assert training["stopped_by_time_limit"] is True
    assert 1 <= training["steps_trained"] < 40 * 3
    assert training["training_time_s"] >= 60 * 1e-4
    steps = training["steps_trained"]
    log_epochs = [row["epoch"] for row in read_log(run)]
    assert log_epochs == list(range(1, len(log_epochs) + 1)) and len(log_epochs) == -(-steps // 3)
    train_teacher(_config(fake_data, run, epochs=40, steps_per_epoch=3, time_limit_min=1e-4), resume=True)
    assert load_bundle(run).meta["training"]["steps_trained"] == steps


def test_time_limit_must_be_positive(tmp_path):
    with pytest.raises(MTSSError, match="--time-limit"):
        _config(tmp_path, tmp_path / "run", time_limit_min=0)
