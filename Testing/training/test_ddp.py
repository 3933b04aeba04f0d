"""The distillation command unchanged under ``torchrun --nproc_per_node=2`` (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from MTSSSegmenterLib.bundle import load_bundle
from MTSSSegmenterLib.io import find_case_files
from MTSSSegmenterLib.pipeline import read_inputs, segment
from MTSSTrainingLib.progress import parse_progress_line, read_log

from .cohort import fake_bundle, one_thread, write_fake_case  # noqa: F401  (autouse)

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_distill_under_torchrun_with_two_processes(tmp_path):
    data = tmp_path / "data"
    for i in range(3):
        write_fake_case(data, f"BraTS-GLI-{i:05d}-000", i)
        write_fake_case(data, f"BraTS-MET-{i:05d}-000", 50 + i)
    teachers = {"GLI": fake_bundle(tmp_path / "tGLI", "GLI", dice={"GLI": 0.8, "MET": 0.4}),
                "MET": fake_bundle(tmp_path / "tMET", "MET", seed=3, dice={"GLI": 0.3, "MET": 0.7})}
    run = tmp_path / "run"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "MTSSTrainingLib.commands", "distill", str(data),
           "-o", str(run), "--student", "tiny", "--patch", "16", "--spacing", "4", "--epochs", "2",
           "--steps-per-epoch", "2", "--batch", "2", "--val-fraction", "0.34", "--device", "cpu",
           "--kd", "output,latent,barlow,region,attention",
           "--teachers", *(f"{k}={v}" for k, v in teachers.items())]
    env = {**os.environ, "MTSS_PROGRESS": "lines", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    # a process's own message (``error: ...``) comes first: the tail is mostly the other process's traceback
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 0, "\n".join(errors[:5]) + "\n" + proc.stderr[-3000:]
    events = [e for e in map(parse_progress_line, proc.stdout.splitlines()) if e]
    assert events[-1]["stage"] == "done"  # only rank 0 reports, once per update
    assert sum(e["stage"] == "done" for e in events) == 1
    bundle = load_bundle(run)
    training = bundle.meta["training"]
    assert training["world_size"] == 2 and training["kd"] == ["output", "latent", "barlow", "region", "attention"]
    val = bundle.meta["metrics"]["validation"]
    assert val["n_cases"] == 2 and set(val["populations"]) == {"GLI", "MET"}  # gathered from both ranks
    assert set(val["subsets"]) == {"t1c+t2f"}  # the command's default extra validation subset
    # every process drew its own samples: 2 processes x 2 steps x batch 2 per epoch
    records = read_log(run)
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 4
    last = json.loads((run / "checkpoints" / "last.json").read_text())
    assert last["epoch"] == 2 and last["global_step"] == 4
    # the student segments a case from FLAIR + T1c alone
    files, _ = find_case_files(data / "BraTS-GLI-00000-000")
    result = segment(read_inputs({m: files[m] for m in ("t1c", "t2f")}), model=run, device="cpu")
    assert result.label.GetSize() == (36, 40, 32) and result.inputs == ("t1c", "t2f")
