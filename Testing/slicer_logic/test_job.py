"""A run with a command-line double: the command it builds, the nodes it fills, what the user sees."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core: run `.venv-slicer/bin/python -m pytest "
                                               "Testing/slicer_logic` (make test builds .venv-slicer)")
from doubles import (  # noqa: E402
    FIELD_LPS,
    LPS,
    SHIFT_LPS,
    FakeCommandLine,
    add_volume,
    matrix,
    node_census,
    ras_point,
)
from TotalRegistratorSlicer.job import FIXED_REFERENCE, MOVING_REFERENCE, RegistrationError  # noqa: E402
from TotalRegistratorSlicer.library import registry  # noqa: E402
from TotalRegistratorSlicer.logic import RegistrationLogic, default_inputs, slice_layers  # noqa: E402
from TotalRegistratorSlicer.parameters import ParameterError, RegistrationParameters  # noqa: E402
from TotalRegistratorSlicer.runner import Progress  # noqa: E402

AFFINE = RegistrationParameters(blocks=("affine",), refine=False)
DEFORMABLE = RegistrationParameters(blocks=(), refine=True, iterations=(7, 3), device="cpu")


def centre(volume) -> np.ndarray:
    """The LPS centre of a volume (inside the double's field)."""
    bounds = np.zeros(6)
    volume.GetRASBounds(bounds)
    return LPS @ bounds.reshape(3, 2).mean(axis=1)


@pytest.fixture
def pair(scene, phantom):
    return add_volume(scene, phantom["fixed"], "fixed"), add_volume(scene, phantom["moving"], "moving")


def logic_with(runners: list, tmp_path, **double) -> RegistrationLogic:
    def factory():
        runners.append(FakeCommandLine(**double))
        return runners[-1]

    return RegistrationLogic(runner_factory=factory, python="python3", temporary=tmp_path / "jobs")


@pytest.mark.parametrize("warped, subtraction", [(None, None), (True, None), (None, True), (True, True)])
def test_the_command_writes_exactly_the_ticked_outputs_and_a_compact_transform(scene, pair, tmp_path, warped,
                                                                                subtraction):
    fixed, moving = pair
    runners = []
    before = node_census(scene)
    outputs = logic_with(runners, tmp_path).register(fixed, moving, DEFORMABLE, warpedVolume=warped,
                                                     subtractionVolumes=subtraction)
    command = runners[0].command
    wanted = ["transform"] + (["warped"] if warped else []) + (["subtraction"] if subtraction else [])
    assert command[command.index("--outputs") + 1] == ",".join(wanted)
    assert "--export-spacing" not in command  # the library's compact, exact transform
    assert command[1:4] == ["-m", "TotalRegistratorLib", "register"] and "--no-refine" not in command
    assert command[command.index("--iterations") + 1] == "7,3" and command[command.index("--blocks") + 1] == "none"
    expected = [f for name in wanted for f in registry.OUTPUTS[name].files]
    assert runners[0].written == expected
    added = sorted(set(node_census(scene)) - set(before))
    kinds = [cls for cls, _ in added if cls != "vtkMRMLScalarVolumeDisplayNode"]
    assert kinds.count("vtkMRMLScalarVolumeNode") == (1 if warped else 0) + (2 if subtraction else 0)
    assert kinds.count("vtkMRMLTransformNode") == 1 and len(kinds) == 1 + (1 if warped else 0) + (2 if subtraction
                                                                                                    else 0)
    for node in outputs.nodes():
        assert node.GetNodeReferenceID(FIXED_REFERENCE) == fixed.GetID()
        assert node.GetNodeReferenceID(MOVING_REFERENCE) == moving.GetID()
    for node in (outputs.warped, outputs.subtractionBefore, outputs.subtractionAfter):
        if node is not None:
            np.testing.assert_allclose(matrix(node), matrix(fixed), atol=1e-4)
    assert not list((tmp_path / "jobs").iterdir()), "the job folder was left behind"


def test_after_apply_the_user_sees_the_registered_moving_volume(scene, pair, tmp_path):
    fixed, moving = pair
    outputs = logic_with([], tmp_path).register(fixed, moving, DEFORMABLE, subtractionVolumes=True)
    assert moving.GetParentTransformNode() is outputs.transform  # no registered volume: moving goes under it
    assert slice_layers(outputs, fixed, moving) == (fixed, moving)
    assert slice_layers(outputs, fixed, moving, subtraction=True) == (fixed, outputs.subtractionAfter)
    point = centre(fixed)
    np.testing.assert_allclose(ras_point(outputs.transform, point), point + FIELD_LPS, atol=1e-6)

    moving.SetAndObserveTransformNodeID(None)
    outputs = logic_with([], tmp_path).register(fixed, moving, DEFORMABLE, warpedVolume=True)
    assert moving.GetParentTransformNode() is None  # the registered volume shows the result
    assert slice_layers(outputs, fixed, moving) == (fixed, outputs.warped)
    assert slice_layers(outputs, fixed, moving, subtraction=True) == (fixed, outputs.warped)  # none computed


def test_affine_only_then_deformable_into_the_same_transform_node(scene, pair, tmp_path):
    fixed, moving = pair
    logic = logic_with([], tmp_path)
    first = logic.register(fixed, moving, AFFINE).transform
    assert first.IsLinear()
    point = centre(fixed)
    np.testing.assert_allclose(ras_point(first, point), point + SHIFT_LPS, atol=1e-9)
    second = logic.register(fixed, moving, DEFORMABLE, outputTransform=first).transform
    assert second is first and not second.IsLinear()
    np.testing.assert_allclose(ras_point(second, point), point + FIELD_LPS, atol=1e-6)
    assert logic.register(fixed, moving, AFFINE, outputTransform=first).transform.IsLinear()


def test_an_error_of_the_command_line_leaves_the_scene_unchanged(scene, pair, tmp_path):
    fixed, moving = pair
    before = node_census(scene)
    seen = []
    with pytest.raises(RegistrationError, match=r"^moving\.nrrd: image is constant \(0 everywhere\)$"):
        logic_with([], tmp_path, error="moving.nrrd: image is constant (0 everywhere)").register(
            fixed, moving, DEFORMABLE, warpedVolume=True, progress=seen.append)
    assert seen == [Progress("affine", 1, 2)]
    assert node_census(scene) == before and moving.GetParentTransformNode() is None
    assert not list((tmp_path / "jobs").iterdir())


def test_cancel_stops_the_process_and_leaves_the_scene(scene, pair, tmp_path):
    fixed, moving = pair
    before, runners = node_census(scene), []
    job = logic_with(runners, tmp_path).start(fixed, moving, DEFORMABLE, warpedVolume=True)
    job.cancel()
    assert runners[0].cancelled and not job.folder.exists() and node_census(scene) == before


def test_settings_that_cannot_run_are_refused_before_anything_starts(scene, pair, tmp_path):
    fixed, moving = pair
    runners = []
    logic = logic_with(runners, tmp_path)
    cases = [(RegistrationParameters(blocks=(), refine=False), "nothing to run"),
             (RegistrationParameters(blocks=("lungs",)), "unknown blocks"),
             (RegistrationParameters(device="tpu"), "device must be one of auto, cpu, cuda")]
    for parameters, message in cases:
        with pytest.raises(RegistrationError, match=message):
            logic.start(fixed, moving, parameters)
    with pytest.raises(RegistrationError, match="same node"):
        logic.start(fixed, fixed)
    with pytest.raises(RegistrationError, match="cannot also be an output"):
        logic.start(fixed, moving, warpedVolume=moving)
    assert not runners


def test_a_fresh_panel_offers_two_different_volumes(scene, pair):
    fixed, moving = pair
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    assert default_inputs([labels, fixed, moving]) == (fixed, moving)
    assert default_inputs([fixed]) == (fixed, None)


def test_a_chosen_transform_spacing_reaches_the_command_line(tmp_path):
    chosen = RegistrationParameters(transformSpacing=3.0).command("python3", tmp_path / "f", tmp_path / "m", tmp_path)
    assert chosen[chosen.index("--export-spacing") + 1] == "3"
    automatic = RegistrationParameters().command("python3", tmp_path / "f", tmp_path / "m", tmp_path)
    assert "--export-spacing" not in automatic
    with pytest.raises(ParameterError, match="transform spacing"):
        RegistrationParameters(transformSpacing=-1.0).check()
