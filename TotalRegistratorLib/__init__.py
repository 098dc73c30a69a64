"""TotalRegistrator: whole-body CT deformable registration (Pham et al., Medical Image Analysis 2025).

A plain Python library (it never imports slicer or Qt): geometry and I/O, field
warping and export to ITK, instance optimisation, metrics and the command line.
Conventions are stated in :mod:`TotalRegistratorLib.core.grid` and
:mod:`TotalRegistratorLib.core.fields`.
"""

__version__ = "0.1.0"
