"""TotalRegistrator: whole-body CT deformable registration in 3D Slicer.

A thin module: the panel (Widget), Slicer-only helpers (dependencies, sample
data) and the module's Test. The logic that Slicer's Python console and the
tests use works without Qt and lives in ``TotalRegistratorSlicer.logic``; the
registration itself runs in ``TotalRegistratorLib``'s command line in a child
process.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from TotalRegistratorSlicer import logic as core

DEVICE_CHOICES = {"auto": "auto", "CPU": "cpu", "GPU": "cuda"}  # panel text -> command line value
CUSTOM_PRESET = "Custom"
SEGMENTATIONS_REFERENCE = "segmentationToTransform"  # parameter node references: the checked segmentations


class TotalRegistrator(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "TotalRegistrator"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["TotalRegistrator developers"]
        self.parent.helpText = """
Deformable registration of two CT volumes of the torso or whole body (follow-up, contrast phases, two patients).
Choose the fixed and moving volume and press Apply: the result is a transform; put the moving volume and its
segmentations under it (or use "Apply to segmentations") to align them with the fixed volume. Subtraction
volumes |fixed - moving| before and after show what changed.
<ul>
<li><b>Affine</b>: global alignment (12 parameters).</li>
<li><b>Bone</b>: vertebrae, ribs and pelvis.</li>
<li><b>Thorax</b>: lungs and heart (breathing).</li>
<li><b>Abdomen</b>: liver, kidneys, spleen, pancreas, stomach, gallbladder.</li>
<li><b>Whole-body</b>: the whole scan, on top of the blocks before it (also undoes folding).</li>
<li><b>Instance optimisation</b>: refines the cascade's field on this pair (local NCC, coarse to fine);
alone, it registers without any trained weights.</li>
</ul>
Blocks without shipped weights cannot be chosen. The registration runs in a background process; Cancel stops it.
<br>Method: H. H. N. Pham et al., "TotalRegistrator: Towards a Lightweight Foundation Model for CT Image
Registration", Medical Image Analysis, 2025 (arXiv:2508.04450).
"""
        self.parent.acknowledgementText = """
This re-implementation of TotalRegistrator (Pham et al., Medical Image Analysis 2025) is an open-source
project. The module structure follows SlicerTotalSegmentator, SlicerElastix and SlicerNNUnet.
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """A phantom CT pair in the Sample Data module, simulated on demand (no download)."""
    import SampleData

    # The source needs one uri and file name to be valid; neither is ever used: the custom downloader
    # simulates the pair on this machine.
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="TotalRegistrator", sampleName="TotalRegistratorPhantomPair",
        uris="https://example.invalid/TotalRegistratorPhantomPair", fileNames="TotalRegistratorPhantomPair.nrrd",
        thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "TotalRegistrator.png"),
        customDownloader=loadPhantomSample)


def loadPhantomSample(source=None, seed: int = 0) -> dict:
    """Simulate the demo phantom pair (4 mm) in a child process and load it; returns the new nodes."""
    logic = TotalRegistratorLogic()
    with slicer.util.tryWithErrorDisplay("Could not install what the phantom needs."):
        if not logic.ensureDependencies():
            return {}
    folder = Path(tempfile.mkdtemp(prefix="TotalRegistratorPhantom-"))
    with slicer.util.tryWithErrorDisplay("Could not make the phantom pair.", waitCursor=True):
        slicer.util.showStatusMessage("Simulating the TotalRegistrator phantom pair...")
        paths = logic.makeSamplePair(folder, seed=seed, wait=lambda: slicer.app.processEvents())
        nodes = logic.loadSamplePair(slicer.mrmlScene, paths)
        slicer.util.setSliceViewerLayers(background=nodes["fixed"], foreground=nodes["moving"],
                                         foregroundOpacity=0.5, fit=True)
    return nodes


@parameterNodeWrapper
class TotalRegistratorParameterNode:
    """Every setting of the panel, saved with the scene."""

    fixedVolume: slicer.vtkMRMLScalarVolumeNode
    movingVolume: slicer.vtkMRMLScalarVolumeNode
    # preset "Instance optimisation only": more accurate than the shipped cascade (Resources/MODEL_CARD.md)
    affine: bool = False
    bone: bool = False
    thorax: bool = False
    abdomen: bool = False
    wholebody: bool = False
    refine: bool = True
    coarseIterations: Annotated[int, WithinRange(0, 5000)] = core.DEFAULT_ITERATIONS[0]
    fineIterations: Annotated[int, WithinRange(0, 5000)] = core.DEFAULT_ITERATIONS[1]
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    outputTransform: slicer.vtkMRMLTransformNode
    warpedVolume: slicer.vtkMRMLScalarVolumeNode
    subtractionBeforeVolume: slicer.vtkMRMLScalarVolumeNode
    subtractionAfterVolume: slicer.vtkMRMLScalarVolumeNode
    harden: bool = False


class TotalRegistratorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.job = None
        self.jobParameterNode = None  # the parameter node the running job reports to (kept when the module is left)
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TotalRegistrator.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TotalRegistratorLogic()

        available = core.available_blocks()
        for block in core.BLOCKS:
            box = self.blockCheckBox(block)
            box.enabled = block in available
            if block not in available:
                box.toolTip = f"No shipped weights for the {block} block (Resources/weights/{block}.pt)."
            box.connect("toggled(bool)", self.onBlocksChanged)
        self.ui.refineCheckBox.connect("toggled(bool)", self.onBlocksChanged)
        # only the presets this installation can run (all their blocks' weights present)
        self.ui.presetComboBox.addItems([*(name for name, (blocks, _) in core.PRESETS.items()
                                           if set(blocks) <= set(available)), CUSTOM_PRESET])
        self.ui.presetComboBox.connect("currentTextChanged(QString)", self.onPresetChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.applyToSegmentationsButton.connect("clicked(bool)", self.onApplyToSegmentations)
        self.ui.segmentationsSelector.connect("checkedNodesChanged()", self.onSegmentationsChecked)
        self.ui.progressBar.hide()
        self.initializeParameterNode()

    def blockCheckBox(self, block: str):
        return getattr(self.ui, f"{block}CheckBox")

    def cleanup(self):
        self.cancelJob()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.fixedVolume:  # the first plain scalar volume (not a label map or vector volume: not offered)
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            p.fixedVolume = next((v for v in volumes if v.GetClassName() == "vtkMRMLScalarVolumeNode"), None)
        available = core.available_blocks()
        for block in core.BLOCKS:  # saved scenes may ask for blocks this installation lacks
            if block not in available:
                setattr(p, block, False)
        self.showPreset()

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.showCheckedSegmentations()
            self.updateButtons()

    # --- segmentations to move (node references of the parameter node: no wrapper type for a checkable list) ----
    def showCheckedSegmentations(self):
        raw = self._parameterNode.parameterNode
        chosen = [raw.GetNthNodeReference(SEGMENTATIONS_REFERENCE, i)
                  for i in range(raw.GetNumberOfNodeReferences(SEGMENTATIONS_REFERENCE))]
        selector = self.ui.segmentationsSelector
        was = selector.blockSignals(True)
        for i in range(selector.nodeCount()):
            node = selector.nodeFromIndex(i)
            selector.setCheckState(node, qt.Qt.Checked if node in chosen else qt.Qt.Unchecked)
        selector.blockSignals(was)

    def onSegmentationsChecked(self):
        if not self._parameterNode:
            return
        raw = self._parameterNode.parameterNode
        with slicer.util.NodeModify(raw):
            raw.RemoveNodeReferenceIDs(SEGMENTATIONS_REFERENCE)
            for node in self.ui.segmentationsSelector.checkedNodes():
                raw.AddNodeReferenceID(SEGMENTATIONS_REFERENCE, node.GetID())

    # --- blocks and presets -------------------------------------------------------------------------------------
    def chosenBlocks(self) -> tuple[str, ...]:
        return tuple(b for b in core.BLOCKS if getattr(self._parameterNode, b))

    def onPresetChanged(self, name: str):
        if name not in core.PRESETS or not self._parameterNode:
            return
        blocks, refine = core.PRESETS[name]
        with slicer.util.NodeModify(self._parameterNode):
            for block in core.BLOCKS:
                setattr(self._parameterNode, block, block in blocks)
            self._parameterNode.refine = refine

    def onBlocksChanged(self, _checked=None):
        """A block or the refinement was ticked by hand: show the preset it matches, or Custom."""
        self.showPreset()

    def showPreset(self):
        if not self._parameterNode:
            return
        chosen = (self.chosenBlocks(), self._parameterNode.refine)
        name = next((n for n, preset in core.PRESETS.items() if preset == chosen), CUSTOM_PRESET)
        was = self.ui.presetComboBox.blockSignals(True)
        self.ui.presetComboBox.setCurrentText(name)
        self.ui.presetComboBox.blockSignals(was)

    def updateButtons(self, caller=None, event=None):
        p = self._parameterNode
        if self.job is not None:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the registration; the scene stays as it was."
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Apply"
        problem = None
        if not p or not p.fixedVolume or not p.movingVolume:
            problem = "Choose a fixed and a moving volume."
        elif p.fixedVolume == p.movingVolume:
            problem = "Fixed and moving volume must differ."
        elif not self.chosenBlocks() and not p.refine:
            problem = "Choose cascade blocks or instance optimisation."
        self.ui.applyButton.enabled = problem is None
        self.ui.applyButton.toolTip = problem or "Register the moving volume onto the fixed volume."
        self.ui.coarseIterationsSpinBox.enabled = self.ui.fineIterationsSpinBox.enabled = bool(p and p.refine)
        self.ui.applyToSegmentationsButton.enabled = bool(p and p.outputTransform)

    # --- running ------------------------------------------------------------------------------------------------
    def onApplyButton(self):
        if self.job is not None:
            self.cancelJob()
            self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            return
        p = self._parameterNode
        try:  # the error displays show the message, then re-raise
            with slicer.util.tryWithErrorDisplay("Could not install what the registration needs."):
                if not self.logic.ensureDependencies():  # asks first: no wait cursor over the question
                    return
            with slicer.util.tryWithErrorDisplay("Could not start the registration.", waitCursor=True):
                self.job = self.logic.start(
                    p.fixedVolume, p.movingVolume, blocks=self.chosenBlocks(), refine=p.refine,
                    iterations=(p.coarseIterations, p.fineIterations), device=DEVICE_CHOICES[p.device],
                    outputTransform=p.outputTransform, warpedVolume=p.warpedVolume,
                    subtractionBefore=p.subtractionBeforeVolume, subtractionAfter=p.subtractionAfterVolume,
                    progress=self.onProgress)
                self.jobParameterNode = p
                self.ui.statusLabel.text = "Starting..."
                self.ui.progressBar.setRange(0, 0)
                self.ui.progressBar.show()
                self.timer.start()
        finally:
            self.updateButtons()

    def onProgress(self, progress):
        self.ui.progressBar.setRange(0, max(progress.total, 1))
        self.ui.progressBar.value = progress.done
        self.ui.statusLabel.text = f"{progress.stage}: {progress.done} / {progress.total}"

    def onTimer(self):
        p = self.jobParameterNode  # also when the panel was left meanwhile (its own parameter node is then None)
        try:
            outputs = self.job.poll()
            if outputs is None:
                return
            with slicer.util.NodeModify(p):
                p.outputTransform = outputs.transform
                if outputs.warped:
                    p.warpedVolume = outputs.warped
            self.ui.statusLabel.text = f"Done: {outputs.transform.GetName()}."
            slicer.util.setSliceViewerLayers(background=p.fixedVolume, foreground=outputs.warped or p.movingVolume,
                                             foregroundOpacity=0.5)
        except Exception as error:  # the process's one-line error, or failing to load its results
            logging.error(f"TotalRegistrator: {error}")
            self.ui.statusLabel.text = f"Failed: {error}"
        self.endJob()

    def cancelJob(self):
        if self.job is not None:
            self.job.cancel()
            self.endJob()

    def endJob(self):
        self.timer.stop()
        self.job = self.jobParameterNode = None
        self.ui.progressBar.hide()
        self.updateButtons()

    def onApplyToSegmentations(self):
        nodes = self.ui.segmentationsSelector.checkedNodes()
        with slicer.util.tryWithErrorDisplay("Could not apply the transform.", waitCursor=True):
            self.logic.applyTransform(self._parameterNode.outputTransform, nodes, harden=self._parameterNode.harden)
            self.ui.statusLabel.text = f"Transform applied to {len(nodes)} node(s)."


class TotalRegistratorLogic(ScriptedLoadableModuleLogic, core.RegistrationLogic):
    """The module logic: :class:`TotalRegistratorSlicer.logic.RegistrationLogic` plus Slicer-only parts.

    From the Python console::

        logic = slicer.util.getModuleLogic("TotalRegistrator")
        outputs = logic.register(fixedNode, movingNode, blocks=(), warpedVolume=True, subtractionAfter=True)
        movingNode.SetAndObserveTransformNodeID(outputs.transform.GetID())
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        core.RegistrationLogic.__init__(self)

    def getParameterNode(self):
        return TotalRegistratorParameterNode(super().getParameterNode())

    def ensureDependencies(self, confirm: bool = True) -> bool:
        """Install torch (PyTorch Utils) and the pinned packages of :data:`REQUIREMENTS` if missing.

        Asks first when ``confirm``; returns False if the user declines. Never runs at start-up.
        Refuses (RegistrationError) a Slicer whose Python is too old for the library.
        """
        core.check_python()
        missing = [f"{name}=={version}" for name, version in core.REQUIREMENTS.items()
                   if importlib.util.find_spec(name) is None]
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError("TotalRegistrator needs the PyTorch extension: install it in the Extensions "
                               "Manager and restart Slicer.") from None
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        need_torch = not torch_logic.torchInstalled()
        if not need_torch and not missing:
            return True
        wanted = (["PyTorch"] if need_torch else []) + missing
        if confirm and not slicer.util.confirmOkCancelDisplay(
                f"TotalRegistrator needs these Python packages: {', '.join(wanted)}.\n"
                "Install them now? This can take several minutes.", "TotalRegistrator"):
            return False
        with slicer.util.WaitCursor():
            if need_torch and torch_logic.installTorch(askConfirmation=False,
                                                       torchVersionRequirement=f">={core.MINIMUM_TORCH}") is None:
                raise RuntimeError("PyTorch could not be installed; see the PyTorch Utils module.")
            if missing:
                slicer.util.pip_install(missing)
        return True


class TotalRegistratorTest(ScriptedLoadableModuleTest):
    """End to end in Slicer: phantom pair -> registration -> segmentation under the result."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_register_phantom_pair()
        self.setUp()
        self.test_cancel_leaves_scene()

    def test_register_phantom_pair(self):
        import numpy as np

        self.delayDisplay("Simulating the phantom pair")
        logic = TotalRegistratorLogic()
        self.assertTrue(logic.ensureDependencies(confirm=False))
        paths = logic.makeSamplePair(Path(tempfile.mkdtemp()), seed=0, spacing=6.0)
        nodes = logic.loadSamplePair(slicer.mrmlScene, paths)
        self.delayDisplay("Registering")
        stages = []
        outputs = logic.register(nodes["fixed"], nodes["moving"], blocks=core.available_blocks(), iterations=(30, 10),
                                 warpedVolume=True, subtractionBefore=True, subtractionAfter=True,
                                 progress=stages.append)
        self.assertTrue(stages)
        self.assertTrue(outputs.transform.IsA("vtkMRMLGridTransformNode"))
        self.assertEqual(outputs.transform.GetNodeReferenceID(core.MOVING_REFERENCE), nodes["moving"].GetID())
        before = slicer.util.arrayFromVolume(outputs.subtractionBefore).mean()
        after = slicer.util.arrayFromVolume(outputs.subtractionAfter).mean()
        self.assertLess(after, 0.8 * before)
        self.assertEqual(outputs.warped.GetImageData().GetDimensions(), nodes["fixed"].GetImageData().GetDimensions())

        self.delayDisplay("Moving structures under the result, hardened")
        segmentation = nodes["segmentation"]
        logic.applyTransform(outputs.transform, [segmentation], harden=True)
        self.assertIsNone(segmentation.GetParentTransformNode())
        fixed_labels = slicer.util.loadLabelVolume(str(paths["fixed_labels"]))
        exported = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.modules.segmentations.logic().ExportVisibleSegmentsToLabelmapNode(segmentation, exported,
                                                                                  nodes["fixed"])
        fixed_mask = slicer.util.arrayFromVolume(fixed_labels) > 0
        moved_mask = slicer.util.arrayFromVolume(exported) > 0
        dice = 2 * np.logical_and(fixed_mask, moved_mask).sum() / (fixed_mask.sum() + moved_mask.sum())
        self.assertGreater(dice, 0.8)
        self.delayDisplay(f"Registered; structures overlap the fixed ones with Dice {dice:.3f}")

    def test_cancel_leaves_scene(self):
        logic = TotalRegistratorLogic()
        paths = logic.makeSamplePair(Path(tempfile.mkdtemp()), seed=1, spacing=8.0)
        nodes = logic.loadSamplePair(slicer.mrmlScene, paths)
        before = [slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())]
        started = []
        job = logic.start(nodes["fixed"], nodes["moving"], blocks=(), warpedVolume=True, progress=started.append)
        while not started and job.poll() is None:
            slicer.app.processEvents()
        job.cancel()
        after = [slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())]
        self.assertEqual(after, before)
        self.delayDisplay("Cancel test passed")
