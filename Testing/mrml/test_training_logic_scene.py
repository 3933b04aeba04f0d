"""addCasesFromScene on a real MRML scene (slicer-core): volumes loaded by Slicer's storage nodes, a
segmentation made by the segmenter's import (as after a run), written back as a BraTS 2023 case and read again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from MTSSSegmenterLib.errors import InputError, OutputError  # noqa: E402
from MTSSSegmenterLib.logic import MTSSSegmenterLogic, segmentationsLogicClass  # noqa: E402
from MTSSTrainingLib.data import discover  # noqa: E402
from MTSSTrainingLib.logic import MTSSTrainingLogic  # noqa: E402

OBLIQUE = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])  # 16 degrees about z


def make_case_files(folder: Path, shape_xyz=(30, 26, 22),
                    spacing=(2.0, 2.5, 3.0)) -> tuple[dict[str, Path], np.ndarray]:
    """Four oblique volumes on one grid and a nested label (kji order) with all three labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape_xyz[::-1]], indexing="ij")
    r = np.sqrt((x - 14) ** 2 + (y - 12) ** 2 + (z - 10) ** 2)
    label = np.select([r < 2.5, r < 4.5, r < 7.5], [3, 1, 2], 0).astype(np.uint8)
    files = {}
    for i, code in enumerate(("t1n", "t1c", "t2w", "t2f")):
        arr = (100 + 20 * rng.standard_normal(label.shape) + 30 * label).astype(np.int16)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        img.SetDirection(OBLIQUE.flatten().tolist())
        img.SetOrigin((12.5, -40.0, 7.25))
        files[code] = folder / f"src-{code}.nii.gz"
        sitk.WriteImage(img, str(files[code]))
    return files, label


@pytest.fixture
def scene_case(mrml, tmp_path):
    """A scene (with Slicer's module logics, see conftest.Mrml) holding the four volumes and an MTSS result."""
    files, label = make_case_files(tmp_path / "src")
    scene = mrml.scene
    volumes = {code: mrml.load_volume(path, f"patient {code}") for code, path in files.items()}
    ref_image = sitk.ReadImage(str(files["t1c"]))
    labelImage = sitk.GetImageFromArray(label)
    labelImage.CopyInformation(ref_image)
    seg = MTSSSegmenterLogic().importLabelMap(labelImage, volumes["t1c"], None, showRegions=True, modelName="test")
    return scene, volumes, seg, files, label


def segment_names(seg) -> list[str]:
    s = seg.GetSegmentation()
    return [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())]


def test_round_trip_keeps_geometry_voxels_names_and_labels(scene_case, tmp_path):
    scene, volumes, seg, files, label = scene_case
    nodes_before = scene.GetNumberOfNodes()
    case = MTSSTrainingLogic().addCasesFromScene(volumes, seg, "MEN", tmp_path / "data")
    assert case.name == "BraTS-MEN-00001-000"
    assert scene.GetNumberOfNodes() == nodes_before, "temporary export nodes were left in the scene"
    for code, src in files.items():
        written, original = sitk.ReadImage(str(case / f"{case.name}-{code}.nii.gz")), sitk.ReadImage(str(src))
        assert written.GetSize() == original.GetSize()
        np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-5)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original))
    written_seg = sitk.ReadImage(str(case / f"{case.name}-seg.nii.gz"))
    np.testing.assert_allclose(written_seg.GetDirection(), OBLIQUE.flatten(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written_seg), label)
    info = json.loads((case / "mtss-case.json").read_text())
    assert {s["name"]: s["label"] for s in info["segments"]} == {"Necrosis": 1, "Edema": 2, "Enhancing tumour": 3}
    assert len(info["notes"]) == 3  # the WT/TC/ET region segments were left out
    # back into a scene: the segmenter's import gives the same names and the same voxels
    again = MTSSSegmenterLogic().importLabelMap(written_seg, volumes["t1c"], None)
    assert segment_names(again) == ["Necrosis", "Edema", "Enhancing tumour"]
    # and the training data reader sees a MEN case with all three labelled regions
    index = discover(tmp_path / "data")
    assert [(c.name, c.population, c.labels) for c in index.cases] == [(case.name, "MEN", ("WT", "TC", "ET"))]


