"""The optimiser's field low-pass: two 3-voxel box averages in one separable pass, edges replicated."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from TotalRegistratorLib.optimization.optimizer import smooth_field


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
