"""Which options the worker passes to the pipeline (pure Python: a stand-in pipeline, no torch)."""

from __future__ import annotations

from types import SimpleNamespace

from MTSSSegmenterLib.worker import segment_options, split_options


def _segment(images, model=None, device="auto", progress=None, reference=None, register=None, n4=None,
             brain_mask_out=False, output_spacing=None, **options):
    """The signature of ``pipeline.segment``."""


def test_options_come_from_the_pipeline_signature():
    found = segment_options(SimpleNamespace(segment=_segment))
    assert found == {"register": None, "n4": None, "brain_mask_out": False, "output_spacing": None}


def test_the_gui_options_reach_the_pipeline_and_unknown_ones_are_reported():
    supported = segment_options(SimpleNamespace(segment=_segment))
    accepted, warnings = split_options({"register": False, "n4": True, "tta": True, "mirror": False}, supported)
    assert accepted == {"register": False, "n4": True}  # register=False is no longer dropped
    assert warnings == ["Option 'tta=True' is not available in this MTSS version; it was ignored."]
