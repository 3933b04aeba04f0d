"""Soft targets of synthetic clinical studies from the aligned label map they were drawn from
(``--aligned-labels``, MTSSTrainingLib/aligned_labels.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from MTSSSegmenterLib.bundle import DEFAULT_PREPROCESSING
from MTSSSegmenterLib.errors import InputError
from MTSSSegmenterLib.preprocess import prepare_case
from MTSSTrainingLib import commands
from MTSSTrainingLib.aligned_labels import aligned_label_source, label_fractions
from MTSSTrainingLib.cache import CaseCache, prepare_record
from MTSSTrainingLib.data import discover
from MTSSTrainingLib.synth import write_cohort

WORKING_MM = 3.0
PREP = {**DEFAULT_PREPROCESSING, "spacing_mm": [WORKING_MM] * 3}


def _ball(radius_mm: float, centre_mm: np.ndarray, spacing: float = 1.0, size: int = 80) -> sitk.Image:
    """A label map (WT label 2) holding a ball, on an axis-aligned grid."""
    img = sitk.Image([size] * 3, sitk.sitkUInt8)
    img.SetSpacing([spacing] * 3)
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float64) * spacing
    arr = ((x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (z - centre_mm[2]) ** 2) <= radius_mm**2
    out = sitk.GetImageFromArray(arr.astype(np.uint8) * 2)
    out.CopyInformation(img)
    return out


def _oblique_series(motion: sitk.Transform, head_mm: np.ndarray) -> sitk.Image:
    """A brain-like block on a 2.5 x 2.5 x 5 mm grid tilted 20 degrees, placed where ``motion`` puts the head."""
    grid = sitk.Image([40, 40, 22], sitk.sitkFloat32)
    tilt = sitk.Euler3DTransform()
    tilt.SetRotation(math.radians(20), math.radians(-10), 0.0)
    grid.SetDirection(tilt.GetMatrix())
    grid.SetSpacing([2.5, 2.5, 5.0])
    centre = np.asarray(motion.TransformPoint(head_mm.tolist()))
    d = np.asarray(tilt.GetMatrix()).reshape(3, 3)
    grid.SetOrigin((centre - d @ (np.array([40, 40, 22]) * np.array([2.5, 2.5, 5.0]) / 2)).tolist())
    block = sitk.Image(grid.GetSize(), sitk.sitkFloat32) + 100.0
    block.CopyInformation(grid)
    return block


def test_shares_carry_the_aligned_tumour_through_the_motion_onto_the_working_grid():
    """A 12 mm ball on a 1 mm aligned grid, a head moved by a known rigid motion and imaged on an oblique 5 mm
    grid: the shares on the 3 mm working grid hold the ball's volume and sit where the motion puts it."""
    centre = np.array([40.0, 38.0, 41.0])
    label = _ball(12.0, centre)
    motion = sitk.Euler3DTransform()  # aligned -> series, as acquisition.json records it
    motion.SetCenter(centre.tolist())
    motion.SetRotation(math.radians(6), math.radians(-4), math.radians(5))
    motion.SetTranslation([5.0, -4.0, 3.0])
    series = _oblique_series(motion, centre)
    case = prepare_case({"t1c": series}, PREP)
    shares = label_fractions(label, motion.GetInverse(), case)[0].astype(np.float64) / 255.0
    assert shares.shape == case.image.shape[1:]
    volume = shares.sum() * WORKING_MM**3
    assert abs(volume / (4 / 3 * math.pi * 12.0**3) - 1) < 0.03, volume
    from MTSSSegmenterLib.preprocess import working_image_of

    grid = working_image_of(shares.astype(np.float32), case)
    idx = (np.argwhere(shares > 0)[:, ::-1] * shares[shares > 0][:, None]).sum(0) / shares.sum()
    found = np.asarray(grid.TransformContinuousIndexToPhysicalPoint(idx.tolist()))
    expected = np.asarray(motion.TransformPoint(centre.tolist()))
    assert np.linalg.norm(found - expected) < 0.5, (found, expected)
    # the motion matters here: without it the ball would be 7 mm away
    assert np.linalg.norm(expected - centre) > 5


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("aligned-labels") / "cohort"
    write_cohort(out, cases=1, populations=["MET"], seed=11, spacing=4.0, clinical=True, skull_prob=0.0)
    return discover(out).by_name()["BraTS-MET-00000-000"]


