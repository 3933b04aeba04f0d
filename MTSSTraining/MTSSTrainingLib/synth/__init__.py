"""Synthetic five-population BraTS-like cohorts on real brain anatomy (``mtss synth``).

In memory, for training without files::

    from MTSSTrainingLib.synth import generate_case
    case = generate_case("GLI", seed=7, spacing=2.0)
    case.images["t2f"], case.seg, case.affine, case.meta

    study = generate_clinical_case("GLI", seed=7, spacing=2.0, skull_prob=0.5)
    study.series["t1c"], study.seg, study.aligned, study.acquisition   # SimpleITK images on own grids

On disk, in the BraTS 2023 layout: ``write_cohort(out_dir, cases=N, populations=..., seed=S)`` or
``mtss synth OUT_DIR --cases N``. Modules: ``anatomy`` (MNI152 templates, per-case deformation),
``tumours`` (lesion shapes, labels, mass effect), ``populations`` (traits as data), ``contrasts`` (the
four sequences), ``case`` (one case), ``clinical`` (the case as a scanner gives it), ``cohort`` (many, in
parallel), ``preview`` (contact sheets).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .case import SynthCase, count_lesions, generate_case  # noqa: F401
    from .clinical import ClinicalCase, generate_clinical_case  # noqa: F401
    from .cohort import iter_cases, write_cohort  # noqa: F401
    from .populations import LESION_KINDS, POPULATION_TRAITS, traits  # noqa: F401

# Imported on first use, so that ``mtss --help`` (which imports ``synth.command``) stays light.
_EXPORTS = {"SynthCase": "case", "generate_case": "case", "count_lesions": "case", "ClinicalCase": "clinical",
            "generate_clinical_case": "clinical", "iter_cases": "cohort",
            "write_cohort": "cohort", "LESION_KINDS": "populations", "POPULATION_TRAITS": "populations",
            "traits": "populations"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
