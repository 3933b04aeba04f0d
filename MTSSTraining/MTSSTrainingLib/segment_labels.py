"""Which BraTS label each segment of a user's segmentation stands for, and the label map they make.

A radiologist's segmentation (an MTSS result edited in the Segment Editor, or one drawn from scratch) has
segments with names, DICOM terminology and, when MTSS made them, tags. Each segment is matched to a BraTS
2023 label (1 NCR/NETC, 2 ED/SNFH, 3 ET) or to an overlapping region (WT, TC, ET), in this order:

1. an explicit mapping given by the caller (``{"segment name or ID": 1 | "NCR" | "edema"}``);
2. the MTSS tags (:data:`MTSSSegmenterLib.terminology.SEGMENT_KIND_TAG`, ``SEGMENT_CODE_TAG``);
3. the terminology's segmented property type (SCT 6574001 Necrosis, SCT 79654002 Edema, NCIt C113842
   Enhancing Lesion: DICOM PS3.16 CID 7168);
4. the name (``Necrosis``, ``necrotic core``, ``NETC``, ``Edema``/``oedema``/``SNFH``, ``Enhancing tumour``,
   ``ET``, ``Whole tumour``/``WT``, ``Tumour core``/``TC``; "non-enhancing" counts as NCR).

The label map is painted from the outside in (edema or WT as 2, then necrosis or TC as 1, then enhancing
as 3), so nested regions WT ⊇ TC ⊇ ET give exactly the BraTS labels, and where label segments overlap the
more specific one wins. When a segmentation has both label segments and region segments (MTSS with
"show regions"), only the label segments are used: the regions were derived from them and are stale after
an edit. Pure Python and numpy; the MRML side is in :mod:`MTSSTrainingLib.logic`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from MTSSSegmenterLib.constants import LABELS
from MTSSSegmenterLib.errors import InputError
from MTSSSegmenterLib.terminology import SEGMENT_CODE_TAG, SEGMENT_KIND_TAG, parse_terminology

# label value painted for each code, and the painting level (outer first)
_PAINT: dict[tuple[str, str], tuple[int, int]] = {
    ("label", "ED"): (2, 0), ("region", "WT"): (2, 0),
    ("label", "NCR"): (1, 1), ("region", "TC"): (1, 1),
    ("label", "ET"): (3, 2), ("region", "ET"): (3, 2),
}
_TYPE_CODES = {"6574001": "NCR", "79654002": "ED", "C113842": "ET"}
_LABEL_BY_VALUE = {lab.value: lab.code for lab in LABELS}


@dataclass(frozen=True)
class SegmentInfo:
    """What the matching looks at: a segment's ID, name, terminology string and tags."""

    segment_id: str
    name: str
    terminology: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Assignment:
    """A segment matched to a label (``kind="label"``, code NCR/ED/ET) or a region (WT/TC/ET)."""

    segment_id: str
    name: str
    kind: str
    code: str
    how: str  # explicit, tag, terminology, name

    @property
    def value(self) -> int:
        """The label value this segment paints."""
        return _PAINT[(self.kind, self.code)][0]

    @property
    def level(self) -> int:
        return _PAINT[(self.kind, self.code)][1]


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def code_from_name(name: str) -> tuple[str, str] | None:
    """``("label", "NCR")`` for "Necrosis", ``("region", "WT")`` for "Whole tumour (WT)"; None if unknown."""
    text = " ".join(_words(name))
    words = set(text.split())
    if re.search(r"\bnon ?enhanc", text) or words & {"ncr", "netc", "necrosis", "necrotic"} or "necro" in text:
        return "label", "NCR"
    if re.search(r"\bwhole tumou?r\b", text) or "wt" in words:
        return "region", "WT"
    if re.search(r"\btumou?r core\b", text) or "tc" in words:
        return "region", "TC"
    if words & {"ed", "snfh", "edema", "oedema", "peritumoral", "peritumoural"}:
        return "label", "ED"
    if "enhancing" in words or "enhancement" in words or "et" in words:
        return ("region" if "region" in words else "label"), "ET"
    return None


