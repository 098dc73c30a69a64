"""The optimiser's field low-pass (two 3-voxel box averages in one separable pass, edges replicated) and its
upsampling of the field to the image grid (trilinear, as F.interpolate with align_corners=True)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from TotalRegistratorLib.core.grid import Grid
from TotalRegistratorLib.optimization.optimizer import smooth_field, upsample


def test_interior_equals_two_box_averages_and_constants_survive_at_the_edges():
    field = torch.randn(1, 3, 12, 13, 14, generator=torch.Generator().manual_seed(0))
    boxed = field
    for _ in range(2):
        boxed = F.avg_pool3d(F.pad(boxed, [1] * 6, mode="replicate"), 3, stride=1)
    smooth = smooth_field(field)
    assert smooth.shape == field.shape
    assert torch.allclose(smooth[..., 2:-2, 2:-2, 2:-2], boxed[..., 2:-2, 2:-2, 2:-2], atol=1e-6)
    constant = torch.full((1, 3, 6, 7, 8), 2.5)
    assert torch.allclose(smooth_field(constant), constant)
    # a linear ramp stays a ramp inside (a symmetric kernel), and the gradient flows to every voxel
    ramp = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(1, 3, 10, 6, 6).clone().requires_grad_(True)
    out = smooth_field(ramp)
    assert torch.allclose(out[:, :, 2:-2], ramp[:, :, 2:-2])
    out.sum().backward()
    assert (ramp.grad > 0).all()


def test_smoothing_equals_the_five_tap_convolution_with_replicated_edges_forward_and_backward():
    field = torch.randn(1, 3, 6, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3),
                        requires_grad=True)
    weight = torch.randn(1, 3, 6, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    kernel = torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0], dtype=torch.float64) / 9.0
    expected = F.pad(field, [2] * 6, mode="replicate")
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = 5
        expected = F.conv3d(expected, kernel.view(shape).expand(3, -1, -1, -1, -1), groups=3)
    (expected_grad,) = torch.autograd.grad((expected * weight).sum(), field)
    got = smooth_field(field)
    (got_grad,) = torch.autograd.grad((got * weight).sum(), field)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("source, target", [((5, 1, 7), (9, 3, 13)), ((2, 3, 4), (5, 5, 5)), ((4, 6, 5), (4, 11, 9))])
def test_upsampling_equals_trilinear_interpolation_forward_and_backward(source, target):
    field = torch.randn(2, 3, *source, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                        requires_grad=True)
    grid = Grid(target[::-1], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    weight = torch.randn(2, 3, *target, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = F.interpolate(field, size=target, mode="trilinear", align_corners=True)
    (expected_grad,) = torch.autograd.grad((expected * weight).sum(), field)
    got = upsample(field, grid)
    (got_grad,) = torch.autograd.grad((got * weight).sum(), field)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-12)
