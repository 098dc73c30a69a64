#!/usr/bin/env bash
# The shipped cascade's training recipe (Resources/MODEL_CARD.md): every block, in order, on phantom pairs.
#
#   bash benchmarks/train_cascade.sh [OUT]          # CPU, 2 cores: about 50 minutes; OUT defaults to build/weights
#   bash benchmarks/train_cascade.sh OUT --install  # then copy the block files and logs into TotalRegistratorLib/weights
#
# Environment: PYTHON (default .venv/bin/python), DEVICE (auto), GRID (64,48,80; the paper's is 128,96,160),
# PAIRS (300 phantom training pairs), STEPS (steps of the affine block: 1000; the region blocks take 3/5 of it,
# the whole-body block 1/2). On a lent GPU, e.g.
#   DEVICE=cuda GRID=128,96,160 STEPS=10000 bash benchmarks/train_cascade.sh "$OUT/weights"
# renders the pairs there (about 3 s a pair a core) and trains the paper's grid; nothing else changes.
# The affine block runs alone; bone, thorax and abdomen (which need only the affine block) run as three
# parallel processes of one thread each; the whole-body block last. Interrupted runs resume (train.py keeps
# <block>.last.pt); the phantom pairs and preprocessed tensors are cached in OUT/cache.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/weights}
PYTHON=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-auto}
GRID=${GRID:-64,48,80}
PAIRS=${PAIRS:-300}
STEPS=${STEPS:-1000}
EPOCHS=10
common=(--phantom "$PAIRS" --val-pairs 10 --phantom-spacing 5 --grid-size "$GRID" --device "$DEVICE"
        --bending-weight 50 --joint-backward --epochs "$EPOCHS" --quiet -o "$OUT")
per_epoch=$((STEPS / EPOCHS))  # pairs (steps) per epoch of the affine block

# learning rates: the affine block diverged at 1e-3 (its map left the moving scan, where no loss has a gradient)
"$PYTHON" train.py --block affine "${common[@]}" --lr 3e-4 --pairs-per-epoch "$per_epoch" --threads 2
pids=()
for block in bone thorax abdomen; do
    "$PYTHON" train.py --block "$block" "${common[@]}" --lr 5e-4 --pairs-per-epoch $((per_epoch * 3 / 5)) --threads 1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # any block's failure stops the recipe
"$PYTHON" train.py --block wholebody "${common[@]}" --lr 5e-4 --pairs-per-epoch $((per_epoch / 2)) \
    --threads 2

if [[ "${2:-}" == "--install" ]]; then
    for block in affine bone thorax abdomen wholebody; do
        cp "$OUT/$block.pt" "$OUT/$block.log.csv" TotalRegistratorLib/weights/
    done
fi