def _code_from_value(value: int | str, where: str) -> tuple[str, str]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if int(value) in _LABEL_BY_VALUE:
            return "label", _LABEL_BY_VALUE[int(value)]
        raise InputError(f"{where}: label {value} is not a BraTS label; use 1 (NCR), 2 (ED) or 3 (ET).")
    text = str(value).strip()
    upper = text.upper()
    if upper in {"NCR", "ED", "ET"}:
        return "label", upper
    if upper in {"WT", "TC"}:
        return "region", upper
    if text.isdigit():
        return _code_from_value(int(text), where)
    found = code_from_name(text)
    if found is None:
        raise InputError(f"{where}: {value!r} names no BraTS label; use 1/NCR/necrosis, 2/ED/edema, 3/ET/enhancing, "
                         "or the regions WT and TC.")
    return found


def classify(segment: SegmentInfo, explicit: Mapping[str, int | str] | None = None) -> Assignment | None:
    """The label or region a segment stands for (see the module docstring for the order), or None."""
    explicit = explicit or {}
    for key in (segment.segment_id, segment.name):
        if key in explicit:
            kind, code = _code_from_value(explicit[key], f"segmentLabels[{key!r}]")
            return Assignment(segment.segment_id, segment.name, kind, code, "explicit")
    kind, code = segment.tags.get(SEGMENT_KIND_TAG), segment.tags.get(SEGMENT_CODE_TAG)
    if (kind, code) in _PAINT:
        return Assignment(segment.segment_id, segment.name, str(kind), str(code), "tag")
    if segment.terminology:
        try:
            type_code = parse_terminology(segment.terminology)["type"]
        except ValueError:
            type_code = None
        value = getattr(type_code, "value", None)
        if value in _TYPE_CODES:
            return Assignment(segment.segment_id, segment.name, "label", _TYPE_CODES[value], "terminology")
    found = code_from_name(segment.name)
    if found is not None:
        return Assignment(segment.segment_id, segment.name, found[0], found[1], "name")
    return None


def assign(segments: Sequence[SegmentInfo], explicit: Mapping[str, int | str] | None = None
           ) -> tuple[list[Assignment], list[str]]:
    """Match every segment; returns ``(assignments used, notes on segments left out)``.

    Raises:
        InputError: no segment could be matched (the message lists the names and what is expected), or
            an explicit mapping names a segment that does not exist.
    """
    explicit = dict(explicit or {})
    known = {s.segment_id for s in segments} | {s.name for s in segments}
    missing = [k for k in explicit if k not in known]
    if missing:
        raise InputError(f"segmentLabels names segments that are not in the segmentation: {missing}; it has "
                         f"{', '.join(repr(s.name) for s in segments) or 'no segments'}.")
    found, notes = [], []
    for segment in segments:
        match = classify(segment, explicit)
        if match is None:
            notes.append(f"segment '{segment.name}' matches no BraTS label and was left out")
        else:
            found.append(match)
    if not found:
        names = ", ".join(repr(s.name) for s in segments) or "none"
        raise InputError(
            f"No segment of the segmentation could be matched to a tumour label (segments: {names}). Name them "
            "Necrosis, Edema and Enhancing tumour (or NCR, ED, ET; or WT/TC regions), or pass "
            "segmentLabels={'segment name': 1|2|3}.")
    if any(a.kind == "label" for a in found):
        regions = [a for a in found if a.kind == "region"]
        notes += [f"region segment '{a.name}' ({a.code}) was left out: the label segments define the labels"
                  for a in regions]
        found = [a for a in found if a.kind == "label"]
    return found, notes


def compose(masks: Mapping[str, np.ndarray], assignments: Sequence[Assignment]) -> np.ndarray:
    """The BraTS label map (uint8) painted from the segments' binary masks (all of one shape)."""
    if not assignments:
        raise InputError("No segment to paint.")
    shape = masks[assignments[0].segment_id].shape
    label = np.zeros(shape, dtype=np.uint8)
    for a in sorted(assignments, key=lambda a: a.level):
        mask = np.asarray(masks[a.segment_id]) > 0
        if mask.shape != shape:
            raise InputError(f"Segment '{a.name}' has shape {mask.shape}, the others {shape}.")
        label[mask] = a.value
    return label


__all__ = ["SegmentInfo", "Assignment", "classify", "assign", "compose", "code_from_name"]
