"""The simulated patient: trunk profile, organ and vessel shapes, bone density and pose.

Anatomy frame: LPS mm with its origin on the spine axis at the T12/L1 disc
(x to the patient's left, y posterior, z superior); the pose maps it to the
scanner's LPS world (``world = rotation @ (scale * anatomy) + translation``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...registry import LABELS
from .shapes import Coords, Ellipsoid, RandomField, Tube, rotation

# Trunk profile along z (anatomy frame): inner cavity radii (rib cage / abdominal wall), muscle wall, fat weight.
TRUNK_Z = np.array([-660, -520, -420, -340, -280, -200, -100, 0, 100, 200, 280, 330, 360, 420], float)
CAVITY_RX = np.array([115, 115, 110, 115, 120, 125, 130, 135, 138, 130, 115, 100, 70, 45], float)
CAVITY_RY = np.array([75, 75, 75, 78, 80, 82, 88, 95, 98, 92, 80, 70, 60, 45], float)
WALL = np.array([40, 40, 30, 25, 18, 14, 12, 12, 12, 15, 35, 40, 25, 20], float)
FAT_WEIGHT = np.array([1.0, 1.0, 1.0, 1.1, 1.2, 1.4, 1.4, 1.2, 1.0, 0.8, 0.8, 0.8, 0.6, 0.5], float)
SPINE_Y = np.array([60, 60, 60, 62, 64, 50, 50, 58, 68, 66, 55, 45, 30, 25], float)  # vertebral body centre y
THORACIC_PITCH, LUMBAR_PITCH = 27.0, 38.0  # body + disc, mm (T1..T12 above z=0, L1..L5 below)


@dataclass
class Phantom:
    """One simulated patient: anatomy parameters, shapes and pose. Build with :func:`make_phantom`."""

    seed: int
    scale: tuple[float, float, float]  # anatomy scale per axis (habitus, height)
    fat: float  # subcutaneous fat thickness at the waist, mm
    male: bool
    removed: tuple[str, ...]  # "gallbladder", "kidney_left", "kidney_right", "prostate"
    organs: dict[str, tuple]  # structure -> shapes (union)
    vessels: dict[str, Tube]
    dome: tuple[float, float]  # right, left diaphragm dome height, mm
    contrast: float  # contrast uptake factor
    cortical: float  # cortical bone HU
    trabecular: float  # trabecular bone HU
    rotation: np.ndarray  # pose: world = rotation @ (scale * anatomy) + translation
    translation: np.ndarray
    fields: dict[str, RandomField] = field(repr=False, default_factory=dict)

    @property
    def present(self) -> tuple[str, ...]:
        """Structures this phantom has (all but those removed entirely)."""
        return tuple(s for s in LABELS if s not in self.removed)

    def to_world(self, anatomy_points: np.ndarray) -> np.ndarray:
        """Anatomy-frame points (..., 3) -> scanner LPS mm."""
        return (np.asarray(anatomy_points) * self.scale) @ self.rotation.T + self.translation

    def to_anatomy(self, world: torch.Tensor) -> Coords:
        """Scanner LPS points [P, 3] -> anatomy frame (x, y, z) tensors."""
        r = torch.as_tensor(self.rotation, dtype=world.dtype)
        t = torch.as_tensor(self.translation, dtype=world.dtype)
        a = (world - t) @ r
        return tuple(a[:, i] / self.scale[i] for i in range(3))

    def landmark(self, name: str) -> np.ndarray:
        """World position (LPS mm) of a named anatomical point (used to drive simulated motion)."""
        a = {
            "dome": (0.0, 0.0, max(self.dome)),
            "apex": (0.0, 0.0, 330.0),
            "pelvis": (0.0, 0.0, -300.0),
            "stomach": self.organs["stomach"][1].centre,
            "bladder": self.vessels["bladder"].points[0],
        }[name]
        return self.to_world(np.asarray(a, float))

    def torso_radii(self, z: float = 100.0) -> np.ndarray:
        """Outer (rx, ry) of the body at anatomy height ``z``, mm (world scale)."""
        fat = self.fat * np.interp(z, TRUNK_Z, FAT_WEIGHT)
        wall = np.interp(z, TRUNK_Z, WALL)
        return np.array([np.interp(z, TRUNK_Z, CAVITY_RX) + wall + fat,
                         np.interp(z, TRUNK_Z, CAVITY_RY) + wall + fat + 15]) * np.asarray(self.scale[:2])

    def body_box(self, z_range: tuple[float, float] = (-430.0, 380.0)) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned box around the body between anatomy heights ``z_range`` (excluding the table)."""
        zs = np.linspace(*z_range, 60)
        fat = self.fat * np.interp(zs, TRUNK_Z, FAT_WEIGHT)
        wall = np.interp(zs, TRUNK_Z, WALL)
        rx = np.interp(zs, TRUNK_Z, CAVITY_RX) + wall + fat
        ry = np.interp(zs, TRUNK_Z, CAVITY_RY) + wall + fat + 15
        theta = np.linspace(0, 2 * np.pi, 36)
        pts = np.stack([np.outer(rx, np.cos(theta)), 15 + np.outer(ry, np.sin(theta)),
                        np.repeat(zs[:, None], theta.size, 1)], -1).reshape(-1, 3)
        world = self.to_world(pts)
        return world.min(axis=0), world.max(axis=0)


