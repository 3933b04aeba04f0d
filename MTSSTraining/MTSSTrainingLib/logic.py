"""MRML glue of the training module: train teachers and distil students from Slicer's Python.

:class:`MTSSTrainingLogic` mirrors the ``mtss`` training commands; its keyword arguments are named like the
command-line options in camelCase (``stepsPerEpoch=2`` is ``--steps-per-epoch 2``). Training never runs in
Slicer's process: each call starts ``PythonSlicer -m MTSSSegmenterLib.cli COMMAND ...`` (the running
interpreter outside Slicer), optionally under ``torch.distributed.run`` (``nproc=N``), reads its progress
lines, and on success installs the new bundle into the user model folder, where MTSSSegmenter's model list
looks. Arguments are checked before a process starts: an unknown population, a missing or empty data
folder, a missing teacher bundle or an unknown option get a message naming the value and the fix.

:meth:`MTSSTrainingLogic.addCasesFromScene` writes loaded volumes and a (Segment Editor-corrected)
segmentation as a BraTS 2023 training case, so a radiologist's corrections can fine-tune a model
(``trainTeacher(..., init=bundle)`` or ``distill``).

It imports ``slicer`` (only in the scene methods) but never ``qt``: it runs in the Slicer application and
under the ``slicer-core`` wheel. Usage::

    logic = MTSSTrainingLogic()
    teacher = logic.trainTeacher("data", "GLI", "runs/teacher-GLI", epochs=50, device="cuda")
    student = logic.distill("data", {"GLI": teacher}, "runs/student", kd=("output", "latent"))
    job = logic.trainTeacher("data", "MEN", "runs/teacher-MEN", waitForCompletion=False)
    job.poll()   # -> ("running", 0.12, "training: epoch 2/50, loss 0.61, 12%, about 14 min left")
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from MTSSSegmenterLib.bundle import find_bundle, install_bundle, read_meta
from MTSSSegmenterLib.constants import population
from MTSSSegmenterLib.errors import BundleError, InputError, MTSSError, OutputError

from .arguments import build_argv, child_environment, mtss_command
from .jobs import ProgressCallback, TrainingJob
from .segment_labels import SegmentInfo, assign, compose

log = logging.getLogger(__name__)

DEFAULT_KD: tuple[str, ...] = ("output", "latent", "barlow", "region", "attention")
CASE_INFO = "mtss-case.json"
COHORT_FILE = "cohort.json"


def _population(code: str) -> str:
    try:
        return population(str(code)).code
    except ValueError as exc:
        raise InputError(str(exc)) from None


DataDirs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def _check_data(dataDir: DataDirs, needPopulation: str | None = None) -> list[str]:
    """Data folder(s) that exist and hold usable labelled cases (of ``needPopulation``, if given); returns them
    as a list (training commands take several, e.g. an aligned and a clinical cohort)."""
    from .data import discover

    folders = [Path(dataDir)] if isinstance(dataDir, (str, os.PathLike)) else [Path(d) for d in dataDir]
    if not folders:
        raise InputError("No data folder given. Give a folder of BraTS case folders (or make one with synthesize()).")
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"The data folder '{folder}' does not exist or is not a folder. Give a folder of BraTS "
                             "case folders (or make one with synthesize()).")
    index = discover(folders)  # raises InputError for a folder without case folders
    where = "'" + "', '".join(map(str, folders)) + "'"
    if not index.cases:
        reasons = "; ".join(f"{b.name}: {b.reason}" for b in index.broken[:3])
        raise InputError(f"The data folder {where} holds no usable case ({len(index.broken)} left out: {reasons}).")
    if needPopulation and needPopulation not in index.populations():
        counts = ", ".join(f"{p} {sum(c.population == p for c in index.cases)}" for p in index.populations())
        raise InputError(f"The data folder {where} has no {needPopulation} case (it has {counts}). Add "
                         f"{needPopulation} cases or train the teacher of a population it holds.")
    return [str(f) for f in folders]


def _check_bundle(path: str | os.PathLike[str], what: str) -> Path:
    try:
        read_meta(path)
    except BundleError as exc:
        raise BundleError(f"{what}: {exc}") from None
    return Path(path)


class MTSSTrainingLogic:
    """Runs the ``mtss`` training commands in a child process and writes training cases from the scene.

    Args:
        pythonExecutable: interpreter for the child process (default: ``PythonSlicer`` inside Slicer, the
            running interpreter elsewhere).
    """

    def __init__(self, pythonExecutable: str | None = None) -> None:
        self.pythonExecutable = pythonExecutable
        self.lastJob: TrainingJob | None = None
        self.installedModel: Path | None = None

    # ------------------------------------------------------------------------------------------ commands
    def synthesize(self, outputDir: str | os.PathLike[str], cases: int, waitForCompletion: bool = True,
                   progressCallback: ProgressCallback | None = None, **options: Any) -> Path | TrainingJob:
        """``mtss synth OUTPUT --cases N``: a synthetic BraTS-like cohort, ``cases`` per population (options:
        ``populations``, ``seed``, ``spacing`` in mm, ``workers``). Returns the output folder (or the job)."""
        if not isinstance(cases, int) or isinstance(cases, bool) or cases < 1:
            raise InputError(f"cases={cases!r}: give the number of cases per population, a whole number >= 1.")
        if options.get("populations") is not None:
            pops = options["populations"]
            options["populations"] = [_population(p) for p in ([pops] if isinstance(pops, str) else pops)]
        out = Path(outputDir)

        def finish() -> Path:
            if not out.is_dir() or not any(p.is_dir() for p in out.iterdir()):
                raise OutputError(f"'mtss synth' ended without writing case folders into '{out}'.")
            return out

        return self._run("synth", [out], {"cases": cases, **options}, finish, waitForCompletion, progressCallback)

    def trainTeacher(self, dataDir: DataDirs, population: str, outputDir: str | os.PathLike[str],
                     epochs: int | None = None, stepsPerEpoch: int | None = None, device: str | None = "auto",
                     waitForCompletion: bool = True, progressCallback: ProgressCallback | None = None,
                     **options: Any) -> Path | TrainingJob:
        """``mtss train-teacher DATA --population POP -o RUN``: one population's expert.

        Args:
            dataDir: folder of BraTS case folders, or a list of such folders trained on together.
            population: ``GLI PED SSA MEN MET``.
            outputDir: the run folder; the bundle is written there (``model.safetensors`` + ``model.json``).
            epochs, stepsPerEpoch, device: as on the command line (None: the command's default).
            waitForCompletion: block until done; False returns the :class:`~MTSSTrainingLib.jobs.TrainingJob`.
            progressCallback: ``callback(state, fraction, message)``; raising Cancelled in it cancels.
            **options: any other option in camelCase (``network``, ``patch``, ``batch``, ``lr``, ``amp``,
                ``resume=True``, ``init=BUNDLE`` to fine-tune, ``seed``, ``spacing``...), plus
                ``nproc=N`` (run under torchrun), ``installModel=False`` (do not add the bundle to the
                segmenter's model list) and ``installName`` (its name there; default: the run folder's name).

        Returns:
            The run folder holding the bundle (or the job).
        """
        pop = _population(population)
        data = _check_data(dataDir, pop)
        return self._train("train-teacher", data, outputDir,
                           {"population": pop, "epochs": epochs, "stepsPerEpoch": stepsPerEpoch, "device": device,
                            **options}, waitForCompletion, progressCallback)

    def trainJoint(self, dataDir: DataDirs, outputDir: str | os.PathLike[str],
                   epochs: int | None = None, stepsPerEpoch: int | None = None, device: str | None = "auto",
                   waitForCompletion: bool = True, progressCallback: ProgressCallback | None = None,
                   **options: Any) -> Path | TrainingJob:
        """``mtss train-joint DATA -o RUN``: one model on all populations, the baseline without distillation.
        Arguments as :meth:`trainTeacher`."""
        data = _check_data(dataDir)
        return self._train("train-joint", data, outputDir,
                           {"epochs": epochs, "stepsPerEpoch": stepsPerEpoch, "device": device, **options},
                           waitForCompletion, progressCallback)

    def distill(self, dataDir: DataDirs, teachers: Mapping[str, str | os.PathLike[str]],
                outputDir: str | os.PathLike[str], kd: Sequence[str] | str | None = DEFAULT_KD,
                epochs: int | None = None, stepsPerEpoch: int | None = None, device: str | None = "auto",
                waitForCompletion: bool = True, progressCallback: ProgressCallback | None = None,
                **options: Any) -> Path | TrainingJob:
        """``mtss distill DATA --teachers GLI=RUN ... -o RUN --kd TERMS``: one student from the teachers.

        Args:
            teachers: ``{population: teacher run folder or bundle}``, keyed by population code.
            kd: distillation terms (``output latent barlow region attention``); None: the command's default.
            **options: as :meth:`trainTeacher` (``student`` network config, ``kdWeights``, ``routing``,
                ``singleStage``...).
        """
        if not teachers:
            raise InputError("distill needs at least one teacher: teachers={'GLI': 'runs/teacher-GLI', ...}.")
        checked: dict[str, str] = {}
        for code, path in dict(teachers).items():
            pop = _population(code)
            if pop in checked:
                raise InputError(f"Two teachers for {pop}; give one per population.")
            checked[pop] = str(_check_bundle(path, f"Teacher {pop} ('{path}')"))
        data = _check_data(dataDir)
        terms = [kd] if isinstance(kd, str) else kd
        return self._train("distill", data, outputDir,
                           {"teachers": checked, "kd": list(terms) if terms is not None else None, "epochs": epochs,
                            "stepsPerEpoch": stepsPerEpoch, "device": device, **options},
                           waitForCompletion, progressCallback)

    def evaluate(self, dataDir: str | os.PathLike[str], models: Sequence[str | os.PathLike[str]] | str,
                 outputDir: str | os.PathLike[str], device: str | None = "auto", waitForCompletion: bool = True,
                 progressCallback: ProgressCallback | None = None, **options: Any) -> Path | TrainingJob:
        """``mtss evaluate DATA --model A [--model B] -o REPORT``: every model on every case.

        Returns the report (``OUTPUT/report.json``; ``report.md`` and charts beside it) or the job.
        """
        names = [models] if isinstance(models, (str, os.PathLike)) else list(models)
        if not names:
            raise InputError("evaluate needs at least one model (a bundle folder or an installed model name).")
        checked = [str(_check_bundle(find_bundle(m), f"Model '{m}'")) for m in names]
        _check_data(dataDir)
        out = Path(outputDir)

        def finish() -> Path:
            report = out / "report.json"
            if not report.is_file():
                raise OutputError(f"'mtss evaluate' ended without writing '{report}'.")
            return report

        return self._run("evaluate", [dataDir], {"model": checked, "device": device, "output": out, **options},
                         finish, waitForCompletion, progressCallback)

    # -------------------------------------------------------------------------------------------- running
    def _train(self, command: str, positionals: list[Any], outputDir: str | os.PathLike[str],
               options: dict[str, Any], waitForCompletion: bool,
               progressCallback: ProgressCallback | None) -> Path | TrainingJob:
        install = bool(options.pop("installModel", True))
        installName = options.pop("installName", None)
        init = options.get("init")
        if init:
            options["init"] = str(_check_bundle(find_bundle(init), f"The bundle to start from (init='{init}')"))
        out = Path(outputDir)

        def finish() -> Path:
            _check_bundle(out, f"'mtss {command}' finished, but its run folder")
            if install:
                try:
                    self.installedModel = install_bundle(out, installName or out.resolve().name)
                except OSError as exc:
                    raise OutputError(f"The bundle in '{out}' is fine, but installing it into the user model folder "
                                      f"failed: {exc}. Install it later with MTSSSegmenterLogic.installModel.") from exc
                log.info("Installed %s as %s (now in MTSSSegmenter's model list)", out, self.installedModel)
            return out

        return self._run(command, positionals, {**options, "output": out}, finish, waitForCompletion,
                         progressCallback)

    def _run(self, command: str, positionals: list[Any], options: dict[str, Any], finish: Any,
             waitForCompletion: bool, progressCallback: ProgressCallback | None) -> Any:
        nproc = options.pop("nproc", None)
        argv = build_argv(command, positionals, options)
        python = [self.pythonExecutable] if self.pythonExecutable else None
        job = TrainingJob(mtss_command(argv, nproc, python), f"mtss {command}", env=child_environment(), finish=finish)
        self.lastJob = job
        job.start()
        if not waitForCompletion:
            return job
        return job.wait(progressCallback)

    # ------------------------------------------------------------------------------------------ the scene
    def addCasesFromScene(self, volumeNodes: Mapping[str, Any], segmentationNode: Any, population: str,
                          outputDir: str | os.PathLike[str], caseName: str | None = None,
                          segmentLabels: Mapping[str, int | str] | None = None, overwrite: bool = False) -> Path:
        """Write scene volumes and their segmentation as one BraTS 2023 training case.

        The case folder ``OUTPUT/<case>/`` gets ``<case>-t1n.nii.gz`` ... for each given volume (each on its
        own grid, world geometry with linear parent transforms applied) and ``<case>-seg.nii.gz``, the
        segments as BraTS labels (1 NCR, 2 ED, 3 ET) on the reference volume's grid (t1c, else t1n, t2w,
        t2f), plus ``mtss-case.json`` recording which segment became which label.

        Args:
            volumeNodes: ``{modality: vtkMRMLScalarVolumeNode}`` (``t1n t1c t2w t2f`` or their aliases).
            segmentationNode: the (edited) segmentation; segments are matched to labels by MTSS tags,
                terminology, then names (see :mod:`MTSSTrainingLib.segment_labels`).
            population: the case's population (``GLI PED SSA MEN MET``).
            outputDir: the data folder (created if needed).
            caseName: default ``BraTS-<POP>-NNNNN-000`` with the next free number; another name is
                recorded in ``OUTPUT/cohort.json`` so that training knows its population.
            segmentLabels: explicit ``{segment name or ID: 1|2|3 or NCR/ED/ET/WT/TC}`` where names are unusual.
            overwrite: replace an existing case folder of that name.

        Returns:
            The case folder.
        """
        from MTSSSegmenterLib.io import write_image
        from MTSSSegmenterLib.logic import MTSSSegmenterLogic, imageFromVolume

        pop = _population(population)
        volumes, ref = MTSSSegmenterLogic().validateInputs(dict(volumeNodes))
        if segmentationNode is None or not hasattr(segmentationNode, "IsA") or \
                not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise InputError("segmentationNode must be a segmentation node (vtkMRMLSegmentationNode) holding the "
                             "tumour segments.")
        if segmentationNode.GetScene() is not volumes[ref].GetScene():
            raise InputError("The segmentation and the volumes must belong to the same MRML scene.")
        label, assignments, notes = self._labelArray(segmentationNode, volumes[ref], segmentLabels)
        out = Path(outputDir)
        name = self._caseName(out, pop, caseName)
        target = out / name
        if target.exists() and not overwrite:
            raise OutputError(f"The case folder '{target}' exists already; give another caseName or overwrite=True.")
        try:
            out.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}."))
        except OSError as exc:
            raise OutputError(f"Cannot write into '{out}': {exc.strerror or exc}. Choose a writable folder.") from exc
        try:
            import SimpleITK as sitk

            for code, node in volumes.items():
                write_image(imageFromVolume(node), staging / f"{name}-{code}.nii.gz")
            reference = imageFromVolume(volumes[ref])
            seg = sitk.GetImageFromArray(label)
            seg.CopyInformation(reference)
            write_image(seg, staging / f"{name}-seg.nii.gz")
            info = {"case": name, "population": pop, "source": "3D Slicer scene", "reference": ref,
                    "volumes": {code: node.GetName() for code, node in volumes.items()},
                    "segmentation": segmentationNode.GetName(),
                    "segments": [{"id": a.segment_id, "name": a.name, "label": a.value, "as": f"{a.kind} {a.code}",
                                  "matched_by": a.how} for a in assignments],
                    "notes": notes, "voxels": {str(v): int((label == v).sum()) for v in (1, 2, 3)},
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            (staging / CASE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        from .data import population_from_name

        if population_from_name(name) != pop:  # training must learn the population from cohort.json
            self._recordPopulation(out, name, pop)
        for note in notes:
            log.warning("%s: %s", name, note)
        log.info("Wrote training case %s (%s; labels %s)", target, ", ".join(volumes), info["voxels"])
        return target

    @staticmethod
    def _labelArray(segmentationNode: Any, referenceVolume: Any, segmentLabels: Mapping[str, int | str] | None
                    ) -> tuple[Any, list[Any], list[str]]:
        """The BraTS label array (k, j, i) of the segmentation on the reference volume's voxel grid."""
        import vtk
        from vtk.util import numpy_support

        from MTSSSegmenterLib.logic import segmentationsLogicClass
        from MTSSSegmenterLib.terminology import SEGMENT_CODE_TAG, SEGMENT_KIND_TAG

        segmentation = segmentationNode.GetSegmentation()
        infos = []
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            segment = segmentation.GetSegment(segmentId)
            tags: dict[str, str] = {}
            for key in (SEGMENT_KIND_TAG, SEGMENT_CODE_TAG):
                value = vtk.reference("")
                if segment.GetTag(key, value):
                    tags[key] = str(value)
            terminology = segment.GetTerminology() if hasattr(segment, "GetTerminology") else ""
            infos.append(SegmentInfo(segmentId, segment.GetName(), terminology or "", tags))
        if not infos:
            raise InputError(f"The segmentation '{segmentationNode.GetName()}' has no segments.")
        assignments, notes = assign(infos, segmentLabels)
        scene = segmentationNode.GetScene()
        Logic = segmentationsLogicClass()
        dims = referenceVolume.GetImageData().GetDimensions()
        masks = {}
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MTSS_export__")
        try:
            for a in assignments:
                ids = vtk.vtkStringArray()
                ids.InsertNextValue(a.segment_id)
                if not Logic.ExportSegmentsToLabelmapNode(segmentationNode, ids, temp, referenceVolume):
                    raise MTSSError(f"Slicer could not export segment '{a.name}' onto '{referenceVolume.GetName()}'.")
                data = temp.GetImageData()
                if data is None or data.GetDimensions() != dims:
                    raise MTSSError(f"Segment '{a.name}' was exported on a {data and data.GetDimensions()} grid, "
                                    f"not on the reference grid {dims}.")
                voxels = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars())
                masks[a.segment_id] = voxels.reshape(dims[::-1]) > 0
        finally:  # the export adds display and colour nodes: remove everything it added
            added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
            for node in added:
                if node.GetID() not in before and not node.IsA("vtkMRMLSubjectHierarchyNode"):
                    scene.RemoveNode(node)
        return compose(masks, assignments), assignments, notes

    @staticmethod
    def _caseName(out: Path, pop: str, caseName: str | None) -> str:
        from .data import population_from_name

        if caseName is None:
            pattern = re.compile(rf"^BraTS-{pop}-(\d+)-\d+$")
            used = [int(m.group(1)) for p in (out.iterdir() if out.is_dir() else []) if (m := pattern.match(p.name))]
            return f"BraTS-{pop}-{max(used, default=0) + 1:05d}-000"
        name = str(caseName).strip()
        if not name or name.startswith(".") or any(c in name for c in '/\\:*?"<>|'):
            raise InputError(f"caseName {caseName!r} is not a usable folder name; use letters, digits, '-' and '_'.")
        named = population_from_name(name)
        if named is not None and named != pop and name.startswith("BraTS-"):
            raise InputError(f"caseName '{name}' names population {named}, but population='{pop}'. Rename the case "
                             f"(e.g. BraTS-{pop}-...) or give population='{named}'.")
        return name

    @staticmethod
    def _recordPopulation(out: Path, name: str, pop: str) -> None:
        """Declare the case's population in ``OUTPUT/cohort.json`` (its ``cases`` entry; other keys untouched)."""
        path = out / COHORT_FILE
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise OutputError(f"'{path}' is not valid JSON ({exc}); fix or remove it first.") from exc
        if not isinstance(data, dict):
            raise OutputError(f"'{path}' does not hold a JSON object; fix or remove it first.")
        if data and not {"populations", "labels", "cases", "datasets"} & set(data):  # a flat {case: population}
            data = {"populations": dict(data)}
        entry = {"case": name, "population": pop, "source": "3D Slicer scene"}
        cases = data.get("cases")
        if isinstance(cases, dict):
            cases[name] = entry
        else:
            kept = [c for c in (cases or []) if not (isinstance(c, dict) and name in (c.get("case"), c.get("name")))]
            data["cases"] = kept + [entry]
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{COHORT_FILE}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)


__all__ = ["MTSSTrainingLogic", "TrainingJob", "DEFAULT_KD"]
