"""The TotalRegistrator cascade: affine -> bone -> thorax -> abdomen -> whole body.

Network space and the conversion to the library's fields (:mod:`TotalRegistratorLib.core.fields`):

* Both scans are preprocessed onto their own network grid (the body box,
  ``size`` voxels x, y, z: 64 x 48 x 80 by default, the paper's 128 x 96 x 160
  on request; a loaded cascade uses its weights' size). The two grids differ, so an
  untrained cascade is the *box map* ``x -> M_mov(idx_fix(x))``, which maps
  the fixed body box onto the moving one (``M`` = a grid's index -> LPS matrix).
* The cascade's map from the fixed network grid into the moving scan is kept
  as ``T(x) = A(x + d(x))`` (:class:`Mapping`): ``A`` a 4 x 4 LPS matrix (box
  map composed with the affine block), ``d`` a pullback field in mm on the fixed
  network grid (the composition of the deformable blocks by
  :func:`~TotalRegistratorLib.core.fields.compose`). The library's field is
  ``w(x) = T(x) - x``; affine parts stay exact, even outside the grid.
* Every block sees the fixed network image and the ORIGINAL moving network
  image sampled once through the current ``T`` (never re-interpolated block
  after block), i.e. both on the fixed network grid.
* Affine block: ``theta`` [3, 4] on normalised fixed-grid coordinates
  (grid_sample, align_corners=True) becomes ``P = N2W_fix @ theta @ W2N_fix``
  and ``A <- A @ P``.
* Deformable block: displacement in voxels of the fixed network grid, components
  (x, y, z) = (i, j, k); in mm ``u = direction @ diag(spacing) @ u_vox``, then
  ``d <- compose(d, u)`` (the new block acts first on fixed points).

Checkpoints: one file per block, ``<block>.pt`` (:func:`save_block`,
:func:`load_block`), holding the weights and a ``config`` dict (block,
architecture, grid size, structures, loss weights, library version, training
data, epochs, metrics). Loading checks compatibility and raises
:class:`~TotalRegistratorLib.errors.InputError` naming the file.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..core import preprocess
from ..core.fields import compose, sample_normalized
from ..core.grid import Grid, matrix_apply
from ..core.preprocess import Scan
from ..core.transform import Transform
from ..errors import InputError
from ..registry import BLOCK, BLOCKS
from .networks import DECODER_CHANNELS, ENCODER_CHANNELS, AffineNet, UNet

if TYPE_CHECKING:
    from ..optimization.instance import Result
    from ..optimization.optimizer import Progress

CHECKPOINT_FORMAT = "totalregistrator-block"
CHECKPOINT_VERSION = 1


# --- the map from the fixed network grid into the moving scan ----------------------------------------
@functools.lru_cache(maxsize=4)
def _world_points(grid: Grid, device: str) -> torch.Tensor:
    return grid.world_points(device, torch.float32)


def _matrix(m: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(m, dtype=torch.float64, device=like.device)


@dataclass(frozen=True)
class Mapping:
    """``T(x) = affine @ (x + field(x))``: fixed network grid points -> moving LPS points (mm).

    ``affine`` is a [4, 4] float64 tensor (may carry gradients), ``field`` a
    [1, 3, K, J, I] pullback in mm on ``fixed_grid`` or None (zero).
    """

    fixed_grid: Grid
    moving_grid: Grid
    affine: torch.Tensor
    field: torch.Tensor | None = None

    @classmethod
    def box(cls, fixed_grid: Grid, moving_grid: Grid, device: torch.device | str = "cpu") -> Mapping:
        """The untrained cascade: voxel (i, j, k) of the fixed network grid -> the same voxel of the moving one."""
        if fixed_grid.size != moving_grid.size:
            raise ValueError(f"network grids differ in size: {fixed_grid.size} vs {moving_grid.size}")
        m = moving_grid.index_to_world @ fixed_grid.world_to_index
        return cls(fixed_grid, moving_grid, torch.as_tensor(m, dtype=torch.float64, device=device))

    def then_affine(self, theta: torch.Tensor) -> Mapping:
        """Apply an affine block's ``theta`` [3, 4] (normalised fixed-grid coordinates) before this map."""
        if self.field is not None:
            raise ValueError("the affine block must come before the deformable blocks")
        square = torch.cat([theta.reshape(3, 4).double(), _matrix(np.array([[0.0, 0, 0, 1]]), theta)])
        g = self.fixed_grid
        p = _matrix(np.linalg.inv(g.world_to_normalized), theta) @ square @ _matrix(g.world_to_normalized, theta)
        return replace(self, affine=self.affine @ p)

    def then_field(self, displacement_mm: torch.Tensor) -> Mapping:
        """Apply a deformable block's field (mm, on ``fixed_grid``) before this map."""
        field = displacement_mm if self.field is None else compose(self.field, displacement_mm, self.fixed_grid)
        return replace(self, field=field)

    def points(self) -> torch.Tensor:
        """``x + field(x)`` (before ``affine``) at every fixed voxel, [1, K, J, I, 3] float32, LPS mm."""
        x = _world_points(self.fixed_grid, str(self.affine.device))
        return x if self.field is None else x + self.field.movedim(1, -1)

    def sampling_grid(self) -> torch.Tensor:
        """Normalised coordinates into the moving network grid (grid_sample), [1, K, J, I, 3]."""
        m = (_matrix(self.moving_grid.world_to_normalized, self.affine) @ self.affine).float()
        return matrix_apply(m, self.points())

    def warp(self, image: torch.Tensor) -> torch.Tensor:
        """A [1, C, K, J, I] tensor on the moving network grid, trilinearly resampled onto the fixed one."""
        return sample_normalized(image, self.sampling_grid())

    def transform(self) -> Transform:
        """This map as the library's :class:`Transform` (on the CPU): ``A x + A_lin d(x)``."""
        affine = self.affine.detach().cpu().numpy()
        if self.field is None:
            return Transform(affine)
        return Transform(np.eye(4), self.field.detach().cpu(), self.fixed_grid).then(affine)


