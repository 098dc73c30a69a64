"""The application layer: command line, file jobs, reports (imports everything below it)."""

import os

# OpenMP threads that spin-wait while a peer is descheduled made 2-thread runs up to 10x slower on
# a busy machine (153 s against 13 s measured here); passive waiting has to be chosen before torch
# is first imported, so it is set here, where the command line, train.py and the benchmarks enter
# (not in the package root, which the Slicer module imports for the registry). A user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
