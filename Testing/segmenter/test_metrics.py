"""Tests of MTSSSegmenterLib.metrics: Dice, HD95 and BraTS 2023 lesion-wise scores.

Cases are small cubes whose scores can be worked out by hand; a straight, uncropped transcription of
the official BraTS 2023 algorithm (per-lesion dilation, brute-force surface distances) checks the
fast implementation on random blobs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from MTSSSegmenterLib import metrics
from MTSSSegmenterLib.constants import Population, population
from MTSSSegmenterLib.errors import InputError
from MTSSSegmenterLib.metrics import BRATS_HD95_PENALTY_MM as PENALTY

ISO = (1.0, 1.0, 1.0)


def cube(shape, corner, size):
    """Boolean array with a cube of ``size`` voxels per side at ``corner``."""
    mask = np.zeros(shape, dtype=bool)
    x, y, z = corner
    mask[x : x + size, y : y + size, z : z + size] = True
    return mask


# --------------------------------------------------------------------------- Dice and HD95


def test_region_masks_follow_brats_2023_labels():
    labels = np.array([0, 1, 2, 3], dtype=np.uint8).reshape(1, 1, 4)
    assert metrics.region_mask(labels, "WT").ravel().tolist() == [False, True, True, True]
    assert metrics.region_mask(labels, "TC").ravel().tolist() == [False, True, False, True]
    assert metrics.region_mask(labels, "et").ravel().tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="Unknown region 'XT'"):
        metrics.region_mask(labels, "XT")


def test_dice_by_hand():
    a = cube((12, 12, 12), (2, 2, 2), 4)
    shifted = cube((12, 12, 12), (3, 2, 2), 4)  # overlap 3x4x4 = 48 of 64 + 64
    assert metrics.dice(a, shifted) == pytest.approx(96 / 128)
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, cube((12, 12, 12), (7, 7, 7), 4)) == 0.0
    empty = np.zeros_like(a)
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.dice(a, empty) == 0.0


def test_hd95_of_shifted_cubes_is_the_shift():
    a = cube((16, 16, 16), (3, 3, 3), 6)
    b = cube((16, 16, 16), (5, 3, 3), 6)
    assert metrics.hd95(a, b, ISO) == pytest.approx(2.0)
    assert metrics.hd95(b, a, ISO) == pytest.approx(2.0)
    assert metrics.hd95(a, a, ISO) == 0.0


def test_hd95_honours_anisotropic_spacing():
    a = cube((16, 16, 16), (3, 3, 3), 6)
    along_0 = cube((16, 16, 16), (5, 3, 3), 6)
    along_2 = cube((16, 16, 16), (3, 3, 5), 6)
    spacing = (3.0, 1.0, 0.5)
    assert metrics.hd95(a, along_0, spacing) == pytest.approx(6.0)
    assert metrics.hd95(a, along_2, spacing) == pytest.approx(1.0)


def test_hd95_is_a_percentile_not_the_maximum():
    truth = cube((32, 32, 32), (2, 2, 2), 10)
    pred = truth.copy()
    pred[30, 30, 30] = True  # one stray voxel ~33 mm away among ~490 surface voxels
    assert metrics.hd95(pred, truth, ISO) == 0.0
    # ... while a whole face 3 mm off (>5 % of the surface) does count.
    pred = truth.copy()
    pred[12:15, 2:12, 2:12] = True
    assert metrics.hd95(pred, truth, ISO) == pytest.approx(3.0)


def test_hd95_empty_cases_follow_brats():
    a = cube((8, 8, 8), (2, 2, 2), 3)
    empty = np.zeros_like(a)
    assert metrics.hd95(empty, empty, ISO) == 0.0
    assert metrics.hd95(a, empty, ISO) == PENALTY == 374.0
    assert metrics.hd95(empty, a, ISO) == PENALTY


def test_metrics_reject_bad_input_with_a_message():
    a = cube((8, 8, 8), (2, 2, 2), 3)
    with pytest.raises(InputError, match=r"\(8, 8, 8\).*\(8, 8, 9\)"):
        metrics.dice(a, np.zeros((8, 8, 9), bool))
    with pytest.raises(InputError, match="spacing"):
        metrics.hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="3-D"):
        metrics.dice(a[0], a[0])
    with pytest.raises(ValueError, match="Did you mean 'MET'"):
        metrics.lesion_wise(a, a, ISO, "MTE")


# --------------------------------------------------------------------------- lesion-wise, by hand


def test_perfect_prediction_scores_one_and_zero():
    truth = cube((20, 20, 20), (2, 2, 2), 5) | cube((20, 20, 20), (12, 12, 12), 5)
    result = metrics.lesion_wise(truth, truth, ISO, "GLI")
    assert (result.dice, result.hd95) == (1.0, 0.0)
    assert (result.n_lesions, result.n_false_positives, result.n_detected) == (2, 0, 2)


def test_two_lesions_one_missed():
    shape = (24, 24, 24)
    first, second = cube(shape, (2, 2, 2), 4), cube(shape, (16, 16, 16), 4)
    pred = cube(shape, (3, 2, 2), 4)  # first lesion shifted by one voxel: Dice 0.75, HD95 1
    d1, h1 = metrics.dice(pred, first), metrics.hd95(pred, first, ISO)
    assert (d1, h1) == (pytest.approx(0.75), pytest.approx(1.0))
    result = metrics.lesion_wise(pred, first | second, ISO, "GLI")
    assert result.n_lesions == 2 and result.n_detected == 1 and result.n_false_positives == 0
    assert result.dice == pytest.approx((d1 + 0.0) / 2)
    assert result.hd95 == pytest.approx((h1 + 374.0) / 2)
    assert sorted(result.lesions) == [(64.0, 0.0, 374.0), (64.0, pytest.approx(d1), pytest.approx(h1))]


def test_one_false_positive_whatever_its_size():
    shape = (24, 24, 24)
    truth = cube(shape, (2, 2, 2), 4)
    pred = truth.copy()
    pred[20, 20, 20] = True  # a single voxel far away
    result = metrics.lesion_wise(pred, truth, ISO, "GLI")
    assert (result.n_lesions, result.n_false_positives) == (1, 1)
    assert result.dice == pytest.approx((1.0 + 0.0) / 2)
    assert result.hd95 == pytest.approx((0.0 + 374.0) / 2)


def test_prediction_touching_the_dilated_footprint_is_a_match_not_a_false_positive():
    shape = (24, 24, 24)
    truth = cube(shape, (4, 4, 4), 4)  # x 4..7
    near = cube(shape, (10, 4, 4), 4)  # gap of 2 voxels: inside a 3-voxel dilation, outside a 1-voxel one
    gli = metrics.lesion_wise(near, truth, ISO, "GLI")
    assert (gli.n_detected, gli.n_false_positives) == (1, 0)
    assert gli.dice == 0.0  # matched but not overlapping
    assert gli.hd95 == pytest.approx(metrics.hd95(near, truth, ISO))
    men = metrics.lesion_wise(near, truth, ISO, "MEN")
    assert (men.n_detected, men.n_false_positives) == (0, 1)
    assert men.hd95 == pytest.approx(374.0)


def test_lesions_merge_after_dilation_gli_but_not_met():
    shape = (24, 16, 16)
    first = cube(shape, (2, 4, 4), 4)  # x 2..5
    second = cube(shape, (9, 4, 4), 4)  # x 9..12: three background voxels between
    truth = first | second
    pred = first
    gli = metrics.lesion_wise(pred, truth, ISO, "GLI")  # 3 dilations: one lesion of 128 voxels
    assert gli.n_lesions == 1 and gli.n_false_positives == 0
    assert gli.dice == pytest.approx(2 * 64 / (64 + 128))
    assert gli.hd95 == pytest.approx(metrics.hd95(pred, truth, ISO))
    assert gli.lesions[0].volume_mm3 == 128.0
    met = metrics.lesion_wise(pred, truth, ISO, "MET")  # 1 dilation: two lesions, one missed
    assert met.n_lesions == 2
    assert met.dice == pytest.approx((1.0 + 0.0) / 2)
    assert met.hd95 == pytest.approx((0.0 + 374.0) / 2)


def test_small_lesions_leave_both_sums():
    shape = (24, 24, 24)
    big = cube(shape, (2, 2, 2), 5)  # 125 mm^3
    small = cube(shape, (15, 15, 15), 2)  # 8 mm^3: below GLI's 50, above MET's 2
    truth = big | small
    gli = metrics.lesion_wise(big, truth, ISO, "GLI")
    assert (gli.dice, gli.hd95, gli.n_lesions, gli.n_small_lesions) == (1.0, 0.0, 1, 1)
    met = metrics.lesion_wise(big, truth, ISO, "MET")
    assert (met.dice, met.hd95, met.n_lesions) == (pytest.approx(0.5), pytest.approx(187.0), 2)
    # At the threshold is out too: a 2-voxel lesion in MET.
    tiny = np.zeros(shape, bool)
    tiny[20, 20, 20:22] = True
    met = metrics.lesion_wise(big, big | tiny, ISO, "MET")
    assert (met.dice, met.n_lesions, met.n_small_lesions) == (1.0, 1, 1)
    # A prediction of a small lesion alone is neither scored nor a false positive.
    only_small = metrics.lesion_wise(small, small, ISO, "GLI")
    assert (only_small.dice, only_small.hd95, only_small.n_false_positives) == (1.0, 0.0, 0)


def test_lesion_volume_uses_the_voxel_spacing():
    shape = (16, 16, 16)
    lesion_25 = np.zeros(shape, bool)
    lesion_25[4:9, 4:9, 6] = True  # 25 voxels of 1x1x2 mm = 50 mm^3: at the GLI threshold, out
    lesion_26 = lesion_25.copy()
    lesion_26[9, 4, 6] = True  # 52 mm^3: in
    spacing = (1.0, 1.0, 2.0)
    empty = np.zeros(shape, bool)
    assert metrics.lesion_wise(empty, lesion_25, spacing, "GLI").dice == 1.0
    counted = metrics.lesion_wise(empty, lesion_26, spacing, "GLI")
    assert (counted.dice, counted.hd95, counted.n_lesions) == (0.0, 374.0, 1)
    assert counted.lesions[0].volume_mm3 == pytest.approx(52.0)


def test_empty_truth_with_and_without_prediction():
    shape = (16, 16, 16)
    empty = np.zeros(shape, bool)
    nothing = metrics.lesion_wise(empty, empty, ISO, "GLI")
    assert (nothing.dice, nothing.hd95, nothing.n_lesions, nothing.n_false_positives) == (1.0, 0.0, 0, 0)
    pred = cube(shape, (1, 1, 1), 4) | cube(shape, (10, 10, 10), 4)  # 64 mm^3 each
    spurious = metrics.lesion_wise(pred, empty, ISO, "GLI")
    assert (spurious.dice, spurious.hd95, spurious.n_false_positives) == (0.0, 374.0, 2)
    missed = metrics.lesion_wise(empty, pred, ISO, "GLI")
    assert (missed.dice, missed.hd95, missed.n_lesions) == (0.0, 374.0, 2)
    assert json.loads(json.dumps(spurious.to_dict()))["n_false_positives"] == 2


# --------------------------------------------------------------------------- against the official algorithm


def _reference_hd95(pred, truth, spacing):
    """Directed 95th percentiles by brute force over surface voxel pairs (no distance transform)."""
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return 374.0
    scale = np.asarray(spacing)
    points = [np.argwhere(m & ~ndimage.binary_erosion(m)) * scale for m in (pred, truth)]
    distances = cdist(points[0], points[1])
    result = 0.0
    for directed in (distances.min(axis=1), distances.min(axis=0)):
        directed = np.sort(directed)
        index = np.searchsorted(np.arange(1, directed.size + 1) / directed.size, 0.95)
        result = max(result, directed[min(index, directed.size - 1)])
    return float(result)


def _reference_lesion_wise(pred, truth, spacing, dilation, threshold):
    """The official script's steps, uncropped, one full-array dilation per lesion."""
    structure = ndimage.generate_binary_structure(3, 2)
    full = np.ones((3, 3, 3), bool)
    truth_cc, _ = ndimage.label(truth, full)
    pred_cc, _ = ndimage.label(pred, full)
    dilated_cc, n_dilated = ndimage.label(ndimage.binary_dilation(truth, structure, dilation), full)
    merged = np.zeros_like(truth_cc)
    for comp in range(1, n_dilated + 1):
        merged[(dilated_cc == comp) & (truth_cc > 0)] = comp
    matched_any, scores = set(), []
    for comp in range(1, merged.max() + 1):
        lesion = merged == comp
        footprint = ndimage.binary_dilation(lesion, structure, dilation)
        hits = set(np.unique(pred_cc[footprint]).tolist()) - {0}
        matched_any |= hits
        match = np.isin(pred_cc, list(hits))
        d = 2 * (match & lesion).sum() / (match.sum() + lesion.sum())
        scores.append((lesion.sum() * np.prod(spacing), d, _reference_hd95(match, lesion, spacing)))
    fp = len(set(np.unique(pred_cc).tolist()) - {0} - matched_any)
    kept = [s for s in scores if s[0] > threshold]
    if len(kept) + fp == 0:
        return 1.0, 0.0, len(kept), fp
    return (
        sum(s[1] for s in kept) / (len(kept) + fp),
        (sum(s[2] for s in kept) + 374 * fp) / (len(kept) + fp),
        len(kept),
        fp,
    )


