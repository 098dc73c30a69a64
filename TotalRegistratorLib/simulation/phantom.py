"""Procedural thorax-abdomen-pelvis CT phantom with a label map of the paper's structures.

The anatomy is analytic: every structure is a signed-distance-like function
(mm, negative inside) of a point in the *anatomy frame*, which is LPS mm with
its origin on the spine axis at the T12/L1 disc (x to the patient's left, y
posterior, z superior). A :class:`Phantom` holds one patient's parameters and
its pose (anatomy frame -> scanner LPS world). :func:`render` evaluates it at
the voxel centres of any :class:`~TotalRegistratorLib.core.grid.Grid`, optionally
through a pullback map ``g`` (this image's world point -> the reference scan's
world point), so a deformed copy of the same patient is exact: if the moving
scan is rendered plainly and the fixed one through ``g``, then
``fixed(x) = moving(g(x))`` and the ground-truth field is ``u(x) = g(x) - x``.

Intensities are Hounsfield units (air -1000, fat about -100, soft tissue 30-60,
organs enhanced per contrast phase, cortical and trabecular bone), with a
smooth tissue texture fixed to the anatomy, partial volume at edges (a linear
ramp one voxel wide), white noise scaled by voxel volume, and a patient table
fixed in the scanner. Label ids come from :data:`TotalRegistratorLib.io.labels.LABELS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from ..core.grid import Grid
from ..io.labels import LABELS

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
Coords = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# --- shape primitives (points as three 1-D tensors x, y, z) ----------------------------------------
def _rotation(angles_deg) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx from angles about x, y, z (degrees)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid (centre, radii mm, rotation angles deg) with a random low-frequency surface wobble."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    angles: tuple[float, float, float] = (0.0, 0.0, 0.0)
    wobble: tuple[tuple[float, ...], ...] = ()  # (amplitude mm, kx, ky, kz, phase) per term

    def local(self, p: Coords) -> Coords:
        r = _rotation(self.angles)  # local = R^T (p - c)
        d = [p[i] - self.centre[i] for i in range(3)]
        return tuple(d[0] * r[0, i] + d[1] * r[1, i] + d[2] * r[2, i] for i in range(3))

    def sd(self, p: Coords) -> torch.Tensor:
        q = self.local(p)
        n = [q[i] / self.radii[i] for i in range(3)]
        k0 = torch.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2)
        k1 = torch.sqrt(sum((q[i] / self.radii[i] ** 2) ** 2 for i in range(3))).clamp_min(1e-6)
        sd = k0 * (k0 - 1) / k1
        for amp, kx, ky, kz, phase in self.wobble:
            sd = sd - amp * torch.cos(kx * n[0] + ky * n[1] + kz * n[2] + phase)
        return sd

    def z_range(self) -> tuple[float, float]:
        extent = max(self.radii) + sum(abs(w[0]) for w in self.wobble)
        return self.centre[2] - extent, self.centre[2] + extent


@dataclass(frozen=True)
class Tube:
    """Capsule chain through ``points`` with radius interpolated linearly along each segment."""

    points: tuple[tuple[float, float, float], ...]
    radii: tuple[float, ...]

    def sd(self, p: Coords) -> torch.Tensor:
        best = None
        for a, b, ra, rb in zip(self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:], strict=True):
            ab = [b[i] - a[i] for i in range(3)]
            length2 = max(sum(c * c for c in ab), 1e-9)
            ap = [p[i] - a[i] for i in range(3)]
            t = ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / length2).clamp(0, 1)
            dist = torch.sqrt(sum((ap[i] - t * ab[i]) ** 2 for i in range(3)))
            sd = dist - (ra + t * (rb - ra))
            best = sd if best is None else torch.minimum(best, sd)
        return best

    def z_range(self) -> tuple[float, float]:
        zs = [q[2] for q in self.points]
        return min(zs) - max(self.radii), max(zs) + max(self.radii)


class RandomField:
    """Smooth random function of position (unit variance), a sum of random plane waves."""

    def __init__(self, rng: np.random.Generator, wavelength: tuple[float, float], terms: int = 12):
        directions = rng.normal(size=(3, terms))
        directions /= np.linalg.norm(directions, axis=0)
        k = 2 * np.pi / rng.uniform(*wavelength, size=terms)
        self.k = torch.as_tensor(directions * k, dtype=torch.float32)
        self.phase = torch.as_tensor(rng.uniform(0, 2 * np.pi, terms), dtype=torch.float32)
        self.scale = float(np.sqrt(2.0 / terms))

    def __call__(self, p: Coords) -> torch.Tensor:
        arg = torch.stack(p, dim=-1) @ self.k + self.phase
        return torch.cos(arg).sum(dim=-1) * self.scale


def _interp(z: torch.Tensor, knots: np.ndarray, values: np.ndarray) -> torch.Tensor:
    """Piecewise-linear profile over descending-free ``knots`` (ascending z), constant beyond the ends."""
    kz = torch.as_tensor(knots, dtype=z.dtype)
    kv = torch.as_tensor(values, dtype=z.dtype)
    idx = torch.bucketize(z, kz).clamp(1, len(knots) - 1)
    z0, z1, v0, v1 = kz[idx - 1], kz[idx], kv[idx - 1], kv[idx]
    t = ((z - z0) / (z1 - z0)).clamp(0, 1)
    return v0 + t * (v1 - v0)


def _ellipse_sd(dx: torch.Tensor, dy: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipse in the xy plane (mm)."""
    k0 = torch.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    k1 = torch.sqrt((dx / rx**2) ** 2 + (dy / ry**2) ** 2).clamp_min(1e-6)
    return k0 * (k0 - 1) / k1


