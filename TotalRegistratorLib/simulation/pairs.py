"""Registration pairs with ground truth: simulated motion of phantoms and of real labelled scans.

A :class:`Motion` is the pullback map ``g`` from the fixed image's world to the
moving image's world (LPS mm): a rigid pose change ``P`` followed by smooth
non-rigid motion in the moving frame, ``g(x) = P(x) + d(P(x))``, where ``d``
sums breathing (diaphragm, lung expansion, rib-cage rise), local filling
changes (stomach, bladder, bowel) and weight change. The fixed image is the
moving one seen through ``g`` (``fixed(x) = moving(g(x))``), so the ground
truth is the library's field ``u(x) = g(x) - x`` on the fixed grid, exported
as an ITK DisplacementFieldTransform.

Kinds: ``intra`` (longitudinal, same patient: breathing 5-25 mm, filling,
weight, pose up to 10 degrees and 30 mm), ``multiphase`` (same patient, another
contrast phase, small motion), ``inter`` (two different phantoms, labels only),
and the partial-overlap kinds ``intra-partial`` and ``inter-partial``: the
``intra`` and ``inter`` pairs (the same random draws) with each scan cut to a
slab of whole slices along z, one higher and one lower (which one is on top is
random), so that the two scans' anatomy overlaps over a random fraction of
:data:`.partial.PARTIAL_OVERLAP` of the shorter scan, as in an upper-abdomen scan
against a lower-thorax-to-abdomen one (:mod:`.partial`; for the fixed scan of an
``intra-partial`` pair, heights after the motion ``g``). The
images and their label maps end at the slab (nothing outside it is rendered);
the ground truth of ``intra-partial`` is ``g`` on the cropped fixed grid, and
fixed points that ``g`` takes outside the moving slab simply have no moving data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core.grid import Grid
from ..core.itk_bridge import export_grid, field_to_image
from ..core.preprocess import body_mask
from ..core.transform import Transform
from ..io.images import check_same_grid, write_image, write_transform
from ..io.labels import PairRecord
from ..registry import LABELS
from .partial import cut_to_slabs
from .phantom import Phantom, make_phantom, random_state, render, scan_grid, world_point_chunks

KINDS = ("intra", "multiphase", "inter", "intra-partial", "inter-partial")
MAX_FIELD_VOXELS = 8_000_000  # denser fixed grids get their ground truth on a 2 mm grid over the same box


@dataclass(frozen=True)
class Landmarks:
    """Where the motion acts, in the moving image's world (LPS mm)."""

    centre: np.ndarray  # torso centre (x, y) and the dome height z
    radii: tuple[float, float]  # torso half-widths x, y
    dome: float  # diaphragm dome height (z)
    apex: float  # lung apex height: breathing motion fades to zero there
    pelvis: float  # height below which the abdomen does not move with breathing
    fillings: tuple[np.ndarray, ...]  # centres of organs that fill and empty (stomach, bladder, bowel)


