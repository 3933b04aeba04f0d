"""Bad arguments to MTSSTrainingLogic get clear messages before any process starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MTSSSegmenterLib.errors import BundleError, InputError
from MTSSTrainingLib.logic import MTSSTrainingLogic


def fake_case(root: Path, name: str, labels: bool = True) -> Path:
    """A minimal BraTS 2023 case folder: four 12^3 volumes and a label map."""
    case = root / name
    case.mkdir(parents=True)
    arr = np.zeros((12, 12, 12), np.float32)
    arr[3:9, 3:9, 3:9] = 100
    for code in ("t1n", "t1c", "t2w", "t2f"):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(case / f"{name}-{code}.nii.gz"))
    if labels:
        sitk.WriteImage(sitk.GetImageFromArray((arr > 0).astype(np.uint8) * 2), str(case / f"{name}-seg.nii.gz"))
    return case


@pytest.fixture
def men_only(tmp_path) -> Path:
    for i in range(2):
        fake_case(tmp_path / "data", f"BraTS-MEN-0000{i}-000")
    return tmp_path / "data"


def test_unknown_population_names_the_near_match(men_only, tmp_path):
    logic = MTSSTrainingLogic()
    with pytest.raises(InputError, match=r"Unknown population 'GLO'\. Did you mean 'GLI'\?"):
        logic.trainTeacher(men_only, "GLO", tmp_path / "run")
    with pytest.raises(InputError, match="Did you mean 'MET'"):
        logic.distill(men_only, {"MTE": tmp_path / "t"}, tmp_path / "run")
    assert logic.lastJob is None


def test_missing_empty_or_unlabelled_data_folder(tmp_path, men_only):
    logic = MTSSTrainingLogic()
    with pytest.raises(InputError, match="does not exist"):
        logic.trainTeacher(tmp_path / "nowhere", "GLI", tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No case folders found"):
        logic.trainJoint(tmp_path / "empty", tmp_path / "run")
    fake_case(tmp_path / "unlabelled", "BraTS-GLI-00001-000", labels=False)
    with pytest.raises(InputError, match="no usable case.*no label map"):
        logic.trainJoint(tmp_path / "unlabelled", tmp_path / "run")
    with pytest.raises(InputError, match=r"has no GLI case \(it has MEN 2\)"):
        logic.trainTeacher(men_only, "GLI", tmp_path / "run")
    # several folders are checked together: one missing is named; the union holds the population
    with pytest.raises(InputError, match="'.*nowhere' does not exist"):
        logic.trainJoint([men_only, tmp_path / "nowhere"], tmp_path / "run")
    fake_case(tmp_path / "more", "BraTS-GLI-00007-000")
    with pytest.raises(InputError, match="No data folder"):
        logic.trainJoint([], tmp_path / "run")
    assert logic.lastJob is None
    from MTSSTrainingLib.logic import _check_data

    assert _check_data([men_only, tmp_path / "more"], "GLI") == [str(men_only), str(tmp_path / "more")]


def test_missing_teacher_or_model_bundle(men_only, tmp_path, tiny_bundle):
    logic = MTSSTrainingLogic()
    with pytest.raises(BundleError, match=r"Teacher MEN \('.*no-teacher'\): Model bundle .* does not exist"):
        logic.distill(men_only, {"MEN": tmp_path / "no-teacher"}, tmp_path / "run")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.json").write_text("{}")
    with pytest.raises(BundleError, match=r"Teacher GLI .*lacks model\.safetensors"):
        logic.distill(men_only, {"MEN": tiny_bundle, "GLI": tmp_path / "half"}, tmp_path / "run")
    with pytest.raises(InputError, match="at least one teacher"):
        logic.distill(men_only, {}, tmp_path / "run")
    with pytest.raises(BundleError, match="No model bundle named 'not-installed'"):
        logic.evaluate(men_only, ["not-installed"], tmp_path / "report")
    with pytest.raises(BundleError, match="bundle to start from"):
        logic.trainTeacher(men_only, "MEN", tmp_path / "run", init=tmp_path / "no-bundle")
    with pytest.raises(InputError, match="cases=0"):
        logic.synthesize(tmp_path / "synth", cases=0)
    assert logic.lastJob is None
