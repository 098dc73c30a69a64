"""Rendering the phantom on a grid: HU (int16) and structure labels (uint8) at every voxel centre.

A pullback ``mapping`` (this image's world point -> the reference scan's world
point, LPS mm) deforms the anatomy, not the table: with the moving scan
rendered plainly and the fixed one through ``g``, ``fixed(x) = moving(g(x))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ...core.grid import Grid
from ...registry import LABELS
from .anatomy import CAVITY_RX, CAVITY_RY, FAT_WEIGHT, SPINE_Y, TRUNK_Z, WALL, Phantom
from .intensities import Canvas, ScanState, enhanced
from .scanner import table_height, world_point_chunks
from .shapes import Coords, ellipse_sd, interp, overlaps, union
from .skeleton import pelvis, ribs, spine


def _diaphragm(ph: Phantom, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Height of the diaphragm surface: the upper envelope of two domes."""
    right = ph.dome[0] - 0.0045 * (x + 65) ** 2 - 0.004 * (y + 5) ** 2
    left = ph.dome[1] - 0.0045 * (x - 65) ** 2 - 0.004 * (y + 5) ** 2
    return torch.maximum(right, left)


def _render_points(ph: Phantom, state: ScanState, anatomy: Coords, world: torch.Tensor, width: float,
                   table_y: float) -> tuple[torch.Tensor, torch.Tensor]:
    """HU and labels at anatomy points (their scanner positions ``world`` place the table)."""
    x, y, z = anatomy
    canvas = Canvas(anatomy, width)
    f = ph.fields
    texture = f["texture"](anatomy)

    # patient table (scanner frame): a curved carbon shell with a foam core, 5 cm thick
    wx, wy = world[:, 0], world[:, 1]
    curve = table_y - 0.0004 * wx**2
    table = torch.maximum((wy - curve - 25).abs() - 25, wx.abs() - 240)
    canvas.paint(table, 150.0)
    canvas.paint(torch.maximum((wy - curve - 25).abs() - 22, wx.abs() - 237), -850.0)

    # trunk layers: fat, muscle wall, cavity
    fat = ph.fat * interp(z, TRUNK_Z, FAT_WEIGHT)
    wall = interp(z, TRUNK_Z, WALL)
    rx, ry = interp(z, TRUNK_Z, CAVITY_RX), interp(z, TRUNK_Z, CAVITY_RY)
    cavity = ellipse_sd(x, y, rx, ry)
    canvas.paint(ellipse_sd(x, y - 15, rx + wall + fat, ry + wall + fat + 15), -100.0 + 12 * texture)
    canvas.paint(ellipse_sd(x, y - 15, rx + wall, ry + wall + 15), 50.0 + 5 * texture)
    dia = _diaphragm(ph, x, y)
    abdomen = torch.maximum(cavity, z - dia - 4)
    canvas.paint(abdomen, -90.0 + 12 * texture)  # visceral fat

    # bowel loops, some holding gas, in the abdominopelvic cavity
    belly = (abdomen < 0) & (z > -330)
    if belly.any():
        pts = tuple(c[belly] for c in anatomy)
        loops = f["bowel"](pts).abs() - 0.55
        gas = f["bowel_gas"](pts) - (1.4 - 2.4 * state.bowel_gas)
        canvas.paint(loops * 20, enhanced(ph, state, "bowel_wall"), where=belly)
        canvas.paint(torch.maximum(loops * 20 + 3, -gas * 15), -950.0, where=belly)

    v = ph.vessels
    for name in ("psoas_left", "psoas_right"):
        canvas.paint(v[name].sd(anatomy), 52.0 + 5 * texture)
    if overlaps(v["bladder"], z) or overlaps(v["rectum"], z):
        canvas.paint(v["bladder"].sd(anatomy), 8.0)
        canvas.paint(v["rectum"].sd(anatomy), 35.0)
        canvas.paint(v["rectum"].sd(anatomy) + 4, -950.0)
    aorta = v["aorta"].sd(anatomy)
    canvas.paint(aorta, enhanced(ph, state, "aorta"))
    for name in ("iliac_left", "iliac_right"):
        canvas.paint(v[name].sd(anatomy), enhanced(ph, state, "aorta"))
    canvas.paint(v["ivc"].sd(anatomy), enhanced(ph, state, "vein"))

    o = ph.organs
    below = lambda sd, gap=5.0: torch.maximum(torch.maximum(sd, z - dia + gap), cavity + 2)  # noqa: E731
    spleen_var = 25.0 if state.phase == "arterial" else 5.0  # arterial "zebra" spleen
    canvas.paint(below(union(o["spleen"], anatomy)), enhanced(ph, state, "spleen") + spleen_var * texture,
                 LABELS["spleen"])
    canvas.paint(below(union(o["liver"], anatomy)), enhanced(ph, state, "liver") + 6 * texture, LABELS["liver"])
    canvas.paint(v["portal"].sd(anatomy), enhanced(ph, state, "vein"))
    for side in ("kidney_left", "kidney_right"):
        if side in o and overlaps(o[side][0], z):
            sd = o[side][0].sd(anatomy)
            canvas.paint(sd, enhanced(ph, state, "kidney_cortex") + 4 * texture, LABELS["kidney"])
            canvas.paint(sd + 7, enhanced(ph, state, "kidney_medulla"))
    if "gallbladder" in o:
        canvas.paint(below(o["gallbladder"][0].sd(anatomy)), 12.0, LABELS["gallbladder"])
    canvas.paint(o["pancreas"][0].sd(anatomy), enhanced(ph, state, "pancreas") + 8 * texture, LABELS["pancreas"])
    stomach = below(union(o["stomach"], anatomy), 4.0)
    fundus = o["stomach"][0]
    gas_level = fundus.centre[1] - fundus.radii[1] * (1 - 2 * state.stomach_gas)
    canvas.paint(stomach, enhanced(ph, state, "bowel_wall"), LABELS["stomach"])
    canvas.paint(torch.maximum(stomach + 4, y - gas_level), -1000.0)
    canvas.paint(torch.maximum(stomach + 4, gas_level - y), 15.0)
    if "prostate" in o:
        canvas.paint(o["prostate"][0].sd(anatomy), enhanced(ph, state, "prostate") + 5 * texture,
                     LABELS["prostate"])

    # thorax: lungs with vessels, heart, airways
    if bool(z.max() > min(ph.dome) - 60):
        heart = torch.maximum(o["heart"][0].sd(anatomy), dia + 3 - z)
        mediastinum = 18 + 0.03 * (z - 150).clamp(min=0)
        spine_col = ellipse_sd(x, y - interp(z, TRUNK_Z, SPINE_Y), torch.full_like(x, 32.0),
                                torch.full_like(x, 40.0))
        apex = z - 335 + 0.004 * (x.abs() - 60) ** 2
        lung = torch.stack([cavity + 3, dia + 2 - z, mediastinum - x.abs(), 8 - heart, 8 - spine_col, 5 - aorta,
                            apex]).amax(0)
        inside = lung < canvas.width
        if inside.any():
            pts = tuple(c[inside] for c in anatomy)
            hilum = torch.sqrt((pts[0].abs() - 45) ** 2 + (pts[1] - 5) ** 2 + (pts[2] - 180) ** 2)
            tube = (f["vessel_a"](pts) ** 2 + f["vessel_b"](pts) ** 2) / (0.015 + 0.25 * torch.exp(-hilum / 60))
            parenchyma = state.lung_hu + 20 * texture[inside]
            vessel_hu = enhanced(ph, state, "vein")
            value = parenchyma + (vessel_hu - parenchyma) * torch.exp(-tube)
            canvas.paint(lung[inside], value, LABELS["lung"], where=inside)
        canvas.paint(heart, enhanced(ph, state, "heart") + 4 * texture, LABELS["heart"])
        for name in ("trachea", "bronchus_left"):
            canvas.paint(v[name].sd(anatomy), 40.0)
            canvas.paint(v[name].sd(anatomy) + 2.5, -1000.0)
    spine(ph, anatomy, canvas)
    ribs(ph, anatomy, cavity, canvas)  # on every chunk: no simple height bound holds for the lowest ribs
    if bool(z.min() < -110):
        pelvis(ph, anatomy, canvas)
    return canvas.hu, canvas.label