def _random_blobs(rng, shape, count):
    mask = np.zeros(shape, bool)
    for _ in range(count):
        centre = rng.integers(0, shape)
        radius = rng.uniform(0.8, 3.5)
        grid = np.indices(shape).reshape(3, -1).T
        inside = (((grid - centre) / np.array([1.0, 1.0, rng.uniform(0.6, 1.4)])) ** 2).sum(axis=1) <= radius**2
        mask |= inside.reshape(shape)
    return mask


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("code", ["GLI", "MET"])
def test_lesion_wise_matches_the_official_algorithm_on_random_blobs(seed, code):
    rng = np.random.default_rng(seed)
    shape = (22, 20, 18)
    truth = _random_blobs(rng, shape, 5)
    # Most of the truth found, except beyond a random plane (missed lesions), plus spurious blobs.
    found = truth & (rng.random(shape) < 0.8) & (np.indices(shape)[0] < rng.integers(8, 22))
    pred = _random_blobs(rng, shape, 2) | found
    spacing = (1.0, 1.2, 0.8) if seed % 2 else ISO
    official = population(code)
    # Thresholds scaled to these tiny blobs so that both sides of them occur.
    pop = Population(official.code, official.name, official.lesion_dilation, 10.0 if code == "GLI" else 2.0)
    expected = _reference_lesion_wise(pred, truth, spacing, pop.lesion_dilation, pop.lesion_volume_threshold_mm3)
    result = metrics.lesion_wise(pred, truth, spacing, pop)
    got = (result.dice, result.hd95, result.n_lesions, result.n_false_positives)
    assert got == pytest.approx(expected)
    assert metrics.hd95(pred, truth, spacing) == pytest.approx(_reference_hd95(pred, truth, spacing))


