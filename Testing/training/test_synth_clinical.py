"""``mtss synth --clinical``: studies on their own grids, the aligned case kept beside them, the drawn
acquisition recorded, skull on when drawn, determinism, and the command line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MTSSSegmenterLib.constants import MODALITY_CODES
from MTSSSegmenterLib.errors import InputError
from MTSSTrainingLib.clinical_acquisition import transform_from_params
from MTSSTrainingLib.data import discover
from MTSSTrainingLib.synth import generate_case, generate_clinical_case, iter_cases, write_cohort
from MTSSTrainingLib.synth.cohort import SEED_STRIDE

SPACING = 4.0
SEED = 5
CASES = ["BraTS-GLI-00000-000", "BraTS-MET-00000-000"]
REPO = Path(__file__).resolve().parents[2]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".gz", ".json")}


def files(folder: Path, case: str) -> dict[str, Path]:
    return {code: folder / f"{case}-{code}.nii.gz" for code in (*MODALITY_CODES, "seg")}


def centroid_mm(label: sitk.Image) -> np.ndarray:
    """Physical (LPS mm) centre of the tumour voxels (any label)."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(label) > 0)[:, ::-1].astype(float)
    d = np.asarray(label.GetDirection()).reshape(3, 3) * np.asarray(label.GetSpacing())
    return idx.mean(0) @ d.T + np.asarray(label.GetOrigin())


