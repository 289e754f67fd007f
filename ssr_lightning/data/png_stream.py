"""An 8-bit PNG written band by band, so an SR image never has to exist whole (``ssr sr``'s output, issue 20).

A PNG is a signature, an ``IHDR`` chunk, the zlib stream of its filtered scanlines split over any number of ``IDAT``
chunks, and ``IEND`` (PNG specification, ISO/IEC 15948). :class:`PNGStream` filters each band of rows as it comes
(per row the filter of libpng's heuristic: the smallest sum of absolute filtered bytes among None, Sub, Up, Average
and Paeth; the previous band's last row is kept for Up, Average and Paeth), feeds one ``zlib`` compressor and writes
an ``IDAT`` whenever a megabyte of compressed data is ready. :func:`write_png_bands` writes a file atomically
(temporary file + rename, ``files.atomic_path``): an interrupted or failed write leaves no partial file.

Memory: one band of rows and its five filtered candidates (uint8), plus zlib's window.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np

from ssr_lightning.files import atomic_path

__all__ = ["PNGStream", "write_png_bands"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IDAT_BYTES = 1 << 20
_ROWS_PER_FILTER_PASS = 64


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filter_rows(rows: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """``(n, 1 + W·C)`` uint8: each row of ``rows (n, W·C)`` with its filter byte, ``prev`` the row above the first
    (zeros at the top of the image)."""
    x = rows.astype(np.int16)
    up = np.concatenate([prev[None].astype(np.int16), x[:-1]], axis=0)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    upleft = np.zeros_like(x)
    upleft[:, bpp:] = up[:, :-bpp]
    cands = np.stack([x, x - left, x - up, x - ((left + up) >> 1), x - _paeth(left, up, upleft)]).astype(np.uint8)
    score = np.abs(cands.view(np.int8).astype(np.int32)).sum(axis=2)  # libpng: bytes read as signed
    kind = score.argmin(axis=0)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = kind
    out[:, 1:] = cands[kind, np.arange(rows.shape[0])]
    return out


class PNGStream:
    """Writes a ``width × height`` 8-bit PNG (``channels`` 3: RGB, 1: grey) to ``fh`` band by band: :meth:`write`
    takes ``(n, width, channels)`` uint8 rows, top to bottom; :meth:`close` checks that all rows came and ends the
    file."""

    def __init__(self, fh: BinaryIO, width: int, height: int, channels: int = 3, level: int = 6) -> None:
        if width < 1 or height < 1 or channels not in (1, 3):
            raise ValueError(f"PNGStream: need a positive size and 1 or 3 channels, got {width}x{height}x{channels}")
        self.fh, self.width, self.height, self.channels = fh, width, height, channels
        self.rows = 0
        self.prev = np.zeros(width * channels, dtype=np.uint8)
        self.zip = zlib.compressobj(level)
        self.pending = bytearray()
        colour = 2 if channels == 3 else 0
        fh.write(SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)))

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim == 2 and self.channels == 1:
            rows = rows[..., None]
        if rows.dtype != np.uint8 or rows.shape[1:] != (self.width, self.channels):
            raise ValueError(f"PNGStream: rows must be uint8 (n, {self.width}, {self.channels}), got {rows.dtype} "
                             f"{rows.shape}")
        if self.rows + rows.shape[0] > self.height:
            raise ValueError(f"PNGStream: {self.rows + rows.shape[0]} rows for an image of {self.height}")
        flat = rows.reshape(rows.shape[0], -1)
        for k in range(0, flat.shape[0], _ROWS_PER_FILTER_PASS):
            part = flat[k : k + _ROWS_PER_FILTER_PASS]
            self.pending += self.zip.compress(filter_rows(part, self.prev, self.channels).tobytes())
            self.prev = part[-1].copy()
            self._flush(_IDAT_BYTES)
        self.rows += rows.shape[0]

    def _flush(self, at_least: int) -> None:
        if len(self.pending) >= at_least and self.pending:
            self.fh.write(_chunk(b"IDAT", bytes(self.pending)))
            self.pending.clear()

    def close(self) -> None:
        if self.rows != self.height:
            raise ValueError(f"PNGStream: {self.rows} of {self.height} rows written")
        self.pending += self.zip.flush()
        self._flush(1)
        self.fh.write(_chunk(b"IEND", b""))


def write_png_bands(path: str | os.PathLike[str], width: int, height: int, bands: Iterable[np.ndarray],
                    channels: int = 3) -> None:
    """Write the rows of ``bands`` (uint8 ``(n, width, channels)``, top to bottom) to ``path`` as a PNG, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        png = PNGStream(fh, width, height, channels)
        for band in bands:
            png.write(band)
        png.close()
