"""The band-by-band PNG writer (issue 20): what PIL reads back is the image, bit for bit; writes are atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssr_lightning.data.png_stream import PNGStream, filter_rows, write_png_bands


def _image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.integers(-3, 4, size=(h, w, c)), axis=1)  # gradients: every filter gets chosen
    noise = rng.integers(0, 256, size=(h, w, c))
    img = np.where(np.arange(h)[:, None, None] % 7 < 4, smooth % 256, noise)
    return img.astype(np.uint8)


@pytest.mark.parametrize(("h", "w", "c", "band"), [(37, 53, 3, 5), (200, 130, 3, 64), (1, 1, 3, 1), (19, 8, 1, 4)])
def test_pil_reads_back_the_image(tmp_path: Path, h: int, w: int, c: int, band: int) -> None:
    img = _image(h, w, c)
    path = tmp_path / "out.png"
    write_png_bands(path, w, h, (img[a : a + band] for a in range(0, h, band)), channels=c)
    with Image.open(path) as im:
        im.load()
        assert im.mode == ("RGB" if c == 3 else "L") and im.size == (w, h)
        back = np.asarray(im)
    np.testing.assert_array_equal(back.reshape(img.shape), img)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left"


def test_every_filter_is_used_and_reversible() -> None:
    img = _image(40, 30)
    out = filter_rows(img.reshape(40, -1), np.zeros(90, dtype=np.uint8), 3)
    assert set(out[:, 0].tolist()) >= {0, 1, 2, 4}, out[:, 0]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(b"earlier result")

    def bands():
        yield np.zeros((3, 4, 3), dtype=np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_png_bands(path, 4, 6, bands())
    assert path.read_bytes() == b"earlier result" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ValueError, match="3 of 6 rows"):
        write_png_bands(path, 4, 6, [np.zeros((3, 4, 3), dtype=np.uint8)])
    assert path.read_bytes() == b"earlier result"
    with pytest.raises(ValueError, match="uint8"):
        PNGStream(open(tmp_path / "x.bin", "wb"), 4, 6).write(np.zeros((2, 4, 3)))
