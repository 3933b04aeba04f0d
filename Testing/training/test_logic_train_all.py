"""The example script MTSSTraining/Resources/Scripts/train_all.py: argument handling (the full chain it
drives is what Testing/mrml/test_training_logic_train.py runs through the same Logic)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "MTSSTraining" / "Resources" / "Scripts" / "train_all.py"


@pytest.fixture(scope="module")
def train_all():
    spec = importlib.util.spec_from_file_location("train_all", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_empty_data_without_synth_is_refused(train_all, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert train_all.main(["--", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs")]) == 2
    assert "--synth N" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_population_is_reported_not_raised(train_all, tmp_path, capsys):
    status = train_all.main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "runs"), "--synth", "1",
                             "--populations", "GLO", "--quick"])
    assert status == 2
    assert "Did you mean 'GLI'" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # refused before any process started


def test_quick_options(train_all):
    args = train_all.parse_args(["--data", "d", "--out", "o", "--quick", "--nproc", "2"])
    assert args.quick and args.nproc == 2 and args.kd == "output,latent,barlow,region,attention"