def test_user_named_segments_and_an_edit(scene_case, tmp_path):
    scene, volumes, _, files, label = scene_case
    edited = label.copy()
    edited[edited == 3] = 1  # the radiologist relabels the enhancing part as necrosis
    edited[0:3] = 2  # and paints some edema
    labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "edited")
    MTSSSegmenterLogic._setLabelImage(labelNode, edited)
    m = vtk.vtkMatrix4x4()
    volumes["t1c"].GetIJKToRASMatrix(m)
    labelNode.SetIJKToRASMatrix(m)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "hand made")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volumes["t1c"])
    assert segmentationsLogicClass().ImportLabelmapToSegmentationNode(labelNode, seg)
    s = seg.GetSegmentation()
    for i, name in enumerate(("necrotic core", "oedema")):  # Label_1, Label_2 from the import
        s.GetNthSegment(i).SetName(name)
    s.AddEmptySegment("extra", "Skull")
    s.AddEmptySegment("et", "Enhancing tumour")  # matched, but empty: the radiologist erased it all
    case = MTSSTrainingLogic().addCasesFromScene({"T1ce": volumes["t1c"], "flair": volumes["t2f"]}, seg, "GLI",
                                                 tmp_path / "data", caseName="patient-7")
    assert sorted(p.name for p in case.iterdir()) == ["mtss-case.json", "patient-7-seg.nii.gz",
                                                      "patient-7-t1c.nii.gz", "patient-7-t2f.nii.gz"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(case / "patient-7-seg.nii.gz"))), edited)
    info = json.loads((case / "mtss-case.json").read_text())
    assert {s["name"]: (s["label"], s["matched_by"]) for s in info["segments"]} == {
        "necrotic core": (1, "name"), "oedema": (2, "name"), "Enhancing tumour": (3, "name")}
    assert info["voxels"]["3"] == 0 and info["notes"] == ["segment 'Skull' matches no BraTS label and was left out"]
    cases = json.loads((tmp_path / "data" / "cohort.json").read_text())["cases"]
    assert [(c["case"], c["population"]) for c in cases] == [("patient-7", "GLI")]
    assert discover(tmp_path / "data").cases[0].population == "GLI"
    # written again under the same name for another population: one entry, the new population
    MTSSTrainingLogic().addCasesFromScene({"t1c": volumes["t1c"]}, seg, "MET", tmp_path / "data",
                                          caseName="patient-7", overwrite=True)
    cases = json.loads((tmp_path / "data" / "cohort.json").read_text())["cases"]
    assert [(c["case"], c["population"]) for c in cases] == [("patient-7", "MET")]
    assert discover(tmp_path / "data").cases[0].population == "MET"


def test_transformed_volume_is_written_in_world_geometry(scene_case, tmp_path):
    scene, volumes, seg, files, _ = scene_case
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 5.0)  # 5 mm towards R
    transform.SetMatrixTransformToParent(shift)
    volumes["t2w"].SetAndObserveTransformNodeID(transform.GetID())
    case = MTSSTrainingLogic().addCasesFromScene(volumes, seg, "GLI", tmp_path / "data")
    moved = sitk.ReadImage(str(case / f"{case.name}-t2w.nii.gz"))
    original = sitk.ReadImage(str(files["t2w"]))
    np.testing.assert_allclose(np.subtract(moved.GetOrigin(), original.GetOrigin()), [-5.0, 0, 0], atol=1e-4)  # LPS


def test_numbering_overwrite_and_bad_arguments(scene_case, tmp_path):
    scene, volumes, seg, _, _ = scene_case
    logic, data = MTSSTrainingLogic(), tmp_path / "data"
    first = logic.addCasesFromScene(volumes, seg, "PED", data)
    second = logic.addCasesFromScene(volumes, seg, "PED", data)
    assert (first.name, second.name) == ("BraTS-PED-00001-000", "BraTS-PED-00002-000")
    with pytest.raises(OutputError, match="exists already"):
        logic.addCasesFromScene(volumes, seg, "PED", data, caseName=first.name)
    assert logic.addCasesFromScene(volumes, seg, "PED", data, caseName=first.name, overwrite=True) == first
    with pytest.raises(InputError, match="Did you mean 'MET'"):
        logic.addCasesFromScene(volumes, seg, "MTE", data)
    with pytest.raises(InputError, match="names population GLI"):
        logic.addCasesFromScene(volumes, seg, "PED", data, caseName="BraTS-GLI-00003-000")
    with pytest.raises(InputError, match="No input volume"):
        logic.addCasesFromScene({}, seg, "PED", data)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(InputError, match="no segments"):
        logic.addCasesFromScene(volumes, empty, "PED", data)
    empty.GetSegmentation().AddEmptySegment("a", "Segment_1")
    with pytest.raises(InputError, match="Segment_1"):
        logic.addCasesFromScene(volumes, empty, "PED", data)
    assert sorted(p.name for p in data.iterdir()) == [first.name, second.name]  # nothing half-written
