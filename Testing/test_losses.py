"""Training loss: per-organ backward == joint backward, terms, organs left out when absent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from single_thread import one_thread  # noqa: F401  (autouse)

from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.learned.cascade import Mapping, apply_block, voxels_to_mm
from TotalRegistratorLib.learned.losses import LossWeights, backward, present, soft_dice_loss
from TotalRegistratorLib.learned.networks import AffineNet, UNet
from TotalRegistratorLib.optimization.regularization import bending_energy
from TotalRegistratorLib.optimization.similarity import mutual_information

SIZE = (16, 12, 20)
FIXED = Grid(SIZE, (3.0, 3.0, 4.0), (0.0, 0.0, 0.0))
MOVING = Grid(SIZE, (3.2, 2.8, 4.2), (-3.0, 2.0, 5.0))


def blobs(seed: int, channels: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, channels + 1, 4, 3, 4, generator=g)
    smooth = F.interpolate(coarse, size=FIXED.shape, mode="trilinear", align_corners=True)
    image, masks = smooth[:, :1], (smooth[:, 1:] > 0.6).to(torch.uint8)
    masks[:, -1] = 0  # a structure absent from both scans
    return image, masks


def gradients(network, block, per_organ, weights):
    fixed, fixed_masks = blobs(1)
    moving, moving_masks = blobs(2)
    network.zero_grad()
    mapping, out = apply_block(block, network, Mapping.box(FIXED, MOVING), fixed, moving)
    displacement = None if block == "affine" else voxels_to_mm(out, FIXED)
    terms = backward(mapping.sampling_grid(), displacement, FIXED, fixed, moving, fixed_masks, moving_masks,
                     weights, per_organ, torch.Generator().manual_seed(0))
    return terms, [p.grad.clone() for p in network.parameters()]


@pytest.mark.parametrize("block", ["affine", "bone"])
def test_per_organ_backward_equals_joint(block):
    torch.manual_seed(0)
    network = AffineNet(SIZE[::-1]) if block == "affine" else UNet()
    with torch.no_grad():  # move away from the initial identity so every term has a gradient
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    weights = LossWeights(1.0, 1.0, 0.0 if block == "affine" else 10.0)
    terms_a, grads_a = gradients(network, block, True, weights)
    terms_b, grads_b = gradients(network, block, False, weights)
    assert terms_a == pytest.approx(terms_b, rel=1e-5, abs=1e-7)
    assert all(g.abs().sum() > 0 for g in grads_a[-2:]), "the head receives gradients"
    for a, b in zip(grads_a, grads_b):
        assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max()), "same gradients to float32 tolerance"


def test_terms_reuse_the_library_losses():
    fixed, fixed_masks = blobs(1)
    moving, moving_masks = blobs(2)
    u = torch.randn(1, 3, *FIXED.shape) * 0.3
    mapping = Mapping.box(FIXED, MOVING).then_field(voxels_to_mm(u, FIXED))
    grid = mapping.sampling_grid()
    weights = LossWeights(0.5, 2.0, 3.0)
    terms = backward(grid, voxels_to_mm(u, FIXED), FIXED, fixed, moving, fixed_masks, moving_masks, weights,
                     generator=torch.Generator().manual_seed(0))
    warped = mapping.warp(moving)
    mi = mutual_information(fixed, warped, max_samples=200_000, generator=torch.Generator().manual_seed(0))
    assert terms["similarity"] == pytest.approx(0.5 * float(mi), rel=1e-5)
    organs = present(fixed_masks, moving_masks)
    assert organs == [0, 1, 2], "the structure absent from both scans is left out"
    dice = soft_dice_loss(fixed_masks[:, organs].float(), mapping.warp(moving_masks[:, organs].float()))
    assert terms["dice"] == pytest.approx(2.0 * float(dice.mean()), rel=1e-5)
    assert terms["bending"] == pytest.approx(3.0 * float(bending_energy(voxels_to_mm(u, FIXED), FIXED)), rel=1e-5)
    assert terms["total"] == pytest.approx(terms["similarity"] + terms["dice"] + terms["bending"])


def test_soft_dice():
    a = torch.zeros(1, 2, 4, 4, 4)
    a[:, :, :2] = 1
    assert torch.allclose(soft_dice_loss(a, a), torch.zeros(2), atol=1e-6)
    assert torch.allclose(soft_dice_loss(a, 1 - a), torch.ones(2))