# --- the patient -----------------------------------------------------------------------------------
# Trunk profile along z (anatomy frame): inner cavity radii (rib cage / abdominal wall), muscle wall, fat weight.
_TRUNK_Z = np.array([-660, -520, -420, -340, -280, -200, -100, 0, 100, 200, 280, 330, 360, 420], float)
_CAVITY_RX = np.array([115, 115, 110, 115, 120, 125, 130, 135, 138, 130, 115, 100, 70, 45], float)
_CAVITY_RY = np.array([75, 75, 75, 78, 80, 82, 88, 95, 98, 92, 80, 70, 60, 45], float)
_WALL = np.array([40, 40, 30, 25, 18, 14, 12, 12, 12, 15, 35, 40, 25, 20], float)
_FAT_WEIGHT = np.array([1.0, 1.0, 1.0, 1.1, 1.2, 1.4, 1.4, 1.2, 1.0, 0.8, 0.8, 0.8, 0.6, 0.5], float)
_SPINE_Y = np.array([60, 60, 60, 62, 64, 50, 50, 58, 68, 66, 55, 45, 30, 25], float)  # vertebral body centre y
_THORACIC_PITCH, _LUMBAR_PITCH = 27.0, 38.0  # body + disc, mm (T1..T12 above z=0, L1..L5 below)


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
        fat = self.fat * np.interp(z, _TRUNK_Z, _FAT_WEIGHT)
        wall = np.interp(z, _TRUNK_Z, _WALL)
        return np.array([np.interp(z, _TRUNK_Z, _CAVITY_RX) + wall + fat,
                         np.interp(z, _TRUNK_Z, _CAVITY_RY) + wall + fat + 15]) * np.asarray(self.scale[:2])

    def body_box(self, z_range: tuple[float, float] = (-430.0, 380.0)) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned box around the body between anatomy heights ``z_range`` (excluding the table)."""
        zs = np.linspace(*z_range, 60)
        fat = self.fat * np.interp(zs, _TRUNK_Z, _FAT_WEIGHT)
        wall = np.interp(zs, _TRUNK_Z, _WALL)
        rx = np.interp(zs, _TRUNK_Z, _CAVITY_RX) + wall + fat
        ry = np.interp(zs, _TRUNK_Z, _CAVITY_RY) + wall + fat + 15
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

    sy = lambda z: float(np.interp(z, _TRUNK_Z, _SPINE_Y))  # noqa: E731
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
    roll = _rotation((jit(0.4), jit(0.4), jit(2.5)))
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


# --- rendering -------------------------------------------------------------------------------------
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
    return ScanState(phase=phase or str(rng.choice(PHASES)), stomach_gas=float(rng.uniform(0.05, 0.6)),
                     bowel_gas=float(rng.uniform(0.1, 0.4)), lung_hu=float(rng.uniform(-880, -800)),
                     noise=float(rng.uniform(20, 45)), noise_seed=int(rng.integers(2**31)))


class _Canvas:
    """Painter's-algorithm compositing of HU and labels over one chunk of points."""

    def __init__(self, points: Coords, width: float):
        self.points = points
        self.hu = torch.full((points[0].numel(),), -1000.0)
        self.label = torch.zeros(points[0].numel(), dtype=torch.uint8)
        self.width = width

    def paint(self, sd: torch.Tensor, value, label: int | None = None, where: torch.Tensor | None = None) -> None:
        occ = (0.5 - sd / self.width).clamp(0, 1)
        if where is None:
            self.hu += occ * (value - self.hu)
            if label is not None:
                self.label[sd < 0] = label
        else:
            self.hu[where] += occ * (value - self.hu[where])
            if label is not None:
                self.label[where] = torch.where(sd < 0, torch.tensor(label, dtype=torch.uint8), self.label[where])


