"""The resolution ceiling (``mtss ceiling``) and the region shares it compares with nearest-neighbour labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from MTSSSegmenterLib.preprocess import region_fractions
from MTSSTrainingLib.ceiling import case_ceiling, render_table, resolution_ceiling

from .cohort import write_fake_case


def test_region_fractions_average_each_coarse_voxel():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[3:9, 3:9, 3:9] = 2
    labels[4, 3:9, 3:9] = 3  # one enhancing slice, a third of a 3-voxel slab: nearest sampling at 4x4x4 misses it
    f = region_fractions(labels, (4, 4, 4)).astype(np.float64) / 255
    assert f.shape == (3, 4, 4, 4)
    assert f[0].sum() * 27 == pytest.approx((labels > 0).sum(), rel=0.01)  # volume is kept
    assert f[2].sum() * 27 == pytest.approx((labels == 3).sum(), rel=0.01)
    assert f[2, 1].max() == pytest.approx(1 / 3, abs=0.01) and f[2, [0, 2, 3]].max() == 0.0
    up = region_fractions(labels, (24, 24, 24))  # finer grid: interpolated, still shares in [0, 255]
    assert up.shape == (3, 24, 24, 24) and up.max() == 255 and up[:, 0].max() == 0


def test_the_round_trip_loses_nothing_at_the_label_spacing_and_soft_targets_lose_less_when_coarser(tmp_path):
    case = write_fake_case(tmp_path, "BraTS-MET-00001-000", seed=2, shape_xyz=(48, 52, 44), spacing=2.0)
    image = sitk.ReadImage(str(case / f"{case.name}-t1c.nii.gz"))
    seg = sitk.ReadImage(str(case / f"{case.name}-seg.nii.gz"))
    same = case_ceiling(image, seg, 2.0)
    assert same == {"nearest": [1.0, 1.0, 1.0], "soft": [1.0, 1.0, 1.0]}
    coarse = case_ceiling(image, seg, 6.0)
    assert all(0.0 < d < 1.0 for d in coarse["nearest"])
    assert coarse["soft"][0] > coarse["nearest"][0] and coarse["soft"][2] > coarse["nearest"][2]


def test_ceiling_over_a_data_folder_and_its_command(tmp_path, capsys):
    from MTSSSegmenterLib.cli import main

    for i, pop in enumerate(("GLI", "GLI", "MEN")):
        write_fake_case(tmp_path / "data", f"BraTS-{pop}-0000{i}-000", seed=i, shape_xyz=(40, 44, 36), spacing=3.0)
    result = resolution_ceiling(tmp_path / "data", [3.0, 6.0])
    assert result["cases"] == 3 and set(result["spacings"]) == {"3", "6"}
    at6 = result["spacings"]["6"]["nearest"]
    assert set(at6["populations"]) == {"GLI", "MEN"}
    assert at6["macro"]["WT"] == pytest.approx((at6["populations"]["GLI"]["WT"] + at6["populations"]["MEN"]["WT"]) / 2)
    assert result["spacings"]["3"]["soft"]["macro"] == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    assert "| 6 | soft |" in render_table(result)

    out = tmp_path / "ceiling.json"
    assert main(["ceiling", str(tmp_path / "data"), "--spacing", "6", "--json", "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and printed["spacings"]["6"]["soft"]["macro"]["WT"] < 1.0
    assert main(["ceiling", str(tmp_path / "data"), "--spacing", "0"]) == 2
    assert "above 0" in capsys.readouterr().err
    assert main(["ceiling", str(tmp_path / "empty")]) == 2
