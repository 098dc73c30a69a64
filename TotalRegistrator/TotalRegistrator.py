"""TotalRegistrator: whole-body CT deformable registration in 3D Slicer (Slicer 5.10 and later).

The module file holds only what needs Slicer's application: the module, the
panel, the Slicer logic (QProcess runner, Slicer's temporary folder, dependency
installation), the sample data's file reader and the self-test. The logic
itself lives in ``TotalRegistratorSlicer`` and runs with MRML alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from TotalRegistratorSlicer import DOCUMENTATION, dependencies, logic, nodes, parameters, sample
from TotalRegistratorSlicer.library import registry, shipped_blocks
from TotalRegistratorSlicer.qprocess import QProcessRunner
from TotalRegistratorSlicer.selftest import TotalRegistratorTest  # noqa: F401 (Slicer finds the test here)

SAMPLE = Path(__file__).parent / "Resources" / "SampleData" / "TotalRegistratorPhantomPair.trphantom"


class TotalRegistrator(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TotalRegistrator")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.contributors = ["TotalRegistrator developers"]
        self.parent.helpText = _(
            "Deformable registration of two CT volumes of the torso or whole body (follow-up, contrast phases, two "
            "patients). After Apply the moving volume is shown on the fixed one, registered; the subtraction "
            "|fixed - registered| is one tick away. Needs {slicer}. <a href=\"{url}\">Documentation</a>."
        ).format(slicer=dependencies.SUPPORTED_SLICER, url=DOCUMENTATION)
        self.parent.acknowledgementText = _(
            "A re-implementation of TotalRegistrator (H. H. N. Pham et al., Medical Image Analysis 2025, "
            "arXiv:2508.04450). Apache-2.0.")
        slicer.app.connect("startupCompleted()", onStartup)


def onStartup() -> None:
    """The sample data, and grids that stay trilinear when a scene is loaded."""
    nodes.observe_scene_loads(slicer.mrmlScene)
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="TotalRegistrator", sampleName="TotalRegistratorPhantomPair", uris=SAMPLE.as_uri(),
        fileNames=SAMPLE.name, nodeNames="TotalRegistratorPhantomPair", loadFileTypes="TotalRegistratorPhantom",
        thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "TotalRegistrator.png"))


class TotalRegistratorFileReader:
    """Reads a phantom recipe (``*.trphantom``): simulates the pair and loads it (the sample data's loader)."""

    def __init__(self, parent):
        self.parent = parent

    def description(self) -> str:
        return _("TotalRegistrator phantom pair")

    def fileType(self) -> str:
        return "TotalRegistratorPhantom"

    def extensions(self) -> list[str]:
        return [_("TotalRegistrator phantom recipe") + " (*.trphantom)"]

    def canLoadFile(self, filePath: str) -> bool:
        return filePath.endswith(".trphantom")

    def load(self, properties) -> bool:
        logic = TotalRegistratorLogic()
        with slicer.util.tryWithErrorDisplay(_("Could not make the phantom pair."), waitCursor=True):
            if not logic.ensureDependencies():
                return False
            slicer.util.showStatusMessage(_("Simulating the TotalRegistrator phantom pair..."))
            loaded = sample.load_phantom_pair(logic, slicer.mrmlScene, sample.Recipe.read(properties["fileName"]))
            slicer.util.setSliceViewerLayers(background=loaded["fixed"], foreground=loaded["moving"],
                                             foregroundOpacity=0.5, fit=True)
            self.parent.loadedNodes = [node.GetID() for node in loaded.values()]
            return True
        return False


@parameterNodeWrapper
class TotalRegistratorParameterNode:
    """Every setting of the panel, saved with the scene. ``blocks``: the ticked cascade blocks, comma-separated
    (no preset ticks any by default: instance optimisation alone is the more accurate choice, see the model card)."""

    fixedVolume: slicer.vtkMRMLScalarVolumeNode
    movingVolume: slicer.vtkMRMLScalarVolumeNode
    blocks: str = ""
    refine: bool = True
    coarseIterations: Annotated[int, WithinRange(0, 5000)] = registry.DEFAULT_ITERATIONS[0]
    fineIterations: Annotated[int, WithinRange(0, 5000)] = registry.DEFAULT_ITERATIONS[1]
    device: Annotated[str, Choice(list(registry.DEVICES))] = registry.DEVICES[0]
    transformSpacing: Annotated[float, WithinRange(0.0, 20.0)] = parameters.TRANSFORM_SPACING_MM
    outputTransform: slicer.vtkMRMLTransformNode
    warpedVolume: slicer.vtkMRMLScalarVolumeNode
    subtraction: bool = True
    subtractionBeforeVolume: slicer.vtkMRMLScalarVolumeNode  # filled by the run, reused by the next
    subtractionAfterVolume: slicer.vtkMRMLScalarVolumeNode
    showSubtraction: bool = False
    harden: bool = False


class TotalRegistratorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._guiTag = self.job = self.jobParameters = self.lastOutputs = None
        self.blockBoxes = {}
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
        shipped = shipped_blocks()
        for name in registry.BLOCKS:  # one box per block of the library's table
            box = qt.QCheckBox(name.capitalize())
            box.enabled = name in shipped
            box.toolTip = _("Structures: {names}").format(names=", ".join(registry.BLOCK[name].structures)) \
                if name in shipped else _("No shipped weights for this block.")
            box.connect("toggled(bool)", self.onBlocksTicked)
            self.ui.blocksWidget.layout().addWidget(box)
            self.blockBoxes[name] = box
        self.ui.presetComboBox.addItems([_(n) for n in parameters.available_presets(shipped)] + [_("Custom")])
        self.ui.presetComboBox.model().item(self.ui.presetComboBox.count - 1).setEnabled(False)  # shown, not chosen
        self.ui.presetComboBox.connect("activated(int)", self.onPresetChosen)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.applyToSegmentationsButton.connect("clicked(bool)", self.onApplyToSegmentations)
        self.ui.showSubtractionCheckBox.connect("toggled(bool)", lambda _on: self.showResult())
        self.ui.progressBar.hide()
        try:
            dependencies.check_python()
        except dependencies.DependencyError as error:
            self.ui.statusLabel.text = str(error)
        self.initializeParameterNode()

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
        if not p.fixedVolume and not p.movingVolume:
            p.fixedVolume, p.movingVolume = logic.default_inputs(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))
        p.blocks = ",".join(b for b in self.chosenBlocks() if b in shipped_blocks())  # a scene from elsewhere

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._guiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    def chosenBlocks(self) -> tuple[str, ...]:
        chosen = set(self._parameterNode.blocks.split(",")) if self._parameterNode else set()
        return tuple(b for b in registry.BLOCKS if b in chosen)

    def onBlocksTicked(self, _checked=None):
        self._parameterNode.blocks = ",".join(b for b, box in self.blockBoxes.items() if box.checked)

    def onPresetChosen(self, index: int):
        name = parameters.available_presets(shipped_blocks())[index] if index < self.ui.presetComboBox.count - 1 \
            else None
        if name and self._parameterNode:
            blocks, refine = parameters.PRESETS[name]
            with slicer.util.NodeModify(self._parameterNode):
                self._parameterNode.blocks, self._parameterNode.refine = ",".join(blocks), refine

    def updateGUI(self, caller=None, event=None):
        p = self._parameterNode
        chosen = self.chosenBlocks()
        for name, box in self.blockBoxes.items():
            was = box.blockSignals(True)
            box.checked = name in chosen
            box.blockSignals(was)
        preset = parameters.preset_of(chosen, bool(p and p.refine))
        names = parameters.available_presets(shipped_blocks())
        self.ui.presetComboBox.currentIndex = names.index(preset) if preset in names else len(names)
        running = self.job is not None
        for section in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton,
                        self.ui.outputsCollapsibleButton, self.ui.segmentationsCollapsibleButton):
            section.enabled = not running  # inputs and settings locked during a run
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        problem = None
        if not p or not p.fixedVolume or not p.movingVolume:
            problem = _("Choose a fixed and a moving volume.")
        elif p.fixedVolume == p.movingVolume:
            problem = _("Fixed and moving volume must differ.")
        elif not chosen and not p.refine:
            problem = _("Choose cascade blocks or instance optimisation.")
        self.ui.applyButton.enabled = running or problem is None
        self.ui.applyButton.toolTip = _("Stop the registration; the scene stays as it was.") if running \
            else problem or _("Register the moving volume onto the fixed volume.")
        self.ui.iterationsWidget.enabled = bool(p and p.refine)
        self.ui.applyToSegmentationsButton.enabled = bool(p and p.outputTransform)
        self.ui.showSubtractionCheckBox.enabled = bool(p and p.subtractionAfterVolume)

    def onApplyButton(self):
        if self.job is not None:
            self.cancelJob()
            self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
            return
        p = self._parameterNode
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not install what the registration needs.")):
                if not self.logic.ensureDependencies():  # asks first: no wait cursor over the question
                    return
            with slicer.util.tryWithErrorDisplay(_("Could not start the registration."), waitCursor=True):
                settings = parameters.RegistrationParameters(
                    blocks=self.chosenBlocks(), refine=p.refine, iterations=(p.coarseIterations, p.fineIterations),
                    device=p.device, transformSpacing=p.transformSpacing)
                subtraction = (p.subtractionBeforeVolume or True, p.subtractionAfterVolume or True) \
                    if p.subtraction else None
                self.job = self.logic.start(p.fixedVolume, p.movingVolume, settings, p.outputTransform,
                                            p.warpedVolume, subtraction, progress=self.onProgress)
                self.jobParameters = p
                self.ui.statusLabel.text = _("Starting...")
                self.ui.progressBar.setRange(0, 0)
                self.ui.progressBar.show()
                self.timer.start()
        finally:
            self.updateGUI()

    def onProgress(self, progress):
        self.ui.progressBar.setRange(0, max(progress.total, 1))
        self.ui.progressBar.value = progress.done
        self.ui.statusLabel.text = f"{progress.stage}: {progress.done} / {progress.total}"

    def onTimer(self):
        p = self.jobParameters  # also when the panel was left meanwhile
        try:
            outputs = self.job.poll()
            if outputs is None:
                return
            with slicer.util.NodeModify(p):
                p.outputTransform = outputs.transform
                p.warpedVolume = outputs.warped or p.warpedVolume
                p.subtractionBeforeVolume = outputs.subtractionBefore or p.subtractionBeforeVolume
                p.subtractionAfterVolume = outputs.subtractionAfter or p.subtractionAfterVolume
            self.lastOutputs = outputs
            self.ui.statusLabel.text = _("Done: {name}.").format(name=outputs.transform.GetName())
            self.endJob()
            self.showResult()
        except Exception as error:  # the process's one-line error, or failing to load its results
            slicer.util.errorDisplay(_("Registration failed: {error}").format(error=error))
            self.ui.statusLabel.text = _("Failed: {error}").format(error=error)
            self.endJob()

    def showResult(self):
        """The registered result in the slice views; the subtraction when its box is ticked."""
        p, outputs = self._parameterNode, self.lastOutputs
        if p is None or outputs is None:
            return
        background, foreground = logic.slice_layers(outputs, p.fixedVolume, p.movingVolume, p.showSubtraction)
        slicer.util.setSliceViewerLayers(background=background, foreground=foreground,
                                         foregroundOpacity=1.0 if foreground is outputs.subtractionAfter else 0.5)

    def cancelJob(self):
        if self.job is not None:
            self.job.cancel()
            self.endJob()

    def endJob(self):
        self.timer.stop()
        self.job = self.jobParameters = None
        self.ui.progressBar.hide()
        self.updateGUI()

    def onApplyToSegmentations(self):
        chosen = self.ui.segmentationsSelector.checkedNodes()
        with slicer.util.tryWithErrorDisplay(_("Could not apply the transform."), waitCursor=True):
            self.logic.applyTransform(self._parameterNode.outputTransform, chosen, self._parameterNode.harden)
            self.ui.statusLabel.text = _("Transform applied to {count} node(s).").format(count=len(chosen))


class TotalRegistratorLogic(ScriptedLoadableModuleLogic, logic.RegistrationLogic):
    """The module logic: :class:`TotalRegistratorSlicer.logic.RegistrationLogic` with a QProcess runner and
    Slicer's temporary folder. From the Python console::

        logic = slicer.util.getModuleLogic("TotalRegistrator")
        outputs = logic.register(fixedNode, movingNode, subtractionVolumes=True)  # moving goes under the result
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        logic.RegistrationLogic.__init__(self, runner_factory=QProcessRunner, temporary=slicer.app.temporaryPath)

    def getParameterNode(self):
        return TotalRegistratorParameterNode(super().getParameterNode())

    def ensureDependencies(self, confirm: bool = True) -> bool:
        """Install what the library needs (asks first when ``confirm``); False when the user declines."""
        ask = (lambda question: slicer.util.confirmOkCancelDisplay(question, "TotalRegistrator")) if confirm else None
        return dependencies.install(ask)