def voxels_to_mm(displacement: torch.Tensor, grid: Grid) -> torch.Tensor:
    """A displacement [N, 3, K, J, I] in voxels of ``grid`` (components i, j, k) -> LPS mm."""
    linear = torch.as_tensor(grid.linear, dtype=displacement.dtype,
                             device=displacement.device)
    return torch.einsum("ab,nb...->na...", linear, displacement)


# --- blocks and checkpoints -----------------------------------------------------------------------
def block_config(block: str, size: Sequence[int] = preprocess.NETWORK_SIZE, **extra) -> dict:
    """The config of a new block: architecture, grid size (x, y, z voxels) and training structures."""
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; blocks are {', '.join(BLOCKS)}")
    return {"block": block, "architecture": "affine" if block == "affine" else "unet",
            "encoder": list(ENCODER_CHANNELS), "decoder": [] if block == "affine" else list(DECODER_CHANNELS),
            "grid_size": [int(s) for s in size], "structures": list(BLOCK[block].structures),
            "library_version": __version__, **extra}


def build_network(config: dict) -> nn.Module:
    """An untrained network for ``config`` (:func:`block_config`)."""
    if config["architecture"] == "affine":
        return AffineNet(config["grid_size"][::-1], config["encoder"])
    return UNet(config["encoder"], config["decoder"])


def save_block(path: str | os.PathLike, network: nn.Module, config: dict) -> None:
    """Write one block's weights and config (atomically)."""
    from ..io.outputs import atomic_path

    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "config": config,
               "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu", what: str = "weights file") -> dict:
    """The dict a ``.pt`` file holds, read with ``weights_only=True`` (no pickled code runs); missing ("no such
    <what>"), special, empty, corrupt or non-dict files raise one-line :class:`InputError` naming the file."""
    from ..io.validation import check_input_path

    path = check_input_path(path, what)
    if not path.is_file():
        raise InputError(f"{path}: is a folder, not a weights file")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is an input error
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise InputError(f"{path}: not a readable PyTorch file ({first[:120]})") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: holds a {type(payload).__name__}, not a TotalRegistrator weights file")
    return payload


def load_block(path: str | os.PathLike, block: str | None = None,
               size: Sequence[int] | None = None) -> tuple[nn.Module, dict]:
    """Read a block file; check it is a TotalRegistrator block (of ``block``, on a ``size`` grid) and load it.

    Returns (network in eval mode on the CPU, config). Raises :class:`InputError` naming the file for
    anything else: not a block file, a missing or malformed ``config``, weights that do not fit the
    architecture or hold NaN or infinite values.
    """
    path = Path(path)
    payload = read_checkpoint(path, what="block weights file")
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a TotalRegistrator block file (no '{CHECKPOINT_FORMAT}' header)")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise InputError(f"{path}: block file format version {payload.get('format_version')} is not "
                         f"{CHECKPOINT_VERSION} (written by another TotalRegistrator version)")
    config = check_block_config(payload.get("config"), path)
    if block is not None and config["block"] != block:
        raise InputError(f"{path}: holds the {config['block']!r} block, expected {block!r}")
    if size is not None and list(config["grid_size"]) != [int(s) for s in size]:
        raise InputError(f"{path}: trained on a {config['grid_size']} grid, the cascade uses {list(size)}")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: holds no weights (no 'state_dict' of tensors)")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise InputError(f"{path}: weights hold NaN or infinite values")
    try:
        network = build_network(config)
        network.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise InputError(f"{path}: weights do not fit the {config['architecture']} architecture ({first[:160]})") \
            from None
    return network.eval(), config


