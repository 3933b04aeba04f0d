"""The five BraTS 2023 tumour populations as data: lesion kinds, anatomy and imaging per population.

Each population draws its lesions from a few *kinds* (a glioblastoma, a lower-grade glioma, a pilocytic
astrocytoma...) with the frequencies the literature reports, in the anatomical regions each kind prefers,
and images them with the acquisition quality typical of where the data come from:

- GLI, adult glioma: mostly glioblastoma (necrotic core, thick enhancing rim, white-matter edema), a
  share of non-enhancing lower-grade gliomas (Louis et al., WHO CNS5, Neuro-Oncology 2021; Baid et al.,
  BraTS 2021, arXiv:2107.02314).
- PED, paediatric: diffuse midline gliomas of the pons and thalamus, cerebellar pilocytic astrocytomas
  (cyst and enhancing nodule) and medulloblastomas; little edema; smaller brains (Kazerooni et al.,
  BraTS-PEDs 2023, arXiv:2305.17033).
- SSA, sub-Saharan Africa: glioma pathology presenting larger, imaged on older low-field scanners: thick
  slices, noise, bias, ghosting, low contrast (Adewole et al., BraTS-Africa 2023, arXiv:2305.19369).
- MEN, meningioma: extra-axial dural-based masses at the convexity, falx and skull base, homogeneous
  strong enhancement, a CSF cleft, edema in half (LaBella et al., BraTS-MEN 2023, arXiv:2305.07642).
- MET, metastases: several round lesions at the grey-white junction, ring-enhancing when large, edema out
  of proportion (Moawad et al., BraTS-METS 2023, arXiv:2306.00838).

Ranges are ``(low, high)`` of uniform draws unless stated; radii in mm; contrasts relative to white matter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from MTSSSegmenterLib.constants import population as _lookup_population

Range = tuple[float, float]


@dataclass(frozen=True)
class LesionKind:
    """One kind of lesion: where it grows, its size and its inner structure.

    Attributes:
        name: identifier used in metadata.
        regions: template seed regions (``anatomy.load_template().seeds``) and their weights.
        radius: core radius (mm), drawn log-uniformly.
        irregularity: amplitude of the smooth noise added to the core's distance field (fraction of radius).
        necrosis: share of the core radius that is necrotic (0 = solid); drawn with ``necrosis_prob``.
        necrosis_prob: probability that the lesion has a necrotic centre at all.
        enhancing: share of the solid tumour that enhances.
        edema: reach of the edema beyond the core (mm) in white matter.
        edema_prob: probability that the lesion has edema at all.
        cyst_prob: probability of a cyst beside the solid part.
        push: mass effect as a fraction of the radius.
        extra_axial: dural-based (meningioma): grows from the brain surface inward.
    """

    name: str
    regions: tuple[tuple[str, float], ...]
    radius: Range
    irregularity: Range
    necrosis: Range = (0.0, 0.0)
    necrosis_prob: float = 0.0
    enhancing: Range = (1.0, 1.0)
    edema: Range = (0.0, 0.0)
    edema_prob: float = 1.0
    cyst_prob: float = 0.0
    push: Range = (0.1, 0.3)
    extra_axial: bool = False


@dataclass(frozen=True)
class ImagingTraits:
    """Acquisition quality of a population's scans (all per sequence, drawn independently).

    Attributes:
        noise: Rician noise sigma relative to white matter.
        bias: amplitude of the log bias field.
        slice_mm: slice thickness (mm) of 2-D sequences.
        inplane_blur: Gaussian blur sigma in plane (mm).
        ghost_prob: probability of motion ghosting per sequence.
        contrast: factor on every tissue contrast (1 = as drawn, lower = flatter images).
        volumetric_t1_prob: probability that T1 and T1c are 3-D (1 mm) acquisitions.
    """

    noise: Range = (0.01, 0.04)
    bias: Range = (0.04, 0.2)
    slice_mm: Range = (1.0, 5.0)
    inplane_blur: Range = (0.0, 0.5)
    ghost_prob: float = 0.05
    contrast: Range = (0.85, 1.1)
    volumetric_t1_prob: float = 0.6


@dataclass(frozen=True)
class PopulationTraits:
    """How one population's cases are drawn.

    Attributes:
        code: BraTS population code.
        kinds: lesion kinds (``LESION_KINDS``) and their weights.
        lesions: minimum and maximum number of lesions; counts above the minimum follow a geometric law
            with continuation probability ``more_lesions``.
        size_scale: factor on lesion radii (SSA presents larger).
        brain_scale: global scale of the brain (children's brains are smaller).
        atrophy: share of cortical grey matter next to CSF lost to CSF.
        ventricle_mm: enlargement of the ventricles.
        enhancement: T1c brightness of enhancing tumour relative to white matter.
        white_matter_spots: load (0-1) of small unlabelled FLAIR-bright white-matter spots (small-vessel
            disease of older brains), drawn uniformly in this range.
        imaging: acquisition quality.
    """

    code: str
    kinds: tuple[tuple[str, float], ...]
    lesions: tuple[int, int] = (1, 1)
    more_lesions: float = 0.0
    size_scale: Range = (1.0, 1.0)
    brain_scale: Range = (0.9, 1.02)
    atrophy: Range = (0.25, 0.6)
    ventricle_mm: Range = (0.5, 5.0)
    enhancement: Range = (1.5, 2.6)
    white_matter_spots: Range = (0.0, 1.0)
    imaging: ImagingTraits = field(default_factory=ImagingTraits)

    def to_dict(self) -> dict:
        return asdict(self)


LESION_KINDS: dict[str, LesionKind] = {k.name: k for k in (
    LesionKind("glioblastoma", (("deep_wm", 0.75), ("lobar_wm", 0.25)), radius=(10.0, 24.0),
               irregularity=(0.2, 0.45), necrosis=(0.5, 0.85), necrosis_prob=0.9, enhancing=(0.7, 1.0),
               edema=(5.0, 22.0), push=(0.15, 0.45)),
    LesionKind("lower_grade_glioma", (("lobar_wm", 0.6), ("hemisphere", 0.4)), radius=(12.0, 28.0),
               irregularity=(0.15, 0.35), necrosis=(0.2, 0.5), necrosis_prob=0.15, enhancing=(0.0, 0.15),
               edema=(3.0, 14.0), push=(0.1, 0.3)),
    LesionKind("diffuse_midline_glioma", (("brainstem", 0.7), ("thalamus", 0.3)), radius=(9.0, 18.0),
               irregularity=(0.1, 0.3), necrosis=(0.2, 0.5), necrosis_prob=0.2, enhancing=(0.0, 0.3),
               edema=(0.0, 5.0), push=(0.2, 0.4)),
    LesionKind("pilocytic_astrocytoma", (("cerebellum", 0.8), ("hemisphere", 0.2)), radius=(7.0, 16.0),
               irregularity=(0.1, 0.25), enhancing=(0.4, 0.95), edema=(0.0, 5.0), cyst_prob=0.85,
               push=(0.2, 0.45)),
    LesionKind("medulloblastoma", (("cerebellum", 1.0),), radius=(10.0, 22.0), irregularity=(0.15, 0.3),
               necrosis=(0.2, 0.45), necrosis_prob=0.3, enhancing=(0.2, 0.8), edema=(0.0, 6.0),
               cyst_prob=0.3, push=(0.2, 0.45)),
    LesionKind("paediatric_hemispheric", (("hemisphere", 1.0),), radius=(10.0, 24.0),
               irregularity=(0.2, 0.4), necrosis=(0.2, 0.6), necrosis_prob=0.4, enhancing=(0.1, 0.7),
               edema=(2.0, 14.0), cyst_prob=0.4, push=(0.15, 0.4)),
    LesionKind("meningioma", (("convexity", 0.5), ("parasagittal", 0.25), ("skull_base", 0.15),
                              ("posterior_fossa", 0.1)), radius=(8.0, 28.0), irregularity=(0.04, 0.12),
               necrosis=(0.2, 0.45), necrosis_prob=0.15, enhancing=(0.92, 1.0), edema=(4.0, 22.0), edema_prob=0.55,
               push=(0.3, 0.6), extra_axial=True),
    LesionKind("metastasis", (("gw_junction", 1.0),), radius=(2.5, 16.0), irregularity=(0.05, 0.2),
               necrosis=(0.35, 0.7), necrosis_prob=1.0, enhancing=(0.9, 1.0), edema=(4.0, 22.0),
               push=(0.1, 0.3)),
)}

POPULATION_TRAITS: dict[str, PopulationTraits] = {t.code: t for t in (
    PopulationTraits("GLI", (("glioblastoma", 0.8), ("lower_grade_glioma", 0.2))),
    PopulationTraits("PED", (("diffuse_midline_glioma", 0.4), ("pilocytic_astrocytoma", 0.25),
                             ("medulloblastoma", 0.2), ("paediatric_hemispheric", 0.15)),
                     brain_scale=(0.82, 0.95), atrophy=(0.1, 0.35), ventricle_mm=(0.0, 2.0),
                     enhancement=(1.2, 2.0), white_matter_spots=(0.0, 0.0)),
    PopulationTraits("SSA", (("glioblastoma", 0.85), ("lower_grade_glioma", 0.15)), size_scale=(1.05, 1.3),
                     imaging=ImagingTraits(noise=(0.045, 0.09), bias=(0.12, 0.3), slice_mm=(4.0, 7.0),
                                           inplane_blur=(0.4, 1.0), ghost_prob=0.4, contrast=(0.6, 0.85),
                                           volumetric_t1_prob=0.15)),
    PopulationTraits("MEN", (("meningioma", 1.0),), brain_scale=(0.88, 1.0), atrophy=(0.35, 0.65),
                     enhancement=(1.7, 2.8)),
    PopulationTraits("MET", (("metastasis", 1.0),), lesions=(2, 10), more_lesions=0.55, atrophy=(0.35, 0.65)),
)}


def traits(code: str) -> PopulationTraits:
    """The traits of a population, looked up by BraTS code (case-insensitive).

    Raises:
        ValueError: for an unknown code, naming the near match and the known codes.
    """
    return POPULATION_TRAITS[_lookup_population(code).code]


def _check() -> None:
    for t in POPULATION_TRAITS.values():
        for kind, weight in t.kinds:
            if kind not in LESION_KINDS or weight <= 0:
                raise ValueError(f"population {t.code}: lesion kind '{kind}' (weight {weight}) is not defined")
        if not 1 <= t.lesions[0] <= t.lesions[1]:
            raise ValueError(f"population {t.code}: lesion count range {t.lesions} is empty")


_check()
