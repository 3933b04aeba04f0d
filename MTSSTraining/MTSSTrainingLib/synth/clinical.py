"""A synthetic case as a scanner gives it (issue 8): ``generate_clinical_case(population, seed, spacing)``.

The aligned, skull-stripped case of :func:`generate_case` is drawn first; :func:`acquire` then turns it into
a clinical study with :func:`MTSSTrainingLib.clinical_acquisition.clinical_acquisition`: every series on
its own oblique 2-6 mm grid, moved by a small rigid head motion, with a bias field and scanner-like int16
intensities, and with probability ``skull_prob`` the skull and scalp of :func:`synthetic_head` around
the case's brain. The label map lies on the t1c series' grid. The aligned case is kept, for scoring.

Geometry is in ITK/DICOM physical space (LPS mm), as SimpleITK reads the files. A series' recorded
transform maps aligned points to series points: the head sits at ``T(p)`` in the series where it sat at
``p`` in the aligned case (rebuild it with
:func:`~MTSSTrainingLib.clinical_acquisition.transform_from_params`).

The acquisition's random draws come from ``(seed, population)`` alone, on streams separate from the
aligned case's: the same seed gives the same study, and whether a case has a skull does not depend on the
spacing (and stays on when ``skull_prob`` is raised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from MTSSSegmenterLib.constants import MODALITY_CODES, POPULATION_CODES
from MTSSSegmenterLib.errors import InputError
from MTSSSegmenterLib.io import image_from_nifti_array

from .case import SynthCase, check_population, check_seed, generate_case

COORDINATES = "LPS mm (ITK/DICOM physical space, as SimpleITK reads the files)"
TRANSFORM_RULE = ("aligned -> series: the head at point p of the aligned case sits at T(p) in the series; "
                  "T = Euler3DTransform(center_mm, euler_parameters = [rx, ry, rz (rad), tx, ty, tz (mm)])")


@dataclass
class ClinicalCase:
    """A synthetic clinical study and the aligned case it was drawn from.

    Attributes:
        series: modality code -> int16 SimpleITK image, each on its own (oblique, thick-slice) grid.
        seg: uint8 label map (BraTS 2023 labels) on the t1c series' grid.
        aligned: the aligned, skull-stripped BraTS-like case (the reference for scoring).
        acquisition: the drawn parameters (JSON-serialisable): skull yes/no, and per series the rigid
            transform, grid (spacing, direction, size, origin), slice axis, tilt, bias strength and
            intensity scale.
    """

    series: dict[str, sitk.Image]
    seg: sitk.Image
    aligned: SynthCase
    acquisition: dict[str, Any] = field(default_factory=dict)

    @property
    def meta(self) -> dict[str, Any]:
        """The aligned case's metadata with the acquisition added under ``"acquisition"``."""
        return {**self.aligned.meta, "acquisition": self.acquisition}


def check_probability(p: float, what: str = "skull probability") -> float:
    """Validate a probability in [0, 1]."""
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise InputError(f"The {what} '{p}' is not a number; give a value from 0 to 1, e.g. 0.5.") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InputError(f"The {what} {p} is out of range; give a value from 0 to 1, e.g. 0.5.")
    return value


def acquisition_rngs(population: str, seed: int) -> tuple[np.random.Generator, ...]:
    """The skull-decision, head-shape and acquisition generators of a case (independent of the spacing)."""
    ss = np.random.SeedSequence([check_seed(seed), POPULATION_CODES.index(population), 0xC11A])
    return tuple(np.random.default_rng(s) for s in ss.spawn(3))


def _brain_mask(case: SynthCase) -> sitk.Image:
    """The case's brain mask, cropped to its bounding box (``synthetic_head`` pads it by 30 mm)."""
    brain = case.brain
    if not brain.any():
        raise InputError(f"Case {case.meta.get('population')} seed {case.meta.get('seed')} has an empty brain; "
                         "cannot grow a skull around it.")
    box = [np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    mask = image_from_nifti_array(brain.astype(np.uint8), case.affine)
    return mask[int(box[0][0]):int(box[0][-1]) + 1, int(box[1][0]):int(box[1][-1]) + 1,
                int(box[2][0]):int(box[2][-1]) + 1]


def acquire(case: SynthCase, skull_prob: float = 0.5) -> ClinicalCase:
    """Draw a clinical acquisition of an aligned synthetic case.

    Args:
        case: an aligned case from :func:`generate_case` (its metadata name the population and seed, from
            which the acquisition's random draws are derived).
        skull_prob: probability that the series show the skull and scalp.

    Raises:
        InputError: for a probability outside [0, 1].
    """
    from MTSSTrainingLib.clinical_acquisition import clinical_acquisition, synthetic_head

    skull_prob = check_probability(skull_prob)
    code = check_population(case.meta["population"])
    r_skull, r_head, r_acq = acquisition_rngs(code, case.meta["seed"])
    with_skull = bool(r_skull.random() < skull_prob)
    images = {m: image_from_nifti_array(case.images[m], case.affine) for m in MODALITY_CODES}
    seg = image_from_nifti_array(case.seg, case.affine)
    head = synthetic_head(_brain_mask(case), r_head) if with_skull else None
    series, seg_t1c, params = clinical_acquisition(images, seg, r_acq, skull=head)
    for m, img in series.items():
        params["series"][m]["size"] = [int(n) for n in img.GetSize()]
        params["series"][m]["origin_mm"] = [round(float(v), 4) for v in img.GetOrigin()]
    acquisition = {**params, "skull": with_skull, "skull_prob": skull_prob, "coordinates": COORDINATES,
                   "transform": TRANSFORM_RULE}
    return ClinicalCase(series, seg_t1c, case, acquisition)


def generate_clinical_case(population: str, seed: int, spacing: float = 1.0,
                           skull_prob: float = 0.5) -> ClinicalCase:
    """Generate one synthetic case as a clinical study (own grid per series, head motion, maybe a skull).

    Args:
        population: BraTS population code (GLI, PED, SSA, MEN, MET), case-insensitive.
        seed: non-negative integer; the same arguments give identical images.
        spacing: voxel size in mm of the aligned case (the 240x240x155 mm BraTS frame); the series' own
            grids have 2-6 mm slices whatever it is.
        skull_prob: probability that the series show the skull and scalp.

    Raises:
        InputError: for an unknown population, a negative seed, a spacing or probability out of range.
    """
    skull_prob = check_probability(skull_prob)
    return acquire(generate_case(population, seed, spacing), skull_prob)
