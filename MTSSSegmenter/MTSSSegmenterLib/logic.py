"""MRML glue: volume nodes in, a segmentation node with named, coloured, coded segments out.

:class:`MTSSSegmenterLogic` is the only place where the library meets Slicer. It imports ``slicer`` (MRML)
and ``vtk`` but never ``qt``, so it runs inside the Slicer application and under the ``slicer-core`` wheel.
Inference never runs in Slicer's process: the volumes are written to a temporary folder, a background
worker process (:mod:`.worker`, started with ``PythonSlicer``) segments them, and the label map is read
back and imported with ``vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode``. The worker
stays alive between calls, so only the first call pays process start and model loading.

When the series do not share the reference's grid, the pipeline registers them rigidly to the reference;
each transform it found is kept as a ``vtkMRMLLinearTransformNode`` named ``MTSS <series> → <reference>``
whose *transform to parent* moves the series onto the reference (put the series volume under it to see it
aligned; see :func:`registrationToParentMatrix` for the convention).

Usage from a script::

    logic = MTSSSegmenterLogic()
    seg = logic.process({"t1c": t1cNode, "t2f": flairNode}, device="cpu", showRegions=True)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from . import terminology as term
from .bundle import list_bundles, model_card, user_model_dir
from .constants import MODALITY_CODES, modality, reference_modality
from .errors import Cancelled, InputError, MTSSError, OutputError
from .postprocess import describe_removed
from .registration import transform_from_summary
from .worker import SegmentationJob, WorkerClient

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float, str], None]
_LPS = np.diag([-1.0, -1.0, 1.0])
_LPS4 = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS on homogeneous points (its own inverse)

ANATOMICAL_STRUCTURE = term.Code("SCT", "123037004", "Anatomical Structure")
BRAIN_SEGMENT = term.SegmentSpec("BRAIN", "brain", "MTSS_brain", "Brain", (250 / 255, 250 / 255, 225 / 255), term.BRAIN,
                                 (1,))
"""The brain mask the network saw, added on request (``brainMask=True``); Slicer's colour for Brain."""
BRAIN_TERMINOLOGY = term.terminology_string(term.BRAIN, ANATOMICAL_STRUCTURE, term.EMPTY)
REGISTERED_SERIES_ATTRIBUTE = "MTSS.registeredSeriesID"
REGISTRATION_REFERENCE_ATTRIBUTE = "MTSS.registrationReferenceID"


def segmentationsLogicClass() -> Any:
    """``vtkSlicerSegmentationsModuleLogic`` (its static methods need no module instance)."""
    cls = getattr(slicer, "vtkSlicerSegmentationsModuleLogic", None)
    if cls is None:  # Slicer builds that do not lift loadable-module classes into ``slicer``
        from vtkSlicerSegmentationsModuleLogicPython import vtkSlicerSegmentationsModuleLogic as cls
    return cls


def ijkToWorld(volume: Any) -> np.ndarray:
    """The 4x4 IJK-to-world (RAS) matrix of a volume node, through a linear parent transform."""
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    ijk = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    parent = volume.GetParentTransformNode()
    if parent is None:
        return ijk
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"Volume '{volume.GetName()}' is under a non-linear transform ('{parent.GetName()}'); "
                         "harden the transform (Data module: right-click, Harden transform) and try again.")
    t = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(t)
    return np.array([[t.GetElement(r, c) for c in range(4)] for r in range(4)]) @ ijk