def _enhanced(ph: Phantom, state: ScanState, tissue: str) -> float:
    native, *phases = _ENHANCED[tissue]
    value = {"native": native, "arterial": phases[0], "portal_venous": phases[1]}[state.phase]
    return native + ph.contrast * (value - native)


def _spine(ph: Phantom, p: Coords, canvas: _Canvas) -> None:
    """Vertebrae T1..L5 with discs, spinal canal, posterior elements, and the sacrum."""
    x, y, z = p
    tops = np.concatenate([12 * _THORACIC_PITCH + 20.0 * np.arange(3, 0, -1), _THORACIC_PITCH * np.arange(12, 0, -1),
                           [0.0], -_LUMBAR_PITCH * np.arange(1, 6)])
    centres = torch.as_tensor((tops[:-1] + tops[1:]) / 2, dtype=z.dtype)  # C5..L5, descending
    heights = torch.as_tensor(tops[:-1] - tops[1:], dtype=z.dtype)
    order = torch.argsort(centres)
    nearest = order[torch.bucketize(z, (centres[order][1:] + centres[order][:-1]) / 2)]
    zc, pitch = centres[nearest], heights[nearest]
    dz = (z - zc).abs()
    yb = _interp(z, _TRUNK_Z, _SPINE_Y)
    rb = 14 + 10 * ((324 - zc) / 514).clamp(0, 1)  # vertebral body radius grows caudally
    disc = 0.2 * pitch
    radial = _ellipse_sd(x, y - yb, rb * 1.15, rb * 0.85)
    body = torch.maximum(radial, dz - (pitch - disc) / 2)
    canvas.paint(torch.maximum(radial, dz - pitch / 2 - 1), 90.0)  # disc (continuous column), then bone
    canal_y = yb + rb * 0.85 + 9
    ring = torch.sqrt(x**2 + (y - canal_y) ** 2)
    arch = torch.maximum((ring - 12).abs() - 3, dz - pitch * 0.38)
    spinous = torch.maximum(torch.maximum(x.abs() - 4, (y - canal_y - 32).abs() - 18),
                            (z - zc + 0.4 * (y - canal_y)).abs() - pitch * 0.25)
    transverse = torch.maximum(torch.maximum(x.abs() - 30, (y - canal_y).abs() - 5), dz - 6)
    bone = torch.minimum(torch.minimum(body, arch), torch.minimum(spinous, transverse))
    sacrum = Ellipsoid((0.0, 72.0, -245.0), (46.0, 16.0, 62.0), (-30.0, 0.0, 0.0)).sd(p)
    bone = torch.where(z < tops[-1] + 5, torch.minimum(bone, sacrum), bone)
    _bone(ph, canvas, bone, LABELS["vertebrae"])
    canvas.paint(torch.maximum(ring - 9, -200 - z), 25.0)  # spinal canal: cord and CSF


