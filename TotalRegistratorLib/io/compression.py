"""Gzip compression on several cores, for the ``.nii.gz`` outputs of clinical-size scans.

ITK's NIfTI writer compresses on one core at a fixed level (about 7 s for a 240 MB warped CT). Here the
data is cut into blocks that are deflated independently in threads (zlib releases the GIL), ended with a
sync flush so they concatenate into one valid deflate stream, and wrapped in a single gzip member with
the CRC-32 and size of the whole: the same construction as ``pigz``. Any gzip reader (zlib, Python's
gzip, ITK, nibabel) reads the result as an ordinary ``.gz`` file.

The blocks are deflated by :mod:`.zlib_codec` at its fastest level (ISA-L's: 4-5x faster than zlib's, for
files about 5 % larger).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from . import zlib_codec

BLOCK_BYTES = 8 << 20  # uncompressed bytes per independently deflated block
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip magic, deflate, no flags, no time, unknown OS


def _deflate(block: bytes, level: int, last: bool) -> bytes:
    """Raw deflate of ``block``; byte-aligned by a sync flush unless it is the stream's last block."""
    compressor = zlib_codec.codec.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(block) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def gzip_file(source: str | os.PathLike, target: str | os.PathLike, level: int | None = None,
              threads: int | None = None) -> None:
    """Write ``source``'s bytes gzip-compressed to ``target`` (one gzip member), deflating blocks of
    :data:`BLOCK_BYTES` on ``threads`` cores (default: torch's thread count, which ``--threads`` sets); at most
    ``threads + 1`` blocks are in memory."""
    level = zlib_codec.FASTEST_LEVEL if level is None else level
    threads = threads or torch.get_num_threads()
    size = Path(source).stat().st_size
    crc, done = 0, 0
    with open(source, "rb") as reader, open(target, "wb") as writer, ThreadPoolExecutor(threads) as pool:
        writer.write(_HEADER)
        pending: deque = deque()
        while done < size or pending:
            while done < size and len(pending) <= threads:
                block = reader.read(BLOCK_BYTES)
                if not block:
                    raise OSError(f"{source}: shorter than its size while being compressed")
                crc = zlib.crc32(block, crc)
                done += len(block)
                pending.append(pool.submit(_deflate, block, level, done >= size))
            writer.write(pending.popleft().result())
        if size == 0:
            writer.write(_deflate(b"", level, True))
        writer.write(struct.pack("<II", crc, size & 0xFFFFFFFF))
