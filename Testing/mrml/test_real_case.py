"""The issue's 'done when': four real BraTS volume nodes, and T1c + FLAIR alone, become a segmentation node
with Necrosis / Edema / Enhancing tumour segments on the t1c grid, under slicer-core.

Uses the default bundle when one is installed (``find_bundle()``); otherwise the UNTRAINED ``tiny_bundle``
(then only the plumbing on real-sized, real-oriented data is checked, not the segmentation's quality).
"""

from __future__ import annotations

import numpy as np
import pytest
import vtk

from MTSSSegmenterLib.bundle import find_bundle
from MTSSSegmenterLib.errors import BundleError
from MTSSSegmenterLib.logic import segmentationsLogicClass
from Testing.conftest import REAL_CASE, requires_real

from .conftest import segment_array

CASE = REAL_CASE.name


@pytest.fixture
def model(tiny_bundle) -> str:
    try:
        return str(find_bundle())
    except BundleError:
        return str(tiny_bundle)


@pytest.mark.slow
@requires_real
@pytest.mark.parametrize("inputs", [("t1n", "t1c", "t2w", "t2f"), ("t1c", "t2f")])
def test_real_case_gives_segments_on_the_t1c_grid(mrml, warm_logic, model, inputs):
    nodes = {code: mrml.load_volume(REAL_CASE / f"{CASE}-{code}.nii.gz", f"{CASE}-{code}") for code in inputs}
    node = warm_logic.process(nodes, modelPath=model, device="cpu")
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["Necrosis", "Edema", "Enhancing tumour"]
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is nodes["t1c"]
    ids = [segmentation.GetNthSegmentID(i) for i in range(3)]
    labels = segment_array(segmentationsLogicClass(), node, ids, nodes["t1c"])
    assert labels.shape == (155, 240, 240)
    ref, seg = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    nodes["t1c"].GetIJKToRASMatrix(ref)
    for segment_id in ids:
        node.GetBinaryLabelmapInternalRepresentation(segment_id).GetImageToWorldMatrix(seg)
        assert all(seg.GetElement(r, c) == pytest.approx(ref.GetElement(r, c)) for r in range(4) for c in range(4))
    summary = warm_logic.lastSummary
    assert summary["reference"] == "t1c" and summary["inputs"] == list(inputs)
    assert np.count_nonzero(labels) * 1e-3 == pytest.approx(summary["volumes_ml"]["WT"], abs=1e-3)  # 1 mm voxels
