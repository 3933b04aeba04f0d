"""`mtss benchmark --quick` (what CI runs): the student and MONAI's SegResNet anchor, one volume, CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from MTSSTrainingLib.benchmark import gflops_per_patch, table


def test_gflops_of_the_anchor_match_the_published_figure():
    from monai.networks.nets import SegResNet

    net = SegResNet(init_filters=16, in_channels=4, out_channels=3, blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1])
    assert gflops_per_patch(net, 4) == pytest.approx(296, rel=0.01)  # ANCHORS.md: 296 GFLOP per 128^3 patch


@pytest.mark.slow
def test_quick_benchmark_prints_json_and_a_table(tiny_bundle, small_case, tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, "-m", "MTSSSegmenterLib.cli", "benchmark", "--quick", "--device", "cpu",
                        "--model", str(tiny_bundle), "--case", str(small_case), "-o", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    result = json.loads(out.read_text())
    student, anchor = result["rows"][0], result["rows"][-1]
    assert student["model"] == "tiny-untrained" and anchor["model"].startswith("MONAI SegResNet-16")
    for key in ("network_s", "files_in_out_s", "cold_command_s", "params_m", "gflop_128", "peak_mem_mb"):
        assert student[key] > 0, key
    assert anchor["network_s"] > 0 and anchor["gflop_128"] == pytest.approx(296, rel=0.01)
    assert result["cpu_target"]["bare_segresnet8_cold_s"] > 0
    assert "| model |" in p.stdout and "SegResNet-8" in p.stdout
    assert table(result["rows"]).count("\n") == len(result["rows"]) + 1
