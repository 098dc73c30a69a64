"""Procedural thorax-abdomen-pelvis CT phantom with a label map of the paper's structures.

The anatomy is analytic: every structure is a signed-distance-like function
(mm, negative inside) of a point in the *anatomy frame*, which is LPS mm with
its origin on the spine axis at the T12/L1 disc (x to the patient's left, y
posterior, z superior). A :class:`Phantom` holds one patient's parameters and
its pose (anatomy frame -> scanner LPS world). :func:`render` evaluates it at
the voxel centres of any :class:`~TotalRegistratorLib.core.grid.Grid`, optionally
through a pullback map ``g`` (this image's world point -> the reference scan's
world point), so a deformed copy of the same patient is exact: if the moving
scan is rendered plainly and the fixed one through ``g``, then
``fixed(x) = moving(g(x))`` and the ground-truth field is ``u(x) = g(x) - x``.

Intensities are Hounsfield units (air -1000, fat about -100, soft tissue 30-60,
organs enhanced per contrast phase, cortical and trabecular bone), with a
smooth tissue texture fixed to the anatomy, partial volume at edges (a linear
ramp one voxel wide), white noise scaled by voxel volume, and a patient table
fixed in the scanner. Label ids come from :data:`TotalRegistratorLib.registry.LABELS`.

Modules: :mod:`.shapes` (primitives), :mod:`.anatomy` (the patient),
:mod:`.intensities` (HU, contrast phases, compositing), :mod:`.skeleton`
(bones), :mod:`.rendering` (HU and labels on a grid), :mod:`.scanner` (table,
scan grids, voxel points).
"""

from .anatomy import Phantom, make_phantom
from .intensities import PHASES, ScanState, random_state
from .rendering import Scan, render
from .scanner import LPS_DIRECTION, RAS_DIRECTION, SLICE_THICKNESSES, scan_grid, world_point_chunks

__all__ = ["LPS_DIRECTION", "PHASES", "RAS_DIRECTION", "SLICE_THICKNESSES", "Phantom", "Scan", "ScanState",
           "make_phantom", "random_state", "render", "scan_grid", "world_point_chunks"]