@dataclass(frozen=True)
class Motion:
    """The pullback ``g``: fixed world point -> moving world point (see the module docstring)."""

    landmarks: Landmarks
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # about the torso centre
    shift: np.ndarray = field(default_factory=lambda: np.zeros(3))  # mm
    breath: float = 0.0  # diaphragm displacement, mm (+: the fixed scan is the more inspired)
    weight: float = 0.0  # change of the body outline, mm (+: the fixed patient is heavier)
    fillings: tuple[tuple[float, float], ...] = ()  # (sigma mm, strength) per landmark filling centre

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """g at fixed world points [P, 3] (float64) -> moving world points [P, 3]."""
        centre = torch.as_tensor(self.landmarks.centre, dtype=points.dtype)
        rotation = torch.as_tensor(self.rotation, dtype=points.dtype)
        p = (points - centre) @ rotation.T + centre + torch.as_tensor(self.shift, dtype=points.dtype)
        return p + self.displacement(p)

    def displacement(self, p: torch.Tensor) -> torch.Tensor:
        """The non-rigid part ``d`` at moving-frame points [P, 3]."""
        lm = self.landmarks
        qx = (p[:, 0] - lm.centre[0]) / lm.radii[0]
        qy = (p[:, 1] - lm.centre[1]) / lm.radii[1]
        z = p[:, 2]
        rho = torch.sqrt(qx**2 + qy**2)
        d = torch.zeros_like(p)
        if self.breath:
            lung = ((lm.apex - z) / (lm.apex - lm.dome)).clamp(0, 1)
            belly = 0.5 - 0.5 * torch.cos(np.pi * ((z - lm.pelvis) / (lm.dome - lm.pelvis)).clamp(0, 1))
            wall = 1 - 0.6 * ((rho - 0.6) / 0.6).clamp(0, 1) ** 2 * (3 - 2 * ((rho - 0.6) / 0.6).clamp(0, 1))
            chest = torch.exp(-(((z - lm.dome - 30) / 120) ** 2))
            d[:, 2] += self.breath * torch.where(z >= lm.dome, lung, belly) * wall
            d[:, 1] += 0.4 * self.breath * chest * ((1 - qy) / 2).clamp(0, 1)  # anterior wall rises, spine stays
            d[:, 0] -= 0.25 * self.breath * chest * qx.clamp(-1.5, 1.5)  # bucket-handle widening
        if self.weight:
            radial = torch.where(rho <= 1, rho, 2 - 1 / rho.clamp_min(1e-6))  # |d| = weight * rho^2, then linear
            profile = -self.weight * radial * (0.5 + 0.5 * torch.exp(-(((z - lm.dome + 200) / 250) ** 2)))
            d[:, 0] += profile * qx
            d[:, 1] += profile * qy
        for centre, (sigma, strength) in zip(lm.fillings, self.fillings, strict=True):
            r = p - torch.as_tensor(centre, dtype=p.dtype)
            d += strength * r * torch.exp(-(r**2).sum(1, keepdim=True) / (2 * sigma**2))
        return d

    def transform(self, grid: Grid) -> Transform:
        """The ground truth ``g`` sampled on ``grid`` (fixed side): ``x + u(x)`` with ``u(x) = g(x) - x``."""
        u = torch.empty(grid.num_voxels, 3, dtype=torch.float32)
        for start, stop, world in world_point_chunks(grid):
            u[start:stop] = (self(world) - world).float()
        return Transform.from_field(u.T.reshape(1, 3, *grid.shape), grid)

    def unpose(self, points: np.ndarray) -> np.ndarray:
        """The inverse of the rigid part: moving-frame points -> fixed world points."""
        c = np.asarray(self.landmarks.centre)
        return (np.asarray(points) - c - self.shift) @ self.rotation + c


def _rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """A random rotation of at most ``max_degrees``, mostly roll (about z) and pitch (about x)."""
    axis = rng.normal(size=3) * np.array([1.0, 0.5, 1.5])
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0, max_degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _ball(rng: np.random.Generator, radius: float) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v) * radius * rng.uniform() ** (1 / 3)


def sample_motion(rng: np.random.Generator, landmarks: Landmarks, kind: str = "intra") -> Motion:
    """Random motion of the given kind (``intra`` or ``multiphase``) around ``landmarks``."""
    sign = rng.choice([-1.0, 1.0])
    if kind == "multiphase":
        return Motion(landmarks, _rotation(rng, 2.0), _ball(rng, 5.0), breath=sign * rng.uniform(0, 5),
                      fillings=tuple((40.0, 0.0) for _ in landmarks.fillings))
    if kind != "intra":
        raise ValueError(f"motion kind must be 'intra' or 'multiphase', not {kind!r}")
    return Motion(landmarks, _rotation(rng, 10.0), _ball(rng, 30.0), breath=sign * rng.uniform(5, 25),
                  weight=float(rng.uniform(-8, 8)),
                  fillings=tuple((float(rng.uniform(35, 50)), float(rng.uniform(-0.15, 0.15)))
                                 for _ in landmarks.fillings))


