"""`mtss segment` and `mtss segment-batch` through the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from MTSSSegmenterLib.geometry import Grid
from Testing.conftest import REAL_CASE, requires_real

MTSS = [sys.executable, "-m", "MTSSSegmenterLib.cli"]


def run(*args, env=None):
    return subprocess.run(MTSS + [str(a) for a in args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@requires_real
def test_segment_real_case_lands_on_the_t1c_grid(tiny_bundle, tmp_path):
    """A bundle with UNTRAINED weights: this checks files and geometry, not the tumour."""
    out = tmp_path / "seg.nii.gz"
    p = run("segment", REAL_CASE, "-o", out, "--model", tiny_bundle, "--device", "cpu", "--json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    t1c = sitk.ReadImage(str(REAL_CASE / "BraTS-GLI-00001-000-t1c.nii.gz"))
    label = sitk.ReadImage(str(out))
    assert Grid.of(label).same_as(Grid.of(t1c), tol=1e-5) and label.GetPixelID() == sitk.sitkUInt8
    assert summary["reference"] == "t1c" and set(summary["volumes_ml"]) == {"NCR", "ED", "ET", "WT", "TC"}


def test_segment_with_single_files_and_aliases(small_case, tiny_bundle, tmp_path):
    flair = next(small_case.glob("*-t2f.nii.gz"))
    t1c = next(small_case.glob("*-t1c.nii.gz"))
    out = tmp_path / "o.nrrd"
    p = run("segment", "--flair", flair, "--t1ce", t1c, "-o", out, "--model", tiny_bundle)
    assert p.returncode == 0, p.stderr
    assert "Volumes (mL)" in p.stdout and out.is_file()


def test_the_summary_says_when_the_model_mirrors(small_case, tiny_bundle, tmp_path):
    mirrored = tmp_path / "mirrored"
    shutil.copytree(tiny_bundle, mirrored)
    meta = json.loads((mirrored / "model.json").read_text())
    meta["inference"]["mirror"] = ["LR"]
    (mirrored / "model.json").write_text(json.dumps(meta))
    p = run("segment", small_case, "-o", tmp_path / "m.nii.gz", "--model", mirrored)
    assert p.returncode == 0, p.stderr
    assert "Test-time mirroring: LR" in p.stdout
    p = run("segment", small_case, "-o", tmp_path / "p.nii.gz", "--model", tiny_bundle)
    assert p.returncode == 0 and "Test-time mirroring" not in p.stdout



def test_the_summary_says_which_small_components_went_and_the_flag_keeps_them(small_case, tiny_bundle, tmp_path):
    sized = tmp_path / "sized"
    shutil.copytree(tiny_bundle, sized)
    meta = json.loads((sized / "model.json").read_text())
    meta["inference"]["min_component_ml"] = [0.0, 0.5, 1.0]
    (sized / "model.json").write_text(json.dumps(meta))
    p = run("segment", small_case, "-o", tmp_path / "s.nii.gz", "--model", sized)
    assert p.returncode == 0, p.stderr
    line = [x for x in p.stdout.splitlines() if x.startswith("Components removed: ")]
    assert len(line) == 1 and "below 0/0.5/1 mL" in line[0] and "--keep-small-components" in line[0], p.stdout
    p = run("segment", small_case, "-o", tmp_path / "k.nii.gz", "--model", sized, "--keep-small-components", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["small_components_removed"] is None
    removed = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s.nii.gz")))
    kept = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "k.nii.gz")))
    assert np.array_equal(removed > 0, kept > 0) and not np.array_equal(removed, kept)

def test_messages_for_bad_calls(small_case, tiny_bundle, tmp_path):
    p = run("segment", "-o", tmp_path / "x.nii.gz", "--model", tiny_bundle)
    assert p.returncode == 2 and "No input" in p.stderr
    p = run("segment", tmp_path / "missing", "-o", tmp_path / "x.nii.gz", "--model", tiny_bundle)
    assert p.returncode == 2 and "does not exist" in p.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = run("segment", small_case, "-o", blocker / "x.nii.gz", "--model", tiny_bundle)
    assert p.returncode == 2 and "Cannot write" in p.stderr and not (blocker / "x.nii.gz").exists()
    p = run("segment", small_case, "-o", tmp_path / "x.nii.gz", "--model", tmp_path / "nobundle")
    assert p.returncode == 2 and "does not exist" in p.stderr
    assert not (tmp_path / "x.nii.gz").exists()


def test_batch_skips_broken_cases_and_does_not_redo_finished(small_case, tiny_bundle, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(small_case, root / small_case.name)
    broken = root / "BraTS-GLI-00002-000"
    broken.mkdir()
    (broken / "BraTS-GLI-00002-000-t1c.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "out"
    p = run("segment-batch", root, "-o", out, "--model", tiny_bundle)
    assert p.returncode == 0, p.stderr
    rows = {r["case"]: r for r in json.loads((out / "summary.json").read_text())}
    assert rows[small_case.name]["status"] == "ok" and rows["BraTS-GLI-00002-000"]["status"] == "failed"
    assert "Cannot read" in rows["BraTS-GLI-00002-000"]["error"]
    first = (out / f"{small_case.name}.nii.gz").stat().st_mtime_ns
    p = run("segment-batch", root, "-o", out, "--model", tiny_bundle)
    rows = {r["case"]: r for r in json.loads((out / "summary.json").read_text())}
    assert rows[small_case.name]["status"] == "done earlier"
    assert (out / f"{small_case.name}.nii.gz").stat().st_mtime_ns == first
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{small_case.name}.nii.gz")))
    assert seg.dtype == np.uint8


def test_demo_segments_the_sample_and_its_clinical_version(tmp_path):
    """The README's first command, and its clinical variant, with the shipped default model."""
    p = run("demo", "-o", tmp_path, "--device", "cpu")
    assert p.returncode == 0, p.stderr
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sample-seg.nii.gz")))
    assert set(np.unique(label)) <= {0, 1, 2, 3} and np.count_nonzero(label) * 8e-3 > 10  # 2 mm voxels, mL
    assert (tmp_path / "sample-overlay.png").stat().st_size > 10_000

    p = run("demo", "--clinical", "-o", tmp_path, "--device", "cpu")
    assert p.returncode == 0, p.stderr
    for code in ("t1n", "t2w", "t2f"):
        assert f"Registration: {code} rotation" in p.stdout
    brain_ml = float(p.stdout.split("Skull: detected, brain extracted (")[1].split(" mL)")[0])
    assert 1200 < brain_ml < 1900, p.stdout  # the brain, not the head
    ratio = float(p.stdout.split("(ratio ")[1].split(")")[0])
    assert abs(ratio - 1) <= 0.15, p.stdout
    assert (tmp_path / "clinical-sample-overlay.png").is_file()
