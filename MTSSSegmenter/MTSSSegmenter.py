"""MTSS Segmenter: brain-tumour segmentation of MRI in 3D Slicer by a small multi-population network.

A thin shell after Slicer's scripted-module template: the module description, the parameter node, the
widget and the self-test. All computation lives in ``MTSSSegmenterLib`` (the MRML glue in
``MTSSSegmenterLib.logic``, which runs the network in a background process so that Slicer never freezes).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MTSSSegmenterLib import terminology
from MTSSSegmenterLib.constants import MODALITIES
from MTSSSegmenterLib.logic import MTSSSegmenterLogic as _MTSSSegmenterCoreLogic
from MTSSSegmenterLib.volume_assignment import assign_volumes

SAMPLE_FOLDER = Path(__file__).resolve().parent / "MTSSSegmenterLib" / "data" / "sample"
CLINICAL_SAMPLE_FOLDER = SAMPLE_FOLDER / "clinical"  # the same case as a scanner gives it (README.txt there)
# Installed on first use (never at import), never replacing what Slicer ships.
ENGINE_REQUIREMENTS = ["monai>=1.4", "safetensors>=0.4", "einops>=0.7"]
SLICER_OWNED_PACKAGES = ["torch", "SimpleITK", "numpy", "requests"]
TORCH_REQUIREMENT = ">=2.4"


class MTSSSegmenter(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MTSS Segmenter")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MTSS developers"]
        self.parent.helpText = _(
            "Segments brain tumours in MRI: necrosis (NCR/NETC), edema (ED/SNFH) and enhancing tumour (ET), "
            "from any of T1, T1 post-contrast, T2 and FLAIR. Pick the volumes, click Segment, keep working "
            "while it runs, then edit the segments in the Segment Editor. The default model is a small student "
            "network distilled from population teachers, trained only on synthetic cases of five BraTS 2023 "
            "populations (glioma, paediatric, sub-Saharan African glioma, meningioma, metastases); the MTSS "
            "Training module trains such teachers and students. For research use; not a medical device.")
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, PyTorch, MONAI and SimpleITK. Labels and regions follow the BraTS 2023 "
            "challenge conventions (Baid et al. 2021; Kazerooni et al. 2023; LaBella et al. 2023; "
            "Moawad et al. 2023; Adewole et al. 2023). Terminology codes from DICOM PS3.16 CID 7168.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Offer the sample case shipped with the module in the Sample Data module: BraTS-preprocessed, and as a
    scanner gives it (skull on, each series on its own oblique 5 mm grid, head motion)."""
    import SampleData

    for name, folder, prefix in (("MTSS-sample", SAMPLE_FOLDER, "MTSS-sample"),
                                 ("MTSS-clinical-sample", CLINICAL_SAMPLE_FOLDER, "MTSS-clinical")):
        files = {code: folder / f"{prefix}-{code}.nii.gz" for code in ("t1n", "t1c", "t2w", "t2f", "seg")}
        if not all(p.is_file() for p in files.values()):
            logging.info("MTSS sample %s not found in %s; not registered in Sample Data.", name, folder)
            continue
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="MTSS", sampleName=name,
            thumbnailFileName=str(Path(__file__).resolve().parent / "Resources" / "Icons" / "MTSSSegmenter.png"),
            uris=[p.as_uri() for p in files.values()], fileNames=[p.name for p in files.values()],
            nodeNames=[p.name.split(".")[0] for p in files.values()],
            loadFileType=["VolumeFile"] * 4 + ["SegmentationFile"])


def ensureEngineDependencies() -> bool:
    """PyTorch (through the PyTorch extension) and MONAI (through pip), on first use, after asking.

    Returns False when something is missing and the user declined or installation is not possible.
    """
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.errorDisplay(_("MTSS needs the PyTorch extension. Install 'PyTorch' from the Extensions "
                                   "Manager, restart Slicer, then click Segment again."))
        return False
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            slicer.util.errorDisplay(_("PyTorch is needed to segment. Install it in the PyTorch Utils module, "
                                       "then click Segment again."))
            return False
    for moduleName in ("slicer.packaging", "slicer.pydeps"):  # pip_ensure: Slicer 5.11+ (renamed later)
        try:
            helper = __import__(moduleName, fromlist=["pip_ensure"])
        except ImportError:
            continue
        if hasattr(helper, "pip_ensure"):
            try:
                helper.pip_ensure(ENGINE_REQUIREMENTS, skip_packages=SLICER_OWNED_PACKAGES, requester="MTSS")
            except RuntimeError:  # the user declined
                return False
            return True
    return _pipInstallFallback()


