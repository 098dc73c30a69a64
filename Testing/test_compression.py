"""Parallel gzip of the .nii.gz outputs: one valid gzip member whatever the block count, read back exactly."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from TotalRegistratorLib.io import compression, images, zlib_codec


@pytest.mark.parametrize("backend", ["installed", "zlib"])
@pytest.mark.parametrize("size", [0, 1, 4096, 4096 * 3, 4096 * 3 + 17])
def test_gzip_file_is_one_member_that_decompresses_to_the_source(size, backend, tmp_path, monkeypatch):
    monkeypatch.setattr(compression, "BLOCK_BYTES", 4096)  # several blocks, including an exact multiple
    if backend == "zlib":  # the fallback where ISA-L is missing
        monkeypatch.setattr(zlib_codec, "codec", zlib)
        monkeypatch.setattr(zlib_codec, "FASTEST_LEVEL", 1)
    data = np.random.default_rng(size).integers(0, 8, size, dtype=np.uint8).tobytes()  # compressible
    source, target = tmp_path / "data.bin", tmp_path / "data.bin.gz"
    source.write_bytes(data)
    compression.gzip_file(source, target, threads=3)
    packed = target.read_bytes()
    assert gzip.decompress(packed) == data  # checks the CRC-32 and the size in the trailer
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    assert inflater.decompress(packed) == data and inflater.eof and inflater.unused_data == b""  # one member
    if size > 4096:
        assert len(packed) < size / 2


def test_nifti_gz_written_in_parallel_reads_back_with_its_geometry(tmp_path):
    array = np.random.default_rng(0).integers(-1024, 2000, (40, 50, 60)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 1.25))
    image.SetOrigin((-10.0, 20.0, 30.5))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / "warped.nii.gz"
    images.write_image(image, path)
    assert os.listdir(tmp_path) == ["warped.nii.gz"]  # no staging file left behind
    back = sitk.ReadImage(str(path))
    assert back.GetPixelID() == sitk.sitkInt16 and np.array_equal(sitk.GetArrayViewFromImage(back), array)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(image, str(plain))
    assert gzip.decompress(path.read_bytes()) == plain.read_bytes()  # ITK's own NIfTI bytes, compressed


def test_nifti_gz_name_in_capitals_is_written(tmp_path):
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    path = tmp_path / "WARPED.NII.GZ"
    images.write_image(image, path)
    assert os.listdir(tmp_path) == ["WARPED.NII.GZ"]
    assert np.array_equal(sitk.GetArrayViewFromImage(sitk.ReadImage(str(path), imageIO="NiftiImageIO")),
                          sitk.GetArrayViewFromImage(image))
