"""The optimiser's Adam: torch.optim.Adam's updates, without importing torch's compiler."""

from __future__ import annotations

import subprocess
import sys

import torch

from TotalRegistratorLib.optimization.adam import Adam


def test_steps_equal_torch_adam_with_a_changing_learning_rate():
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 5, generator=generator, dtype=torch.float64), torch.randn(3, generator=generator,
                                                                                     dtype=torch.float64)]
    ours_params = [p.clone().requires_grad_(True) for p in start]
    torch_params = [p.clone().requires_grad_(True) for p in start]
    ours = Adam(ours_params, lr=0.1, eps=1e-2)
    reference = torch.optim.Adam(torch_params, lr=0.1, eps=1e-2)
    target = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in start]
    for step in range(25):
        lr = 0.1 * (1 - step / 30)
        ours.lr = lr
        for group in reference.param_groups:
            group["lr"] = lr
        for optimizer, params in ((ours, ours_params), (reference, torch_params)):
            optimizer.zero_grad()
            sum(((p - t) ** 4).sum() for p, t in zip(params, target)).backward()
            optimizer.step()
    for a, b in zip(ours_params, torch_params):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert not torch.allclose(ours_params[0], start[0])


def test_a_registration_does_not_import_torchs_compiler():
    """torch.optim's first step imports torch._dynamo (1.3-1.9 s a process here); a registration must not."""
    code = """
import sys
import numpy as np, SimpleITK as sitk
from TotalRegistratorLib.core.preprocess import Scan
from TotalRegistratorLib.optimization.instance import optimize_pair
from TotalRegistratorLib.optimization.optimizer import OptimizationSettings
z, y, x = np.mgrid[:40, :40, :40]
body = np.where((x - 20.0) ** 2 + (y - 20.0) ** 2 + (z - 20.0) ** 2 < 15 ** 2, 40.0, -1000.0)
body[18:22, 10:30, 12:16] = 400.0
image = sitk.GetImageFromArray(body.astype(np.float32))
image.SetSpacing((4.0, 4.0, 4.0))
settings = OptimizationSettings(spacing=4.0, affine_iterations=(3, 2), deformable_iterations=(3, 2))
optimize_pair(Scan(image), Scan(image), settings)
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
