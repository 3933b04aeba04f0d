"""Fixtures for the MRML tests: a real ``vtkMRMLScene`` from ``slicer-core`` with the module logics
registered the way Slicer registers them, volumes loaded from NIfTI through Slicer's storage nodes, small
synthetic cases, and a tiny model bundle.

The model used is ``tiny_bundle`` of Testing/conftest.py, with UNTRAINED weights: the tests that use it
check plumbing (files, processes, geometry, MRML import), never segmentation quality.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="the MRML tests need the slicer-core wheel (pip install slicer-core)")

from MTSSSegmenterLib.logic import MTSSSegmenterLogic  # noqa: E402

MODULE_LOGICS = (
    ("Colors", "vtkSlicerColorLogic"),
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Terminologies", "vtkSlicerTerminologiesModuleLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
)

# A plain axis-aligned grid, an oblique one, and one with permuted and flipped axes (LPS direction cosines).
_C, _S = np.cos(np.radians(20)), np.sin(np.radians(20))
DIRECTIONS = {
    "axial": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "oblique": (_C, -_S, 0, _S, _C, 0, 0, 0, 1),
    "permuted": (0, 0, 1, -1, 0, 0, 0, -1, 0),
}


class Mrml:
    """A scene with its application logic and module logics, as in Slicer."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.logics = {}
        for name, cls in MODULE_LOGICS:
            logic = getattr(slicer, cls)()
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(self.scene)
            self.app.SetModuleLogic(name, logic)
            self.logics[name] = logic
        self.app.SetColorLogic(self.logics["Colors"])

    def load_volume(self, path: str | Path, name: str):
        """Load a volume file through the Volumes logic and its archetype storage node."""
        node = self.logics["Volumes"].AddArchetypeVolume(str(path), name)
        assert node is not None, f"Slicer could not load {path}"
        return node

    def node_ids(self) -> list[str]:
        return [self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())]


@pytest.fixture
def mrml() -> Iterator[Mrml]:
    m = Mrml()
    yield m
    m.scene.Clear(1)


def synthetic_case(shape: tuple[int, int, int] = (48, 48, 48), seed: int = 0) -> dict[str, np.ndarray]:
    """Four (z, y, x) float32 volumes of a 'head' (ellipsoid) with a bright 'lesion', like MRI contrasts."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=np.float32)
    c = (np.array(shape) - 1) / 2.0
    radii = 0.42 * shape[0], 0.45 * shape[1], 0.40 * shape[2]
    head = ((z - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((x - c[2]) / radii[2]) ** 2 < 1
    lesion = (z - c[0] - 4) ** 2 + (y - c[1] + 3) ** 2 + (x - c[2] - 5) ** 2 < 36
    contrasts = {"t1n": (1.0, 0.7), "t1c": (1.0, 2.0), "t2w": (0.8, 1.6), "t2f": (0.7, 1.9)}
    out = {}
    for code, (tissue, tumour) in contrasts.items():
        a = np.where(head, tissue, 0.0) + np.where(lesion & head, tumour - tissue, 0.0)
        out[code] = (a * 100 + head * rng.normal(0, 3, shape)).astype(np.float32)
    return out


def write_image(path: Path, array: np.ndarray, spacing=(3.0, 3.0, 3.0), origin=(-70.0, -70.0, -70.0),
                direction=DIRECTIONS["axial"]) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def case_files(tmp_path: Path) -> dict[str, Path]:
    """The synthetic case as four NIfTI files, 48^3 at 3 mm, axis-aligned."""
    return {code: write_image(tmp_path / f"case-{code}.nii.gz", a) for code, a in synthetic_case().items()}


@pytest.fixture
def case_nodes(mrml: Mrml, case_files: dict[str, Path]) -> dict:
    return {code: mrml.load_volume(path, f"case-{code}") for code, path in case_files.items()}


@pytest.fixture(scope="session")
def warm_logic() -> Iterator[MTSSSegmenterLogic]:
    """One logic (one warm worker process) shared by the tests, as a Slicer session would."""
    logic = MTSSSegmenterLogic()
    yield logic
    logic.shutdown()


def segment_array(logic_cls, segmentation_node, segment_ids: list[str], reference) -> np.ndarray:
    """Export segments into a label map on ``reference``'s grid (label k = k-th ID) and return its voxels."""
    from vtk.util import numpy_support

    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__test_export__")
    try:
        ok = logic_cls.ExportSegmentsToLabelmapNode(segmentation_node, segment_ids, labelmap, reference)
        assert ok, "export failed"
        data = labelmap.GetImageData()
        return numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(data.GetDimensions()[::-1]).copy()
    finally:
        scene.RemoveNode(labelmap)
