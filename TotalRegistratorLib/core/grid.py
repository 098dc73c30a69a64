"""Image grids: the one place that knows how voxel indices map to physical space.

Conventions used throughout TotalRegistratorLib:

* Physical space is ITK's LPS, in millimetres.
* A :class:`Grid` is ITK's image geometry: ``size`` and ``spacing`` in index
  order (i, j, k) = (x, y, z), ``origin`` in LPS mm and ``direction`` a 3 x 3
  matrix whose columns are the directions of the i, j and k axes.
  ``world = direction @ diag(spacing) @ index + origin``.
* A torch image on a grid has shape ``[N, C, K, J, I]`` (SimpleITK array order,
  slowest axis first); point and vector components are always ordered
  (x, y, z), which is also the order ``torch.nn.functional.grid_sample``
  expects in its sampling grid.
* Normalised coordinates are grid_sample's with ``align_corners=True``:
  ``n = 2 * index / (size - 1) - 1``, so -1 and +1 are the centres of the
  first and last voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
    """Geometry of a 3D image: every voxel index has a physical LPS coordinate."""

    size: tuple[int, int, int]
    spacing: Vec3
    origin: Vec3
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        object.__setattr__(self, "direction", tuple(float(d) for d in np.ravel(self.direction)))
        if len(self.size) != 3 or min(self.size) < 1:
            raise ValueError(f"grid size must be three positive integers, got {self.size}")
        if min(self.spacing) <= 0:
            raise ValueError(f"grid spacing must be positive, got {self.spacing}")

    # --- construction -----------------------------------------------------
    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        """The grid of a 3D SimpleITK image."""
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def from_index_to_world(cls, matrix: np.ndarray, size) -> Grid:
        """The grid of a 4 x 4 index -> LPS matrix (as :attr:`index_to_world` gives) and a size (i, j, k)."""
        matrix = np.asarray(matrix, float).reshape(4, 4)
        spacing = np.linalg.norm(matrix[:3, :3], axis=0)
        return cls(tuple(size), tuple(spacing), tuple(matrix[:3, 3]), tuple((matrix[:3, :3] / spacing).ravel()))

    @classmethod
    def covering(cls, lower: np.ndarray, upper: np.ndarray, size=None, spacing=None) -> Grid:
        """An LPS-aligned grid over the box from ``lower`` to ``upper`` (LPS mm).

        Give either ``size`` (voxels per axis: the first and last voxel centres
        lie on ``lower`` and ``upper``, spacing follows) or ``spacing`` (mm,
        scalar or per axis: a whole number of voxels centred on the box, whose
        centres lie within half a spacing of its faces and whose edges cover it).
        """
        lower = np.asarray(lower, float)
        upper = np.asarray(upper, float)
        extent = np.maximum(upper - lower, 1e-3)
        if size is not None:
            size = np.asarray(size, int)
            spacing = extent / np.maximum(size - 1, 1)
            return cls(tuple(size), tuple(spacing), tuple(lower))
        spacing = np.broadcast_to(np.asarray(spacing, float), (3,))
        size = np.floor(extent / spacing + 1e-6).astype(int) + 1
        centre = (lower + upper) / 2
        origin = centre - (size - 1) * spacing / 2
        return cls(tuple(size), tuple(spacing), tuple(origin))

    @staticmethod
    def spacing_for(lower: np.ndarray, upper: np.ndarray, finest: float, max_voxels: int) -> float:
        """The isotropic spacing (mm), ``finest`` or coarser, at which the box from ``lower`` to ``upper``
        (LPS mm) holds at most about ``max_voxels`` voxels."""
        extent = np.maximum(np.asarray(upper, float) - np.asarray(lower, float), 1e-3)
        return max(float(finest), float((np.prod(extent) / max_voxels) ** (1 / 3)))

    def same_as(self, other: Grid, atol: float = 1e-3) -> bool:
        """Whether ``other`` has this size and its corner voxel centres lie within ``atol`` mm of this grid's."""
        return self.size == other.size and bool(np.allclose(self.corners(), other.corners(), rtol=0, atol=atol))

    # --- matrices -----------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, float).reshape(3, 3)

    @property
    def linear(self) -> np.ndarray:
        """3 x 3 matrix ``direction @ diag(spacing)``: an index step (i, j, k) -> an LPS vector in mm."""
        return self.direction_matrix @ np.diag(self.spacing)

    @property
    def index_to_world(self) -> np.ndarray:
        """4 x 4 homogeneous matrix: continuous index (i, j, k) -> LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.linear
        m[:3, 3] = self.origin
        return m

    @property
    def world_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_world)

    @property
    def index_to_normalized(self) -> np.ndarray:
        """4 x 4 matrix: index -> grid_sample coordinates (align_corners=True)."""
        m = np.eye(4)
        size = np.asarray(self.size, float)
        m[:3, :3] = np.diag(2.0 / np.maximum(size - 1, 1))
        m[:3, 3] = -1.0
        return m

    @property
    def world_to_normalized(self) -> np.ndarray:
        return self.index_to_normalized @ self.world_to_index

    # --- derived geometry -----------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Tensor shape (K, J, I) of an image on this grid."""
        return self.size[::-1]

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.size))

    def corners(self) -> np.ndarray:
        """LPS coordinates of the 8 corner voxel centres, shape (8, 3)."""
        idx = np.array(np.meshgrid(*[[0, s - 1] for s in self.size], indexing="ij")).reshape(3, -1).T
        return self.transform_indices(idx)

    def transform_indices(self, indices: np.ndarray) -> np.ndarray:
        """Continuous indices (..., 3) -> LPS points (..., 3)."""
        return matrix_apply(self.index_to_world, np.asarray(indices, float))

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """LPS points (..., 3) -> continuous indices (..., 3)."""
        return matrix_apply(self.world_to_index, np.asarray(points, float))

    def scaled(self, factor: float) -> Grid:
        """The same physical box sampled ``factor`` times more coarsely (same corner voxel centres)."""
        size = np.maximum(np.round((np.asarray(self.size) - 1) / factor).astype(int) + 1, 2)
        spacing = np.asarray(self.spacing) * (np.asarray(self.size) - 1) / (size - 1)
        return Grid(tuple(size), tuple(spacing), self.origin, self.direction)

    def aligned_cover(self, points: np.ndarray) -> Grid:
        """The smallest grid with this grid's spacing, direction and voxel positions (its lattice, grown or
        cropped by whole voxels) whose box holds every LPS point (n, 3)."""
        idx = self.transform_points(np.asarray(points, float).reshape(-1, 3))
        lower = np.floor(idx.min(axis=0) + 1e-6).astype(int)
        upper = np.maximum(np.ceil(idx.max(axis=0) - 1e-6).astype(int), lower + 1)
        origin = self.transform_indices(lower.astype(float))
        return Grid(tuple(upper - lower + 1), self.spacing, tuple(origin), self.direction)

    def slab(self, start: int, stop: int) -> Grid:
        """The sub-grid of slices ``start:stop`` along k (same geometry, shifted origin)."""
        origin = self.transform_indices(np.array([0.0, 0.0, start]))
        return Grid((self.size[0], self.size[1], stop - start), self.spacing, tuple(origin), self.direction)

    def slabs(self, max_voxels: int) -> list[Grid]:
        """Consecutive slabs (whole slices along k) of at most ``max_voxels`` each (one slice at least)."""
        step = max(1, max_voxels // (self.size[0] * self.size[1]))
        return [self.slab(k, min(k + step, self.size[2])) for k in range(0, self.size[2], step)]

    def reference_image(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        """An empty SimpleITK image with this geometry (for resampling)."""
        image = sitk.Image(list(self.size), pixel_type)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    # --- torch ------------------------------------------------------------------
    def world_points(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """LPS coordinates of every voxel centre, shape (1, K, J, I, 3), components (x, y, z)."""
        axes = [torch.arange(n, device=device, dtype=torch.float64) for n in self.size[::-1]]
        k, j, i = torch.meshgrid(*axes, indexing="ij")
        idx = torch.stack([i, j, k], dim=-1)
        return matrix_apply(self.index_to_world, idx).to(dtype).unsqueeze(0)


def matrix_apply(matrix: np.ndarray | torch.Tensor, points: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Apply a 4 x 4 homogeneous matrix to points (..., 3): numpy in, numpy out; torch in, torch out
    (in the points' dtype and device)."""
    if isinstance(points, torch.Tensor):  # one fused multiply-add over the flattened points (faster than @ + t)
        matrix = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
        return torch.addmm(matrix[:3, 3], points.reshape(-1, 3), matrix[:3, :3].T).reshape(points.shape)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def matrix_apply_planar(matrix: np.ndarray | torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply a 4 x 4 homogeneous matrix to points stored as planes [3, M] (x, y, z rows); returns [3, M].

    One matrix product with the long axis last: several times faster on the CPU than :func:`matrix_apply`'s
    [M, 3] layout, whose rows of three defeat vectorisation. Differentiable in ``matrix`` and ``points``."""
    matrix = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
    return torch.addmm(matrix[:3, 3:], matrix[:3, :3], points)


def physical_bounding_box(grid: Grid, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LPS axis-aligned box (lower, upper) around the voxel centres where ``mask`` (K, J, I) is set."""
    nz = np.nonzero(mask)
    if len(nz[0]) == 0:
        raise ValueError("empty mask has no bounding box")
    lo = np.array([nz[2].min(), nz[1].min(), nz[0].min()], float)
    hi = np.array([nz[2].max(), nz[1].max(), nz[0].max()], float)
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T
    world = grid.transform_indices(corners)
    return world.min(axis=0), world.max(axis=0)