def _pipInstallFallback() -> bool:
    """Slicer without ``pip_ensure``: check, ask, then ``pip_install --no-deps`` (keeps Slicer's packages)."""
    import importlib.metadata

    from packaging.requirements import Requirement

    missing = []
    for text in ENGINE_REQUIREMENTS:
        requirement = Requirement(text)
        try:
            if importlib.metadata.version(requirement.name) in requirement.specifier:
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        missing.append(text)
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
            _("MTSS needs these Python packages: {packages}. Install them now (a few minutes)?").format(
                packages=", ".join(missing)), windowTitle="MTSS"):
        return False
    slicer.util.pip_install(" ".join(missing) + " --no-deps")
    return True


@parameterNodeWrapper
class MTSSSegmenterParameterNode:
    """GUI state, saved with the scene.

    The four input volumes (any may be empty), the output segmentation (empty = create one), the model
    bundle folder (empty = default), the device (auto, cpu, cuda[:N]) and the options passed to the logic:
    registerSeries (checked: register the series when their grids differ; unchecked: never),
    applyRegistrationTransforms (put the registered series under their transforms), biasCorrection (checked: N4
    of the series when they are registered; unchecked: never), brainMask (add the brain mask as a segment) and
    removeSmallComponents (checked: remove components below the model's minimum sizes and, on thick slices, those
    without a confident core; unchecked: keep all).
    """

    t1nVolume: vtkMRMLScalarVolumeNode
    t1cVolume: vtkMRMLScalarVolumeNode
    t2wVolume: vtkMRMLScalarVolumeNode
    t2fVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelPath: str = ""
    device: str = "auto"
    showRegions: bool = False
    registerSeries: bool = True
    applyRegistrationTransforms: bool = False
    biasCorrection: bool = True
    brainMask: bool = False
    removeSmallComponents: bool = True

    def inputVolumes(self) -> dict:
        return {m.code: getattr(self, f"{m.code}Volume") for m in MODALITIES}


class MTSSSegmenterWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._logLinesShown = 0
        self._timer = qt.QTimer()
        self._timer.setInterval(200)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MTSSSegmenter.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MTSSSegmenterLogic()
        self.ui.progressBar.hide()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked()", self.onApplyButton)
        self.ui.autoAssignButton.connect("clicked(bool)", lambda checked=False: self.autoAssignVolumes(overwrite=True))
        self.ui.importModelButton.connect("clicked()", self.onImportModel)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3D)
        self.ui.editButton.connect("clicked()", self.onEditInSegmentEditor)
        self._timer.connect("timeout()", self.onPollJob)
        self.populateModels()
        self.populateDevices()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        self.removeObservers()
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None and not self._job.finished:
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.autoAssignVolumes(overwrite=False)
        if self.ui.modelComboBox.findData(self._parameterNode.modelPath) < 0:  # keep the choice valid
            self._parameterNode.modelPath = self.ui.modelComboBox.itemData(0) or ""

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        for combo, value in ((self.ui.modelComboBox, p.modelPath), (self.ui.deviceComboBox, p.device)):
            index = combo.findData(value)
            if index >= 0 and index != combo.currentIndex:
                combo.blockSignals(True)
                combo.currentIndex = index
                combo.blockSignals(False)
        running = self._job is not None and not self._job.finished
        hasInput = any(p.inputVolumes().values())
        hasModel = self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex) is not None
        self.ui.applyButton.enabled = running or (hasInput and hasModel)
        self.ui.applyButton.text = _("Cancel") if running else _("Segment")
        self.ui.applyButton.toolTip = (_("Stop the segmentation.") if running else _("Segment the tumour.") if hasInput
                                       and hasModel else _("Choose at least one input volume and a model."))
        self.ui.applyTransformsCheckBox.enabled = p.registerSeries
        hasResult = p.outputSegmentation is not None and bool(self.logic.generatedSegmentIDs(p.outputSegmentation))
        self.ui.show3DButton.enabled = self.ui.editButton.enabled = hasResult and not running

    def autoAssignVolumes(self, overwrite: bool) -> None:
        """Fill inputs from volume names (BraTS names, DICOM series descriptions)."""
        p = self._parameterNode
        if p is None:
            return
        nodes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if not n.IsA("vtkMRMLLabelMapVolumeNode")]
        byName = {n.GetName(): n for n in nodes}
        kept = {} if overwrite else {c: n.GetName() for c, n in p.inputVolumes().items() if n is not None}
        for code, name in assign_volumes([n.GetName() for n in nodes], kept).items():
            if code not in kept:
                setattr(p, f"{code}Volume", byName[name])

    def populateModels(self) -> None:
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for index, model in enumerate(self.logic.availableModels()):
            combo.addItem(model.name, model.path)
            combo.setItemData(index, model.card, qt.Qt.ToolTipRole)
        if combo.count == 0:
            combo.addItem(_("No model installed: click Import..."), None)
        combo.blockSignals(False)
        combo.toolTip = combo.itemData(combo.currentIndex, qt.Qt.ToolTipRole) or ""

    def populateDevices(self) -> None:
        combo = self.ui.deviceComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("Automatic (GPU if available)"), "auto")
        for gpu in self.logic.gpuInfo():
            combo.addItem(_("GPU {index}: {name} ({free:.1f} of {total:.1f} GiB free)").format(
                index=gpu["index"], name=gpu["name"], free=gpu["free_mib"] / 1024, total=gpu["total_mib"] / 1024),
                f"cuda:{gpu['index']}")
        combo.addItem(_("CPU"), "cpu")
        combo.blockSignals(False)

    def onModelChanged(self, index: int) -> None:
        self.ui.modelComboBox.toolTip = self.ui.modelComboBox.itemData(index, qt.Qt.ToolTipRole) or ""
        if self._parameterNode is not None:
            self._parameterNode.modelPath = self.ui.modelComboBox.itemData(index) or ""

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode is not None:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def onImportModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Choose a model bundle folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to import the model."), waitCursor=True):
            if not ensureEngineDependencies():
                return
            target = self.logic.installModel(folder)
            self.populateModels()
            self._parameterNode.modelPath = str(target)

    def onApplyButton(self) -> None:
        if self._job is not None and not self._job.finished:
            self._job.cancel()
            self.onPollJob()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            if not ensureEngineDependencies():
                return
            p = self._parameterNode
            options = {"showRegions": p.showRegions, "brainMask": p.brainMask,
                       "applyTransforms": p.registerSeries and p.applyRegistrationTransforms}
            if not p.registerSeries:
                options["register"] = False  # checked: None, i.e. register when the grids differ
            if not p.biasCorrection:
                options["n4"] = False  # checked: None, i.e. N4 when the series are registered
            if not p.removeSmallComponents:
                options["keep_small_components"] = True
            self.ui.logTextEdit.clear()
            self._logLinesShown = 0
            self._job = self.logic.process(p.inputVolumes(), p.outputSegmentation, p.modelPath or None, p.device,
                                           waitForCompletion=False, **options)
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self._timer.start()
            self.updateGUIFromParameterNode()

    def onPollJob(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        state, progress, message = job.poll()
        self.ui.progressBar.value = int(round(100 * progress))
        self.ui.statusLabel.text = message
        for line in job.log[self._logLinesShown:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._logLinesShown = len(job.log)
        if not job.finished:
            return
        self._timer.stop()
        self.ui.progressBar.hide()
        if state == "done":
            self.showResult(job.result(), job.summary or {})
        elif state == "failed":
            self.ui.logTextEdit.appendPlainText(str(job.error))
            slicer.util.errorDisplay(str(job.error), windowTitle=_("MTSS segmentation failed"))
        self.updateGUIFromParameterNode()

    def showResult(self, segmentationNode, summary: dict) -> None:
        self._parameterNode.outputSegmentation = segmentationNode
        volumes = summary.get("volumes_ml", {})
        rows = [(f"{s.name} ({s.code})", volumes.get(s.code)) for s in terminology.LABEL_SEGMENTS]
        rows += [(s.name, volumes.get(s.code)) for s in terminology.REGION_SEGMENTS if s.code != "ET"]
        self.ui.resultsTable.setRowCount(len(rows))
        for row, (name, value) in enumerate(rows):
            self.ui.resultsTable.setItem(row, 0, qt.QTableWidgetItem(name))
            self.ui.resultsTable.setItem(row, 1, qt.QTableWidgetItem("-" if value is None else f"{value:.1f}"))
        for warning in summary.get("warnings", []):
            self.ui.logTextEdit.appendPlainText(_("Warning: {text}").format(text=warning))
        timings = summary.get("timings_s", {})
        status = _("Done on {device} in {seconds:.1f} s with model '{model}'.").format(
            device=summary.get("device", "?"), seconds=timings.get("total", 0.0), model=summary.get("model", "?"))
        registered = summary.get("registration_transform_nodes", {})
        if registered:
            status += " " + _("{series} registered to {reference}: see the transforms 'MTSS ... → {reference}' and "
                              "their quality in the Log.").format(series=", ".join(registered),
                                                                  reference=summary.get("reference", "?"))
        self.ui.statusLabel.text = status
        reference = slicer.mrmlScene.GetNodeByID(segmentationNode.GetAttribute("MTSS.referenceVolumeID") or "")
        if reference is not None:
            slicer.util.setSliceViewerLayers(background=reference, fit=False)

    def onShow3D(self, show: bool) -> None:
        node = self._parameterNode.outputSegmentation if self._parameterNode else None
        if node is None:
            return
        if show:
            node.CreateClosedSurfaceRepresentation()
        else:
            node.RemoveClosedSurfaceRepresentation()

    def onEditInSegmentEditor(self) -> None:
        node = self._parameterNode.outputSegmentation
        reference = slicer.mrmlScene.GetNodeByID(node.GetAttribute("MTSS.referenceVolumeID") or "")
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(node)
        if reference is not None:
            (editor.setSourceVolumeNode if hasattr(editor, "setSourceVolumeNode") else editor.setMasterVolumeNode)(reference)


class MTSSSegmenterLogic(ScriptedLoadableModuleLogic, _MTSSSegmenterCoreLogic):
    """The library logic (``MTSSSegmenterLib.logic.MTSSSegmenterLogic``) plus the module's parameter node."""

    def __init__(self, pythonExecutable: str | None = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        _MTSSSegmenterCoreLogic.__init__(self, pythonExecutable)

    def getParameterNode(self):
        return MTSSSegmenterParameterNode(super().getParameterNode())


class MTSSSegmenterTest(ScriptedLoadableModuleTest):
    """Loads the sample case shipped with the module, segments it on the CPU and checks the segments."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSampleCase()
        self.setUp()
        self.test_SegmentClinicalSample()

    def _model(self) -> tuple[str, bool]:
        """A model bundle folder, and whether it is trained."""
        models = MTSSSegmenterLogic.availableModels()
        if models:
            return models[0].path, True
        # No trained model installed: check the plumbing with untrained weights (results are meaningless).
        from MTSSSegmenterLib.bundle import DEFAULT_PREPROCESSING, default_meta, save_bundle
        from MTSSSegmenterLib.networks import NetworkConfig, build_network

        self.delayDisplay("No trained model installed; testing the plumbing with an untrained network.")
        network = build_network(NetworkConfig(channels=(8, 16, 32), deep_supervision=1))
        meta = default_meta(network.config, name="untrained-test",
                            preprocessing={**DEFAULT_PREPROCESSING, "spacing_mm": [3.0, 3.0, 3.0]})
        folder = os.path.join(slicer.app.temporaryPath, "MTSS-untrained-test-bundle")
        return str(save_bundle(network, meta, folder)), False

    def test_SegmentSampleCase(self):
        self.assertTrue(SAMPLE_FOLDER.is_dir(), f"The sample case is missing from {SAMPLE_FOLDER}.")
        self.assertTrue(ensureEngineDependencies(), "PyTorch and MONAI are needed to run this test.")
        self.delayDisplay("Loading the sample case")
        volumes = {code: slicer.util.loadVolume(str(SAMPLE_FOLDER / f"MTSS-sample-{code}.nii.gz"))
                   for code in ("t1n", "t1c", "t2w", "t2f")}
        modelPath, trained = self._model()
        logic = MTSSSegmenterLogic()
        try:
            self.delayDisplay("Segmenting on the CPU")
            node = logic.process(volumes, modelPath=modelPath, device="cpu", showRegions=True)
        finally:
            logic.shutdown()
        segmentation = node.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, [s.name for s in terminology.segment_specs(show_regions=True)])
        for segmentId in logic.generatedSegmentIDs(node):
            self.assertIn("SCT^49755003", segmentation.GetSegment(segmentId).GetTerminology())
        self.assertEqual(node.GetAttribute("MTSS.referenceVolumeID"), volumes["t1c"].GetID())
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        ids = logic.generatedSegmentIDs(node)[:3]  # Necrosis, Edema, Enhancing tumour -> labels 1, 2, 3
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap, volumes["t1c"])
        result = slicer.util.arrayFromVolume(labelmap)
        self.assertEqual(result.shape, slicer.util.arrayFromVolume(volumes["t1c"]).shape)
        self.assertTrue(set(result.ravel().tolist()) <= {0, 1, 2, 3})
        if trained:  # the sample's reference segmentation is on the t1c grid
            truth = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(str(SAMPLE_FOLDER / "MTSS-sample-seg.nii.gz")))
            overlap = 2.0 * ((result > 0) & (truth > 0)).sum() / max(1, (result > 0).sum() + (truth > 0).sum())
            self.delayDisplay(f"Whole-tumour Dice against the sample's reference: {overlap:.2f}")
            self.assertGreater(overlap, 0.5)
        self.delayDisplay("Test passed")

    def test_SegmentClinicalSample(self):
        """The sample as a scanner gives it (skull on, own oblique 5 mm grids, head motion): one Segment call
        registers the series (kept as transform nodes) and finds the tumour the aligned sample gives."""
        self.assertTrue(CLINICAL_SAMPLE_FOLDER.is_dir(),
                        f"The clinical sample is missing from {CLINICAL_SAMPLE_FOLDER}.")
        self.assertTrue(ensureEngineDependencies(), "PyTorch and MONAI are needed to run this test.")
        self.delayDisplay("Loading the clinical sample (four series on their own grids)")
        codes = ("t1n", "t1c", "t2w", "t2f")
        volumes = {code: slicer.util.loadVolume(str(CLINICAL_SAMPLE_FOLDER / f"MTSS-clinical-{code}.nii.gz"))
                   for code in codes}
        modelPath, trained = self._model()
        logic = MTSSSegmenterLogic()
        try:
            self.delayDisplay("Registering and segmenting on the CPU")
            node = logic.process(volumes, modelPath=modelPath, device="cpu", applyTransforms=True)
            summary = logic.lastSummary
            registered = summary.get("registration_transform_nodes", {})
            self.assertEqual(sorted(registered), ["t1n", "t2f", "t2w"])
            for code, nodeId in registered.items():
                self.assertIs(volumes[code].GetParentTransformNode(), slicer.mrmlScene.GetNodeByID(nodeId))
            self.assertTrue(summary.get("skull_detected"))
            ids = logic.generatedSegmentIDs(node)[:3]
            labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                node, ids, labelmap, volumes["t1c"])
            result = slicer.util.arrayFromVolume(labelmap)
            self.assertEqual(result.shape, slicer.util.arrayFromVolume(volumes["t1c"]).shape)
            if trained:  # the criterion: the whole tumour within 15 % of the aligned sample's
                aligned = {code: slicer.util.loadVolume(str(SAMPLE_FOLDER / f"MTSS-sample-{code}.nii.gz"))
                           for code in codes}
                logic.process(aligned, modelPath=modelPath, device="cpu")
                wt, wt0 = summary["volumes_ml"]["WT"], logic.lastSummary["volumes_ml"]["WT"]
                self.delayDisplay(f"Whole tumour: {wt:.1f} mL (clinical) against {wt0:.1f} mL (aligned)")
                self.assertGreater(wt0, 10.0)
                self.assertLessEqual(abs(wt / wt0 - 1.0), 0.15)
        finally:
            logic.shutdown()
        self.delayDisplay("Test passed")
