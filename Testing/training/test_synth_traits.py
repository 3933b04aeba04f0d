"""Each synthetic population has the traits the literature gives it, measured on the generated images.

Per-case traits (MET several lesions, MEN on the brain surface) are checked on every seed drawn; traits
that only hold on average (PED enhances less than GLI, SSA noisier than GLI) over a set of seeds.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import ndimage

from MTSSTrainingLib.synth import count_lesions, generate_case

SPACING = 3.0
SEEDS = tuple(range(8))


@functools.cache
def case(population: str, seed: int):
    return generate_case(population, seed, spacing=SPACING)


def tumour_core(c) -> np.ndarray:
    return (c.seg == 1) | (c.seg == 3)


def noise_level(c) -> float:
    """Robust noise estimate: lower quartile of neighbour differences in normal brain / median intensity."""
    normal = ndimage.binary_erosion(c.brain, iterations=2) & (c.seg == 0)
    levels = []
    for img in c.images.values():
        diffs = []
        for axis in range(3):
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[axis], b[axis] = slice(0, -1), slice(1, None)
            both = normal[tuple(a)] & normal[tuple(b)]
            diffs.append(np.abs(img[tuple(b)] - img[tuple(a)])[both])
        levels.append(np.percentile(np.concatenate(diffs), 25) / np.median(img[normal]))
    return float(np.mean(levels))


@pytest.mark.parametrize("seed", SEEDS)
def test_metastases_are_several_separate_lesions(seed):
    c = case("MET", seed)
    assert c.meta["lesions_placed"] >= 2
    assert count_lesions(c.seg) >= 2, f"MET seed {seed}: {count_lesions(c.seg)} tumour-core component(s)"
    assert c.meta["lesion_count"] == count_lesions(c.seg)


@pytest.mark.parametrize("seed", SEEDS)
def test_meningiomas_touch_the_brain_surface(seed):
    c = case("MEN", seed)
    core = tumour_core(c)
    assert core.any()
    outside = ~c.brain
    assert (ndimage.binary_dilation(core) & outside).any(), f"MEN seed {seed}: tumour core is not extra-axial"
    # and they are well circumscribed: one compact core
    assert count_lesions(c.seg) == 1


@pytest.mark.parametrize("population", ["GLI", "SSA"])
def test_hemispheric_gliomas_stay_inside_the_brain(population):
    for seed in SEEDS[:4]:
        c = case(population, seed)
        core = tumour_core(c)
        assert core.any()
        # not a ball stuck on the outside: most of the core has brain all around it
        rim = ndimage.binary_dilation(core, iterations=2) & ~c.brain
        assert rim.sum() < 0.5 * core.sum()


def test_paediatric_tumours_are_mostly_midline_or_infratentorial():
    """Brainstem, thalamus, cerebellum: within 22 mm of the midline or below the tentorium (frame z < 54)."""
    central = 0
    for seed in SEEDS:
        x, _, z = case("PED", seed).meta["lesions"][0]["centre_mm"]
        central += abs(x - 119.0) < 22.0 or z < 54.0
    assert central >= len(SEEDS) // 2


def test_paediatric_tumours_enhance_less_than_adult_gliomas():
    def et_share(pop: str) -> float:
        shares = []
        for seed in SEEDS:
            c = case(pop, seed)
            shares.append((c.seg == 3).sum() / max(tumour_core(c).sum(), 1))
        return float(np.mean(shares))

    assert et_share("PED") < et_share("GLI") - 0.05


def test_paediatric_brains_are_smaller():
    volume = {p: np.mean([case(p, s).brain.sum() for s in SEEDS[:4]]) for p in ("PED", "GLI")}
    assert volume["PED"] < 0.9 * volume["GLI"]


def test_sub_saharan_scans_are_noisier_than_adult_glioma_scans():
    gli = [noise_level(case("GLI", s)) for s in SEEDS]
    ssa = [noise_level(case("SSA", s)) for s in SEEDS]
    assert np.mean(ssa) > 1.2 * np.mean(gli)
    assert np.median(ssa) > np.max(gli) * 0.95


def test_glioma_edema_spreads_beyond_the_core():
    wt_over_tc = []
    for seed in SEEDS:
        c = case("GLI", seed)
        wt_over_tc.append((c.seg > 0).sum() / max(tumour_core(c).sum(), 1))
    assert np.median(wt_over_tc) > 1.4