def _wobble(rng: np.random.Generator, amplitude: float, terms: int = 3) -> tuple[tuple[float, ...], ...]:
    return tuple((float(rng.uniform(0.3, 1.0) * amplitude), *rng.normal(0, 1.6, 3).tolist(),
                  float(rng.uniform(0, 2 * np.pi))) for _ in range(terms))


def make_phantom(seed: int) -> Phantom:
    """A random patient: habitus, organ sizes, shapes and positions, missing organs, bone density, pose."""
    rng = np.random.default_rng(seed)
    jit = lambda s: rng.normal(0, s)  # noqa: E731
    size = lambda: rng.uniform(0.85, 1.18)  # noqa: E731
    male = bool(rng.random() < 0.6)
    removed = []
    if rng.random() < 0.15:
        removed.append("gallbladder")
    if rng.random() < 0.1:
        removed.append(str(rng.choice(["kidney_left", "kidney_right"])))
    if not male:
        removed.append("prostate")
    dome_r = 95 + jit(8)
    dome = (dome_r, dome_r - rng.uniform(8, 22))

    def ellipsoid(centre, radii, angles=(0, 0, 0), shift=8.0, grow=None, wobble=4.0):
        s = size() if grow is None else grow
        return Ellipsoid(tuple(float(c + jit(shift)) for c in centre), tuple(float(r * s) for r in radii),
                         tuple(float(a + jit(6)) for a in angles), _wobble(rng, wobble))

    organs = {
        "heart": (ellipsoid((22, -32, 150), (62, 48, 58), (10, -25, 30), wobble=3),),
        "liver": (ellipsoid((-62, -2, -5), (88, 80, 85), (0, 5, 10), wobble=6),
                  ellipsoid((15, -48, 35), (62, 34, 40), (0, -10, 15), wobble=4)),
        "spleen": (ellipsoid((100, 45, 30), (30, 52, 55), (0, 15, -25)),),
        "stomach": (ellipsoid((62, 5, 50), (40, 40, 42)),
                    ellipsoid((30, -45, -15), (52, 28, 48), (0, 35, -30))),
        "gallbladder": (ellipsoid((-55, -55, -70), (17, 19, 38), (-25, 0, 20), shift=5, wobble=2),),
        "kidney_right": (ellipsoid((-74, 55, -75), (24, 26, 50), (-15, 15, 30), shift=6, wobble=2),),
        "kidney_left": (ellipsoid((74, 55, -60), (24, 26, 50), (-15, -15, -30), shift=6, wobble=2),),
        "prostate": (ellipsoid((0, 0, -350), (21, 17, 20), shift=4, wobble=1.5),),
    }
    for side in ("kidney_left", "kidney_right"):  # a single kidney grows (compensatory hypertrophy)
        if side in removed:
            other = "kidney_right" if side == "kidney_left" else "kidney_left"
            e = organs[other][0]
            organs[other] = (Ellipsoid(e.centre, tuple(r * 1.1 for r in e.radii), e.angles, e.wobble),)
    organs = {k: v for k, v in organs.items() if k not in removed}
    pan = size()
    organs["pancreas"] = (Tube(((-38 + jit(5), 2, -55 + jit(6)), (-5, -8, -40 + jit(6)), (40, 5, -28 + jit(6)),
                                (85 + jit(6), 32, -5 + jit(6))), (20 * pan, 14 * pan, 12 * pan, 10 * pan)),)

    sy = lambda z: float(np.interp(z, TRUNK_Z, SPINE_Y))  # noqa: E731
    vessels = {
        "aorta": Tube(((10, -28, 190), (5, -12, 255), (18, 22, 255), (20, sy(200) - 32, 200), (20, sy(0) - 34, 0),
                       (12, sy(-120) - 36, -130)), (15, 14, 13, 12, 11, 10)),
        "iliac_left": Tube(((12, sy(-120) - 36, -130), (55, 15, -220), (85, -5, -300)), (7, 6.5, 6)),
        "iliac_right": Tube(((12, sy(-120) - 36, -130), (-50, 15, -220), (-85, -5, -300)), (7, 6.5, 6)),
        "ivc": Tube(((-22, sy(-130) - 30, -135), (-25, sy(0) - 36, 0), (-20, -2, 95)), (12, 13, 14)),
        "portal": Tube(((-35, -5, -45), (-62, 0, 5)), (7, 6)),
        "trachea": Tube(((0, -30, 430), (0, 0, 215), (-48, 12, 180)), (9, 9, 6)),
        "bronchus_left": Tube(((0, 0, 215), (48, 12, 178)), (8, 5.5)),
        "bladder": Tube(((0, -30, -305), (0, -25, -300)), (float(rng.uniform(30, 48)),) * 2),
        "rectum": Tube(((0, 40, -370), (0, 55, -310), (5, 60, -260)), (14, 16, 16)),
        "psoas_left": Tube(((30, sy(-10), -10), (48, sy(-150) - 15, -150), (75, -5, -290)), (9, 21, 17)),
        "psoas_right": Tube(((-30, sy(-10), -10), (-48, sy(-150) - 15, -150), (-75, -5, -290)), (9, 21, 17)),
    }
    habitus = rng.uniform(0.92, 1.08)
    scale = (habitus * rng.uniform(0.96, 1.04), habitus * rng.uniform(0.96, 1.04), rng.uniform(0.92, 1.08))
    roll = rotation((jit(0.4), jit(0.4), jit(2.5)))
    translation = np.array([jit(15), -20 + jit(10), jit(40)])
    fields = {
        "texture": RandomField(rng, (6, 20), 12),
        "vessel_a": RandomField(rng, (25, 60), 10),
        "vessel_b": RandomField(rng, (25, 60), 10),
        "bowel": RandomField(rng, (40, 90), 10),
        "bowel_gas": RandomField(rng, (25, 60), 8),
    }
    return Phantom(seed=seed, scale=scale, fat=float(rng.uniform(8, 55)), male=male, removed=tuple(removed),
                   organs=organs, vessels=vessels, dome=(float(dome[0]), float(dome[1])),
                   contrast=float(rng.uniform(0.8, 1.2)), cortical=float(rng.uniform(900, 1400)),
                   trabecular=float(rng.uniform(120, 280)), rotation=roll, translation=translation, fields=fields)
