"""Training-time augmentation of one pair on its network grids, in torch, reproducible from a generator.

* Appearance: each scan's image in [0, 1] goes through its own random gamma curve
  (exponent in :data:`GAMMA_RANGE`), contrast and brightness change
  (:data:`CONTRAST_RANGE`, :data:`BRIGHTNESS_RANGE`) and Gaussian noise (sigma up to
  :data:`NOISE_MAX`), clipped back to [0, 1], so that the networks learn correspondence rather
  than the phantom renderer's exact grey values.
* Geometry: the moving image and its masks are resampled through a random smooth displacement
  of the moving network grid (random vectors on a :data:`LATTICE` control lattice, upsampled
  trilinearly; per-component standard deviation up to :data:`WARP_MAX` of the grid's extent along
  that axis), a new deformation on top of the pair's own. Masks become soft (trilinear), which the
  soft Dice loss takes as they are.

Validation pairs are never augmented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.fields import sample_normalized

GAMMA_RANGE = (0.7, 1.4)
CONTRAST_RANGE = (0.85, 1.15)
BRIGHTNESS_RANGE = (-0.05, 0.05)
NOISE_MAX = 0.02
LATTICE = (5, 4, 4)  # control points along z, y, x
WARP_MAX = 0.02  # the largest per-component standard deviation, as a fraction of the grid's extent


def _device(generator: torch.Generator | None) -> torch.device:
    """Where ``generator`` draws (torch's global generator: the CPU)."""
    return torch.device("cpu") if generator is None else generator.device


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, device=_device(generator)))


def appearance(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``image`` (in [0, 1]) through a random gamma, contrast, brightness and noise; clipped to [0, 1]."""
    gamma = _uniform(*GAMMA_RANGE, generator)
    contrast = _uniform(*CONTRAST_RANGE, generator)
    brightness = _uniform(*BRIGHTNESS_RANGE, generator)
    sigma = _uniform(0.0, NOISE_MAX, generator)
    noise = torch.randn(image.shape, generator=generator, device=_device(generator), dtype=image.dtype)
    noise = noise.to(image.device)
    return (image.clamp(0, 1) ** gamma * contrast + brightness + sigma * noise).clamp(0, 1)


def smooth_sampling_grid(shape_kji: tuple[int, int, int], generator: torch.Generator | None = None,
                         strength: float | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised sampling coordinates [1, K, J, I, 3] (grid_sample, align_corners=True) of a random smooth
    displacement; ``strength`` (fraction of the extent; default drawn up to :data:`WARP_MAX`) 0 is the identity."""
    strength = _uniform(0.0, WARP_MAX, generator) if strength is None else strength
    # a displacement that is a fraction f of an axis's extent is 2 f in normalised coordinates (-1..1)
    control = 2.0 * strength * torch.randn((1, 3, *LATTICE), generator=generator, device=_device(generator))
    control = control.to(device)
    field = F.interpolate(control, size=tuple(shape_kji), mode="trilinear", align_corners=True)
    identity = F.affine_grid(torch.eye(3, 4, device=device)[None], [1, 1, *shape_kji], align_corners=True)
    return identity + field.movedim(1, -1)


def augment(batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A new batch (of one pair, images [1, 1, K, J, I], masks [1, S, K, J, I]) with both appearances
    randomised and the moving scan deformed by one random smooth field; ``batch`` is left unchanged.
    Draws from ``generator`` (None: torch's global one)."""
    moving = batch["moving"]
    grid = smooth_sampling_grid(tuple(moving.shape[2:]), generator, device=moving.device)
    return {**batch,
            "fixed": appearance(batch["fixed"], generator),
            "moving": appearance(sample_normalized(batch["moving"], grid), generator),
            "moving_masks": sample_normalized(batch["moving_masks"].float(), grid)}
