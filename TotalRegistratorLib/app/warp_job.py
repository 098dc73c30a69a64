"""The ``warp`` file job: resample an image or label map through a transform file onto a reference grid."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from ..io import images, outputs
from ..optimization.instance import resample_moving


def run_warp(input_path: Path, transform_path: Path, reference_path: Path, output: Path, labels: bool) -> None:
    """Resample ``input`` onto ``reference``'s grid through an ITK transform file (nearest for labels).

    Images get the input's minimum value outside its field of view (air for CT).
    """
    outputs.check_output_file(output, outputs.IMAGE_SUFFIXES)
    image = images.read_image(input_path, labels=labels)
    transform = images.read_transform(transform_path)
    reference = images.read_volume(reference_path)  # only its grid is used
    default = None if labels else float(sitk.GetArrayViewFromImage(image).min())
    outputs.check_not_an_input([output], [input_path, transform_path, reference_path])
    images.write_image(resample_moving(image, reference, transform, labels=labels, default=default), output)
