"""Image/depth I/O: clear errors for bad files, correct values for every pixel format we accept."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ssr_lightning.data.image_io import (
    ImageReadError,
    ImageReadWarning,
    check_pair_size,
    check_size,
    crop_to_multiple,
    load_depth,
    load_image,
    normalize_depth,
    save_image,
)


def _noise_png(path: Path, h: int = 64, w: int = 64) -> np.ndarray:
    arr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


# ----------------------------------------------------------------------------- errors
def test_missing_file_names_path(tmp_path: Path) -> None:
    p = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(p)


def test_corrupt_file_raises_image_read_error(tmp_path: Path) -> None:
    p = tmp_path / "junk.png"
    p.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match="junk.png") as exc:
        load_image(p)
    assert isinstance(exc.value, ValueError)
    assert "corrupt or truncated" in str(exc.value)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file_raises_image_read_error(tmp_path: Path, ext: str) -> None:
    full = tmp_path / f"full.{ext}"
    _noise_png(full, 128, 128) if ext == "png" else Image.fromarray(
        np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    ).save(full, quality=95)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=f"cut.{ext}"):
        load_image(cut)


def test_empty_file_raises(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.jpg"):
        load_image(p)


# ----------------------------------------------------------------------------- formats
def test_rgb8_roundtrip_and_save(tmp_path: Path) -> None:
    p = tmp_path / "rgb.png"
    arr = _noise_png(p, 20, 30)
    img = load_image(p)
    assert img.shape == (20, 30, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, arr / 255.0, atol=1e-6)
    out = tmp_path / "sub" / "saved.png"
    save_image(out, img)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), arr)


def test_grayscale_replicated(tmp_path: Path) -> None:
    p = tmp_path / "gray.png"
    arr = np.arange(0, 250, 10, dtype=np.uint8).reshape(5, 5)
    Image.fromarray(arr, mode="L").save(p)
    img = load_image(p)
    assert img.shape == (5, 5, 3)
    for c in range(3):
        np.testing.assert_allclose(img[..., c], arr / 255.0, atol=1e-6)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    p = tmp_path / "rgba.png"
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (255, 0, 0, 0)  # fully transparent -> white
    arr[1, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    arr[1, 1] = (0, 255, 0, 255)
    Image.fromarray(arr, mode="RGBA").save(p)
    img = load_image(p)
    np.testing.assert_allclose(img[0, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(img[0, 1], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(img[1, 0], [1 - 128 / 255] * 3, atol=1e-3)
    np.testing.assert_allclose(img[1, 1], [0, 1, 0], atol=1e-6)


def test_palette_image(tmp_path: Path) -> None:
    p = tmp_path / "pal.png"
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2] = (10, 200, 30)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(p)
    img = load_image(p)
    np.testing.assert_allclose(img[0, 0], np.array([10, 200, 30]) / 255.0, atol=1e-6)
    np.testing.assert_allclose(img[3, 3], [0, 0, 0], atol=1e-6)


def test_16bit_grayscale_png(tmp_path: Path) -> None:
    p = tmp_path / "g16.png"
    arr = np.array([[0, 32768], [65535, 16384]], dtype=np.uint16)
    Image.fromarray(arr).save(p)
    img = load_image(p)
    assert img.shape == (2, 2, 3)
    assert img[1, 0, 0] == pytest.approx(1.0)
    assert img[0, 1, 1] == pytest.approx(0.5, abs=1e-4)
    assert img[1, 1, 2] == pytest.approx(0.25, abs=1e-4)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_rgb_keeps_precision_and_channel_order(tmp_path: Path, ext: str) -> None:
    p = tmp_path / f"rgb16.{ext}"
    rgb = np.zeros((2, 2, 3), np.uint16)
    rgb[0, 0] = (65535, 32768, 0)
    rgb[1, 1] = (1, 2, 3)  # below 8-bit resolution: lost if decoded as 8 bits
    cv2.imwrite(str(p), rgb[..., ::-1].copy())  # OpenCV writes BGR
    img = load_image(p)
    np.testing.assert_allclose(img[0, 0], [1.0, 32768 / 65535, 0.0], atol=1e-6)
    np.testing.assert_allclose(img[1, 1], np.array([1, 2, 3]) / 65535.0, atol=1e-7)


def test_float_tiff(tmp_path: Path) -> None:
    p = tmp_path / "f.tif"
    arr = np.array([[0.0, 0.25], [0.75, 1.5]], dtype=np.float32)
    Image.fromarray(arr, mode="F").save(p)
    with pytest.warns(ImageReadWarning, match="values above 1 are clipped"):
        img = load_image(p)
    np.testing.assert_allclose(img[..., 0], [[0.0, 0.25], [0.75, 1.0]], atol=1e-6)


# ----------------------------------------------------------------------------- depth
def test_load_depth_formats(tmp_path: Path) -> None:
    d = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "d.npy", d)
    np.savez(tmp_path / "d.npz", first=d, second=d * 2)
    cv2.imwrite(str(tmp_path / "d16.png"), (d * 65535).round().astype(np.uint16))
    np.testing.assert_allclose(load_depth(tmp_path / "d.npy"), d)
    np.testing.assert_allclose(load_depth(tmp_path / "d.npz"), d)
    np.testing.assert_allclose(load_depth(tmp_path / "d16.png"), d, atol=1e-4)
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="bad.npy"):
        load_depth(tmp_path / "bad.npy")


def test_normalize_depth_robust_and_inverse() -> None:
    d = np.tile(np.linspace(1.0, 10.0, 100, dtype=np.float32), (10, 1))
    d[0, 0] = 1e6  # outlier must not squash the range
    d[5, 5] = np.nan
    n = normalize_depth(d)
    assert n.dtype == np.float32 and n.min() == 0.0 and n.max() == 1.0
    assert np.isfinite(n).all()
    assert n[3, 50] == pytest.approx(0.5, abs=0.03)
    # disparity: larger = nearer -> depth 0
    disp = np.tile(np.linspace(1.0, 4.0, 50, dtype=np.float32), (5, 1))
    disp[2, 2] = 0.0  # invalid, filled from a neighbour
    nd = normalize_depth(disp, inverse=True)
    assert nd[0, -1] == 0.0 and nd[0, 0] == 1.0
    assert nd[2, 2] == pytest.approx(nd[2, 1], abs=0.05)
    assert (np.diff(nd[0]) <= 1e-6).all()
    assert (normalize_depth(np.ones((4, 4))) == 0.5).all()


# ----------------------------------------------------------------------------- sizes
def test_check_size_messages() -> None:
    check_size(96, 128, 4, 64)
    with pytest.raises(ValueError, match=r"'x.png' is 100×80 but patch_size is 192.*lower data.patch_size"):
        check_size(80, 100, 4, 192, path="x.png")
    with pytest.raises(ValueError, match="not divisible by the scale 4"):
        check_size(81, 100, 4, path="y.png")
    with pytest.raises(ValueError, match=r"HR must be 64×48"):
        check_pair_size((12, 16), (50, 64), 4, "lr.png", "hr.png")
    check_pair_size((12, 16), (48, 64), 4, "lr.png", "hr.png")
    assert crop_to_multiple(np.zeros((83, 101, 3)), 4).shape == (80, 100, 3)
