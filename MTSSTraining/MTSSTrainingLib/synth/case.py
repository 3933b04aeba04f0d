"""One synthetic case in memory: ``generate_case(population, seed, spacing)``.

The pipeline is anatomy (template, per-case deformation, mass effect) -> lesions (shapes and labels) ->
contrasts (four sequences) -> acquisition. The acquisition here is the BraTS one: every sequence on the
same skull-stripped 1 mm-frame grid. A clinical acquisition of the case (own grid per series, head
motion, maybe a skull; issue 8) is drawn from it by :func:`.clinical.acquire`, or in one step by
:func:`.clinical.generate_clinical_case`.

Random draws come from three streams spawned from ``(seed, population)``: parameters (anatomy, lesions,
contrast), smooth fields on grids fixed in mm, and voxel noise. Only the last depends on the spacing, so
a case keeps its anatomy and lesions at every ``spacing``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from MTSSSegmenterLib.constants import LABELS, MODALITY_CODES, POPULATION_CODES, REGIONS
from MTSSSegmenterLib.errors import InputError

from . import anatomy, contrasts, tumours
from .populations import traits as population_traits

logger = logging.getLogger(__name__)

MIN_SPACING, MAX_SPACING = 0.5, 8.0


@dataclass
class SynthCase:
    """A synthetic case.

    Attributes:
        images: modality code -> float32 array (X, Y, Z) in the case's voxel order (LPS, like BraTS files),
            integer-valued, zero outside the brain.
        seg: uint8 label map (X, Y, Z), BraTS 2023 labels 0, 1 NCR/NETC, 2 ED/SNFH, 3 ET.
        affine: 4x4 RAS voxel-to-world matrix (the BraTS 2023 header at 1 mm).
        meta: population, seed, spacing, lesion count, label volumes (mm3) and imaging parameters.
    """

    images: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def brain(self) -> np.ndarray:
        """Boolean brain mask (where the images are non-zero)."""
        return next(iter(self.images.values())) > 0


def check_spacing(spacing: float) -> float:
    """Validate an output spacing in mm."""
    try:
        value = float(spacing)
    except (TypeError, ValueError):
        raise InputError(f"Spacing '{spacing}' is not a number; give millimetres, e.g. 1 or 2.") from None
    if not math.isfinite(value) or not MIN_SPACING <= value <= MAX_SPACING:
        raise InputError(f"Spacing {spacing} mm is out of range; use {MIN_SPACING} to {MAX_SPACING} mm "
                         "(1 for BraTS geometry, 2-4 for fast tests).")
    return value


def check_population(code: str) -> str:
    """The canonical BraTS code of a population, or an InputError naming the near match."""
    try:
        return population_traits(code).code
    except ValueError as exc:
        raise InputError(str(exc)) from None


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"Seed {seed!r} is not a non-negative integer.")
    return int(seed)


def case_rngs(population: str, seed: int) -> tuple[np.random.Generator, ...]:
    """The parameter, field and noise generators of a case."""
    ss = np.random.SeedSequence([check_seed(seed), POPULATION_CODES.index(population), 0x5EED])
    return tuple(np.random.default_rng(s) for s in ss.spawn(3))


def generate_case(population: str, seed: int, spacing: float = 1.0) -> SynthCase:
    """Generate one synthetic BraTS-like case in memory.

    Args:
        population: BraTS population code (GLI, PED, SSA, MEN, MET), case-insensitive.
        seed: non-negative integer; the same (population, seed, spacing) gives identical arrays.
        spacing: voxel size in mm of the 240x240x155 mm BraTS frame (1 = BraTS geometry).

    Returns:
        The aligned case, with float32 images, a uint8 label map, its affine and metadata (for the same
        case as a clinical study, see :func:`.clinical.generate_clinical_case`).

    Raises:
        InputError: for an unknown population, a negative seed or a spacing out of range.
    """
    code = check_population(population)
    spacing = check_spacing(spacing)
    traits = population_traits(code)
    r_params, r_fields, r_noise = case_rngs(code, seed)
    template = anatomy.load_template()
    params = anatomy.sample_anatomy(r_params, traits.brain_scale, traits.atrophy, traits.ventricle_mm)
    lesions = tumours.sample_lesions(r_params, traits, template, params)
    imaging = contrasts.sample_imaging(r_params, traits)
    src = anatomy.backward_map(params, template, tumours.mass_effect(lesions, params.grid))
    grid = anatomy.OutputGrid(spacing)
    lo, hi = anatomy.brain_box(params, template, src, grid.axes)
    tissues = anatomy.warp(template, params, src, grid.axes, lo, hi)
    tumour = tumours.render_lesions(lesions, template, params, src, tissues)
    t = tissues.maps
    brain = (t["gm"] + t["wm"] + t["csf"] + tumour.maps["core"]) >= 0.5
    tissues, sl = tissues.crop(brain)
    tumour = tumours.TumourMaps({k: np.ascontiguousarray(v[sl]) for k, v in tumour.maps.items()})
    brain = brain[sl]
    seg_box = tumours.labels(tumour, tissues, brain)
    img_box = contrasts.render(tissues, tumour, brain, imaging, r_fields, r_noise)
    shape = grid.shape
    seg = np.zeros(shape, np.uint8)
    seg[tissues.slices] = seg_box
    images = {}
    for mod in MODALITY_CODES:
        full = np.zeros(shape, np.float32)
        full[tissues.slices] = img_box[mod]
        images[mod] = full
    meta = _metadata(code, seed, spacing, shape, seg_box, lesions, params, imaging)
    return SynthCase(images, seg, grid.affine, meta)


def count_lesions(seg: np.ndarray) -> int:
    """Number of 26-connected tumour-core (labels 1 and 3) components."""
    core = (seg == 1) | (seg == 3)
    return int(ndimage.label(core, structure=np.ones((3, 3, 3), bool))[1])


def _metadata(code: str, seed: int, spacing: float, shape: tuple[int, ...], seg: np.ndarray,
              lesions: list[tumours.Lesion], params: anatomy.AnatomyParams,
              imaging: dict[str, contrasts.SequenceParams]) -> dict:
    voxel = spacing**3
    counts = [int(np.count_nonzero(seg == v)) for v in range(4)]
    volumes = {lab.code: round(float(counts[lab.value]) * voxel, 1) for lab in LABELS}
    regions = {r.code: round(float(sum(counts[v] for v in r.labels)) * voxel, 1) for r in REGIONS}
    return {
        "population": code, "seed": int(seed), "spacing_mm": spacing, "shape": list(shape),
        "lesion_count": count_lesions(seg), "lesions_placed": len(lesions),
        "label_volumes_mm3": volumes, "region_volumes_mm3": regions,
        "lesions": [les.summary() for les in lesions], "anatomy": params.summary(),
        "imaging": {k: p.summary() for k, p in imaging.items()},
    }
