"""Matching a user's segments to BraTS labels, and painting the label map (hand-checkable arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from MTSSSegmenterLib.errors import InputError
from MTSSSegmenterLib.terminology import LABEL_SEGMENTS, REGION_SEGMENTS, SEGMENT_CODE_TAG, SEGMENT_KIND_TAG
from MTSSTrainingLib.segment_labels import SegmentInfo, assign, classify, code_from_name, compose

TISSUE = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue"
          "~^^~Anatomic codes - DICOM master list~^^~^^")


@pytest.mark.parametrize("name, expected", [
    ("Necrosis", ("label", "NCR")), ("necrotic core", ("label", "NCR")), ("NETC", ("label", "NCR")),
    ("Non-enhancing tumour", ("label", "NCR")), ("Edema", ("label", "ED")), ("peritumoral oedema", ("label", "ED")),
    ("SNFH", ("label", "ED")), ("Enhancing tumour", ("label", "ET")), ("ET", ("label", "ET")),
    ("Whole tumour (WT)", ("region", "WT")), ("Enhancing tumour region (ET)", ("region", "ET")),
    ("tumor core", ("region", "TC")), ("Segment_1", None), ("Brain", None),
])
def test_names(name, expected):
    assert code_from_name(name) == expected


def test_tags_then_terminology_then_name():
    spec = LABEL_SEGMENTS[1]  # Edema
    tagged = SegmentInfo("s1", "whatever", TISSUE, {SEGMENT_KIND_TAG: "label", SEGMENT_CODE_TAG: "NCR"})
    assert classify(tagged).code == "NCR" and classify(tagged).how == "tag"
    coded = SegmentInfo("s2", "Segment_2", spec.terminology)
    assert (classify(coded).code, classify(coded).how) == ("ED", "terminology")
    named = SegmentInfo("s3", "Enhancing", TISSUE)
    assert (classify(named).code, classify(named).how) == ("ET", "name")
    assert classify(SegmentInfo("s4", "Segment_4", TISSUE)) is None
    explicit = classify(SegmentInfo("s4", "Segment_4", TISSUE), {"Segment_4": 2})
    assert (explicit.code, explicit.value, explicit.how) == ("ED", 2, "explicit")


def test_label_segments_win_over_stale_regions_and_unknown_segments_are_noted():
    segs = [SegmentInfo(f"id{i}", s.name, s.terminology, {SEGMENT_KIND_TAG: s.kind, SEGMENT_CODE_TAG: s.code})
            for i, s in enumerate(LABEL_SEGMENTS + REGION_SEGMENTS)] + [SegmentInfo("x", "Skull", TISSUE)]
    used, notes = assign(segs)
    assert sorted(a.code for a in used) == ["ED", "ET", "NCR"] and all(a.kind == "label" for a in used)
    assert len(notes) == 4 and any("Skull" in n for n in notes)


def test_nothing_matched_or_bad_explicit_mapping():
    with pytest.raises(InputError, match="Segment_1"):
        assign([SegmentInfo("a", "Segment_1", TISSUE)])
    with pytest.raises(InputError, match="not in the segmentation"):
        assign([SegmentInfo("a", "Edema")], {"Oedema": 2})
    with pytest.raises(InputError, match="not a BraTS label"):
        assign([SegmentInfo("a", "Segment_1")], {"Segment_1": 4})


def test_paint_from_outside_in():
    shape = (1, 1, 6)
    wt = np.array([[[0, 1, 1, 1, 1, 0]]], bool)
    tc = np.array([[[0, 0, 1, 1, 0, 0]]], bool)
    et = np.array([[[0, 0, 0, 1, 0, 0]]], bool)
    regions, _ = assign([SegmentInfo("w", "Whole tumour"), SegmentInfo("t", "Tumour core"),
                         SegmentInfo("e", "Enhancing tumour region (ET)")])
    assert {a.kind for a in regions} == {"region"}
    assert compose({"w": wt, "t": tc, "e": et}, regions).tolist() == [[[0, 2, 1, 3, 2, 0]]]
    # overlapping label segments: enhancing beats necrosis beats edema
    labels, _ = assign([SegmentInfo("n", "Necrosis"), SegmentInfo("d", "Edema"), SegmentInfo("e", "ET")])
    painted = compose({"d": wt, "n": tc, "e": et}, labels)
    assert painted.shape == shape and painted.tolist() == [[[0, 2, 1, 3, 2, 0]]]
