"""TotalRegistrator: whole-body CT deformable registration (Pham et al., Medical Image Analysis 2025).

A plain Python library (it never imports slicer or Qt): geometry and I/O, field
warping and export to ITK, instance optimisation, metrics and the command line.
Conventions are stated in :mod:`TotalRegistratorLib.core.grid` and
:mod:`TotalRegistratorLib.core.fields`.
"""

import os

# OpenMP threads that spin-wait while a peer is descheduled made 2-thread runs up to 10x slower on
# a busy machine (153 s against 13 s measured here); passive waiting has to be chosen before torch
# is first imported. An OMP_WAIT_POLICY set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