def check_block_config(config, path: Path) -> dict:
    """``config`` of a block file, refused (one line naming the file) unless it names a known block and
    architecture with channel lists and a three-axis grid size that a network can be built from."""
    if not isinstance(config, dict):
        raise InputError(f"{path}: block file has no 'config' (or it is not a dict)")
    if config.get("block") not in BLOCKS or config.get("architecture") not in ("affine", "unet"):
        raise InputError(f"{path}: unknown block {config.get('block')!r} / architecture {config.get('architecture')!r}")

    def counts(key: str, length: int | None = None) -> bool:
        value = config.get(key)
        return (isinstance(value, list) and all(isinstance(v, int) and 0 < v <= 4096 for v in value)
                and (length is None or len(value) == length))

    if not (counts("encoder") and config["encoder"] and counts("decoder") and counts("grid_size", 3)):
        raise InputError(f"{path}: malformed config (encoder, decoder or grid_size is not a list of counts)")
    return config


def apply_block(name: str, network: nn.Module, mapping: Mapping, fixed: torch.Tensor,
                moving: torch.Tensor) -> tuple[Mapping, torch.Tensor]:
    """Run block ``name`` on the fixed image and the moving image warped by ``mapping`` (batch of one).

    Returns the extended mapping and the block's raw output (theta [1, 3, 4] or voxels [1, 3, K, J, I]).
    """
    out = network(torch.cat([fixed, mapping.warp(moving)], dim=1))
    if name == "affine":
        return mapping.then_affine(out[0]), out
    return mapping.then_field(voxels_to_mm(out, mapping.fixed_grid)), out


class Cascade(nn.Module):
    """Any subset of the blocks, always run in the fixed order :data:`BLOCKS`."""

    def __init__(self, networks: dict[str, nn.Module], configs: dict[str, dict] | None = None,
                 size: Sequence[int] = preprocess.NETWORK_SIZE):
        super().__init__()
        unknown = set(networks) - set(BLOCKS)
        if unknown:
            raise ValueError(f"unknown block(s) {', '.join(sorted(unknown))}; blocks are {', '.join(BLOCKS)}")
        self.names = [b for b in BLOCKS if b in networks]
        self.blocks = nn.ModuleDict({b: networks[b] for b in self.names})
        self.configs = configs or {b: block_config(b, size) for b in self.names}
        self.size = tuple(int(s) for s in size)

    @classmethod
    def load(cls, weights_dir: str | os.PathLike, blocks: Sequence[str] | None = None,
             size: Sequence[int] | None = None) -> Cascade:
        """Blocks from ``<weights_dir>/<block>.pt``; ``blocks`` None loads every block file present.

        ``size`` (network grid x, y, z) defaults to the first block's; all blocks must share it.
        """
        folder = Path(weights_dir)
        if not folder.is_dir():
            raise InputError(f"{folder}: no such weights folder")
        names = [b for b in BLOCKS if (folder / f"{b}.pt").is_file()] if blocks is None else list(blocks)
        if not names:
            raise InputError(f"{folder}: holds no block weights ({', '.join(b + '.pt' for b in BLOCKS)})")
        bad = [b for b in names if b not in BLOCKS]
        if bad:
            raise InputError(f"unknown block(s) {', '.join(bad)}; blocks are {', '.join(BLOCKS)}")
        loaded = {}
        for b in names:
            loaded[b] = load_block(folder / f"{b}.pt", b, size)
            size = size or loaded[b][1]["grid_size"]
        return cls({b: n for b, (n, _) in loaded.items()}, {b: c for b, (_, c) in loaded.items()}, size)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mapping: Mapping,
                progress: Progress | None = None) -> Mapping:
        """Extend ``mapping`` (start with :meth:`Mapping.box`) by every loaded block, in the cascade's order.

        ``progress("cascade", done, total)`` is called after every block.
        """
        for done, name in enumerate(self.names, 1):
            mapping, _ = apply_block(name, self.blocks[name], mapping, fixed, moving)
            if progress is not None:
                progress("cascade", done, len(self.names))
        return mapping


def run_cascade(fixed: Scan, moving: Scan, cascade: Cascade, device: torch.device | str = "cpu",
                progress: Progress | None = None) -> Result:
    """Register ``moving`` onto ``fixed`` (CT in HU) with the cascade; returns a
    :class:`~TotalRegistratorLib.optimization.instance.Result` whose residual lives on the fixed network grid.
    """
    from ..optimization.instance import Result, check_overlap  # instance imports the optimiser: keep this light

    check_overlap(fixed, moving)
    clock = time.perf_counter()
    device = torch.device(device)
    grid_for = functools.partial(preprocess.network_grid, size=cascade.size)
    f = preprocess.prepare(fixed, grid_for, device)
    m = preprocess.prepare(moving, grid_for, device)
    timings = {"preprocess": time.perf_counter() - clock}
    clock = time.perf_counter()
    cascade = cascade.to(device).eval()
    with torch.no_grad():
        mapping = cascade(f.tensor, m.tensor, Mapping.box(f.grid, m.grid, device), progress=progress)
    timings["cascade"] = time.perf_counter() - clock
    return Result(fixed.image, moving.image, mapping.transform(), f.grid, fixed.mask, timings, "cascade")