def phantom_landmarks(ph: Phantom, rng: np.random.Generator) -> Landmarks:
    """Landmarks of a phantom in its own world, with two random bowel centres."""
    dome = ph.landmark("dome")
    bowel = [ph.to_world(np.array([rng.uniform(-60, 60), rng.uniform(-50, 10), rng.uniform(-230, -120)]))
             for _ in range(2)]
    return Landmarks(dome, tuple(ph.torso_radii()), float(dome[2]), float(ph.landmark("apex")[2]),
                     float(ph.landmark("pelvis")[2]), (ph.landmark("stomach"), ph.landmark("bladder"), *bowel))


def scan_landmarks(image: sitk.Image, labels: sitk.Image | None, rng: np.random.Generator) -> Landmarks:
    """Landmarks of a real scan from its body mask and (if given) lung and stomach labels on its grid."""
    if labels is not None:
        check_same_grid(labels, image, "labels", "the scan")
    grid = Grid.from_image(image)
    mask = body_mask(image)
    body = grid.transform_indices(np.argwhere(mask)[:, ::-1][:: max(1, int(mask.sum()) // 200_000)])
    lower, upper = body.min(axis=0), body.max(axis=0)
    centre = (lower + upper) / 2
    radii = (upper - lower)[:2] / 2
    label_map = sitk.GetArrayViewFromImage(labels) if labels is not None else None

    def points(structure: str) -> np.ndarray | None:
        if label_map is None or not (label_map == LABELS[structure]).any():
            return None
        return grid.transform_indices(np.argwhere(label_map == LABELS[structure])[:, ::-1])

    lung, stomach = points("lung"), points("stomach")
    if lung is not None:
        dome = min(float(np.percentile(lung[:, 2], 2)) + 40.0, float(lung[:, 2].max()))
        apex = max(float(lung[:, 2].max()), dome + 150.0)
    else:  # no lungs labelled: assume the upper third of the scan is thorax
        dome = float(lower[2] + 0.66 * (upper[2] - lower[2]))
        apex = dome + 250.0
    centre[2] = dome
    fillings = [stomach.mean(axis=0)] if stomach is not None else []
    fillings += [np.array([*(centre[:2] + rng.uniform(-0.4, 0.4, 2) * radii), dome - rng.uniform(80, 200)])
                 for _ in range(2)]
    return Landmarks(centre, (float(radii[0]), float(radii[1])), dome, apex, dome - 400.0, tuple(fillings))


@dataclass
class Pair:
    """Two scans with label maps; ``truth`` maps fixed points into the moving image (None for ``inter``)."""

    kind: str
    fixed: sitk.Image
    moving: sitk.Image
    fixed_labels: sitk.Image
    moving_labels: sitk.Image
    truth: Transform | None = None

    def transform(self) -> sitk.Transform | None:
        """The ground truth as an ITK transform (a displacement field on its own grid)."""
        return None if self.truth is None else self.truth.to_sitk()

    def write(self, folder: str | os.PathLike, stem: str, ground_truth: bool = True) -> PairRecord:
        """Write images, label maps and (unless ``ground_truth`` is False, e.g. for training data, which
        does not use it) the ground truth (``.h5`` transform and displacement image) into ``folder``.
        """
        folder = Path(folder)
        names = {key: folder / f"{stem}_{key}.nii.gz" for key in ("fixed", "moving", "fixed_labels", "moving_labels")}
        for key, path in names.items():
            write_image(getattr(self, key), path)
        transform = None
        if self.truth is not None and ground_truth:
            transform = folder / f"{stem}_transform.h5"
            write_transform(self.transform(), transform)
            write_image(sitk.Cast(field_to_image(self.truth.field_on(self.truth.grid), self.truth.grid),
                                  sitk.sitkVectorFloat32), folder / f"{stem}_displacement.nii.gz")
        return PairRecord(names["fixed"], names["moving"], names["fixed_labels"], names["moving_labels"], transform)


def _field_grid(fixed: Grid) -> Grid:
    return fixed if fixed.num_voxels <= MAX_FIELD_VOXELS else export_grid(fixed, spacing=2.0)


def pair_seed(seed: int, index: int) -> int:
    """The seed of pair ``index`` in a run with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def make_pair(kind: str, seed: int, spacing=None, size=None) -> Pair:
    """A simulated pair of the given kind (:data:`KINDS`); ``spacing`` (mm) or ``size`` fixes both grids.

    ``size`` (voxels x, y, z) is that of the whole chest-abdomen-pelvis scan: the partial-overlap kinds
    cut each scan to a slab of its slices, so their images have that size in x and y and fewer slices.
    """
    if kind not in KINDS:
        raise ValueError(f"pair kind must be one of {', '.join(KINDS)}, not {kind!r}")
    partial = kind.endswith("-partial")
    base = kind.removesuffix("-partial")
    rng = np.random.default_rng(seed)
    ph = make_phantom(int(rng.integers(2**31)))
    if base == "inter":
        other = make_phantom(int(rng.integers(2**31)))
        fixed_grid = scan_grid(ph, rng, spacing, size)
        fixed_state = random_state(rng)
        moving_grid = scan_grid(other, rng, spacing, size)
        moving_state = random_state(rng)
        if partial:
            fixed_grid, moving_grid = cut_to_slabs(rng, (ph, fixed_grid), (other, moving_grid))
        fixed = render(ph, fixed_grid, fixed_state)
        moving = render(other, moving_grid, moving_state)
        return Pair(kind, fixed.image, moving.image, fixed.labels, moving.labels)
    motion = sample_motion(rng, phantom_landmarks(ph, rng), base)
    fixed_state = random_state(rng)
    if base == "multiphase":
        phase = rng.choice([p for p in ("native", "arterial", "portal_venous") if p != fixed_state.phase])
        moving_state = random_state(rng, str(phase))
    else:
        moving_state = random_state(rng, fixed_state.phase if rng.random() < 0.7 else None)
    # the fixed scan is centred on the patient in the fixed pose; the moving scan covers where fixed voxels map
    fixed_grid = scan_grid(ph, rng, spacing, size)
    moved = motion.unpose(np.array(fixed_grid.corners()).mean(axis=0)) - np.array(fixed_grid.corners()).mean(axis=0)
    fixed_grid = Grid(fixed_grid.size, fixed_grid.spacing, tuple(np.add(fixed_grid.origin, moved)),
                      fixed_grid.direction)
    coarse = fixed_grid.scaled(8.0)
    mapped = motion(coarse.world_points(dtype=torch.float64).reshape(-1, 3)).numpy()
    lower, upper = ph.body_box()
    in_body = np.all((mapped[:, :2] >= lower[:2]) & (mapped[:, :2] <= upper[:2]), axis=1)
    moving_grid = scan_grid(ph, rng, spacing, size, cover=mapped[in_body] if in_body.any() else None)
    if partial:
        fixed_grid, moving_grid = cut_to_slabs(rng, (ph, fixed_grid), (ph, moving_grid), fixed_mapping=motion)
    fixed = render(ph, fixed_grid, fixed_state, mapping=motion)
    moving = render(ph, moving_grid, moving_state)
    grid = _field_grid(fixed_grid)
    return Pair(kind, fixed.image, moving.image, fixed.labels, moving.labels, motion.transform(grid))


def deform_scan(image: sitk.Image, labels: sitk.Image | None, seed: int, kind: str = "intra") -> Pair:
    """Augmentation: a real scan (the moving image) and a simulated motion of it (the fixed image).

    ``labels`` are our structure ids (:func:`TotalRegistratorLib.io.labels.read_structures`); they place the
    diaphragm and stomach for the breathing and filling motion, and are warped with the image.
    """
    rng = np.random.default_rng(seed)
    motion = sample_motion(rng, scan_landmarks(image, labels, rng), kind)
    grid = Grid.from_image(image)
    truth = motion.transform(_field_grid(grid))
    transform = truth.to_sitk()
    air = float(np.min(sitk.GetArrayViewFromImage(image)))
    fixed = sitk.Resample(image, image, transform, sitk.sitkLinear, air)
    fixed_labels = None
    if labels is not None:
        fixed_labels = sitk.Resample(labels, labels, transform, sitk.sitkNearestNeighbor, 0)
    return Pair(f"augmented-{kind}", fixed, image, fixed_labels, labels, truth)
