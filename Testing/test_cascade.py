"""Cascade: network-space conversions to library fields, block order and composition, run_cascade, block files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import rotation, torso
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.core import fields
from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.core.preprocess import Scan
from TotalRegistratorLib.errors import InputError
from TotalRegistratorLib.learned.cascade import (
    BLOCKS,
    Cascade,
    Mapping,
    block_config,
    build_network,
    load_block,
    run_cascade,
    save_block,
    voxels_to_mm,
)

SIZE = (12, 10, 14)  # x, y, z voxels: small network grid for tests
FIXED = Grid(SIZE, (3.0, 2.5, 4.0), (-20.0, 5.0, 30.0))
MOVING = Grid(SIZE, (3.4, 2.2, 3.5), (-14.0, 1.0, 22.0))  # another body box


def smooth(shape, amplitude, seed=0, channels=3):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, 3, 3, 3, generator=g, dtype=torch.float64)
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True) * amplitude


def index_points(grid: Grid) -> torch.Tensor:
    k, j, i = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid.shape], indexing="ij")
    return torch.stack([i, j, k], -1)[None]


def normalise(idx: torch.Tensor, grid: Grid) -> torch.Tensor:
    return idx * 2 / (torch.tensor(grid.size, dtype=torch.float64) - 1) - 1


def test_zero_output_is_the_box_map():
    mapping = Mapping.box(FIXED, MOVING, "cpu")
    w = mapping.transform().field_on(FIXED).double()
    expected = torch.as_tensor(MOVING.transform_indices(index_points(FIXED).numpy()) -
                               FIXED.transform_indices(index_points(FIXED).numpy())).movedim(-1, 1)
    assert torch.allclose(w, expected, atol=1e-4)
    moving = smooth(FIXED.shape, 1.0, seed=3, channels=1).float()
    assert torch.allclose(mapping.warp(moving), moving, atol=1e-5), "box map samples the moving tensor as is"


def test_voxel_displacement_equals_library_warp():
    """Index-space warping of the moving network tensor == fields.warp with the converted mm field."""
    u_vox = smooth(FIXED.shape, 1.5, seed=1)  # voxels, components (i, j, k)
    moving = smooth(FIXED.shape, 1.0, seed=2, channels=1)
    in_index_space = F.grid_sample(moving, normalise(index_points(FIXED) + u_vox.movedim(1, -1), MOVING),
                                   align_corners=True)
    mapping = Mapping.box(FIXED, MOVING).then_field(voxels_to_mm(u_vox.float(), FIXED))
    library = fields.warp(moving.float(), MOVING, mapping.transform().field_on(FIXED), FIXED)
    assert torch.allclose(library.double(), in_index_space, atol=1e-4)
    assert torch.allclose(mapping.warp(moving.float()).double(), in_index_space, atol=1e-4)


def test_oblique_grid_voxels_to_mm():
    direction = rotation("z", 20) @ rotation("x", 10)
    grid = Grid(SIZE, (2.0, 3.0, 4.0), (1.0, 2.0, 3.0), tuple(direction.ravel()))
    u = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1, 1).expand(1, 3, *grid.shape)
    assert np.allclose(voxels_to_mm(u, grid)[0, :, 0, 0, 0].numpy(), 2.0 * direction[:, 0], atol=1e-6)


def test_affine_theta_equals_affine_grid_and_library_warp():
    theta = torch.tensor([[0.95, 0.05, 0.0, 0.1], [-0.04, 1.02, 0.03, -0.05], [0.0, 0.02, 0.98, 0.08]])
    moving = smooth(FIXED.shape, 1.0, seed=4, channels=1).float()
    reference = F.grid_sample(moving, F.affine_grid(theta[None], [1, 1, *FIXED.shape], align_corners=True),
                              align_corners=True)
    mapping = Mapping.box(FIXED, MOVING).then_affine(theta)
    assert torch.allclose(mapping.warp(moving), reference, atol=1e-5)
    assert torch.allclose(fields.warp(moving, MOVING, mapping.transform().field_on(FIXED), FIXED), reference, atol=1e-4)
    # the stored affine is the LPS fixed -> moving matrix: its field equals the displacement
    field = mapping.transform().field_on(FIXED)
    assert torch.allclose(fields.affine_field(mapping.affine.numpy(), FIXED), field, atol=1e-4)


def test_composition_matches_sequential_maps():
    theta = torch.tensor([[1.0, 0.0, 0.0, 0.05], [0.0, 0.97, 0.0, 0.0], [0.0, 0.0, 1.0, -0.04]])
    u1, u2 = smooth(FIXED.shape, 1.0, seed=5).float(), smooth(FIXED.shape, 1.0, seed=6).float()
    mapping = Mapping.box(FIXED, MOVING).then_affine(theta)
    mapping = mapping.then_field(voxels_to_mm(u1, FIXED)).then_field(voxels_to_mm(u2, FIXED))
    # a fixed voxel goes through block 2 first (u2), then block 1 (u1), then the affine and the box map
    idx = index_points(FIXED)
    step2 = idx + u2.double().movedim(1, -1)
    u1_at = F.grid_sample(u1.double(), normalise(step2, FIXED), align_corners=True, padding_mode="border")
    step1 = step2 + u1_at.movedim(1, -1)
    after_affine = (normalise(step1, FIXED) @ theta.double()[:, :3].T + theta.double()[:, 3] + 1) / 2 \
        * (torch.tensor(MOVING.size, dtype=torch.float64) - 1)
    expected = MOVING.transform_indices(after_affine.numpy()) - FIXED.transform_indices(idx.numpy())
    assert np.allclose(mapping.transform().field_on(FIXED).movedim(1, -1).numpy(), expected, atol=1e-3)


def test_affine_after_field_is_refused():
    mapping = Mapping.box(FIXED, MOVING).then_field(torch.zeros(1, 3, *FIXED.shape))
    with pytest.raises(ValueError, match="before the deformable"):
        mapping.then_affine(torch.eye(3, 4))


class Recorder(torch.nn.Module):
    """Stands in for a block: records the order it ran in and what it saw, returns a constant output."""

    def __init__(self, name, log, output):
        super().__init__()
        self.name, self.log, self.output = name, log, output

    def forward(self, x):
        self.log.append((self.name, x[:, 1:].clone()))
        return self.output.clone()


def test_subset_runs_in_fixed_order_and_composes():
    log = []
    shift = torch.zeros(1, 3, *FIXED.shape)
    shift[:, 0] = 1.0  # one voxel along i
    theta = torch.tensor([[[1.0, 0, 0, 0.1], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]])
    networks = {"wholebody": Recorder("wholebody", log, shift), "thorax": Recorder("thorax", log, 2 * shift),
                "affine": Recorder("affine", log, theta)}
    cascade = Cascade(networks, size=SIZE)
    assert cascade.names == ["affine", "thorax", "wholebody"]
    moving = smooth(FIXED.shape, 1.0, seed=7, channels=1).float()
    fixed = torch.zeros_like(moving)
    mapping = cascade(fixed, moving, Mapping.box(FIXED, MOVING))
    assert [name for name, _ in log] == ["affine", "thorax", "wholebody"]
    # each block saw the ORIGINAL moving tensor warped once by everything before it
    before = Mapping.box(FIXED, MOVING)
    for name, seen in log:
        assert torch.allclose(seen, before.warp(moving), atol=1e-5)
        before, _ = before.then_affine(theta[0]) if name == "affine" else \
            before.then_field(voxels_to_mm((2 if name == "thorax" else 1) * shift, FIXED)), None
    assert torch.allclose(mapping.transform().field_on(FIXED), before.transform().field_on(FIXED), atol=1e-5)
    # translations add up: 3 voxels of 3 mm along x plus the affine's 0.1 normalised units of the moving box
    centre = tuple(s // 2 for s in FIXED.shape)
    box = Mapping.box(FIXED, MOVING).transform().field_on(FIXED)[0, 0][centre]
    moved = mapping.transform().field_on(FIXED)[0, 0][centre] - box
    assert moved == pytest.approx((3 + 0.1 * (SIZE[0] - 1) / 2) * MOVING.spacing[0], abs=1e-3)
    with pytest.raises(ValueError, match="unknown block"):
        Cascade({"lungs": Recorder("x", log, shift)})


def test_block_files_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    for block in ("affine", "bone"):
        config = block_config(block, SIZE, epochs=3, metrics={"val_dice": 0.8})
        network = build_network(config)
        for p in network.parameters():
            p.data.normal_()
        save_block(tmp_path / f"{block}.pt", network, config)
        loaded, loaded_config = load_block(tmp_path / f"{block}.pt", block, SIZE)
        assert loaded_config == config
        assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), loaded.state_dict().values()))
    cascade = Cascade.load(tmp_path, size=SIZE)
    assert cascade.names == ["affine", "bone"] and cascade.configs["bone"]["structures"] == [
        "pelvis_bone", "vertebrae", "ribs"]
    with pytest.raises(InputError, match=r"bone\.pt: holds the 'bone' block, expected 'thorax'"):
        load_block(tmp_path / "bone.pt", "thorax")
    assert Cascade.load(tmp_path, ["bone"]).size == tuple(SIZE)  # the grid size comes from the block file
    with pytest.raises(InputError, match=r"trained on a \[12, 10, 14\] grid"):
        Cascade.load(tmp_path, ["bone"], size=(128, 96, 160))
    with pytest.raises(InputError, match="no such block weights file"):
        Cascade.load(tmp_path, ["abdomen"], size=SIZE)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: not a readable PyTorch file"):
        load_block(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt: not a TotalRegistrator block file"):
        load_block(tmp_path / "other.pt")
    payload = torch.load(tmp_path / "bone.pt", weights_only=True)
    payload["state_dict"].pop("head.bias")
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(InputError, match="broken.pt: weights do not fit the unet architecture"):
        load_block(tmp_path / "broken.pt", "bone")
    with pytest.raises(ValueError, match="unknown block 'liver'"):
        block_config("liver", SIZE)


def test_run_cascade_untrained_is_the_box_map():
    """Untrained blocks (identity affine, near-zero fields) give the box-to-box map; Result exports."""
    grid = Grid((40, 34, 30), (8.0, 8.0, 10.0), (-160.0, -136.0, -150.0))
    fixed, moving = torso(grid), torso(grid, shift=(6.0, -4.0, 5.0), noise_seed=1)
    torch.manual_seed(0)
    cascade = Cascade({b: build_network(block_config(b, SIZE)) for b in BLOCKS}, size=SIZE)
    result = run_cascade(Scan(fixed), Scan(moving), cascade)
    affine = result.transform.affine
    assert result.grid.size == SIZE and result.transform.grid == result.grid
    assert np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])), atol=1e-6)
    transform = result.to_sitk()
    centre = grid.transform_indices(np.array([20.0, 17.0, 15.0]))
    shift = np.subtract(transform.TransformPoint(tuple(centre)), centre)
    assert abs(shift[0] - 6.0) <= 8.0 and abs(shift[1] + 4.0) <= 8.0, "body boxes are found to a voxel (8 mm)"
    assert abs(shift[2]) < 0.01, "the body fills the scans along z: the boxes coincide"
    assert result.transform.residual.abs().max() < 0.05, "near-zero blocks"
