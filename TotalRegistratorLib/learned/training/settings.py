"""What a training run does: block, epochs, pairs per epoch, learning rate, seed, loss weights, grid,
augmentation, device."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...core.preprocess import NETWORK_SIZE
from ...errors import InputError
from ...learned.losses import LossWeights
from ...registry import BLOCKS


@dataclass
class TrainSettings:
    """What a training run does; see ``train.py --help`` for each option."""

    block: str
    epochs: int = 400
    pairs_per_epoch: int = 400
    lr: float = 1e-4
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)
    per_organ: bool = True  # one backward pass per organ (memory); False: one joint pass
    size: tuple[int, int, int] = NETWORK_SIZE
    device: str = "auto"
    progress: bool = True
    augment: bool = True  # random appearance and smooth deformation per step (training/augment.py)

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise InputError(f"unknown block {self.block!r}; blocks are {', '.join(BLOCKS)}")
        if self.block == "affine" and self.weights.bending:
            self.weights = replace(self.weights, bending=0.0)  # no bending term for the affine block
        if self.epochs < 1 or self.pairs_per_epoch < 1:
            raise InputError("--epochs and --pairs-per-epoch must be at least 1")
