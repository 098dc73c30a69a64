"""The phantom's bones, painted onto a :class:`~.intensities.Canvas`: spine and sacrum, ribs and sternum, pelvis."""

from __future__ import annotations

import numpy as np
import torch

from ...registry import LABELS
from .anatomy import LUMBAR_PITCH, SPINE_Y, THORACIC_PITCH, TRUNK_Z, Phantom
from .intensities import Canvas, paint_bone
from .shapes import Coords, Ellipsoid, Tube, ellipse_sd, interp


def spine(ph: Phantom, p: Coords, canvas: Canvas) -> None:
    """Vertebrae T1..L5 with discs, spinal canal, posterior elements, and the sacrum."""
    x, y, z = p
    tops = np.concatenate([12 * THORACIC_PITCH + 20.0 * np.arange(3, 0, -1), THORACIC_PITCH * np.arange(12, 0, -1),
                           [0.0], -LUMBAR_PITCH * np.arange(1, 6)])
    centres = torch.as_tensor((tops[:-1] + tops[1:]) / 2, dtype=z.dtype)  # C5..L5, descending
    heights = torch.as_tensor(tops[:-1] - tops[1:], dtype=z.dtype)
    order = torch.argsort(centres)
    nearest = order[torch.bucketize(z, (centres[order][1:] + centres[order][:-1]) / 2)]
    zc, pitch = centres[nearest], heights[nearest]
    dz = (z - zc).abs()
    yb = interp(z, TRUNK_Z, SPINE_Y)
    rb = 14 + 10 * ((324 - zc) / 514).clamp(0, 1)  # vertebral body radius grows caudally
    disc = 0.2 * pitch
    radial = ellipse_sd(x, y - yb, rb * 1.15, rb * 0.85)
    body = torch.maximum(radial, dz - (pitch - disc) / 2)
    canvas.paint(torch.maximum(radial, dz - pitch / 2 - 1), 90.0)  # disc (continuous column), then bone
    canal_y = yb + rb * 0.85 + 9
    ring = torch.sqrt(x**2 + (y - canal_y) ** 2)
    arch = torch.maximum((ring - 12).abs() - 3, dz - pitch * 0.38)
    spinous = torch.maximum(torch.maximum(x.abs() - 4, (y - canal_y - 32).abs() - 18),
                            (z - zc + 0.4 * (y - canal_y)).abs() - pitch * 0.25)
    transverse = torch.maximum(torch.maximum(x.abs() - 30, (y - canal_y).abs() - 5), dz - 6)
    bone = torch.minimum(torch.minimum(body, arch), torch.minimum(spinous, transverse))
    sacrum = Ellipsoid((0.0, 72.0, -245.0), (46.0, 16.0, 62.0), (-30.0, 0.0, 0.0)).sd(p)
    bone = torch.where(z < tops[-1] + 5, torch.minimum(bone, sacrum), bone)
    paint_bone(ph, canvas, bone, LABELS["vertebrae"])
    canvas.paint(torch.maximum(ring - 9, -200 - z), 25.0)  # spinal canal: cord and CSF


def ribs(ph: Phantom, p: Coords, cavity_sd: torch.Tensor, canvas: Canvas) -> None:
    """Twelve rib pairs along the cage (sloping down anteriorly), costal cartilages and the sternum."""
    x, y, z = p
    theta = torch.atan2(y, x.abs())  # +90 deg posterior midline, -90 deg anterior midline
    anterior = (1 - torch.sin(theta)) / 2  # 0 posterior .. 1 anterior
    top = 12 * THORACIC_PITCH - 8
    drop = 55 + 35 * anterior
    n = ((top - drop * anterior - z) / THORACIC_PITCH).round().clamp(0, 11)
    dz = z - (top - drop * anterior - n * THORACIC_PITCH)
    radial = cavity_sd - 6
    section = torch.sqrt((radial / 5) ** 2 + (dz / 7) ** 2)
    sd = (section - 1) * 5
    bony_end = 0.72 - 0.025 * (n - 6).clamp(min=0) - 0.1 * (n >= 10).float()  # floating ribs are short
    behind_spine = torch.maximum(x.abs() - 25, 45 - y)  # ribs end at the transverse processes
    sd = torch.maximum(sd, -behind_spine)
    bone = torch.maximum(sd, anterior - bony_end)
    cartilage = torch.maximum(torch.maximum(sd, bony_end - anterior), (n - 9.5) * 20)
    cartilage = torch.maximum(cartilage, 14 - x.abs())
    sternum = torch.stack([x.abs() - 16, (cavity_sd - 4).abs() - 7, (z - (top - 150)).abs() - 95, y]).amax(0)
    paint_bone(ph, canvas, torch.minimum(bone, sternum), LABELS["ribs"])
    canvas.paint(cartilage, 120.0, LABELS["ribs"])


def pelvis(ph: Phantom, p: Coords, canvas: Canvas) -> None:
    """Iliac wings, acetabula, pubic and ischial rami, femoral heads, necks and shafts."""
    x, y, z = p
    parts = []
    for s in (-1.0, 1.0):
        wing = Ellipsoid((s * 20, 30, -225), (112, 78, 100), (0, s * 10, 0)).sd(p).abs() - 5
        wing = torch.maximum(wing, torch.maximum(z + 125, -(z + 290)))
        wing = torch.maximum(wing, torch.maximum(40 - s * x, y - 75))
        head = np.array([s * 92, -5, -300])
        parts += [wing,
                  Ellipsoid(tuple(head), (31, 31, 31)).sd(p).abs() - 5,
                  Tube((tuple(head + [-s * 5, -5, -15]), (s * 10, -62, -328)), (11, 9)).sd(p),
                  Tube((tuple(head + [-s * 8, 10, -20]), (s * 58, 32, -362)), (13, 12)).sd(p),
                  Tube((tuple(head), (s * 135, 5, -330), (s * 122, 10, -620)), (23, 16, 15)).sd(p),
                  Ellipsoid((s * 138, 12, -322), (20, 22, 22)).sd(p)]
    paint_bone(ph, canvas, torch.stack(parts).amin(dim=0), LABELS["pelvis_bone"])
