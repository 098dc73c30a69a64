"""Training the cascade's blocks (Pham et al. 2025), headless, on CPU, one GPU or many (torchrun).

Order: ``affine`` first; ``bone``, ``thorax`` and ``abdomen`` each on the frozen
affine block's output (independently, in any order or in parallel);
``wholebody`` on the frozen output of all four (the ``preceding`` blocks of
:data:`TotalRegistratorLib.registry.BLOCK`). Adam (lr 1e-4), batch 1,
``pairs_per_epoch`` random pairs per epoch, the loss of
:mod:`TotalRegistratorLib.learned.losses` over the block's structures.

Output folder, per block: ``<block>.pt`` (best epoch on the validation Dice,
or on the training loss without validation data or when no validation scan
holds the block's structures; the file the cascade loads), ``<block>.last.pt`` (the latest epoch with the
optimiser state: a rerun resumes from it), ``<block>.log.csv`` (one row per
epoch: losses, validation Dice, seconds); see :mod:`.checkpoints`.

Data-parallel: under ``torchrun --nproc_per_node=N`` every process takes every
N-th pair of the epoch (``pairs_per_epoch`` rounded up to a multiple of N, so
every process takes the same number of steps), DistributedDataParallel averages the gradients (gloo on
CPU, nccl on GPU), validation is split the same way and summed; rank 0 writes.

Modules: :mod:`.settings` (what a run does), :mod:`.distributed` (process
group, device, sums across ranks), :mod:`.data` (cached phantom pairs,
validation split, epoch order), :mod:`.checkpoints` (resume file and log),
:mod:`.trainer` (one block's steps, validation and epochs). The command line
is :mod:`TotalRegistratorLib.app.train_command`.
"""

from .data import epoch_order, phantom_pairs, split_validation
from .distributed import Context, barrier, start
from .settings import TrainSettings
from .trainer import Trainer

__all__ = ["Context", "TrainSettings", "Trainer", "barrier", "epoch_order", "phantom_pairs", "split_validation",
           "start"]
