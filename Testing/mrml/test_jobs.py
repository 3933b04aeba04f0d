"""The background job as the widget sees it: polling, cancelling, a broken engine.

Model: the UNTRAINED ``tiny_bundle`` of Testing/conftest.py (plumbing only).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from MTSSSegmenterLib.errors import Cancelled, MTSSError
from MTSSSegmenterLib.logic import MTSSSegmenterLogic
from MTSSSegmenterLib.worker import _process_exists


def _poll_until(job, done, timeout=120.0):
    states = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state, progress, message = job.poll(0.05)
        states.append((state, progress, message))
        if done(state):
            return states
    raise AssertionError(f"job did not reach the expected state; last: {states[-1:]}")


def test_polling_a_job_reports_states_then_gives_the_node(mrml, case_nodes, tiny_bundle, warm_logic):
    job = warm_logic.process(case_nodes, modelPath=str(tiny_bundle), device="cpu", waitForCompletion=False)
    with pytest.raises(RuntimeError, match="still"):
        job.result()
    states = _poll_until(job, lambda s: s in ("done", "failed", "cancelled"))
    assert states[-1][0] == "done", job.error
    assert "importing" in {s for s, _, _ in states}  # the GUI gets to show "Importing segments..."
    node = job.result()
    assert node.IsA("vtkMRMLSegmentationNode") and node.GetScene() is mrml.scene
    assert not job.folder.exists()  # temporary files are gone


def test_cancel_ends_the_process_tree_and_leaves_the_scene_as_it_was(mrml, case_nodes, tiny_bundle):
    logic = MTSSSegmenterLogic()
    before = mrml.node_ids()
    try:
        # 1. cancel while the engine is still starting
        job = logic.process(case_nodes, modelPath=str(tiny_bundle), device="cpu", waitForCompletion=False)
        pid = job.client.pid
        assert _process_exists(pid)
        job.cancel()
        assert job.state == "cancelled" and job.finished
        assert not _process_exists(pid)
        assert not job.folder.exists()
        with pytest.raises(Cancelled):
            job.result()
        assert mrml.node_ids() == before

        # 2. cancel from the progress callback of a blocking call, once the engine works on the request
        def cancel_when_running(state, progress, message):
            if state == "running":
                raise Cancelled("user pressed Cancel")

        with pytest.raises(Cancelled):
            logic.process(case_nodes, modelPath=str(tiny_bundle), device="cpu", progressCallback=cancel_when_running)
        assert logic.workerPid is None
        assert mrml.node_ids() == before

        # 3. and the next click works again (a fresh engine)
        node = logic.process({"t1c": case_nodes["t1c"]}, modelPath=str(tiny_bundle), device="cpu")
        assert node.GetSegmentation().GetNumberOfSegments() == 3
    finally:
        logic.shutdown()


def test_a_broken_torch_gives_a_message_that_says_what_to_do(mrml, case_nodes, tmp_path):
    fake = tmp_path / "fake_site"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('simulated broken torch build')\n")
    logic = MTSSSegmenterLogic(workerEnvironment={"PYTHONPATH": str(fake) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    before = mrml.node_ids()
    try:
        with pytest.raises(MTSSError, match="PyTorch") as info:
            logic.process({"t1c": case_nodes["t1c"]}, device="cpu")
        assert "simulated broken torch build" in str(info.value)
        assert mrml.node_ids() == before
        assert logic.workerPid is None
    finally:
        logic.shutdown()


def test_one_job_at_a_time(mrml, case_nodes, tiny_bundle, warm_logic):
    job = warm_logic.process({"t2f": case_nodes["t2f"]}, modelPath=str(tiny_bundle), device="cpu", waitForCompletion=False)
    try:
        with pytest.raises(MTSSError, match="already running"):
            warm_logic.process({"t2f": case_nodes["t2f"]}, modelPath=str(tiny_bundle), device="cpu")
    finally:
        _poll_until(job, lambda s: s in ("done", "failed", "cancelled"))
    assert job.state == "done"
    assert isinstance(job.folder, Path)