Mapping = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Scan:
    """A rendered CT (int16 HU) and its label map (uint8 structure ids) on the same grid."""

    image: sitk.Image
    labels: sitk.Image



def render(ph: Phantom, grid: Grid, state: ScanState | None = None, mapping: Mapping | None = None,
           chunk: int = 1 << 18) -> Scan:
    """Render the phantom on ``grid``; ``mapping`` (a pullback to the reference pose) deforms the anatomy only.

    The table stays in this image's scanner frame. Labels are the structure at
    each voxel centre; intensities ramp over one voxel at every edge.
    """
    state = state or ScanState()
    width = float(np.prod(grid.spacing) ** (1 / 3))
    table_y = table_height(ph)
    hu = np.empty(grid.num_voxels, np.float32)
    labels = np.empty(grid.num_voxels, np.uint8)
    for start, stop, world in world_point_chunks(grid, chunk):
        mapped = world if mapping is None else mapping(world)
        h, lab = _render_points(ph, state, ph.to_anatomy(mapped.float()), world.float(), width, table_y)
        hu[start:stop], labels[start:stop] = h.numpy(), lab.numpy()
    rng = np.random.default_rng(state.noise_seed)
    sigma = max(state.noise / np.sqrt(np.prod(grid.spacing)), 2.0)
    hu += rng.normal(0, sigma, hu.size).astype(np.float32)
    image = sitk.GetImageFromArray(np.clip(np.round(hu), -1024, 3071).astype(np.int16).reshape(grid.shape))
    label_image = sitk.GetImageFromArray(labels.reshape(grid.shape))
    return Scan(grid.apply_to(image), grid.apply_to(label_image))
