"""Shape primitives of the phantom: signed distances (mm, negative inside) of anatomy-frame points.

Points are three 1-D float tensors ``(x, y, z)`` (:data:`Coords`), LPS mm in
the anatomy frame; rotations are in degrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

Coords = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def rotation(angles_deg: Sequence[float]) -> np.ndarray:
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
        r = rotation(self.angles)  # local = R^T (p - c)
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


def interp(z: torch.Tensor, knots: np.ndarray, values: np.ndarray) -> torch.Tensor:
    """Piecewise-linear profile over descending-free ``knots`` (ascending z), constant beyond the ends."""
    kz = torch.as_tensor(knots, dtype=z.dtype)
    kv = torch.as_tensor(values, dtype=z.dtype)
    idx = torch.bucketize(z, kz).clamp(1, len(knots) - 1)
    z0, z1, v0, v1 = kz[idx - 1], kz[idx], kv[idx - 1], kv[idx]
    t = ((z - z0) / (z1 - z0)).clamp(0, 1)
    return v0 + t * (v1 - v0)


def ellipse_sd(dx: torch.Tensor, dy: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipse in the xy plane (mm)."""
    k0 = torch.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    k1 = torch.sqrt((dx / rx**2) ** 2 + (dy / ry**2) ** 2).clamp_min(1e-6)
    return k0 * (k0 - 1) / k1


def union(shapes: Sequence[Ellipsoid | Tube], p: Coords) -> torch.Tensor:
    """Signed distance of the union of ``shapes``."""
    sds = [s.sd(p) for s in shapes]
    return torch.stack(sds).amin(dim=0) if len(sds) > 1 else sds[0]


def overlaps(shape: Ellipsoid | Tube, z: torch.Tensor) -> bool:
    """Whether ``shape``'s height range (10 mm margin) meets the heights ``z``."""
    lo, hi = shape.z_range()
    return bool(z.max() >= lo - 10) and bool(z.min() <= hi + 10)
