"""Hounsfield units of the phantom: contrast phases, the per-scan state, and painter's compositing.

Air -1000 HU; each structure is painted over what lies below it with a linear
partial-volume ramp one voxel (``width`` mm) wide at its edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .anatomy import Phantom
from .shapes import Coords

PHASES = ("native", "arterial", "portal_venous")

# Enhancement (HU) by contrast phase; each phantom scales the contrast uptake by a random factor.
_ENHANCED = {
    #                 native arterial portal_venous
    "aorta": (45, 320, 170),
    "vein": (42, 90, 160),
    "heart": (45, 240, 150),
    "liver": (58, 75, 115),
    "spleen": (48, 125, 120),
    "kidney_cortex": (35, 200, 170),
    "kidney_medulla": (33, 80, 150),
    "pancreas": (42, 120, 95),
    "bowel_wall": (38, 70, 85),
    "prostate": (40, 60, 70),
}


@dataclass(frozen=True)
class ScanState:
    """What differs between two scans of one patient besides motion: contrast, filling, breath, noise."""

    phase: str = "portal_venous"
    stomach_gas: float = 0.3  # fraction of the stomach's depth filled with gas (anterior)
    bowel_gas: float = 0.25  # fraction of bowel loops holding gas
    lung_hu: float = -850.0  # parenchyma: lower in deep inspiration
    noise: float = 30.0  # noise standard deviation (HU) for a 1 mm^3 voxel
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"unknown contrast phase {self.phase!r} (use one of {', '.join(PHASES)})")


def random_state(rng: np.random.Generator, phase: str | None = None) -> ScanState:
    """A random scan: ``phase`` (or a random one), gas fillings, lung HU, noise level and noise seed."""
    return ScanState(phase=phase or str(rng.choice(PHASES)), stomach_gas=float(rng.uniform(0.05, 0.6)),
                     bowel_gas=float(rng.uniform(0.1, 0.4)), lung_hu=float(rng.uniform(-880, -800)),
                     noise=float(rng.uniform(20, 45)), noise_seed=int(rng.integers(2**31)))


class Canvas:
    """Painter's-algorithm compositing of HU and labels over one chunk of points."""

    def __init__(self, points: Coords, width: float):
        self.points = points
        self.hu = torch.full((points[0].numel(),), -1000.0)
        self.label = torch.zeros(points[0].numel(), dtype=torch.uint8)
        self.width = width

    def paint(self, sd: torch.Tensor, value: float | torch.Tensor, label: int | None = None,
              where: torch.Tensor | None = None) -> None:
        """Blend ``value`` (HU) in by occupancy ``0.5 - sd / width`` (clipped to 0..1); ``label`` where ``sd`` < 0.

        ``sd`` (mm) is given at all points, or only at the points selected by the mask ``where``.
        """
        occ = (0.5 - sd / self.width).clamp(0, 1)
        if where is None:
            self.hu += occ * (value - self.hu)
            if label is not None:
                self.label[sd < 0] = label
        else:
            self.hu[where] += occ * (value - self.hu[where])
            if label is not None:
                self.label[where] = torch.where(sd < 0, torch.tensor(label, dtype=torch.uint8), self.label[where])


def enhanced(ph: Phantom, state: ScanState, tissue: str) -> float:
    """HU of an enhancing ``tissue`` in this scan's phase, scaled by the patient's contrast uptake."""
    native, *phases = _ENHANCED[tissue]
    value = {"native": native, "arterial": phases[0], "portal_venous": phases[1]}[state.phase]
    return native + ph.contrast * (value - native)


def paint_bone(ph: Phantom, canvas: Canvas, sd: torch.Tensor, label: int) -> None:
    """Bone inside ``sd``: a cortical shell 2.5 mm thick around textured trabecular bone."""
    texture = ph.fields["texture"]
    canvas.paint(sd, ph.cortical, label)
    inner = sd + 2.5
    inside = inner < canvas.width
    if inside.any():
        pts = tuple(c[inside] for c in canvas.points)
        canvas.paint(inner[inside], ph.trabecular + 60 * texture(pts), where=inside)