def shell_and_brain(series: sitk.Image, tf: sitk.Transform, aligned: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """A series brought back onto the aligned grid: its values 6-14 mm outside the aligned brain, and inside."""
    back = sitk.GetArrayFromImage(sitk.Resample(series, aligned, tf, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    brain = sitk.GetArrayViewFromImage(aligned) > 0
    dist = ndimage.distance_transform_edt(~brain, sampling=np.asarray(aligned.GetSpacing())[::-1])
    return back[(dist >= 6) & (dist <= 14)], back[brain]


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clinical") / "cohort"
    write_cohort(out, cases=1, populations=["GLI", "MET"], seed=SEED, spacing=SPACING, clinical=True, skull_prob=1.0,
                 preview=True)
    return out


@pytest.fixture(scope="module")
def doc(cohort_dir) -> dict:
    return json.loads((cohort_dir / "cohort.json").read_text())


def test_layout_clinical_case_folders_with_the_aligned_case_inside(cohort_dir, doc):
    assert sorted(p.name for p in cohort_dir.iterdir() if p.is_dir()) == CASES
    for case in CASES:
        folder = cohort_dir / case
        expected = {p.name for p in files(folder, case).values()} | {"acquisition.json", "aligned"}
        assert {p.name for p in folder.iterdir()} == expected
        assert {p.name for p in (folder / "aligned").iterdir()} == {p.name for p in files(folder, case).values()}
    assert doc["clinical"] is True and doc["skull_prob"] == 1.0 and doc["spacing_mm"] == SPACING
    assert not list(cohort_dir.rglob(".*tmp*")), "no temporary files left behind"
    # discover() sees each case once (the aligned copies inside the case folders are not cases of their own)
    index = discover(cohort_dir)
    assert sorted(c.name for c in index.cases) == CASES and not index.broken and index.synthetic


def test_each_series_on_its_own_grid_as_recorded(cohort_dir, doc):
    for entry in doc["cases"]:
        case, acq = entry["case"], entry["acquisition"]
        aligned = sitk.ReadImage(str(files(cohort_dir / case / "aligned", case)["t1c"]))
        grids = set()
        for code in MODALITY_CODES:
            img = sitk.ReadImage(str(files(cohort_dir / case, case)[code]))
            rec = acq["series"][code]
            assert img.GetPixelID() == sitk.sitkInt16 and sitk.GetArrayViewFromImage(img).max() > 100
            assert list(img.GetSize()) == rec["size"]
            np.testing.assert_allclose(img.GetSpacing(), rec["spacing_mm"], atol=1e-3)
            np.testing.assert_allclose(img.GetDirection(), rec["direction"], atol=1e-4)
            np.testing.assert_allclose(img.GetOrigin(), rec["origin_mm"], atol=1e-3)
            assert 2.0 <= img.GetSpacing()[2] <= 6.0 and img.GetSpacing() != aligned.GetSpacing()
            assert not np.allclose(img.GetDirection(), aligned.GetDirection(), atol=1e-2)  # oblique to the aligned grid
            grids.add((img.GetSize(), tuple(np.round(img.GetDirection(), 3))))
        assert len(grids) == 4


def test_label_map_lies_exactly_on_the_t1c_grid(cohort_dir, doc):
    for case in CASES:
        paths = files(cohort_dir / case, case)
        seg, t1c = sitk.ReadImage(str(paths["seg"])), sitk.ReadImage(str(paths["t1c"]))
        assert seg.GetSize() == t1c.GetSize() and seg.GetOrigin() == t1c.GetOrigin()
        assert seg.GetSpacing() == t1c.GetSpacing() and seg.GetDirection() == t1c.GetDirection()
        assert seg.GetPixelID() == sitk.sitkUInt8
        values = set(np.unique(sitk.GetArrayViewFromImage(seg)).tolist())
        assert values <= {0, 1, 2, 3} and len(values) > 1
        n_seg, n_t1c = nib.load(str(paths["seg"])), nib.load(str(paths["t1c"]))
        assert n_seg.shape == n_t1c.shape and np.array_equal(n_seg.affine, n_t1c.affine)
    assert all(e["acquisition"]["label_grid"] == "t1c" for e in doc["cases"])


def test_aligned_folder_holds_the_brats_like_case(cohort_dir, doc):
    for entry in doc["cases"]:
        case = entry["case"]
        assert entry["seed"] == SEED * SEED_STRIDE
        ref = generate_case(entry["population"], entry["seed"], spacing=SPACING)
        for code, path in files(cohort_dir / case / "aligned", case).items():
            img = nib.load(str(path))
            assert img.shape == (60, 60, 39) and nib.aff2axcodes(img.affine) == ("L", "P", "S")
            np.testing.assert_allclose(img.affine, ref.affine)
            expected = ref.seg if code == "seg" else ref.images[code].astype(np.int16)
            assert np.array_equal(np.asarray(img.dataobj), expected)
        assert entry["label_volumes_mm3"] == ref.meta["label_volumes_mm3"]


def test_recorded_transform_carries_the_tumour_to_the_clinical_label_map(cohort_dir, doc):
    shifts = []
    for entry in doc["cases"]:
        case = entry["case"]
        aligned = sitk.ReadImage(str(files(cohort_dir / case / "aligned", case)["seg"]))
        clinical = sitk.ReadImage(str(files(cohort_dir / case, case)["seg"]))
        tf = transform_from_params(entry["acquisition"]["series"]["t1c"])
        moved = np.asarray(tf.TransformPoint(centroid_mm(aligned).tolist()))
        assert np.linalg.norm(moved - centroid_mm(clinical)) < 3.0
        shifts.append(np.linalg.norm(moved - centroid_mm(aligned)))
    assert max(shifts) > 2.0  # the motion is real: without the transform the tumour would be elsewhere


def test_acquisition_is_recorded_per_case_and_in_cohort_json(cohort_dir, doc):
    for entry in doc["cases"]:
        acq = entry["acquisition"]
        on_disk = json.loads((cohort_dir / entry["case"] / "acquisition.json").read_text())
        assert on_disk["case"] == entry["case"] and on_disk["aligned"] == "aligned/"
        assert {k: v for k, v in on_disk.items() if k not in ("case", "aligned")} == acq
        assert acq["skull"] is True and acq["skull_prob"] == 1.0 and "LPS" in acq["coordinates"]
        for code in MODALITY_CODES:
            rec = acq["series"][code]
            assert {"rotation_deg", "translation_mm", "center_mm", "euler_parameters", "spacing_mm",
                    "direction", "bias_strength"} <= set(rec)
            assert 0.05 <= rec["bias_strength"] <= 0.25 and max(abs(a) for a in rec["rotation_deg"]) <= 6


def test_skull_on_shows_bright_tissue_outside_the_brain_and_skull_off_does_not(cohort_dir, doc):
    entry = doc["cases"][0]
    case = entry["case"]
    aligned = sitk.ReadImage(str(files(cohort_dir / case / "aligned", case)["t1n"]))
    series = sitk.ReadImage(str(files(cohort_dir / case, case)["t1n"]))
    shell, brain = shell_and_brain(series, transform_from_params(entry["acquisition"]["series"]["t1n"]), aligned)
    assert np.percentile(shell, 90) > 0.5 * np.median(brain)  # scalp fat and muscle

    study = generate_clinical_case(entry["population"], entry["seed"], spacing=SPACING, skull_prob=0.0)
    assert study.acquisition["skull"] is False
    shell, brain = shell_and_brain(study.series["t1n"], transform_from_params(study.acquisition["series"]["t1n"]),
                                   aligned)
    assert np.percentile(shell, 90) < 0.05 * np.median(brain)


def test_preview_shows_the_clinical_studies(cohort_dir):
    for pop in ("GLI", "MET"):
        png = cohort_dir / f"preview_{pop}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


def test_same_seed_same_files_through_the_command_line(cohort_dir, tmp_path):
    out = tmp_path / "again"
    done = subprocess.run(
        [sys.executable, "-m", "MTSSSegmenterLib.cli", "synth", str(out), "--cases", "1", "--populations", "GLI",
         "MET", "--seed", str(SEED), "--spacing", str(SPACING), "--clinical", "--skull-prob", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ}, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 synthetic clinical cases" in done.stdout
    assert digests(out) == digests(cohort_dir)


def test_in_memory_study_matches_the_files(cohort_dir):
    [(case, study)] = list(iter_cases(1, ["MET"], seed=SEED, spacing=SPACING, clinical=True, skull_prob=1.0))
    assert case == "BraTS-MET-00000-000" and study.meta["acquisition"] == study.acquisition
    on_disk = sitk.ReadImage(str(files(cohort_dir / case, case)["t2f"]))
    assert np.array_equal(sitk.GetArrayViewFromImage(on_disk), sitk.GetArrayViewFromImage(study.series["t2f"]))


def test_help_lists_the_clinical_options():
    done = subprocess.run([sys.executable, "-m", "MTSSSegmenterLib.cli", "synth", "--help"], capture_output=True,
                          text=True, timeout=120, env={**os.environ}, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    assert "--clinical" in done.stdout and "--skull-prob" in done.stdout and "aligned/" in done.stdout


@pytest.mark.parametrize("argv, words", [
    (["--skull-prob", "0.3"], ["--skull-prob", "--clinical"]),
    (["--clinical", "--skull-prob", "1.5"], ["1.5", "0 to 1"]),
])
def test_command_line_errors(tmp_path, argv, words):
    done = subprocess.run([sys.executable, "-m", "MTSSSegmenterLib.cli", "synth", str(tmp_path / "c"), "--cases", "1",
                           "--spacing", str(SPACING), *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ}, cwd=REPO, check=False)
    assert done.returncode == 2
    for word in words:
        assert word in done.stderr
    assert not (tmp_path / "c" / "cohort.json").exists()


def test_bad_skull_probability_names_the_value():
    with pytest.raises(InputError) as err:
        generate_clinical_case("GLI", 0, spacing=8.0, skull_prob=-0.1)
    assert "-0.1" in str(err.value)


def test_training_prepares_a_clinical_study_as_segment_does(cohort_dir):
    """A clinical study in a training cohort goes through registration and brain extraction (skull on here),
    so its prepared brain and tumour match those of the aligned case it was drawn from."""
    from MTSSSegmenterLib.bundle import DEFAULT_PREPROCESSING
    from MTSSTrainingLib.cache import prepare_record
    from MTSSTrainingLib.data import CaseRecord

    prep = {**DEFAULT_PREPROCESSING, "spacing_mm": [SPACING] * 3}
    case = CASES[0]
    clinical = prepare_record(discover(cohort_dir).by_name()[case], prep)
    aligned_dir = cohort_dir / case / "aligned"
    f = files(aligned_dir, case)
    aligned = prepare_record(CaseRecord(case, aligned_dir, "GLI", {m: f[m] for m in MODALITY_CODES}, f["seg"],
                                        "aligned"), prep)
    voxel_ml = SPACING**3 / 1000
    brain_c, brain_a = clinical.brain.sum() * voxel_ml, aligned.brain.sum() * voxel_ml
    wt_c, wt_a = (clinical.seg > 0).sum() * voxel_ml, (aligned.seg > 0).sum() * voxel_ml
    # without brain extraction the skull-on head (about twice the brain) would be the normalisation region
    assert abs(brain_c / brain_a - 1) < 0.2, (brain_c, brain_a)
    assert wt_a > 5 and abs(wt_c / wt_a - 1) < 0.25, (wt_c, wt_a)
    # the image is normalised over that brain: median about 0 inside it, as for the aligned case
    assert abs(float(np.median(clinical.image[1][clinical.brain]))) < 0.5


def test_first_index_numbers_a_second_cohort_apart():
    from MTSSTrainingLib.synth.cohort import plan

    tasks = plan(2, ["GLI"], seed=3, spacing=SPACING, clinical=True, first_index=50000)
    assert [t.case_id for t in tasks] == ["BraTS-GLI-50000-000", "BraTS-GLI-50001-000"]
    assert [t.seed for t in tasks] == [3 * SEED_STRIDE + 50000, 3 * SEED_STRIDE + 50001]
    for bad in (-1, SEED_STRIDE - 1):
        with pytest.raises(InputError, match="first case index"):
            plan(2, ["GLI"], first_index=bad)
