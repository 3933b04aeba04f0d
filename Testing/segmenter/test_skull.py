"""Skull detection and brain extraction on skull-stripped and skull-on heads.

Skull-on heads: the real BraTS brain with a synthetic scalp, skull and neck painted around it
(``MTSSTrainingLib.clinical_acquisition``), on thick oblique slices with a noisy background; and, when
Debian's ``mricron-data`` is installed, the real Colin27 head (``ch2.nii.gz``) with its brain mask
(``ch2bet.nii.gz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MTSSSegmenterLib.skull import brain_mask, is_skull_stripped, skull_evidence
from Testing.conftest import requires_real

COLIN = Path("/usr/share/mricron/templates")
requires_colin = pytest.mark.skipif(not (COLIN / "ch2.nii.gz").is_file(),
                                    reason="the real Colin27 head is not installed (apt-get install mricron-data)")


def dice(a: sitk.Image, b: sitk.Image) -> float:
    x = sitk.GetArrayViewFromImage(a) > 0
    y = sitk.GetArrayViewFromImage(sitk.Resample(b, a, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    return float(2 * np.count_nonzero(x & y) / max(np.count_nonzero(x) + np.count_nonzero(y), 1))


def volume_ml(mask: sitk.Image) -> float:
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0


@pytest.fixture(scope="module")
def brats(brats_2mm) -> dict[str, sitk.Image]:
    return brats_2mm


@pytest.fixture(scope="module")
def clinical(brats):
    """Two clinical-like draws of the BraTS case: skull-stripped and skull-on, series on thick oblique grids."""
    from MTSSTrainingLib.clinical_acquisition import clinical_acquisition, synthetic_head, transform_from_params

    rng = np.random.default_rng(7)
    brain = sitk.Cast(brats["t1c"] > 50, sitk.sitkUInt8)
    seg = sitk.Cast(brats["t2f"] > 1e9, sitk.sitkUInt8)
    stripped, _, p0 = clinical_acquisition(brats, seg, rng, spacing_range=(4.0, 6.0))
    head = synthetic_head(brain, rng)
    skull_on, _, p1 = clinical_acquisition(brats, seg, rng, skull=head, spacing_range=(4.0, 6.0))
    truth = {code: sitk.Resample(brain, skull_on[code], transform_from_params(p1["series"][code]).GetInverse(),
                                 sitk.sitkNearestNeighbor) for code in skull_on}
    return stripped, skull_on, truth


@requires_real
def test_skull_stripped_images_are_recognised(brats, clinical):
    stripped, _, _ = clinical
    for code in ("t1n", "t1c", "t2w", "t2f"):
        assert is_skull_stripped(brats[code]), code
        ev = skull_evidence(stripped[code])
        assert ev.stripped, (code, ev)


@requires_real
def test_a_small_stripped_brain_is_not_taken_for_a_head(brats):
    # A child's brain: its ventricles and sulci lie 15-20 mm under the surface, where an adult's skull
    # would be looked for; scaled to 0.75 (about 0.7 L) the real brain was taken for a head in FLAIR (and a
    # synthetic paediatric test case in T1, whose tumour the brain extraction then cut away).
    for code, img in brats.items():
        small = sitk.Image(img)
        small.SetSpacing([0.75 * s for s in img.GetSpacing()])
        ev = skull_evidence(small)
        assert ev.stripped, (code, ev)


def test_a_stripped_t2w_series_alone_keeps_its_brain():
    # synthetic T2w: bright cortex and CSF rim above darker white matter make a dip 4-20 mm deep as a skull
    # does (0.14 and 0.18 here); a T2w series given alone is judged by its volume and dark layer
    from MTSSSegmenterLib.io import image_from_nifti_array
    from MTSSTrainingLib.synth.case import generate_case

    for population, seed in (("SSA", 1), ("MET", 0)):
        case = generate_case(population, seed, spacing=2.0)
        t2w = image_from_nifti_array(case.images["t2w"], case.affine)
        assert skull_evidence(t2w).valley > 0.05  # the dip that took it for a head
        mask, evidence = brain_mask({"t2w": t2w})
        assert evidence.stripped, (population, evidence)
        assert dice(mask, sitk.Cast(t2w > 0, sitk.sitkUInt8)) > 0.95


@requires_real
def test_skull_on_images_are_recognised_even_on_part_of_the_head(clinical):
    _, skull_on, _ = clinical
    for code, img in skull_on.items():
        ev = skull_evidence(img)
        assert not ev.stripped, (code, ev)
        n = img.GetSize()[2]
        part = img[:, :, n // 4: n // 4 + n // 2]  # half of the slices: too small a volume to tell by size
        ev = skull_evidence(part)
        assert not ev.stripped, (code, "partial", ev)


@requires_real
def test_brain_extraction_of_skull_on_thick_oblique_series(clinical):
    _, skull_on, truth = clinical
    mask, evidence = brain_mask(skull_on)  # extracted from t1n, put on the t1c (reference) grid
    assert not evidence.stripped
    assert mask.GetSize() == skull_on["t1c"].GetSize() and mask.GetSpacing() == skull_on["t1c"].GetSpacing()
    # the t1n mask is mapped onto t1c's grid through the identity here, so score it on t1n's own grid
    own, _ = brain_mask({"t1n": skull_on["t1n"]})
    assert dice(own, truth["t1n"]) > 0.9
    assert 0.85 < volume_ml(own) / volume_ml(truth["t1n"]) < 1.15
    t2, _ = brain_mask({"t2f": skull_on["t2f"]})
    assert dice(t2, truth["t2f"]) > 0.88


@requires_real
def test_stripped_brain_mask_is_the_foreground(brats):
    mask, evidence = brain_mask({"t1c": brats["t1c"], "t2f": brats["t2f"]})
    assert evidence.stripped
    truth = sitk.Cast(brats["t1c"] > 50, sitk.sitkUInt8)
    assert dice(mask, truth) > 0.95
    # when the caller keeps the foreground itself, the same verdict comes without the mask
    none, again = brain_mask({"t1c": brats["t1c"], "t2f": brats["t2f"]}, stripped_mask=False)
    assert none is None and again == evidence


@requires_colin
def test_real_colin27_head_and_its_brain():
    head = sitk.ReadImage(str(COLIN / "ch2.nii.gz"), sitk.sitkFloat32)
    bet = sitk.ReadImage(str(COLIN / "ch2bet.nii.gz"), sitk.sitkFloat32)
    assert not is_skull_stripped(head)
    assert is_skull_stripped(bet)
    # the better-stripped brain keeps its sulcal CSF, and the top half of a brain has darker deep tissue at
    # its cut: neither is a skull (both were taken for one before the dark layer and the dip had to lie
    # above brighter tissue 4-20 mm under the surface)
    assert is_skull_stripped(sitk.ReadImage(str(COLIN / "ch2better.nii.gz"), sitk.sitkFloat32))
    n = bet.GetSize()[2]
    assert is_skull_stripped(bet[:, :, n // 2:])
    mask, _ = brain_mask(head)
    truth = sitk.Cast(bet > 0, sitk.sitkUInt8)
    assert dice(mask, truth) > 0.93
    assert 0.9 < volume_ml(mask) / volume_ml(truth) < 1.1