def test_cropping_is_exact_at_the_image_border():
    """Blobs touching the array edge in a full-size BraTS volume score as in the official algorithm."""
    shape = (240, 240, 155)
    truth = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    truth[0:6, 100:106, 0:5] = True
    truth[8:12, 100:104, 0:4] = True  # 2 voxels from the first: merged under GLI
    pred[0:5, 101:106, 0:5] = True
    pred[230:240, 0:3, 150:155] = True  # false positive in the opposite corner
    result = metrics.lesion_wise(pred, truth, ISO, "GLI")
    box = (slice(0, 20), slice(95, 110), slice(0, 10))
    expected = _reference_lesion_wise(pred[box], truth[box], ISO, 3, 50.0)
    assert result.n_false_positives == expected[3] + 1
    assert result.n_lesions == expected[2] == 1
    assert result.dice == pytest.approx(expected[0] / 2)
    assert result.hd95 == pytest.approx((expected[1] + 374.0) / 2)


# --------------------------------------------------------------------------- per case and summaries


def test_case_metrics_are_plain_json_values():
    shape = (20, 20, 20)
    truth = np.zeros(shape, np.uint8)
    truth[2:12, 2:12, 2:12] = 2  # edema 1000 voxels
    truth[4:8, 4:8, 4:8] = 3  # enhancing 64
    pred = truth.copy()
    pred[4:8, 4:8, 4:8] = 1  # enhancing called necrosis: TC right, ET missed
    result = metrics.case_metrics(pred, truth, ISO, "gli")
    assert result["population"] == "GLI"
    json.dumps(result)
    assert all(type(v) in (float, int) for region in ("WT", "TC", "ET") for v in result[region].values())
    assert (result["WT"]["dice"], result["TC"]["dice"], result["ET"]["dice"]) == (1.0, 1.0, 0.0)
    assert (result["ET"]["hd95"], result["ET"]["lesion_dice"], result["ET"]["lesion_hd95"]) == (374.0, 0.0, 374.0)
    assert result["WT"]["truth_volume_ml"] == pytest.approx(1.0)
    assert result["ET"]["pred_volume_ml"] == 0.0
    assert result["ET"]["truth_volume_ml"] == pytest.approx(0.064)


