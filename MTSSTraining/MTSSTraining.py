"""MTSSTraining: train population teachers and distil students from 3D Slicer's Python, headless.

A scripted module without a panel (hidden in the module list): researchers drive it from the Python
console or a script run with ``Slicer --no-main-window --python-script``. Everything it does lives in
``MTSSTrainingLib`` (pure Python, testable without Slicer); :class:`MTSSTrainingLogic` is the Slicer-facing
entry point and is re-exported here. Finished bundles are installed into the user model folder, so they
appear in the MTSSSegmenter module's model list.

Example (Slicer's Python console)::

    from MTSSTraining import MTSSTrainingLogic
    logic = MTSSTrainingLogic()
    logic.addCasesFromScene({"t1c": t1cNode, "t2f": flairNode}, segmentationNode, "GLI", "/data/mine")
    logic.trainTeacher("/data/mine", "GLI", "/runs/teacher-GLI", init="default", epochs=20, device="cuda")
"""

from __future__ import annotations

import os
import shutil
import tempfile

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

from MTSSTrainingLib.logic import MTSSTrainingLogic  # noqa: F401  (re-exported for scripts)

class MTSSTraining(ScriptedLoadableModule):
    """Module description (hidden: no panel; used from Python)."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MTSS Training"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["MTSSSegmenter"]
        self.parent.hidden = True  # no GUI panel: a scripting module
        self.parent.contributors = ["MTSS developers"]
        self.parent.helpText = (
            "Train population teachers (GLI, PED, SSA, MEN, MET) and distil them into one small student, from "
            "Slicer's Python console or a headless script: <code>from MTSSTraining import MTSSTrainingLogic</code>. "
            "Cases edited in the Segment Editor become training data with "
            "<code>MTSSTrainingLogic().addCasesFromScene(...)</code>. Finished models appear in MTSSSegmenter's "
            "model list. See the section for researchers in the extension's README and the example script "
            "<code>MTSSTraining/Resources/Scripts/train_all.py</code>.")
        self.parent.acknowledgementText = (
            "MTSS: brain-tumour segmentation by multi-teacher knowledge distillation. Apache-2.0.")


class MTSSTrainingTest(ScriptedLoadableModuleTest):
    """A tiny synthesis -> teacher -> distillation -> segmentation chain on CPU (a few minutes at most)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear(0)
        self.folder = tempfile.mkdtemp(prefix="MTSSTrainingTest-", dir=slicer.app.temporaryPath)

    def tearDown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def runTest(self) -> None:
        self.setUp()
        try:
            self.test_TinyChain()
        finally:
            self.tearDown()

    def test_TinyChain(self) -> None:
        from MTSSSegmenterLib.io import find_case_files
        from MTSSSegmenterLib.logic import MTSSSegmenterLogic

        logic = MTSSTrainingLogic()
        data = os.path.join(self.folder, "data")
        tiny = {"epochs": 1, "stepsPerEpoch": 2, "device": "cpu", "spacing": 4.0, "patch": 32, "batch": 1,
                "installModel": False}

        self.delayDisplay("Synthesising a tiny cohort")
        logic.synthesize(data, cases=2, populations=["GLI", "MEN"], spacing=4.0, seed=0)
        self.delayDisplay("Training a tiny GLI teacher on CPU")
        teacher = logic.trainTeacher(data, "GLI", os.path.join(self.folder, "teacher-GLI"), network="tiny", **tiny)
        self.delayDisplay("Distilling a tiny student")
        student = logic.distill(data, {"GLI": teacher}, os.path.join(self.folder, "student"),
                                kd=("output", "latent"), student="tiny", **tiny)

        self.delayDisplay("Segmenting a case with the student")
        case = sorted(p for p in os.listdir(data) if p.startswith("BraTS-"))[0]
        files, _ = find_case_files(os.path.join(data, case))
        volumes = {code: slicer.util.loadVolume(str(path)) for code, path in files.items()}
        segmentation = MTSSSegmenterLogic().process(volumes, modelPath=str(student), device="cpu")
        names = {segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())}
        self.assertTrue({"Necrosis", "Edema", "Enhancing tumour"} <= names, names)

        self.delayDisplay("Writing the result back as a training case")
        written = logic.addCasesFromScene(volumes, segmentation, "GLI", os.path.join(self.folder, "edited"))
        self.assertTrue(os.path.isfile(os.path.join(written, f"{os.path.basename(written)}-seg.nii.gz")))
        self.delayDisplay("Test passed")
