"""The in-memory synthetic case: geometry, labels, contrasts, determinism and argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from MTSSSegmenterLib.constants import MODALITY_CODES
from MTSSSegmenterLib.errors import InputError
from MTSSTrainingLib.synth import generate_case
from MTSSTrainingLib.synth.anatomy import OutputGrid

SPACING = 4.0


@pytest.fixture(scope="module")
def gli() -> object:
    return generate_case("GLI", 3, spacing=SPACING)


def test_geometry_matches_brats_frame(gli):
    assert OutputGrid(1.0).shape == (240, 240, 155)
    assert OutputGrid(2.0).shape == (120, 120, 78)
    assert gli.seg.shape == (60, 60, 39)
    assert set(gli.images) == set(MODALITY_CODES)
    for img in gli.images.values():
        assert img.shape == gli.seg.shape and img.dtype == np.float32
    # the BraTS 2023 header at 1 mm: LPS voxel axes, origin (0, 239, 0); same field of view at 4 mm
    np.testing.assert_allclose(OutputGrid(1.0).affine, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]])
    corner_1mm = OutputGrid(1.0).affine @ [-0.5, -0.5, -0.5, 1]
    np.testing.assert_allclose(gli.affine @ [-0.5, -0.5, -0.5, 1], corner_1mm)


def test_labels_and_skull_stripped_background(gli):
    assert gli.seg.dtype == np.uint8
    assert set(np.unique(gli.seg)) <= {0, 1, 2, 3}
    assert gli.seg.any()
    brain = gli.brain
    assert 0.08 < brain.mean() < 0.35  # a brain in a 240x240x155 frame, not an empty or full box
    for img in gli.images.values():
        assert np.array_equal(img > 0, brain), "all sequences share one skull-stripped mask"
        assert np.array_equal(img, np.rint(img)), "intensities are integers, as written to int16 files"
    assert not (gli.seg[~brain]).any(), "labels only inside the brain"
    voxel = SPACING**3
    assert gli.meta["label_volumes_mm3"]["ED"] == pytest.approx((gli.seg == 2).sum() * voxel)


def test_sequences_have_their_tissue_ordering():
    """Edema FLAIR- and T2-bright, T1-dark; enhancing tumour T1c-bright; CSF brightest on T2."""
    case = generate_case("GLI", 6, spacing=2.0)  # a glioblastoma with necrosis, rim and edema
    seg, im = case.seg, case.images
    normal = case.brain & (seg == 0)
    ref = {m: np.median(im[m][normal]) for m in MODALITY_CODES}
    rel = {m: {lab: np.median(im[m][seg == lab]) / ref[m] for lab in (1, 2, 3)} for m in MODALITY_CODES}
    assert rel["t2f"][2] > 1.3 and rel["t2w"][2] > 1.3
    white_matter_like = normal & (im["t2w"] < np.percentile(im["t2w"][normal], 40))  # darkest on T2
    assert np.median(im["t1n"][seg == 2]) < 0.95 * np.median(im["t1n"][white_matter_like])
    assert rel["t1c"][3] > 1.3 and rel["t1c"][3] > rel["t1n"][3] + 0.3
    assert rel["t1c"][1] < 1.0 and rel["t2w"][1] > 1.3  # necrosis: dark on T1c, bright on T2
    bright_t2 = im["t2w"][normal] > np.percentile(im["t2w"][normal], 97)
    assert np.median(im["t2f"][normal][bright_t2]) < ref["t2f"], "CSF (T2-brightest) is dark on FLAIR"


def test_same_seed_same_case_other_seed_other_case(gli):
    again = generate_case("GLI", 3, spacing=SPACING)
    assert np.array_equal(again.seg, gli.seg)
    for code in MODALITY_CODES:
        assert np.array_equal(again.images[code], gli.images[code])
    assert again.meta == gli.meta
    other = generate_case("GLI", 4, spacing=SPACING)
    assert not np.array_equal(other.seg, gli.seg)
    assert not np.array_equal(other.images["t1c"], gli.images["t1c"])
    # another population with the same seed is another case too
    assert not np.array_equal(generate_case("MET", 3, spacing=SPACING).seg, gli.seg)


def test_spacing_keeps_the_case():
    """Anatomy and lesions are drawn in mm: a coarser grid shows the same tumour (only noise differs)."""
    fine, coarse = generate_case("MEN", 1, spacing=2.0), generate_case("MEN", 1, spacing=4.0)
    assert fine.meta["lesions"] == coarse.meta["lesions"]
    for region in ("WT", "TC"):
        v2, v4 = fine.meta["region_volumes_mm3"][region], coarse.meta["region_volumes_mm3"][region]
        assert v4 == pytest.approx(v2, rel=0.25)


def test_metadata_describes_the_case(gli):
    meta = gli.meta
    assert meta["population"] == "GLI" and meta["seed"] == 3 and meta["spacing_mm"] == SPACING
    assert meta["lesion_count"] >= 1 and meta["lesions_placed"] == len(meta["lesions"])
    assert set(meta["imaging"]) == set(MODALITY_CODES)
    assert {"noise", "bias", "slice_mm", "gain", "gm", "csf"} <= set(meta["imaging"]["t2f"])


@pytest.mark.parametrize("kwargs, words", [
    ({"population": "GLO"}, ["GLO", "GLI"]),
    ({"spacing": 0.1}, ["0.1", "mm"]),
    ({"spacing": "fine"}, ["fine"]),
    ({"seed": -1}, ["-1"]),
])
def test_bad_arguments_name_the_value(kwargs, words):
    args = {"population": "GLI", "seed": 0, "spacing": SPACING, **kwargs}
    with pytest.raises(InputError) as err:
        generate_case(**args)
    for word in words:
        assert word in str(err.value)


def test_population_codes_are_case_insensitive():
    assert generate_case("met", 2, spacing=8.0).meta["population"] == "MET"