def _bone(ph: Phantom, canvas: _Canvas, sd: torch.Tensor, label: int) -> None:
    texture = ph.fields["texture"]
    canvas.paint(sd, ph.cortical, label)
    inner = sd + 2.5
    inside = inner < canvas.width
    if inside.any():
        pts = tuple(c[inside] for c in canvas.points)
        canvas.paint(inner[inside], ph.trabecular + 60 * texture(pts), where=inside)


def _ribs(ph: Phantom, p: Coords, cavity_sd: torch.Tensor, canvas: _Canvas) -> None:
    """Twelve rib pairs along the cage (sloping down anteriorly), costal cartilages and the sternum."""
    x, y, z = p
    theta = torch.atan2(y, x.abs())  # +90 deg posterior midline, -90 deg anterior midline
    anterior = (1 - torch.sin(theta)) / 2  # 0 posterior .. 1 anterior
    top = 12 * _THORACIC_PITCH - 8
    drop = 55 + 35 * anterior
    n = ((top - drop * anterior - z) / _THORACIC_PITCH).round().clamp(0, 11)
    dz = z - (top - drop * anterior - n * _THORACIC_PITCH)
    radial = cavity_sd - 6
    section = torch.sqrt((radial / 5) ** 2 + (dz / 7) ** 2)
    sd = (section - 1) * 5
    bony_end = 0.72 - 0.025 * (n - 6).clamp(min=0) - 0.1 * (n >= 10).float()  # floating ribs are short
    behind_spine = torch.maximum(x.abs() - 25, 45 - y)  # ribs end at the transverse processes
    sd = torch.maximum(sd, -behind_spine)
    bone = torch.maximum(sd, anterior - bony_end)
    cartilage = torch.maximum(torch.maximum(sd, bony_end - anterior), (n - 9.5) * 20)
    cartilage = torch.maximum(cartilage, 14 - x.abs())
    sternum = torch.stack([x.abs() - 16, (cavity_sd - 4).abs() - 7, (z - (top - 150)).abs() - 95, y]).amax(0)
    _bone(ph, canvas, torch.minimum(bone, sternum), LABELS["ribs"])
    canvas.paint(cartilage, 120.0, LABELS["ribs"])


def _pelvis(ph: Phantom, p: Coords, canvas: _Canvas) -> None:
    """Iliac wings, acetabula, pubic and ischial rami, femoral heads, necks and shafts."""
    x, y, z = p
    parts = []
    for s in (-1.0, 1.0):
        wing = Ellipsoid((s * 20, 30, -225), (112, 78, 100), (0, s * 10, 0)).sd(p).abs() - 5
        wing = torch.maximum(wing, torch.maximum(z + 125, -(z + 290)))
        wing = torch.maximum(wing, torch.maximum(40 - s * x, y - 75))
        head = np.array([s * 92, -5, -300])
        parts += [wing,
                  Ellipsoid(tuple(head), (31, 31, 31)).sd(p).abs() - 5,
                  Tube((tuple(head + [-s * 5, -5, -15]), (s * 10, -62, -328)), (11, 9)).sd(p),
                  Tube((tuple(head + [-s * 8, 10, -20]), (s * 58, 32, -362)), (13, 12)).sd(p),
                  Tube((tuple(head), (s * 135, 5, -330), (s * 122, 10, -620)), (23, 16, 15)).sd(p),
                  Ellipsoid((s * 138, 12, -322), (20, 22, 22)).sd(p)]
    _bone(ph, canvas, torch.stack(parts).amin(dim=0), LABELS["pelvis_bone"])


