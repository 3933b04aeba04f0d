"""The clinical-MRI issue's 'done when', in a real MRML scene: the shipped clinical sample (the sample case as a
scanner gives it: skull and scalp on, each series on its own oblique 5 mm grid, moved by a small head motion)
is segmented by one ``process`` call with the default model, as the Segment button does.

Checked: the registrations come back as transform nodes that put each series where the known motions of
``acquisition.json`` say it belongs; the segmentation lies on the t1c series' grid; its whole tumour is within
15 % of the one from the aligned, skull-stripped sample and overlaps the drawn label map.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from MTSSSegmenterLib.bundle import find_bundle
from MTSSSegmenterLib.cli import CLINICAL_SAMPLE_DIR, SAMPLE_DIR
from MTSSSegmenterLib.logic import segmentationsLogicClass
from MTSSTrainingLib.clinical_acquisition import transform_from_params

from .conftest import segment_array

CODES = ("t1n", "t1c", "t2w", "t2f")
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def whole_tumour(node, reference) -> np.ndarray:
    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(3)]  # Necrosis, Edema, Enhancing tumour
    return segment_array(segmentationsLogicClass(), node, ids, reference) > 0


def voxel_ml(volume) -> float:
    return float(np.prod(volume.GetSpacing())) / 1000.0


@pytest.mark.slow
def test_clinical_sample_is_segmented_by_one_call(mrml, warm_logic):
    model = str(find_bundle())  # the default bundle is package data
    nodes = {code: mrml.load_volume(CLINICAL_SAMPLE_DIR / f"MTSS-clinical-{code}.nii.gz", f"clinical-{code}")
             for code in CODES}
    node = warm_logic.process(nodes, modelPath=model, device="cpu", applyTransforms=True)
    summary = warm_logic.lastSummary
    assert summary["reference"] == "t1c"
    assert summary["skull_detected"] is True

    # registrations: one transform node per moved series, each series under its node, and the node moves the
    # series' view of a brain point onto the reference's view of the same point
    motions = json.loads((CLINICAL_SAMPLE_DIR / "acquisition.json").read_text())["series"]
    ref_motion = transform_from_params(motions["t1c"])
    brain = sitk.ReadImage(str(SAMPLE_DIR / "MTSS-sample-t1c.nii.gz")) > 0
    idx = np.argwhere(sitk.GetArrayViewFromImage(brain))[::997]
    points = [brain.TransformIndexToPhysicalPoint([int(i) for i in z[::-1]]) for z in idx]  # aligned, LPS
    registered = summary["registration_transform_nodes"]
    assert sorted(registered) == ["t1n", "t2f", "t2w"]
    for code, node_id in registered.items():
        transform = mrml.scene.GetNodeByID(node_id)
        assert nodes[code].GetParentTransformNode() is transform
        m = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToParent(m)
        to_parent = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        motion = transform_from_params(motions[code])
        errors = []
        for p in points:
            seen = LPS_RAS @ np.array([*motion.TransformPoint(p), 1.0])  # where the series shows p (RAS)
            want = LPS_RAS @ np.array([*ref_motion.TransformPoint(p), 1.0])  # where the reference shows it
            errors.append(np.linalg.norm((to_parent @ seen - want)[:3]))
        assert max(errors) < 3.0, f"{code}: registration off by up to {max(errors):.1f} mm"

    # the segmentation on the t1c grid, against the aligned sample's and the drawn labels
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is nodes["t1c"]
    wt = whole_tumour(node, nodes["t1c"])
    assert wt.shape == nodes["t1c"].GetImageData().GetDimensions()[::-1]
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(CLINICAL_SAMPLE_DIR / "MTSS-clinical-seg.nii.gz"))) > 0
    dice = 2.0 * (wt & truth).sum() / (wt.sum() + truth.sum())
    assert dice > 0.7, f"whole-tumour Dice {dice:.3f} against the drawn label map"

    aligned = {code: mrml.load_volume(SAMPLE_DIR / f"MTSS-sample-{code}.nii.gz", f"sample-{code}") for code in CODES}
    node0 = warm_logic.process(aligned, modelPath=model, device="cpu")
    ml = wt.sum() * voxel_ml(nodes["t1c"])
    ml0 = whole_tumour(node0, aligned["t1c"]).sum() * voxel_ml(aligned["t1c"])
    assert ml0 > 10.0
    assert abs(ml / ml0 - 1.0) <= 0.15, f"whole tumour {ml:.1f} mL against {ml0:.1f} mL on the aligned sample"