def test_case_metrics_reject_brats_2021_labels():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1, 1, 1] = 4
    with pytest.raises(InputError, match="convert 4 to 3"):
        metrics.case_metrics(labels, np.zeros_like(labels), ISO, "GLI")


def _row(population, value):
    region = {"dice": value, "hd95": 10 * value, "lesion_dice": value, "lesion_hd95": 374 * (1 - value)}
    return {"case": f"{population}-{value}", "population": population, "WT": region, "TC": region, "ET": region}


def test_summarise_per_population_and_macro_average():
    rows = [_row("GLI", 0.2), _row("GLI", 0.4), _row("GLI", 0.9), _row("MET", 0.5)]
    summary = metrics.summarise(rows)
    assert summary["n_cases"] == 4
    assert list(summary["populations"]) == ["GLI", "MET"]
    gli = summary["populations"]["GLI"]
    assert gli["n_cases"] == 3
    assert gli["WT"]["dice"] == {"mean": pytest.approx(0.5), "median": pytest.approx(0.4)}
    assert gli["ET"]["hd95"]["median"] == pytest.approx(4.0)
    assert summary["all"]["TC"]["dice"]["mean"] == pytest.approx(0.5)
    # Macro: the mean of the population means, (0.5 + 0.5) / 2 here.
    assert summary["macro"]["WT"]["dice"] == pytest.approx(0.5)
    rows.append(_row("MET", 0.9))
    summary = metrics.summarise(rows)
    assert summary["macro"]["WT"]["dice"] == pytest.approx((0.5 + 0.7) / 2)
    assert summary["all"]["WT"]["dice"]["mean"] == pytest.approx(2.9 / 5)
    assert not math.isclose(summary["macro"]["WT"]["dice"], summary["all"]["WT"]["dice"]["mean"])
    json.dumps(summary)


def test_summarise_names_the_broken_row():
    with pytest.raises(ValueError, match="Row 1"):
        metrics.summarise([_row("GLI", 0.5), {"population": "GLI", "WT": {}}])
    assert metrics.summarise([]) == {"n_cases": 0, "populations": {}, "all": {}, "macro": {}}
