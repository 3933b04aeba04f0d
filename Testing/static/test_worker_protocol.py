"""The worker's line protocol and option hooks, and the segment terminology data (pure Python)."""

from __future__ import annotations

import json

import pytest

from MTSSSegmenterLib import terminology as term
from MTSSSegmenterLib.worker import PREFIX, EventWriter, parse_line, split_options


def test_events_round_trip_and_stray_output_becomes_log_text(tmp_path):
    path = tmp_path / "out.txt"
    with open(path, "w", encoding="utf-8") as stream:
        EventWriter(stream)("progress", id="7", stage="segmenting", fraction=0.5)
        stream.write("some library printed this\n")
    first, second = path.read_text(encoding="utf-8").splitlines()
    assert first.startswith(PREFIX)
    assert parse_line(first) == {"event": "progress", "id": "7", "stage": "segmenting", "fraction": 0.5}
    assert parse_line(second) == {"event": "log", "level": "info", "message": "some library printed this"}
    assert parse_line(PREFIX + "{not json")["event"] == "log"
    assert parse_line(PREFIX + json.dumps({"no": "event"}))["event"] == "log"


def test_options_the_pipeline_does_not_know_are_dropped_with_a_warning_only_when_asked_for():
    accepted, warnings = split_options({"register": False, "brain_mask": True, "tta": True}, {"tta": False})
    assert accepted == {"tta": True}
    assert len(warnings) == 1 and "brain_mask=True" in warnings[0]
    assert split_options({}, None) == ({}, [])


def test_terminology_strings_have_slicer_5_layout_and_parse_back():
    for spec in term.segment_specs(show_regions=True):
        parts = term.parse_terminology(spec.terminology)
        assert parts["context"] == "Segmentation category and type - DICOM master list"
        assert parts["category"] == term.MORPHOLOGICALLY_ALTERED_STRUCTURE
        assert parts["type"] == spec.type
        assert parts["region"] == term.BRAIN
        assert spec.terminology.count("~") == 6
    with pytest.raises(ValueError, match="7"):
        term.parse_terminology("a~b")


def test_segments_have_distinct_colours_and_unique_ids():
    specs = term.segment_specs(show_regions=True)
    assert len({s.color for s in specs}) == len(specs)
    assert len({s.segment_id for s in specs}) == len(specs)
    assert [s.code for s in term.LABEL_SEGMENTS] == ["NCR", "ED", "ET"]
    assert [s.labels for s in term.REGION_SEGMENTS] == [(1, 2, 3), (1, 3), (3,)]
    assert term.segment_specs() == term.LABEL_SEGMENTS
