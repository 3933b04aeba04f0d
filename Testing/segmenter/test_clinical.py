"""Segmenting a study as it comes from the scanner: own grids, thick oblique slices, head motion, skull on.

No trained model exists yet, so the network is replaced by an "oracle" that segments a planted lesion by
half-maximum thresholding of the normalised channels the pipeline prepares. Geometry is then what is
tested: registration, brain extraction, resampling and restoring must put the lesion where it is in the
aligned, skull-stripped version of the same images. (With the trained default bundle, the same comparison
is the acceptance test of issue 8.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MTSSSegmenterLib import pipeline
from MTSSSegmenterLib.clinical import StudyReport, input_warnings, isotropic_grid
from MTSSSegmenterLib.cli import main
from MTSSSegmenterLib.geometry import Grid
from MTSSSegmenterLib.skull import SkullEvidence
from Testing.conftest import make_volume, requires_real


def oracle(bundle, case, device, progress=None):
    """WT = half-maximum of the FLAIR channel inside the brain, TC = ET = half-maximum of T1c inside WT."""
    x = torch.from_numpy(case.image)
    brain = torch.from_numpy(case.brain)

    def half_max(ch: int) -> torch.Tensor:
        v = x[ch]
        top = torch.quantile(v[brain][::7].float(), 0.999)
        return (v > 0.5 * (v[brain].median() + top)).float()

    wt = half_max(3)
    tc = wt * half_max(1)
    return torch.stack([wt, tc, tc]), torch.device("cpu"), []


def plant_lesion(images: dict[str, sitk.Image]) -> dict[str, sitk.Image]:
    """A 44 mL FLAIR-bright sphere with a 5.6 mL T1c-bright core, off the brain's centre."""
    ref = images["t1c"]
    arr = sitk.GetArrayViewFromImage(ref)
    sp = np.asarray(ref.GetSpacing())[::-1]
    centre = np.argwhere(arr > 50).mean(0) * sp + np.array([0.0, -15.0, 20.0])
    zyx = np.meshgrid(*[np.arange(n) * s for n, s in zip(arr.shape, sp)], indexing="ij")
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(zyx, centre)))
    out = {}
    for code, img in images.items():
        a = sitk.GetArrayFromImage(img)
        median = float(np.median(a[a > 50]))
        if code == "t2f":
            a = np.where(r < 22, 5 * median, a)
        if code == "t1c":
            a = np.where(r < 11, 5 * median, a)
        o = sitk.GetImageFromArray(a.astype(np.float32))
        o.CopyInformation(img)
        out[code] = o
    return out


def wt_dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return float(2 * np.count_nonzero(x & y) / max(np.count_nonzero(x) + np.count_nonzero(y), 1))


