"""Name-pattern assignment of loaded volumes to modalities (pure Python, what the widget's
"Assign volumes by name" does)."""

from __future__ import annotations

import pytest

from MTSSSegmenterLib.volume_assignment import assign_volumes, guess_modality


@pytest.mark.parametrize("name, code", [
    # BraTS 2023 and 2018-2022 file names (as Slicer names the nodes, and with the suffix)
    ("BraTS-GLI-00001-000-t1n", "t1n"), ("BraTS-GLI-00001-000-t1c", "t1c"), ("BraTS-GLI-00001-000-t2w", "t2w"),
    ("BraTS-GLI-00001-000-t2f.nii.gz", "t2f"), ("BraTS2021_00000_t1", "t1n"), ("BraTS2021_00000_t1ce", "t1c"),
    ("BraTS2021_00000_t2", "t2w"), ("BraTS2021_00000_flair", "t2f"),
    # DICOM series descriptions
    ("AX T1 MPRAGE POST GAD", "t1c"), ("T1+C", "t1c"), ("3D_T1_TFE_+C", "t1c"), ("COR T1 POST", "t1c"),
    ("T1W_SE_GD", "t1c"), ("AX T1 PRE", "t1n"), ("sag T1", "t1n"), ("Ax T1 MPRAGE", "t1n"),
    ("T2 FLAIR AXIAL", "t2f"), ("FLAIR", "t2f"), ("t2_tse_tra", "t2w"), ("AX T2 FSE", "t2w"), ("t2_blade_tra", "t2w"),
])
def test_names_seen_in_practice(name, code):
    assert guess_modality(name) == code


@pytest.mark.parametrize("name", ["AX T2*", "DWI b1000", "ADC", "MRHead", "Localizer", "SWI", "perfusion DSC",
                                  "BraTS-GLI-00001-000-seg"])
def test_other_sequences_and_unclear_names_are_not_assigned(name):
    assert guess_modality(name) is None


def test_each_name_and_each_modality_is_used_once_best_first():
    names = ["DWI", "AX T1 PRE", "AX T1 POST GAD", "T2 FLAIR", "AX T2 FSE", "T1 SE"]
    assert assign_volumes(names) == {"t1n": "AX T1 PRE", "t1c": "AX T1 POST GAD", "t2f": "T2 FLAIR", "t2w": "AX T2 FSE"}


def test_choices_already_made_are_kept():
    names = ["case-t1c", "case-t2f", "other FLAIR"]
    assert assign_volumes(names, already={"t2f": "other FLAIR"}) == {"t2f": "other FLAIR", "t1c": "case-t1c"}


def test_a_tie_goes_to_the_volume_loaded_first():
    assert assign_volumes(["FLAIR ax", "FLAIR cor"]) == {"t2f": "FLAIR ax"}
