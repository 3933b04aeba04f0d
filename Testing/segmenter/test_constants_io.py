from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MTSSSegmenterLib import constants
from MTSSSegmenterLib.errors import InputError, OutputError
from MTSSSegmenterLib.io import find_case_files, read_image, read_labels, write_image
from Testing.conftest import make_volume


def test_vocabulary_is_brats_2023():
    assert constants.MODALITY_CODES == ("t1n", "t1c", "t2w", "t2f")
    assert [(lab.value, lab.code) for lab in constants.LABELS] == [(1, "NCR"), (2, "ED"), (3, "ET")]
    assert {r.code: r.labels for r in constants.REGIONS} == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert constants.POPULATION_CODES == ("GLI", "PED", "SSA", "MEN", "MET")
    assert constants.modality("FLAIR").code == "t2f" and constants.modality("t1ce").code == "t1c"
    assert constants.reference_modality(["t2f", "t1n"]) == "t1n"


def test_unknown_names_suggest_the_near_match():
    with pytest.raises(ValueError, match="Did you mean 't1c'"):
        constants.modality("t1cc")
    with pytest.raises(ValueError, match="Did you mean 'MET'.*Known: GLI, PED, SSA, MEN, MET"):
        constants.population("MTE")


def test_find_brats2023_and_2021_names(tmp_path):
    a = tmp_path / "BraTS-MEN-00001-000"
    a.mkdir()
    for s in ("t1n", "t1c", "t2w", "t2f", "seg"):
        (a / f"{a.name}-{s}.nii.gz").touch()
    files, seg = find_case_files(a)
    assert set(files) == {"t1n", "t1c", "t2w", "t2f"} and seg.name.endswith("-seg.nii.gz")
    b = tmp_path / "BraTS2021_00000"
    b.mkdir()
    for s in ("t1", "t1ce", "t2", "flair", "seg"):
        (b / f"{b.name}_{s}.nii.gz").touch()
    files, seg = find_case_files(b)
    assert files["t1n"].name.endswith("_t1.nii.gz") and files["t1c"].name.endswith("_t1ce.nii.gz")
    assert files["t2w"].name.endswith("_t2.nii.gz") and files["t2f"].name.endswith("_flair.nii.gz")


def test_empty_case_folder_says_what_names_are_expected(tmp_path):
    with pytest.raises(InputError, match="No MRI volumes found.*t1n.nii.gz"):
        find_case_files(tmp_path)


def test_brats2021_label_4_becomes_3(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[0, 0, 0], arr[1, 1, 1], arr[2, 2, 2] = 1, 2, 4
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "x_seg.nii.gz"))
    out = sitk.GetArrayFromImage(read_labels(tmp_path / "x_seg.nii.gz"))
    assert out[2, 2, 2] == 3 and out[1, 1, 1] == 2 and out[0, 0, 0] == 1 and out.max() == 3


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz", "t1c")
    flat = sitk.GetImageFromArray(np.ones((1, 30, 30), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match=r"'t2f' is 2-D \(30x30x1\); a 3-D volume is needed"):
        read_image(tmp_path / "flat.nii.gz", "t2f")
    four = sitk.JoinSeries([make_volume(), make_volume(seed=2)])
    sitk.WriteImage(four, str(tmp_path / "4d.nii.gz"))
    with pytest.raises(InputError, match="is 4-D"):
        read_image(tmp_path / "4d.nii.gz", "t1n")
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="Cannot read"):
        read_image(tmp_path / "broken.nii.gz", "t1n")


def test_write_is_atomic_and_unwritable_is_reported(tmp_path):
    out = write_image(make_volume(), tmp_path / "sub" / "x.nii.gz")
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    # readable as a plain write would leave it (the temporary file's 0600 is not kept)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="Cannot write"):
        write_image(make_volume(), blocker / "x.nii.gz")