@pytest.fixture(scope="module")
def study(brats_2mm, tiny_bundle):
    """The aligned case and a clinical draw of it (skull on, thick oblique series, head motion), segmented."""
    from MTSSTrainingLib.clinical_acquisition import clinical_acquisition, synthetic_head

    aligned = plant_lesion(brats_2mm)
    rng = np.random.default_rng(1)
    head = synthetic_head(sitk.Cast(aligned["t1c"] > 50, sitk.sitkUInt8), rng)
    empty = sitk.Cast(aligned["t1c"] > 1e9, sitk.sitkUInt8)
    series, _, params = clinical_acquisition(aligned, empty, rng, skull=head, spacing_range=(4.0, 6.0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "run_network", oracle)
        a = pipeline.segment(aligned, model=tiny_bundle, device="cpu")
        b = pipeline.segment(series, model=tiny_bundle, device="cpu", brain_mask_out=True)
    return aligned, series, params, a, b


@requires_real
@pytest.mark.slow
def test_clinical_study_agrees_with_the_aligned_skull_stripped_case(study):
    from MTSSTrainingLib.clinical_acquisition import transform_from_params

    aligned, series, params, a, b = study
    assert a.details["registration"].startswith("off") and a.details["skull_detected"] is False
    assert Grid.of(b.label) == Grid.of(series["t1c"])  # the result lies on the t1c series' own grid
    assert max(series["t1c"].GetSpacing()) >= 4.0
    # same lesion in physical space: the t1c series shows the aligned point p at T(p)
    back = sitk.Resample(b.label, a.label, transform_from_params(params["series"]["t1c"]), sitk.sitkNearestNeighbor)
    assert wt_dice(back, a.label) >= 0.85
    assert abs(b.volumes_ml["WT"] / a.volumes_ml["WT"] - 1) < 0.15
    assert 35 < a.volumes_ml["WT"] < 60  # the planted 44 mL sphere (plus bright real tissue)


@requires_real
@pytest.mark.slow
def test_summary_says_what_was_done(study):
    _, series, _, _, b = study
    d = b.summary()
    assert d["skull_detected"] is True and d["skull"]["skull_stripped"] is False
    assert set(d["registration"]) == {"t1n", "t2w", "t2f"}
    for entry in d["registration"].values():
        assert entry["ok"] and {"metric", "rotation_deg", "translation_mm"} <= set(entry)
        assert entry["rotation_deg"] < 15 and np.linalg.norm(entry["translation_mm"]) < 20
    assert d["working_spacing_mm"] == [4.0, 4.0, 4.0]  # the tiny bundle's
    assert set(d["brain_coverage"]) == {"t1n", "t2w", "t2f"}
    assert not [w for w in b.warnings if "failed" in w or "covers only" in w]
    json.dumps(d)  # the --json summary is serialisable
    mask = b.brain_mask
    assert mask is not None and Grid.of(mask) == Grid.of(series["t1c"])
    ml = float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * np.prod(mask.GetSpacing()) / 1000
    assert 1300 < ml < 2000  # the brain (1.64 L), not the head (> 3.5 L)
    assert abs(d["extracted_brain_ml"] / ml - 1) < 0.02 and not [w for w in b.warnings if "kept only" in w]


@requires_real
def test_output_on_an_isotropic_grid_aligned_with_the_reference(brats_2mm, tiny_bundle, monkeypatch):
    monkeypatch.setattr(pipeline, "run_network", oracle)
    images = plant_lesion(brats_2mm)
    ref = pipeline.segment(images, model=tiny_bundle, device="cpu")
    iso = pipeline.segment(images, model=tiny_bundle, device="cpu", output_spacing=1.0, brain_mask_out=True)
    g, r = Grid.of(iso.label), Grid.of(images["t1c"])
    assert g.spacing == (1.0, 1.0, 1.0) and g.direction == r.direction
    assert np.allclose(np.asarray(g.origin) - 0.5, np.asarray(r.origin) - 1.0)  # same corner (identity direction)
    assert iso.details["output_grid"] == "isotropic 1 mm"
    assert abs(iso.volumes_ml["WT"] / ref.volumes_ml["WT"] - 1) < 0.05
    down = sitk.Resample(iso.label, ref.label, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert wt_dice(down, ref.label) > 0.93  # nearest-neighbour downsampling costs a little at the edges
    assert Grid.of(iso.brain_mask) == g
    same = pipeline.segment(images, model=tiny_bundle, device="cpu", output_spacing=2.0)  # the reference's spacing
    assert Grid.of(same.label) == Grid.of(ref.label)
    assert np.array_equal(sitk.GetArrayViewFromImage(same.label), sitk.GetArrayViewFromImage(ref.label))


def test_isotropic_grid_of_an_oblique_reference_keeps_its_corner_and_extent():
    c, s = np.cos(0.3), np.sin(0.3)
    ref = make_volume(shape_xyz=(40, 30, 12), spacing=(1.5, 1.5, 5.0), direction=[[c, -s, 0], [s, c, 0], [0, 0, 1]])
    g = isotropic_grid(ref, 2.0)
    d = np.asarray(ref.GetDirection()).reshape(3, 3)
    corner_ref = np.asarray(ref.GetOrigin()) - d @ (np.asarray(ref.GetSpacing()) / 2)
    corner_new = np.asarray(g.origin) - d @ np.full(3, 1.0)
    assert np.allclose(corner_ref, corner_new) and g.direction == ref.GetDirection()
    assert g.size == (30, 23, 30)  # ceil(40*1.5/2), ceil(30*1.5/2), ceil(12*5/2)
    with pytest.raises(ValueError, match="not a positive"):
        isotropic_grid(ref, 0.0)


def test_unsuitable_inputs_are_flagged(tiny_bundle):
    base = make_volume(seed=1)
    thick = make_volume(seed=2, shape_xyz=(40, 44, 15), spacing=(3.0, 3.0, 7.2))
    part = make_volume(seed=3)[:, :, 18:]  # the upper half of the head only
    r = pipeline.segment({"t1n": base, "t2w": thick, "t2f": part}, model=tiny_bundle, device="cpu", register=False)
    text = " ".join(r.warnings)
    assert "No contrast-enhanced T1 (t1c)" in text
    assert "'t2w' has 7.2 mm voxels" in text
    assert "'t2f' covers only" in text and "'t2w' covers only" not in text
    assert r.details["registration"].startswith("off")


def test_a_brain_extraction_that_kept_too_little_is_flagged():
    # a stripped child's brain once taken for a head kept 157 mL of its 1169 mL, and lost its tumour
    img = {"t1c": make_volume(seed=1)}
    lost = StudyReport(registered=False, skull=SkullEvidence(False, 1169.0, 0.04, 0.003), brain_ml=157.0)
    assert [w for w in input_warnings(img, lost) if "kept only 157 mL of a 1169 mL head" in w]
    small_share = StudyReport(registered=False, skull=SkullEvidence(False, 4000.0, 0.2, 0.5), brain_ml=700.0)
    assert [w for w in input_warnings(img, small_share) if "kept only 700 mL" in w]
    for fine in (StudyReport(registered=False, skull=SkullEvidence(False, 3400.0, 0.2, 0.5), brain_ml=1500.0),
                 StudyReport(registered=False, skull=SkullEvidence(True, 1169.0, 0.0, 0.0))):
        assert not [w for w in input_warnings(img, fine) if "kept only" in w]


def test_command_line_options(tiny_bundle, tmp_path, capsys):
    files = {}
    for i, code in enumerate(("t1c", "t2f")):
        files[code] = tmp_path / f"{code}.nii.gz"
        sitk.WriteImage(make_volume(seed=i), str(files[code]))
    out, mask = tmp_path / "seg.nii.gz", tmp_path / "brain.nii.gz"
    rc = main(["segment", "--t1c", str(files["t1c"]), "--t2f", str(files["t2f"]), "-o", str(out), "--model",
               str(tiny_bundle), "--device", "cpu", "--no-register", "--n4", "--brain-mask", str(mask),
               "--output-spacing", "2", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bias_correction"] == "N4" and summary["output_grid"] == "isotropic 2 mm"
    assert summary["skull_detected"] is False and "registration" in summary
    label, brain = sitk.ReadImage(str(out)), sitk.ReadImage(str(mask))
    assert label.GetSpacing() == (2.0, 2.0, 2.0) and Grid.of(brain) == Grid.of(label)
    assert sitk.GetArrayViewFromImage(brain).any()
    assert main(["segment", "--t1c", str(files["t1c"]), "-o", str(out), "--model", str(tiny_bundle),
                 "--output-spacing", "-1"]) == 2
    assert "Output spacing -1.0 mm is not a positive number" in capsys.readouterr().err


@requires_real
@pytest.mark.slow
def test_skull_stripped_thick_series_get_a_brain_mask_not_the_union_of_their_smeared_foregrounds(brats_2mm):
    """Skull-stripped series on their own thick oblique grids: the brain the network is normalised on must be
    about the brain (the union of the registered series' foregrounds was nearly twice it)."""
    from MTSSSegmenterLib.clinical import prepare_study
    from MTSSTrainingLib.clinical_acquisition import clinical_acquisition

    empty = sitk.Cast(brats_2mm["t1c"] > 1e9, sitk.sitkUInt8)
    series, _, _ = clinical_acquisition(brats_2mm, empty, np.random.default_rng(4), skull=None,
                                        spacing_range=(4.0, 6.0))
    images, transforms, brain, report = prepare_study(series, "t1c", register=None, n4=False)
    assert report.skull.stripped and set(transforms) == {"t1n", "t2w", "t2f"}
    assert brain is not None
    from Testing.conftest import REAL_CASE

    raw = sitk.ReadImage(str(REAL_CASE / f"{REAL_CASE.name}-t1c.nii.gz"))  # brats_2mm is smoothed: count at 1 mm
    truth_ml = float(np.count_nonzero(sitk.GetArrayViewFromImage(raw) > 0)) * float(np.prod(raw.GetSpacing())) / 1000.0
    found_ml = float(np.count_nonzero(sitk.GetArrayViewFromImage(brain))) * float(np.prod(brain.GetSpacing())) / 1000.0
    assert 0.85 < found_ml / truth_ml < 1.3, (found_ml, truth_ml)
    # series on the reference's grid keep the old behaviour: their foreground is the brain
    assert prepare_study(dict(brats_2mm), "t1c", register=None, n4=False)[2] is None