def _diaphragm(ph: Phantom, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Height of the diaphragm surface: the upper envelope of two domes."""
    right = ph.dome[0] - 0.0045 * (x + 65) ** 2 - 0.004 * (y + 5) ** 2
    left = ph.dome[1] - 0.0045 * (x - 65) ** 2 - 0.004 * (y + 5) ** 2
    return torch.maximum(right, left)


def _union(shapes, p: Coords) -> torch.Tensor:
    sds = [s.sd(p) for s in shapes]
    return torch.stack(sds).amin(dim=0) if len(sds) > 1 else sds[0]


def _overlaps(shape, z: torch.Tensor) -> bool:
    lo, hi = shape.z_range()
    return bool(z.max() >= lo - 10) and bool(z.min() <= hi + 10)


def _render_points(ph: Phantom, state: ScanState, anatomy: Coords, world: torch.Tensor, width: float,
                   table_y: float) -> tuple[torch.Tensor, torch.Tensor]:
    """HU and labels at anatomy points (their scanner positions ``world`` place the table)."""
    x, y, z = anatomy
    canvas = _Canvas(anatomy, width)
    f = ph.fields
    texture = f["texture"](anatomy)

    # patient table (scanner frame): a curved carbon shell with a foam core, 5 cm thick
    wx, wy = world[:, 0], world[:, 1]
    curve = table_y - 0.0004 * wx**2
    table = torch.maximum((wy - curve - 25).abs() - 25, wx.abs() - 240)
    canvas.paint(table, 150.0)
    canvas.paint(torch.maximum((wy - curve - 25).abs() - 22, wx.abs() - 237), -850.0)

    # trunk layers: fat, muscle wall, cavity
    fat = ph.fat * _interp(z, _TRUNK_Z, _FAT_WEIGHT)
    wall = _interp(z, _TRUNK_Z, _WALL)
    rx, ry = _interp(z, _TRUNK_Z, _CAVITY_RX), _interp(z, _TRUNK_Z, _CAVITY_RY)
    cavity = _ellipse_sd(x, y, rx, ry)
    canvas.paint(_ellipse_sd(x, y - 15, rx + wall + fat, ry + wall + fat + 15), -100.0 + 12 * texture)
    canvas.paint(_ellipse_sd(x, y - 15, rx + wall, ry + wall + 15), 50.0 + 5 * texture)
    dia = _diaphragm(ph, x, y)
    abdomen = torch.maximum(cavity, z - dia - 4)
    canvas.paint(abdomen, -90.0 + 12 * texture)  # visceral fat

    # bowel loops, some holding gas, in the abdominopelvic cavity
    belly = (abdomen < 0) & (z > -330)
    if belly.any():
        pts = tuple(c[belly] for c in anatomy)
        loops = f["bowel"](pts).abs() - 0.55
        gas = f["bowel_gas"](pts) - (1.4 - 2.4 * state.bowel_gas)
        canvas.paint(loops * 20, _enhanced(ph, state, "bowel_wall"), where=belly)
        canvas.paint(torch.maximum(loops * 20 + 3, -gas * 15), -950.0, where=belly)

    v = ph.vessels
    for name in ("psoas_left", "psoas_right"):
        canvas.paint(v[name].sd(anatomy), 52.0 + 5 * texture)
    if _overlaps(v["bladder"], z) or _overlaps(v["rectum"], z):
        canvas.paint(v["bladder"].sd(anatomy), 8.0)
        canvas.paint(v["rectum"].sd(anatomy), 35.0)
        canvas.paint(v["rectum"].sd(anatomy) + 4, -950.0)
    aorta = v["aorta"].sd(anatomy)
    canvas.paint(aorta, _enhanced(ph, state, "aorta"))
    for name in ("iliac_left", "iliac_right"):
        canvas.paint(v[name].sd(anatomy), _enhanced(ph, state, "aorta"))
    canvas.paint(v["ivc"].sd(anatomy), _enhanced(ph, state, "vein"))

    o = ph.organs
    below = lambda sd, gap=5.0: torch.maximum(torch.maximum(sd, z - dia + gap), cavity + 2)  # noqa: E731
    spleen_var = 25.0 if state.phase == "arterial" else 5.0  # arterial "zebra" spleen
    canvas.paint(below(_union(o["spleen"], anatomy)), _enhanced(ph, state, "spleen") + spleen_var * texture,
                 LABELS["spleen"])
    canvas.paint(below(_union(o["liver"], anatomy)), _enhanced(ph, state, "liver") + 6 * texture, LABELS["liver"])
    canvas.paint(v["portal"].sd(anatomy), _enhanced(ph, state, "vein"))
    for side in ("kidney_left", "kidney_right"):
        if side in o and _overlaps(o[side][0], z):
            sd = o[side][0].sd(anatomy)
            canvas.paint(sd, _enhanced(ph, state, "kidney_cortex") + 4 * texture, LABELS["kidney"])
            canvas.paint(sd + 7, _enhanced(ph, state, "kidney_medulla"))
    if "gallbladder" in o:
        canvas.paint(below(o["gallbladder"][0].sd(anatomy)), 12.0, LABELS["gallbladder"])
    canvas.paint(o["pancreas"][0].sd(anatomy), _enhanced(ph, state, "pancreas") + 8 * texture, LABELS["pancreas"])
    stomach = below(_union(o["stomach"], anatomy), 4.0)
    fundus = o["stomach"][0]
    gas_level = fundus.centre[1] - fundus.radii[1] * (1 - 2 * state.stomach_gas)
    canvas.paint(stomach, _enhanced(ph, state, "bowel_wall"), LABELS["stomach"])
    canvas.paint(torch.maximum(stomach + 4, y - gas_level), -1000.0)
    canvas.paint(torch.maximum(stomach + 4, gas_level - y), 15.0)
    if "prostate" in o:
        canvas.paint(o["prostate"][0].sd(anatomy), _enhanced(ph, state, "prostate") + 5 * texture,
                     LABELS["prostate"])

    # thorax: lungs with vessels, heart, airways
    if bool(z.max() > min(ph.dome) - 60):
        heart = torch.maximum(o["heart"][0].sd(anatomy), dia + 3 - z)
        mediastinum = 18 + 0.03 * (z - 150).clamp(min=0)
        spine_col = _ellipse_sd(x, y - _interp(z, _TRUNK_Z, _SPINE_Y), torch.full_like(x, 32.0),
                                torch.full_like(x, 40.0))
        apex = z - 335 + 0.004 * (x.abs() - 60) ** 2
        lung = torch.stack([cavity + 3, dia + 2 - z, mediastinum - x.abs(), 8 - heart, 8 - spine_col, 5 - aorta,
                            apex]).amax(0)
        inside = lung < canvas.width
        if inside.any():
            pts = tuple(c[inside] for c in anatomy)
            hilum = torch.sqrt((pts[0].abs() - 45) ** 2 + (pts[1] - 5) ** 2 + (pts[2] - 180) ** 2)
            tube = (f["vessel_a"](pts) ** 2 + f["vessel_b"](pts) ** 2) / (0.015 + 0.25 * torch.exp(-hilum / 60))
            parenchyma = state.lung_hu + 20 * texture[inside]
            vessel_hu = _enhanced(ph, state, "vein")
            value = parenchyma + (vessel_hu - parenchyma) * torch.exp(-tube)
            canvas.paint(lung[inside], value, LABELS["lung"], where=inside)
        canvas.paint(heart, _enhanced(ph, state, "heart") + 4 * texture, LABELS["heart"])
        for name in ("trachea", "bronchus_left"):
            canvas.paint(v[name].sd(anatomy), 40.0)
            canvas.paint(v[name].sd(anatomy) + 2.5, -1000.0)
    _spine(ph, anatomy, canvas)
    _ribs(ph, anatomy, cavity, canvas)  # on every chunk: no simple height bound holds for the lowest ribs
    if bool(z.min() < -110):
        _pelvis(ph, anatomy, canvas)
    return canvas.hu, canvas.label


Mapping = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Scan:
    """A rendered CT (int16 HU) and its label map (uint8 structure ids) on the same grid."""

    image: sitk.Image
    labels: sitk.Image


def table_height(ph: Phantom) -> float:
    """World y of the table top: a few mm behind the patient's back."""
    return float(ph.body_box()[1][1] + 4.0)


def world_point_chunks(grid: Grid, chunk: int = 1 << 18) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The grid's voxel centres in whole slices of about ``chunk`` points: (start, stop, LPS points [P, 3] float64),
    with start/stop indexing the flattened [K, J, I] array."""
    k_size, j_size, i_size = grid.shape
    m = torch.as_tensor(grid.index_to_world, dtype=torch.float64)
    j, i = torch.meshgrid(torch.arange(j_size, dtype=torch.float64), torch.arange(i_size, dtype=torch.float64),
                          indexing="ij")
    plane = torch.stack([i.ravel(), j.ravel()], -1)
    slices = max(1, chunk // plane.shape[0])
    for k0 in range(0, k_size, slices):
        k = torch.arange(k0, min(k0 + slices, k_size), dtype=torch.float64)
        idx = torch.cat([plane.repeat(len(k), 1), k.repeat_interleave(plane.shape[0])[:, None]], 1)
        yield k0 * plane.shape[0], (k0 + len(k)) * plane.shape[0], idx @ m[:3, :3].T + m[:3, 3]


def render(ph: Phantom, grid: Grid, state: ScanState | None = None, mapping: Mapping | None = None,
           chunk: int = 1 << 18) -> Scan:
    """Render the phantom on ``grid``; ``mapping`` (a pullback to the reference pose) deforms the anatomy only.

    The table stays in this image's scanner frame. Labels are the structure at
    each voxel centre; intensities ramp over one voxel at every edge.
    """
    state = state or ScanState()
    width = float(np.prod(grid.spacing) ** (1 / 3))
    table_y = table_height(ph)
    hu = np.empty(grid.num_voxels, np.float32)
    labels = np.empty(grid.num_voxels, np.uint8)
    for start, stop, world in world_point_chunks(grid, chunk):
        mapped = world if mapping is None else mapping(world)
        h, lab = _render_points(ph, state, ph.to_anatomy(mapped.float()), world.float(), width, table_y)
        hu[start:stop], labels[start:stop] = h.numpy(), lab.numpy()
    rng = np.random.default_rng(state.noise_seed)
    sigma = max(state.noise / np.sqrt(np.prod(grid.spacing)), 2.0)
    hu += rng.normal(0, sigma, hu.size).astype(np.float32)
    image = sitk.GetImageFromArray(np.clip(np.round(hu), -1024, 3071).astype(np.int16).reshape(grid.shape))
    label_image = sitk.GetImageFromArray(labels.reshape(grid.shape))
    return Scan(grid.apply_to(image), grid.apply_to(label_image))


# --- scan geometry ---------------------------------------------------------------------------------
SLICE_THICKNESSES = (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
LPS_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # NIfTI written from RAS


def scan_grid(ph: Phantom, rng: np.random.Generator, spacing=None, size=None, cover: np.ndarray | None = None) -> Grid:
    """A scanner-like grid for the phantom: chest-abdomen-pelvis range, square in-plane field of view,
    in-plane 0.6-1 mm and slices 0.8-5 mm (unless ``spacing`` (mm, scalar or x, y, z) or ``size`` is given),
    stored as DICOM (LPS identity) or RAS-style NIfTI (direction diag(-1, -1, 1)).

    ``cover`` (n, 3): world points the scan must include (it grows to cover them).
    """
    lower, upper = ph.body_box((rng.uniform(-440, -400), rng.uniform(335, 380)))
    upper[1] = table_height(ph) + 50  # the table is in the field of view
    centre_xy = (lower[:2] + upper[:2]) / 2
    half = np.max(upper[:2] - lower[:2]) / 2 + rng.uniform(10, 40)
    lower[:2], upper[:2] = centre_xy - half, centre_xy + half
    if cover is not None:
        lower, upper = np.minimum(lower, cover.min(axis=0) - 5), np.maximum(upper, cover.max(axis=0) + 5)
    if size is not None:
        grid = Grid.covering(lower, upper, size=size)
    else:
        if spacing is None:
            in_plane = np.clip((upper[0] - lower[0]) / 512, 0.6, 1.0)
            spacing = (in_plane, in_plane, float(rng.choice(SLICE_THICKNESSES)))
        grid = Grid.covering(lower, upper, spacing=spacing)
    if rng.random() < 0.5:
        return grid
    # the same box stored RAS-style: index 0 at the right-anterior corner
    first = grid.transform_indices(np.array([grid.size[0] - 1, grid.size[1] - 1, 0]))
    return Grid(grid.size, grid.spacing, tuple(first), RAS_DIRECTION)
