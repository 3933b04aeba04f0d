"""The vocabulary of brain-tumour segmentation, as data.

Modalities, labels, regions and tumour populations are named by their BraTS codes (BraTS 2023
conventions): modalities ``t1n t1c t2w t2f``, labels ``1 NCR/NETC, 2 ED/SNFH, 3 ET``, regions
``WT={1,2,3} TC={1,3} ET={3}`` and populations ``GLI PED SSA MEN MET``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Modality:
    """One MRI sequence.

    Attributes:
        code: BraTS 2023 file suffix (``t1n``...).
        title: what a radiologist calls it.
        brats2021: BraTS 2018-2022 file suffix (``t1``, ``t1ce``, ``t2``, ``flair``).
        aliases: other names accepted on the command line.
    """

    code: str
    title: str
    brats2021: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Label:
    """One value of a BraTS 2023 label map."""

    value: int
    code: str
    name: str
    description: str
    color: tuple[float, float, float]


@dataclass(frozen=True)
class Region:
    """An overlapping evaluation region: the union of some labels."""

    code: str
    name: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Population:
    """A BraTS 2023 tumour population and its lesion-wise metric parameters."""

    code: str
    name: str
    lesion_dilation: int
    lesion_volume_threshold_mm3: float


MODALITIES: tuple[Modality, ...] = (
    Modality("t1n", "T1", "t1", ("t1", "t1w", "t1n")),
    Modality("t1c", "T1 post-contrast", "t1ce", ("t1ce", "t1gd", "t1c")),
    Modality("t2w", "T2", "t2", ("t2", "t2w")),
    Modality("t2f", "FLAIR", "flair", ("flair", "t2flair", "t2f")),
)
MODALITY_CODES: tuple[str, ...] = tuple(m.code for m in MODALITIES)
# Which input is the geometric reference when several are given: the contrast-enhanced T1 first.
REFERENCE_ORDER: tuple[str, ...] = ("t1c", "t1n", "t2w", "t2f")

LABELS: tuple[Label, ...] = (
    Label(1, "NCR", "Necrosis", "NCR/NETC: necrotic and non-enhancing tumour core", (0.80, 0.20, 0.20)),
    Label(2, "ED", "Edema", "ED/SNFH: peritumoral edema / surrounding FLAIR hyperintensity", (0.98, 0.84, 0.25)),
    Label(3, "ET", "Enhancing tumour", "ET: enhancing tumour", (0.20, 0.55, 0.95)),
)
# BraTS 2018-2022 used 4 for enhancing tumour; 3 was unused.
BRATS2021_LABEL_MAP: dict[int, int] = {0: 0, 1: 1, 2: 2, 4: 3}

REGIONS: tuple[Region, ...] = (
    Region("WT", "Whole tumour", (1, 2, 3)),
    Region("TC", "Tumour core", (1, 3)),
    Region("ET", "Enhancing tumour", (3,)),
)
REGION_CODES: tuple[str, ...] = tuple(r.code for r in REGIONS)

POPULATIONS: tuple[Population, ...] = (
    Population("GLI", "Adult glioma", 3, 50.0),
    Population("PED", "Paediatric tumours", 3, 50.0),
    Population("SSA", "Sub-Saharan African glioma", 3, 50.0),
    Population("MEN", "Meningioma", 1, 50.0),
    Population("MET", "Brain metastases", 1, 2.0),
)
POPULATION_CODES: tuple[str, ...] = tuple(p.code for p in POPULATIONS)


def _unknown(kind: str, name: str, known: tuple[str, ...]) -> ValueError:
    near = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    return ValueError(f"Unknown {kind} '{name}'.{hint} Known: {', '.join(known)}.")


def modality(name: str) -> Modality:
    """Look a modality up by BraTS 2023 code or alias (case-insensitive)."""
    key = name.strip().lower()
    for m in MODALITIES:
        if key == m.code or key in m.aliases:
            return m
    known = MODALITY_CODES + tuple(a for m in MODALITIES for a in m.aliases if a not in MODALITY_CODES)
    raise _unknown("modality", name, known)


def population(code: str) -> Population:
    """Look a population up by its BraTS code (case-insensitive)."""
    key = code.strip().upper()
    for p in POPULATIONS:
        if p.code == key:
            return p
    raise _unknown("population", code, POPULATION_CODES)


def region(code: str) -> Region:
    key = code.strip().upper()
    for r in REGIONS:
        if r.code == key:
            return r
    raise _unknown("region", code, REGION_CODES)


def reference_modality(available: list[str] | tuple[str, ...] | set[str]) -> str:
    """The geometric reference among the given modalities: t1c, else t1n, else t2w, else t2f."""
    for code in REFERENCE_ORDER:
        if code in available:
            return code
    raise ValueError("No input volume was given; at least one of t1n, t1c, t2w, t2f is needed.")