def imageFromVolume(volume: Any) -> sitk.Image:
    """A SimpleITK image (LPS physical space) with the voxels and world geometry of a volume node."""
    data = volume.GetImageData()
    dims = data.GetDimensions()
    array = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(dims[::-1])
    matrix = ijkToWorld(volume)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((_LPS @ matrix[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin((_LPS @ matrix[:3, 3]).tolist())
    return image


def registrationToParentMatrix(entry: dict[str, Any]) -> np.ndarray:
    """The 4x4 RAS matrix that moves a series onto the reference, from the pipeline's registration entry.

    The pipeline reports (per series, :meth:`Registration.summary`) a rigid transform ``T`` that maps
    reference points to series points in LPS (``fixed -> moving``, what SimpleITK's resampling needs). A
    transform node put above the series volume must map the series' world coordinates to the reference's
    (its *transform to parent*), so this is ``F · T⁻¹ · F`` with ``F = diag(-1, -1, 1, 1)`` (LPS <-> RAS).

    Returns:
        ``M`` such that ``M @ [r, a, s, 1]`` of a point of the series' anatomy is where that anatomy lies in
        the reference (RAS, mm).
    """
    transform = transform_from_summary(entry)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    lps[:3, 3] = transform.TransformPoint((0.0, 0.0, 0.0))
    return _LPS4 @ np.linalg.inv(lps) @ _LPS4


def _matrixToNumpy(m: Any) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpyToMatrix(a: np.ndarray) -> Any:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def registrationReport(summary: dict[str, Any], transformNames: dict[str, str] | None = None) -> list[str]:
    """Readable lines on the registration of each series, from a pipeline summary (empty when not run)."""
    entries = summary.get("registration")
    if entries is None:
        return []
    reference = summary.get("reference", "the reference")
    if not isinstance(entries, dict):
        return [f"Registration: {entries}."]
    lines = []
    for code, entry in entries.items():
        shift = ", ".join(f"{v:.1f}" for v in entry.get("translation_mm", []))
        verdict = "ok" if entry.get("ok") else "LIKELY FAILED"
        line = (f"Registration of {code} to {reference}: metric {entry.get('metric', float('nan')):.4f}, rotation "
                f"{entry.get('rotation_deg', float('nan')):.1f} deg, translation ({shift}) mm (LPS, reference to "
                f"series), edge sharpness {entry.get('sharpness', float('nan')):.3f} ({verdict})")
        if transformNames and code in transformNames:
            line += f"; transform node '{transformNames[code]}'"
        lines.append(line + ".")
        if entry.get("warning"):
            lines.append(f"Warning: {entry['warning']}")
    return lines


def thresholdReport(summary: dict[str, Any]) -> list[str]:
    """A line on the decision thresholds when the model's thick-slice set was used (empty otherwise)."""
    if not summary.get("thick_slice_thresholds"):
        return []
    values = "/".join(f"{t:g}" for t in summary.get("thresholds", []))
    return [f"Thresholds WT/TC/ET {values}: the model's set for thick slices (the thickest series has "
            f"{summary.get('thickest_slice_mm', float('nan')):g} mm voxels)."]


def componentReport(summary: dict[str, Any]) -> list[str]:
    """A line on the components the model's minimum sizes and thick-slice confident-core rule removed (empty
    when none were)."""
    removed = describe_removed(summary)
    if not removed:
        return []
    return [f"Components removed: {removed}. Uncheck 'Remove small components' (or pass "
            f"keep_small_components=True) to keep them."]


def worldCorners(volume: Any) -> np.ndarray:
    """The 8 corners (RAS, mm) of a volume's voxel box, including the half voxel at each face."""
    dims = volume.GetImageData().GetDimensions()
    lo, hi = -0.5, np.array(dims) - 0.5
    corners = np.array([[x, y, z, 1.0] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])])
    return (ijkToWorld(volume) @ corners.T).T[:, :3]


@dataclass(frozen=True)
class ModelInfo:
    """A model bundle found on disk, described without loading torch."""

    name: str
    path: str
    card: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


# Torch-free helpers of the bundle module, re-exported under Slicer's naming.
userModelDir = user_model_dir
modelCard = model_card


class MTSSSegmenterLogic:
    """Segments brain tumours in MRML volume nodes; usable without the module's widget."""

    def __init__(self, pythonExecutable: str | None = None, keepWorker: bool = True,
                 workerEnvironment: dict[str, str] | None = None) -> None:
        """
        Args:
            pythonExecutable: Python that runs the worker (default: ``PythonSlicer`` in Slicer, else this one).
            keepWorker: keep the worker process (and its loaded models) alive between calls.
            workerEnvironment: extra environment variables for the worker process.
        """
        self.pythonExecutable = pythonExecutable
        self.keepWorker = keepWorker
        self.workerEnvironment = dict(workerEnvironment or {})
        self._worker: WorkerClient | None = None
        self._job: SegmentationJob | None = None
        self._jobCount = 0
        self.lastSummary: dict[str, Any] | None = None

    # ---------------------------------------------------------------- inputs
    def validateInputs(self, inputVolumes: dict[str, Any], reference: str | None = None) -> tuple[dict[str, Any], str]:
        """Check the volumes early; returns ``({code: node}, reference code)`` or raises :class:`InputError`."""
        volumes: dict[str, Any] = {}
        for key, node in dict(inputVolumes or {}).items():
            if node is None:
                continue
            try:
                code = modality(str(key)).code
            except ValueError as exc:
                raise InputError(str(exc)) from exc
            if code in volumes:
                raise InputError(f"Two volumes were given for '{code}' ('{key}' is another name of it); give one.")
            volumes[code] = node
        if not volumes:
            raise InputError("No input volume was given. Choose at least one of T1 (t1n), T1 post-contrast (t1c), "
                             "T2 (t2w) and FLAIR (t2f).")
        for code, node in volumes.items():
            self._checkVolume(code, node)
        scenes = {id(node.GetScene()) for node in volumes.values()}
        if len(scenes) != 1 or next(iter(volumes.values())).GetScene() is None:
            raise InputError("The input volumes must all belong to the same, open MRML scene.")
        try:
            ref = modality(reference).code if reference else reference_modality(list(volumes))
        except ValueError as exc:
            raise InputError(f"Unknown reference: {exc}") from exc
        if ref not in volumes:
            raise InputError(f"The reference '{ref}' is not among the inputs ({', '.join(volumes)}).")
        refCorners = worldCorners(volumes[ref])
        for code, node in volumes.items():
            corners = worldCorners(node)
            overlap = np.minimum(corners.max(0), refCorners.max(0)) - np.maximum(corners.min(0), refCorners.min(0))
            if np.any(overlap <= 0):
                def span(c: np.ndarray) -> str:
                    return f"{np.round(c.min(0), 1).tolist()}..{np.round(c.max(0), 1).tolist()} mm"

                raise InputError(
                    f"Volumes '{code}' ('{node.GetName()}') and '{ref}' ('{volumes[ref].GetName()}') do not overlap in "
                    f"physical space ({code} spans {span(corners)}, {ref} spans {span(refCorners)}, RAS). "
                    "Check that they are from the same scan session, or register them first.")
        return {c: volumes[c] for c in MODALITY_CODES if c in volumes}, ref

    @staticmethod
    def _checkVolume(code: str, node: Any) -> None:
        if not hasattr(node, "IsA") or not node.IsA("vtkMRMLScalarVolumeNode"):
            kind = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
            raise InputError(f"Input '{code}' is a {kind}; a scalar volume node (vtkMRMLScalarVolumeNode) is needed.")
        if node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError(f"Input '{code}' ('{node.GetName()}') is a label map; choose an MRI volume.")
        data = node.GetImageData()
        if data is None or data.GetPointData().GetScalars() is None:
            raise InputError(f"Volume '{code}' ('{node.GetName()}') has no voxels loaded; load the image again.")
        if data.GetNumberOfScalarComponents() != 1:
            raise InputError(f"Volume '{code}' ('{node.GetName()}') has {data.GetNumberOfScalarComponents()} components "
                             "per voxel (colour or vector image); a grey-level MRI volume is needed.")
        dims = data.GetDimensions()
        if min(dims) < 2:
            raise InputError(f"Volume '{code}' ('{node.GetName()}') is 2-D ({dims[0]}x{dims[1]}x{dims[2]}); "
                             "a 3-D volume is needed.")

    # ---------------------------------------------------------------- running
    def process(self, inputVolumes: dict[str, Any], outputSegmentation: Any = None, modelPath: str | None = None,
                device: str = "auto", waitForCompletion: bool = True, progressCallback: ProgressCallback | None = None,
                **options: Any) -> Any:
        """Segment the tumour in ``inputVolumes`` (keys ``t1n t1c t2w t2f``, any non-empty subset).

        Args:
            inputVolumes: ``{modality: vtkMRMLScalarVolumeNode}``; None values are ignored.
            outputSegmentation: segmentation node to (re)fill; only segments made by MTSS are replaced.
                None creates a new node named after the reference volume.
            modelPath: bundle folder or installed bundle name; None for the default bundle.
            device: ``auto``, ``cpu`` or ``cuda``.
            waitForCompletion: block until done (scripts, tests); False returns a :class:`SegmentationJob`.
            progressCallback: ``callback(state, progress 0..1, message)``; raising :class:`Cancelled` in it
                cancels (blocking mode only).
            **options: ``showRegions`` (also add WT/TC/ET segments), ``brainMask`` (also add the brain mask the
                network saw as a segment), ``applyTransforms`` (put each registered series volume under its
                registration transform, so that it shows aligned; off by default), ``reference`` (modality
                whose grid the result lies on); the rest go to the pipeline: ``register`` (None: when the
                grids differ, True, False) and ``n4`` (N4 bias-field correction; None: when the series are
                registered, True, False).

        Returns:
            The segmentation node, or the job when ``waitForCompletion`` is False.

        Raises:
            InputError, BundleError, OutputError, MTSSError: with a message saying what to do.
            Cancelled: when the callback cancelled (the scene is left as it was).
        """
        showRegions = bool(options.pop("showRegions", False))
        brainMask = bool(options.pop("brainMask", False)) | bool(options.pop("brain_mask_out", False))
        applyTransforms = bool(options.pop("applyTransforms", False))
        if options.pop("output_spacing", None) is not None:
            raise InputError("Option 'output_spacing' is for the command line only: in Slicer the segmentation lies "
                             "on the reference volume's grid (Slicer can resample it later, e.g. Crop Volume).")
        volumes, ref = self.validateInputs(inputVolumes, options.pop("reference", None))
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise InputError(f"The output must be a segmentation node, not a {outputSegmentation.GetClassName()}.")
        if self._job is not None and not self._job.finished:
            raise InputError("A segmentation is already running; wait for it or cancel it first.")
        folder = Path(tempfile.mkdtemp(prefix="mtss-job-"))
        try:
            inputs = {}
            for code, node in volumes.items():
                inputs[code] = str(folder / f"{code}.nrrd")
                sitk.WriteImage(imageFromVolume(node), inputs[code], False)
        except (OSError, RuntimeError) as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise OutputError(f"Cannot write the input volumes to the temporary folder '{folder}': {exc}. "
                              "Free some disk space or set TMPDIR to a writable folder.") from exc
        worker = self._ensureWorker()
        self._jobCount += 1
        brainPath = folder / "brain.nrrd"
        request = {"cmd": "segment", "id": str(self._jobCount), "inputs": inputs, "output": str(folder / "label.nrrd"),
                   "model": str(modelPath) if modelPath else None, "device": device, "reference": ref,
                   "options": options, "brain_mask_output": str(brainPath) if brainMask else None}
        referenceVolume = volumes[ref]

        def importer(labelPath: Path, summary: dict[str, Any]) -> Any:
            brain = sitk.ReadImage(str(brainPath)) if brainMask and brainPath.is_file() else None
            node = self.importLabelMap(sitk.ReadImage(str(labelPath)), referenceVolume, outputSegmentation,
                                       showRegions, str(summary.get("model", "")), summary, brain)
            transforms = self.updateRegistrationTransforms(summary, volumes, ref, applyTransforms)
            if transforms:
                summary["registration_transform_nodes"] = {code: t.GetID() for code, t in transforms.items()}
                node.SetAttribute("MTSS.summary", json.dumps(summary))
            for line in registrationReport(summary, {code: t.GetName() for code, t in transforms.items()}) \
                    + thresholdReport(summary) + componentReport(summary):
                log.info("%s", line)
                job.log.append(line)
            return node

        job = self._job = SegmentationJob(worker, request, folder, importer, self._jobEnded)
        try:
            worker.send(request)
        except OSError as exc:
            job.cancel()
            raise MTSSError(f"Could not talk to the segmentation engine ({exc}); click Segment again.") from exc
        if not waitForCompletion:
            return job
        return job.wait(progressCallback)

    def _ensureWorker(self) -> WorkerClient:
        if self._worker is None or not self._worker.alive():
            self._worker = WorkerClient(self.pythonExecutable, self.workerEnvironment)
            self._worker.start()
        return self._worker

    def _jobEnded(self, job: SegmentationJob, killed: bool) -> None:
        """Called by a job when it ends; drops a killed or (keepWorker=False) finished worker."""
        if killed or not self.keepWorker:
            if self._worker is not None:
                self._worker.kill() if killed else self._worker.close()
            self._worker = None
        if job.summary is not None:
            self.lastSummary = job.summary

    def shutdown(self) -> None:
        """Cancel a running job and end the worker process."""
        if self._job is not None and not self._job.finished:
            self._job.cancel()
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    @property
    def workerPid(self) -> int | None:
        return self._worker.pid if self._worker is not None and self._worker.alive() else None

    # ---------------------------------------------------------------- result import
    def importLabelMap(self, label: sitk.Image, referenceVolume: Any, segmentationNode: Any = None,
                       showRegions: bool = False, modelName: str = "", summary: dict[str, Any] | None = None,
                       brainMask: sitk.Image | None = None) -> Any:
        """Put a BraTS label map (on ``referenceVolume``'s grid) into a segmentation node.

        Segments made by an earlier run (tagged :data:`terminology.GENERATED_TAG`) are replaced; the user's
        own segments stay. A new node is created (and placed under the reference volume's study in the
        subject hierarchy) when ``segmentationNode`` is None. ``brainMask`` (0/1, same grid), when given,
        becomes an outlined "Brain" segment.
        """
        scene = referenceVolume.GetScene()
        if scene is None:
            raise OutputError(f"The reference volume '{referenceVolume.GetName()}' was removed from the scene; "
                              "nothing was imported. Load it again and segment again.")
        if segmentationNode is not None and segmentationNode.GetScene() is not scene:
            segmentationNode = None  # deleted meanwhile (or in another scene): make a new one
        array = self._checkedLabelArray(label, referenceVolume)
        brainArray = None if brainMask is None else (self._checkedLabelArray(brainMask, referenceVolume) > 0)
        Logic = segmentationsLogicClass()
        temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MTSS_import__")
        created = segmentationNode is None
        try:
            m = vtk.vtkMatrix4x4()
            referenceVolume.GetIJKToRASMatrix(m)
            temp.SetIJKToRASMatrix(m)
            temp.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
            if created:
                segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                           scene.GenerateUniqueName(f"{referenceVolume.GetName()} tumour"))
                segmentationNode.CreateDefaultDisplayNodes()
                segmentationNode.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
            self.removeGeneratedSegments(segmentationNode)
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
            segmentation = segmentationNode.GetSegmentation()
            specs = term.segment_specs(showRegions)
            groups = [[s for s in specs if s.kind == "label"]] + [[s] for s in specs if s.kind == "region"]
            if brainArray is not None:
                groups.append([BRAIN_SEGMENT])
            for group in groups:
                ids = vtk.vtkStringArray()
                for spec in group:
                    segmentId = segmentation.AddEmptySegment(segmentation.GenerateUniqueSegmentID(spec.segment_id),
                                                             spec.name, list(spec.color))
                    ids.InsertNextValue(segmentId)
                    self._describeSegment(segmentation.GetSegment(segmentId), spec, modelName,
                                          BRAIN_TERMINOLOGY if spec is BRAIN_SEGMENT else None)
                if group[0].kind == "label":
                    values = array  # label value k goes to the k-th ID
                elif group[0] is BRAIN_SEGMENT:
                    values = brainArray.astype(np.uint8)
                else:
                    values = np.isin(array, group[0].labels).astype(np.uint8)
                self._setLabelImage(temp, values)
                if not Logic.ImportLabelmapToSegmentationNode(temp, segmentationNode, ids):
                    raise OutputError("Slicer could not import the label map into the segmentation "
                                      f"'{segmentationNode.GetName()}'.")
                if group[0].kind != "label":
                    display = segmentationNode.GetDisplayNode()
                    if display is not None:
                        display.SetSegmentOpacity2DFill(ids.GetValue(0), 0.0)  # regions and brain as outlines
                        display.SetSegmentOpacity3D(ids.GetValue(0), 0.1 if group[0] is BRAIN_SEGMENT else 0.3)
        except Exception:
            if created and segmentationNode is not None:
                scene.RemoveNode(segmentationNode)
            raise
        finally:
            scene.RemoveNode(temp)
        segmentationNode.SetAttribute("MTSS.referenceVolumeID", referenceVolume.GetID())
        if modelName:
            segmentationNode.SetAttribute("MTSS.model", modelName)
        if summary is not None:
            segmentationNode.SetAttribute("MTSS.summary", json.dumps(summary))
        if created:
            self._placeInSubjectHierarchy(segmentationNode, referenceVolume)
        return segmentationNode

    @staticmethod
    def _checkedLabelArray(label: sitk.Image, referenceVolume: Any) -> np.ndarray:
        expected = imageFromVolume(referenceVolume)
        same = (label.GetSize() == expected.GetSize()
                and np.allclose(label.GetSpacing(), expected.GetSpacing(), rtol=1e-4, atol=1e-5)
                and np.allclose(label.GetOrigin(), expected.GetOrigin(), atol=1e-3)
                and np.allclose(label.GetDirection(), expected.GetDirection(), atol=1e-4))
        if not same:
            raise OutputError(f"The label map is not on the grid of '{referenceVolume.GetName()}' (size {label.GetSize()} "
                              f"vs {expected.GetSize()}, spacing {label.GetSpacing()} vs {expected.GetSpacing()}); "
                              "nothing was imported. Please report this.")
        array = sitk.GetArrayFromImage(label)
        if array.size and (array.min() < 0 or array.max() > 3):
            raise OutputError(f"The label map holds values {sorted(np.unique(array).tolist())[:10]}; "
                              "BraTS labels are 0..3. Nothing was imported.")
        return np.ascontiguousarray(array.astype(np.uint8))

    @staticmethod
    def _setLabelImage(node: Any, array: np.ndarray) -> None:
        image = vtk.vtkImageData()
        image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
        scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
        image.GetPointData().SetScalars(scalars)
        node.SetAndObserveImageData(image)

    @staticmethod
    def _describeSegment(segment: Any, spec: term.SegmentSpec, modelName: str, terminology: str | None = None) -> None:
        segment.SetTag(term.GENERATED_TAG, modelName or "MTSS")
        segment.SetTag(term.SEGMENT_KIND_TAG, spec.kind)
        segment.SetTag(term.SEGMENT_CODE_TAG, spec.code)
        if hasattr(segment, "SetNameAutoGenerated"):  # keep our names and colours when the terminology is set
            segment.SetNameAutoGenerated(False)
            segment.SetColorAutoGenerated(False)
        terminology = terminology or spec.terminology
        if hasattr(segment, "SetTerminology"):
            segment.SetTerminology(terminology)
        else:
            segment.SetTag(segment.GetTerminologyEntryTagName(), terminology)

    @staticmethod
    def generatedSegmentIDs(segmentationNode: Any) -> list[str]:
        """IDs of the segments an MTSS run made (the ones a re-run replaces)."""
        segmentation = segmentationNode.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        return [i for i in ids if segmentation.GetSegment(i).HasTag(term.GENERATED_TAG)]

    @classmethod
    def removeGeneratedSegments(cls, segmentationNode: Any) -> int:
        """Remove the segments made by MTSS; returns how many were removed."""
        ids = cls.generatedSegmentIDs(segmentationNode)
        for segmentId in ids:
            segmentationNode.GetSegmentation().RemoveSegment(segmentId)
        return len(ids)

    @staticmethod
    def _placeInSubjectHierarchy(node: Any, referenceVolume: Any) -> None:
        shNode = node.GetScene().GetSubjectHierarchyNode()
        if shNode is None:
            return
        refItem = shNode.GetItemByDataNode(referenceVolume)
        if not refItem:
            return
        parent = shNode.GetItemParent(refItem)
        item = shNode.GetItemByDataNode(node) or shNode.CreateItem(parent, node)
        if parent and parent != shNode.GetSceneItemID():
            shNode.SetItemParent(item, parent)

    # ---------------------------------------------------------------- registration transforms
    def updateRegistrationTransforms(self, summary: dict[str, Any], volumes: dict[str, Any], referenceCode: str,
                                     applyToSeries: bool = False) -> dict[str, Any]:
        """Keep the pipeline's registrations as linear transform nodes; returns ``{modality: node}``.

        One ``vtkMRMLLinearTransformNode`` per registered series, named ``MTSS <series> → <reference>`` and
        tagged with the two volume nodes, so that a re-run updates it instead of adding another. Its
        *transform to parent* moves the series onto the reference (:func:`registrationToParentMatrix`); its
        description and the ``MTSS.registration`` attribute hold the quality figures.

        The registration was done on the volumes as seen in world coordinates. When the series volume already
        sits under this very node (an earlier run with ``applyToSeries``), the new result is composed with it,
        so the series stays aligned. ``applyToSeries`` puts each series volume under its node (only volumes
        not under another transform: those are left where they are, with a log message).
        """
        entries = summary.get("registration")
        reference = volumes.get(referenceCode)
        if not isinstance(entries, dict) or reference is None or reference.GetScene() is None:
            return {}
        scene = reference.GetScene()
        out: dict[str, Any] = {}
        for code, entry in entries.items():
            series = volumes.get(code)
            if series is None or series.GetScene() is not scene:
                continue
            toWorld = registrationToParentMatrix(entry)  # series world -> reference world
            node = self._registrationTransformNode(scene, series, reference, f"MTSS {code} → {referenceCode}")
            if series.GetParentTransformNode() is node:  # the series was seen through this node: compose
                toWorld = toWorld @ self._nodeToWorld(node)
            node.SetMatrixTransformToParent(_numpyToMatrix(self._worldToParent(node) @ toWorld))
            node.SetAttribute("MTSS.registration", json.dumps(entry))
            node.SetDescription(
                f"Rigid registration of '{series.GetName()}' ({code}) to '{reference.GetName()}' ({referenceCode}) "
                f"by MTSS: metric {entry.get('metric')}, rotation {entry.get('rotation_deg')} deg, translation "
                f"{entry.get('translation_mm')} mm (LPS, reference to series), "
                f"{'ok' if entry.get('ok') else 'likely failed'}. The transform to parent moves the series onto "
                "the reference: put the series under it to see it aligned.")
            if applyToSeries and series.GetParentTransformNode() not in (None, node):
                log.info("'%s' is already under the transform '%s'; it was not put under '%s' (put '%s' under '%s' "
                         "to align it).", series.GetName(), series.GetParentTransformNode().GetName(), node.GetName(),
                         series.GetParentTransformNode().GetName(), node.GetName())
            elif applyToSeries:
                series.SetAndObserveTransformNodeID(node.GetID())
            out[code] = node
        return out

    def _registrationTransformNode(self, scene: Any, series: Any, reference: Any, name: str) -> Any:
        """The transform node of an earlier run for this pair of volumes, else a new one (in the study)."""
        nodes = scene.GetNodesByClass("vtkMRMLLinearTransformNode")
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if (node.GetAttribute(REGISTERED_SERIES_ATTRIBUTE) == series.GetID()
                    and node.GetAttribute(REGISTRATION_REFERENCE_ATTRIBUTE) == reference.GetID()):
                return node
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", scene.GenerateUniqueName(name))
        node.SetAttribute(REGISTERED_SERIES_ATTRIBUTE, series.GetID())
        node.SetAttribute(REGISTRATION_REFERENCE_ATTRIBUTE, reference.GetID())
        self._placeInSubjectHierarchy(node, reference)
        return node

    @staticmethod
    def _nodeToWorld(node: Any) -> np.ndarray:
        if not node.IsTransformToWorldLinear():
            raise InputError(f"Transform '{node.GetName()}' is under a non-linear transform; harden that transform "
                             "and segment again.")
        m = vtk.vtkMatrix4x4()
        node.GetMatrixTransformToWorld(m)
        return _matrixToNumpy(m)

    @classmethod
    def _worldToParent(cls, node: Any) -> np.ndarray:
        parent = node.GetParentTransformNode()
        return np.eye(4) if parent is None else np.linalg.inv(cls._nodeToWorld(parent))

    # ---------------------------------------------------------------- models and devices
    @staticmethod
    def availableModels() -> list[ModelInfo]:
        """Bundles in the user model folder, then those shipped with the module (no torch import)."""
        found: list[ModelInfo] = []
        for folder in list_bundles():
            try:
                meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("Skipping model bundle %s: model.json is unreadable (%s)", folder, exc)
                continue
            name = str(meta.get("name") or folder.name)
            found.append(ModelInfo(name, str(folder), modelCard(meta, name), meta))
        return found

    @staticmethod
    def installModel(sourceFolder: str | os.PathLike[str]) -> Path:
        """Copy a checked bundle folder into the user model folder (needs the engine's packages)."""
        from .bundle import install_bundle

        return install_bundle(sourceFolder)

    @staticmethod
    def gpuInfo(timeout: float = 3.0) -> list[dict[str, Any]]:
        """NVIDIA GPUs with free/total memory in MiB, from ``nvidia-smi`` (empty when there is none)."""
        exe = shutil.which("nvidia-smi")
        if not exe:
            return []
        try:
            out = subprocess.run([exe, "--query-gpu=index,name,memory.free,memory.total",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                 timeout=timeout, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        gpus = []
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
                gpus.append({"index": int(parts[0]), "name": parts[1], "free_mib": int(parts[2]),
                             "total_mib": int(parts[3])})
        return gpus


__all__ = ["MTSSSegmenterLogic", "SegmentationJob", "ModelInfo", "Cancelled", "MTSSError", "imageFromVolume",
           "ijkToWorld", "segmentationsLogicClass", "userModelDir", "registrationToParentMatrix", "registrationReport",
           "thresholdReport", "componentReport",
           "BRAIN_SEGMENT"]
