"""The module's self-test (Reload and Test; ctest through ``slicer_add_python_unittest``).

It covers what only a Slicer application has: the panel, the ``qt.QProcess``
runner, the Sample Data module, the slice views and PyTorch Utils. Everything
MRML allows is tested without Slicer in ``Testing/slicer_logic`` (harden, node
I/O, the command line, scene reload, outputs); none of this has been run in a
Slicer application by the project's sessions (no Slicer there).
"""

from __future__ import annotations

import os
import sys
import time

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from . import parameters
from .library import shipped_blocks
from .qprocess import QProcessRunner


class TotalRegistratorTest(ScriptedLoadableModuleTest):
    """End to end in Slicer: runner, sample data, panel, registration and what the user sees."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_qprocess_runner, self.test_sample_data_from_python, self.test_panel,
                     self.test_apply_shows_the_registered_result):
            self.setUp()
            test()

    def test_qprocess_runner(self):
        runner = QProcessRunner()
        code = ("import sys, subprocess; print('out'); print('partial', end=''); "
                "print('totalregistrator: error: bad', file=sys.stderr); sys.exit(2)")
        runner.start([sys.executable, "-c", code], {})
        lines = []
        while (result := runner.poll())[0] is None:
            lines += result[1]
            runner.wait(0.1)
        lines += result[1]
        self.assertEqual(result[0], 2)
        self.assertEqual(sorted(lines), [("stderr", "totalregistrator: error: bad"), ("stdout", "out"),
                                         ("stdout", "partial")])
        launcher = QProcessRunner()  # as PythonSlicer: an interpreter started by a launcher
        launcher.start([sys.executable, "-c", "import subprocess, sys, time; print(subprocess.Popen([sys.executable, "
                        "'-c', 'import time; time.sleep(60)']).pid, flush=True); time.sleep(60)"], {})
        child = []
        while not child:
            launcher.wait(0.1)
            child = [int(line) for stream, line in launcher.poll()[1] if stream == "stdout"]
        launcher.cancel()
        self.assertIsNotNone(launcher.poll()[0])
        time.sleep(0.5)
        with self.assertRaises(ProcessLookupError):  # may be a zombie until reaped by init: kill -0 then fails
            os.kill(child[0], 0)

    def test_sample_data_from_python(self):
        import SampleData

        node = SampleData.downloadSample("TotalRegistratorPhantomPair")  # no network: the recipe ships
        self.assertIsNotNone(node)
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")), 1)

    def test_panel(self):
        import SampleData

        SampleData.downloadSample("TotalRegistratorPhantomPair")
        slicer.util.selectModule("TotalRegistrator")
        widget = slicer.modules.TotalRegistratorWidget
        p = widget._parameterNode
        self.assertIsNotNone(p.fixedVolume)
        self.assertIsNotNone(p.movingVolume)
        self.assertNotEqual(p.fixedVolume, p.movingVolume)
        self.assertTrue(widget.ui.applyButton.enabled)
        combo = widget.ui.presetComboBox
        self.assertFalse(combo.model().item(combo.count - 1).isEnabled())  # "Custom" is shown, never chosen
        names = parameters.available_presets(shipped_blocks())
        widget.onPresetChosen(names.index("Instance optimisation only"))
        self.assertEqual(p.blocks, "")
        self.assertTrue(p.refine)

    def test_apply_shows_the_registered_result(self):
        import SampleData

        SampleData.downloadSample("TotalRegistratorPhantomPair")
        slicer.util.selectModule("TotalRegistrator")
        widget = slicer.modules.TotalRegistratorWidget
        p = widget._parameterNode
        p.coarseIterations, p.fineIterations = 20, 5
        widget.onApplyButton()
        self.assertFalse(widget.ui.inputsCollapsibleButton.enabled)  # locked while running
        while widget.job is not None:
            slicer.app.processEvents()  # the panel's timer polls the job
            if widget.job is not None:
                widget.job.wait(0.2)
        self.assertTrue(widget.ui.inputsCollapsibleButton.enabled)
        self.assertIs(p.movingVolume.GetParentTransformNode(), p.outputTransform)
        composite = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
        self.assertEqual(composite.GetForegroundVolumeID(), p.movingVolume.GetID())
        widget.ui.showSubtractionCheckBox.checked = True
        self.assertEqual(composite.GetForegroundVolumeID(), p.subtractionAfterVolume.GetID())
        self.delayDisplay("Registered; the subtraction is one tick away")
