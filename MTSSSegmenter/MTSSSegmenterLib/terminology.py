"""Segment names, colours and DICOM/SNOMED terminology of the segments MTSS creates, as data.

Slicer stores a segment's terminology as one string (``vtkSegment.SetTerminology`` or the tag
``vtkSegment.GetTerminologyEntryTagName()``), the serialisation of ``vtkSlicerTerminologiesModuleLogic``
in Slicer 5.x::

    context~category~type~typeModifier~regionContext~region~regionModifier

where every coded entry is ``scheme^value^meaning`` and an empty entry is ``^^``. The codes follow DICOM
PS3.16 CID 7168 "Brain Lesion Segmentation Type With Necrosis" (Necrosis SCT 6574001, Edema SCT 79654002,
Enhancing Lesion NCIt C113842) inside the category "Morphologically Altered Structure" (SCT 49755003),
with the anatomic region Brain (SCT 12738006). The regions WT and TC have no code of their own and use
Neoplasm (SCT 108369006), told apart by their names. The generic "Neoplasm" entry (SCT 108369006) carries no
recommended display colour, so every segment here has an explicit, distinct colour.

This module is pure Python (no Slicer import) so that it is testable anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import LABELS, REGIONS

# Segment tags written on every segment MTSS makes; a re-run replaces exactly these.
GENERATED_TAG = "MTSS.generated"
SEGMENT_KIND_TAG = "MTSS.kind"  # "label" or "region"
SEGMENT_CODE_TAG = "MTSS.code"  # NCR, ED, ET, WT, TC

TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Code:
    """A DICOM coded entry: coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def serialize(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


EMPTY = Code("", "", "")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")
BRAIN = Code("SCT", "12738006", "Brain")
NECROSIS = Code("SCT", "6574001", "Necrosis")
EDEMA = Code("SCT", "79654002", "Edema")
ENHANCING_LESION = Code("NCIt", "C113842", "Enhancing Lesion")
NEOPLASM = Code("SCT", "108369006", "Neoplasm")


@dataclass(frozen=True)
class SegmentSpec:
    """One segment MTSS creates.

    Attributes:
        code: BraTS code (``NCR``, ``ED``, ``ET`` for labels; ``WT``, ``TC``, ``ET`` for regions).
        kind: ``label`` (one value of the label map) or ``region`` (an overlapping union of labels).
        segment_id: the segment ID MTSS asks for (made unique if the segmentation already uses it).
        name: the segment name shown to the user.
        color: RGB in 0..1.
        type: the DICOM "segmented property type".
        labels: the label values the segment covers.
    """

    code: str
    kind: str
    segment_id: str
    name: str
    color: tuple[float, float, float]
    type: Code
    labels: tuple[int, ...]

    @property
    def terminology(self) -> str:
        """The Slicer 5.x terminology string of this segment."""
        return terminology_string(self.type)


def terminology_string(type_code: Code, category: Code = MORPHOLOGICALLY_ALTERED_STRUCTURE,
                       region: Code = BRAIN, type_modifier: Code = EMPTY, region_modifier: Code = EMPTY) -> str:
    """Serialise a terminology entry the way ``vtkSlicerTerminologiesModuleLogic`` does in Slicer 5.x."""
    return "~".join([TERMINOLOGY_CONTEXT, category.serialize(), type_code.serialize(), type_modifier.serialize(),
                     ANATOMIC_CONTEXT, region.serialize(), region_modifier.serialize()])


def parse_terminology(text: str) -> dict[str, Code | str]:
    """Split a terminology string back into its parts (the inverse of :func:`terminology_string`)."""
    parts = text.split("~")
    if len(parts) != 7:
        raise ValueError(f"A terminology string has 7 '~'-separated parts; got {len(parts)} in {text!r}.")

    def code(s: str) -> Code:
        fields = s.split("^")
        if len(fields) != 3:
            raise ValueError(f"A coded entry has 3 '^'-separated fields; got {s!r}.")
        return Code(*fields)

    return {"context": parts[0], "category": code(parts[1]), "type": code(parts[2]),
            "type_modifier": code(parts[3]), "region_context": parts[4], "region": code(parts[5]),
            "region_modifier": code(parts[6])}


_LABEL_TYPES = {"NCR": NECROSIS, "ED": EDEMA, "ET": ENHANCING_LESION}
_LABEL_NAMES = {"NCR": "Necrosis", "ED": "Edema", "ET": "Enhancing tumour"}

LABEL_SEGMENTS: tuple[SegmentSpec, ...] = tuple(
    SegmentSpec(lab.code, "label", f"MTSS_{lab.code}", _LABEL_NAMES[lab.code], lab.color, _LABEL_TYPES[lab.code],
                (lab.value,))
    for lab in LABELS
)
"""Necrosis (label 1, NCR/NETC), Edema (label 2, ED/SNFH), Enhancing tumour (label 3, ET)."""

_REGION_STYLE = {
    "WT": ("Whole tumour (WT)", (0.55, 0.85, 0.35), NEOPLASM),
    "TC": ("Tumour core (TC)", (0.85, 0.45, 0.85), NEOPLASM),  # no standard code for "tumour core"
    "ET": ("Enhancing tumour region (ET)", (0.30, 0.85, 0.90), ENHANCING_LESION),
}

REGION_SEGMENTS: tuple[SegmentSpec, ...] = tuple(
    SegmentSpec(reg.code, "region", f"MTSS_region_{reg.code}", _REGION_STYLE[reg.code][0], _REGION_STYLE[reg.code][1],
                _REGION_STYLE[reg.code][2], reg.labels)
    for reg in REGIONS
)
"""The overlapping BraTS evaluation regions WT={1,2,3}, TC={1,3}, ET={3}, shown on request."""


def segment_specs(show_regions: bool = False) -> tuple[SegmentSpec, ...]:
    """The segments a run creates: the three labels, then the regions when asked for."""
    return LABEL_SEGMENTS + (REGION_SEGMENTS if show_regions else ())


__all__ = ["Code", "SegmentSpec", "LABEL_SEGMENTS", "REGION_SEGMENTS", "GENERATED_TAG", "SEGMENT_KIND_TAG",
           "SEGMENT_CODE_TAG", "segment_specs", "terminology_string", "parse_terminology"]