def test_a_clinical_study_trains_on_the_shares_of_its_aligned_label_map(study):
    """The same prepared study (registration runs again, so up to its small run-to-run differences); only the
    shares change, to those of the aligned label map, whose whole-tumour volume they keep."""
    thick = prepare_record(study, PREP)
    aligned = prepare_record(study, PREP, aligned_labels=True)
    assert thick.image.shape == aligned.image.shape
    assert float(np.abs(thick.image.astype(np.float32) - aligned.image.astype(np.float32)).mean()) < 0.05
    assert not np.array_equal(thick.fractions, aligned.fractions)
    truth = sitk.ReadImage(str(study.folder / "aligned" / f"{study.name}-seg.nii.gz"))
    truth_ml = float((sitk.GetArrayViewFromImage(truth) > 0).sum() * np.prod(truth.GetSpacing()) / 1000)
    shares_ml = float(aligned.fractions[0].astype(np.float64).sum() / 255 * WORKING_MM**3 / 1000)
    assert truth_ml > 2 and abs(shares_ml / truth_ml - 1) < 0.05, (shares_ml, truth_ml)
    # both describe the same tumour in the same place
    a, b = thick.fractions[0] > 127, aligned.fractions[0] > 127
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.7


def test_an_aligned_case_keeps_its_own_shares(study):
    """Cases without an acquisition record (BraTS-like aligned cases) are prepared as before."""
    assert aligned_label_source(study.folder / "aligned", "t1c") is None


def test_a_broken_acquisition_record_leaves_the_study_out_with_the_reason(study, tmp_path):
    import shutil

    folder = tmp_path / "cohort" / study.name
    shutil.copytree(study.folder, folder)
    record = discover(tmp_path / "cohort").by_name()[study.name]
    info = json.loads((folder / "acquisition.json").read_text())
    info["label_grid"] = "t2f"
    (folder / "acquisition.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="label map lies on the 't2f' series"):
        aligned_label_source(folder, "t1c")
    (folder / "acquisition.json").write_text("{not json")
    cache = CaseCache(PREP, None, budget_bytes=1 << 30, aligned_labels=True)
    broken = cache.fill([record])
    assert [b.name for b in broken] == [study.name] and "acquisition.json" in broken[0].reason
    # the same study without --aligned-labels still trains on its own label map
    assert CaseCache(PREP, None, budget_bytes=1 << 30).fill([record]) == []
    # an acquisition record without its aligned case: left out with the reason, not a crash
    (folder / "acquisition.json").write_text((study.folder / "acquisition.json").read_text())
    shutil.rmtree(folder / "aligned")
    broken = CaseCache(PREP, None, budget_bytes=1 << 30, aligned_labels=True).fill([record])
    assert [b.name for b in broken] == [study.name] and "no aligned label map" in broken[0].reason


def test_aligned_labels_have_a_cache_folder_of_their_own(tmp_path):
    plain = CaseCache(PREP, tmp_path, persist=True)
    aligned = CaseCache(PREP, tmp_path, persist=True, aligned_labels=True)
    assert plain.folder != aligned.folder


def test_aligned_labels_need_soft_targets(tmp_path, capsys):
    code = commands.main(["train-joint", str(tmp_path), "-o", str(tmp_path / "run"), "--aligned-labels"])
    assert code == 2
    assert "add --soft-targets" in capsys.readouterr().err
