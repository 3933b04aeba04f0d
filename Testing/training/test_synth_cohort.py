"""``mtss synth``: the BraTS 2023 layout on disk, cohort.json, determinism over workers, the command line."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from MTSSSegmenterLib.constants import MODALITY_CODES
from MTSSSegmenterLib.errors import InputError, OutputError
from MTSSTrainingLib.synth import command, generate_case, iter_cases, write_cohort
from MTSSTrainingLib.synth.cohort import SEED_STRIDE

SPACING = 4.0
REAL_CASE = Path(__file__).resolve().parents[3] / "shared" / "real" / "BraTS-GLI-00001-000"


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and (p.suffix == ".gz" or p.name == "cohort.json")}


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    write_cohort(out, cases=2, populations=["MET", "gli"], seed=5, spacing=SPACING, workers=1, preview=True)
    return out


def test_brats_2023_layout(cohort_dir):
    names = sorted(p.name for p in cohort_dir.iterdir() if p.is_dir())
    assert names == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000", "BraTS-MET-00000-000", "BraTS-MET-00001-000"]
    for name in names:
        files = sorted(p.name for p in (cohort_dir / name).iterdir())
        assert files == sorted(f"{name}-{code}.nii.gz" for code in (*MODALITY_CODES, "seg"))
    case = cohort_dir / "BraTS-MET-00001-000"
    seg = nib.load(str(case / "BraTS-MET-00001-000-seg.nii.gz"))
    t1c = nib.load(str(case / "BraTS-MET-00001-000-t1c.nii.gz"))
    assert seg.shape == t1c.shape == (60, 60, 39)
    assert seg.get_data_dtype() == np.uint8 and t1c.get_data_dtype() == np.int16
    assert nib.aff2axcodes(t1c.affine) == ("L", "P", "S")
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    assert int(t1c.header["qform_code"]) == int(t1c.header["sform_code"]) == 1
    assert not list(cohort_dir.rglob(".*tmp*")), "no temporary files left behind"


def test_files_hold_the_in_memory_case(cohort_dir):
    entry = json.loads((cohort_dir / "cohort.json").read_text())["cases"][0]
    assert entry["case"] == "BraTS-GLI-00000-000" and entry["seed"] == 5 * SEED_STRIDE
    case = generate_case("GLI", entry["seed"], spacing=SPACING)
    folder = cohort_dir / entry["case"]
    for code in MODALITY_CODES:
        img = nib.load(str(folder / f"{entry['case']}-{code}.nii.gz"))
        assert np.array_equal(np.asarray(img.dataobj), case.images[code].astype(np.int16))
        np.testing.assert_allclose(img.affine, case.affine)
    seg = np.asarray(nib.load(str(folder / f"{entry['case']}-seg.nii.gz")).dataobj)
    assert np.array_equal(seg, case.seg)


def test_cohort_json_describes_every_case(cohort_dir):
    doc = json.loads((cohort_dir / "cohort.json").read_text())
    assert doc["synthetic"] is True and doc["seed"] == 5 and doc["spacing_mm"] == SPACING
    assert doc["populations"] == ["GLI", "MET"]
    assert [c["case"] for c in doc["cases"]] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000",
                                                 "BraTS-MET-00000-000", "BraTS-MET-00001-000"]
    for c in doc["cases"]:
        assert {"population", "seed", "lesion_count", "label_volumes_mm3", "imaging"} <= set(c)
        seg = np.asarray(nib.load(str(cohort_dir / c["case"] / f"{c['case']}-seg.nii.gz")).dataobj)
        assert c["label_volumes_mm3"]["ET"] == pytest.approx((seg == 3).sum() * SPACING**3)


def test_preview_sheets(cohort_dir):
    for pop in ("GLI", "MET"):
        png = cohort_dir / f"preview_{pop}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 5_000 < png.stat().st_size < 300_000


def test_same_seed_same_bytes_whatever_the_workers(cohort_dir, tmp_path):
    again = tmp_path / "again"
    write_cohort(again, cases=2, populations=["GLI", "MET"], seed=5, spacing=SPACING, workers=2)
    assert digests(again) == digests(cohort_dir)
    other = tmp_path / "other"
    write_cohort(other, cases=1, populations=["GLI"], seed=6, spacing=SPACING)
    name = "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1c.nii.gz"
    assert digests(other)[name] != digests(cohort_dir)[name]


def test_in_memory_cohort_matches_the_files(cohort_dir):
    cases = list(iter_cases(2, ["MET"], seed=5, spacing=SPACING, workers=2))  # through a process pool
    assert [cid for cid, _ in cases] == ["BraTS-MET-00000-000", "BraTS-MET-00001-000"]
    assert [c.meta["seed"] for _, c in cases] == [5 * SEED_STRIDE, 5 * SEED_STRIDE + 1]
    seg = nib.load(str(cohort_dir / "BraTS-MET-00001-000" / "BraTS-MET-00001-000-seg.nii.gz"))
    assert np.array_equal(np.asarray(seg.dataobj), cases[1][1].seg)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"cases": 0}, InputError, ["0", "at least", "1"]),
    ({"populations": ["XYZ"]}, InputError, ["XYZ", "Known"]),
    ({"populations": ["MNE"]}, InputError, ["MEN"]),
    ({"spacing": 20}, InputError, ["20"]),
    ({"workers": 0}, InputError, ["workers"]),
])
def test_bad_arguments(tmp_path, kwargs, error, words):
    args = {"cases": 1, "populations": ["GLI"], "spacing": SPACING, **kwargs}
    with pytest.raises(error) as err:
        write_cohort(tmp_path / "out", **args)
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "out" / "cohort.json").exists()


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for target in (blocker, blocker / "sub"):
        with pytest.raises(OutputError) as err:
            write_cohort(target, cases=1, populations=["GLI"], spacing=SPACING)
        assert str(target) in str(err.value)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mtss")
    command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_parser_writes_a_cohort(tmp_path, capsys):
    args = parse(["synth", str(tmp_path / "c"), "--cases", "1", "--populations", "MEN", "--seed", "2",
                  "--spacing", str(SPACING), "--quiet"])
    assert args.func(args) == 0
    assert (tmp_path / "c" / "BraTS-MEN-00000-000" / "BraTS-MEN-00000-000-t2f.nii.gz").is_file()
    assert parse(["synth", "x", "--cases", "3"]).populations == ["GLI", "PED", "SSA", "MEN", "MET"]


@pytest.mark.parametrize("argv, words", [
    (["--cases", "0"], ["error:", "at least"]),
    (["--cases", "1", "--populations", "GLO"], ["error:", "GLO", "GLI"]),
])
def test_command_errors_return_2(tmp_path, capsys, argv, words):
    args = parse(["synth", str(tmp_path / "c"), "--spacing", str(SPACING), *argv])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_mtss_synth_entry_point(tmp_path):
    exe = Path(sys.executable).parent / "mtss"
    if not exe.exists():
        pytest.skip(f"no mtss console script next to {sys.executable}; install the package (pip install -e .)")
    out = tmp_path / "cli"
    done = subprocess.run([str(exe), "synth", str(out), "--cases", "1", "--populations", "PED", "--spacing", "6"],
                          capture_output=True, text=True, timeout=120, env={**os.environ}, check=False)
    assert done.returncode == 0, done.stderr
    assert "wrote 1 synthetic cases" in done.stdout
    assert (out / "cohort.json").is_file()


@pytest.mark.skipif(not REAL_CASE.is_dir(), reason="the real BraTS case is not in ../shared/real")
def test_preview_renders_a_real_case_folder(tmp_path):
    from MTSSTrainingLib.synth.preview import load_case_folder, render_case_folder

    row = load_case_folder(REAL_CASE)
    assert row.seg is None and set(row.images) == set(MODALITY_CODES)
    assert 50 < row.axial_slice() < 110  # the FLAIR-bright tumour is in the middle third
    png = render_case_folder(REAL_CASE, tmp_path / "real.png")
    assert png.stat().st_size > 5_000
