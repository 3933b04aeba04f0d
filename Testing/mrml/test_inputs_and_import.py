"""Input checks and the label-map import, in a real slicer-core scene (no worker process needed).

``importLabelMap`` is what the logic does with the worker's result; here it gets label maps made by hand,
so every voxel can be checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from MTSSSegmenterLib import terminology as term
from MTSSSegmenterLib.errors import InputError, OutputError
from MTSSSegmenterLib.logic import MTSSSegmenterLogic, imageFromVolume, segmentationsLogicClass

from .conftest import DIRECTIONS, segment_array, synthetic_case, write_image

Logic = segmentationsLogicClass()


def _known_labels(shape) -> np.ndarray:
    """Asymmetric blobs of labels 1, 2, 3, so that any flip or permutation shows."""
    labels = np.zeros(shape, np.uint8)
    labels[4:9, 6:16, 3:7] = 2
    labels[5:8, 8:12, 4:6] = 1
    labels[20:23, 3:5, 10:20] = 3
    return labels


@pytest.mark.parametrize("geometry", ["axial", "oblique", "permuted"])
def test_import_puts_every_voxel_where_it_was(mrml, tmp_path, geometry):
    shape = (30, 26, 22)
    path = write_image(tmp_path / "ref.nrrd", synthetic_case(shape)["t1c"], spacing=(1.5, 2.0, 2.5),
                       origin=(12.0, -30.0, 40.0), direction=DIRECTIONS[geometry])
    reference = mrml.load_volume(path, "ref")
    label = sitk.GetImageFromArray(_known_labels(shape))
    label.CopyInformation(imageFromVolume(reference))  # the grid the worker writes on
    node = MTSSSegmenterLogic().importLabelMap(label, reference, showRegions=True)
    ids = MTSSSegmenterLogic.generatedSegmentIDs(node)
    assert len(ids) == 6
    np.testing.assert_array_equal(segment_array(Logic, node, ids[:3], reference), _known_labels(shape))
    wt = segment_array(Logic, node, [ids[3]], reference)
    np.testing.assert_array_equal(wt > 0, _known_labels(shape) > 0)
    # the imported labelmaps carry exactly the reference's IJK-to-RAS geometry
    ref = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(ref)
    for segment_id in ids:
        m = vtk.vtkMatrix4x4()
        node.GetBinaryLabelmapInternalRepresentation(segment_id).GetImageToWorldMatrix(m)
        for r in range(4):
            for c in range(4):
                assert m.GetElement(r, c) == pytest.approx(ref.GetElement(r, c), abs=1e-6)


def test_empty_labels_still_give_the_three_segments(mrml, tmp_path):
    reference = mrml.load_volume(write_image(tmp_path / "ref.nii.gz", synthetic_case((20, 20, 20))["t1c"]), "ref")
    label = sitk.Image(20, 20, 20, sitk.sitkUInt8)
    label.CopyInformation(imageFromVolume(reference))
    node = MTSSSegmenterLogic().importLabelMap(label, reference)
    names = [node.GetSegmentation().GetSegment(i).GetName() for i in MTSSSegmenterLogic.generatedSegmentIDs(node)]
    assert names == ["Necrosis", "Edema", "Enhancing tumour"]


def test_terminology_is_read_back_by_slicer(mrml):
    terminologies = mrml.logics["Terminologies"]
    for spec in term.segment_specs(show_regions=True):
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(spec.terminology, entry)
        assert entry.GetCategoryObject().GetCodeValue() == "49755003"
        assert entry.GetTypeObject().GetCodingSchemeDesignator() == spec.type.scheme
        assert entry.GetTypeObject().GetCodeValue() == spec.type.value
        assert entry.GetRegionObject().GetCodeMeaning() == "Brain"
        assert terminologies.SerializeTerminologyEntry(entry) == spec.terminology


def test_new_segmentation_goes_under_the_reference_study(mrml, tmp_path):
    reference = mrml.load_volume(write_image(tmp_path / "ref.nii.gz", synthetic_case((20, 20, 20))["t1c"]), "ref")
    sh = mrml.scene.GetSubjectHierarchyNode()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "MRI brain 2024")
    # Slicer's GUI gives every data node an item; the bare slicer-core scene does not, so make it here
    item = sh.GetItemByDataNode(reference) or sh.CreateItem(study, reference)
    sh.SetItemParent(item, study)
    label = sitk.Image(20, 20, 20, sitk.sitkUInt8)
    label.CopyInformation(imageFromVolume(reference))
    node = MTSSSegmenterLogic().importLabelMap(label, reference)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


@pytest.mark.parametrize("problem", ["grid", "values"])
def test_a_wrong_label_map_is_refused_and_nothing_is_added(mrml, tmp_path, problem):
    reference = mrml.load_volume(write_image(tmp_path / "ref.nii.gz", synthetic_case((20, 20, 20))["t1c"]), "ref")
    array = np.zeros((20, 20, 20), np.uint8)
    array[3, 3, 3] = 4 if problem == "values" else 1
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(imageFromVolume(reference))
    if problem == "grid":
        label.SetSpacing((2.0, 3.0, 3.0))
    before = mrml.node_ids()
    with pytest.raises(OutputError, match="grid" if problem == "grid" else "0..3"):
        MTSSSegmenterLogic().importLabelMap(label, reference)
    assert mrml.node_ids() == before


def _volume(mrml, tmp_path, name, shape=(24, 24, 24), origin=(-36.0, -36.0, -36.0)):
    return mrml.load_volume(write_image(tmp_path / f"{name}.nii.gz", synthetic_case(shape)["t1c"], origin=origin), name)


@pytest.mark.parametrize("case, message", [
    ("nothing", "No input volume was given"),
    ("all None", "No input volume was given"),
    ("2-D", r"is 2-D \(24x24x1\); a 3-D volume is needed"),
    ("no overlap", "do not overlap in physical space"),
    ("label map", "is a label map"),
    ("unknown modality", "Unknown modality 'pd'"),
    ("same modality twice", "Two volumes were given for 't1c'"),
])
def test_bad_inputs_are_refused_early_with_a_clear_message(mrml, tmp_path, case, message):
    t1c = _volume(mrml, tmp_path, "t1c")
    inputs = {
        "nothing": {},
        "all None": {"t1n": None, "t1c": None},
        "2-D": {"t1c": t1c, "t2f": _volume(mrml, tmp_path, "flat", shape=(1, 24, 24))},
        "no overlap": {"t1c": t1c, "t2f": _volume(mrml, tmp_path, "far", origin=(500.0, 0.0, 0.0))},
        "label map": {"t1c": mrml.logics["Volumes"].AddArchetypeVolume(str(tmp_path / "t1c.nii.gz"), "lab", 1)},
        "unknown modality": {"pd": t1c},
        "same modality twice": {"t1c": t1c, "t1ce": _volume(mrml, tmp_path, "other")},
    }[case]
    logic = MTSSSegmenterLogic()
    before = mrml.node_ids()
    with pytest.raises(InputError, match=message):
        logic.process(inputs, device="cpu")
    assert mrml.node_ids() == before
    assert logic.workerPid is None  # refused before any process was started
