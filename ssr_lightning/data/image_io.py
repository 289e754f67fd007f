"""Robust image and depth I/O with error messages that say what to do.

Conventions (docs/ARCHITECTURE.md): images are ``float32`` RGB in ``[0, 1]`` with shape ``(H, W, 3)``;
depth maps are ``float32`` ``(H, W)``; after :func:`normalize_depth` they lie in ``[0, 1]`` with
0 = nearest and 1 = farthest.

:func:`load_image` is the one image reader (``ssr sr``, folder data sets, photos, scenes): it honours EXIF
orientation, checks the declared size before decoding, and says when a file is not read exactly as stored
(:class:`ImageReadWarning`: first frame of an animation, float data rescaled) or cannot be read
(:class:`ImageReadError`: corrupt, permission denied, NaN pixels, too large).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, TiffImagePlugin
from scipy import ndimage

from ssr_lightning.files import atomic_write

PathLike = str | os.PathLike

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
DEPTH_EXTENSIONS = (".npy", ".npz", ".png", ".tif", ".tiff", ".exr", ".pfm")

# load_image's default limit on declared pixels: Pillow's decompression-bomb warning threshold (89.5 Mpx).
MAX_PIXELS = 89_478_485
EXIF_ORIENTATION = 0x0112

__all__ = [
    "DEPTH_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "ImageReadError",
    "ImageReadWarning",
    "ImageTooLargeError",
    "check_pair_size",
    "check_size",
    "crop_to_multiple",
    "fill_invalid",
    "load_depth",
    "load_image",
    "normalize_depth",
    "read_size",
    "save_image",
]


class ImageReadError(ValueError):
    """A file exists but cannot be decoded as an image / depth map (corrupt, truncated, wrong format)."""


class ImageTooLargeError(ImageReadError):
    """The file declares more pixels than allowed (a decompression bomb, or too large to process)."""


class ImageReadWarning(UserWarning):
    """A file was read, but not exactly as stored (first frame only, float data rescaled or clipped)."""


def _read_error(path: PathLike, reason: object) -> ImageReadError:
    if isinstance(reason, PermissionError):
        return ImageReadError(f"cannot read image '{path}': permission denied. Check its permissions "
                              f"(ls -l; chmod u+r '{path}') or run as a user who may read it.")
    return ImageReadError(
        f"cannot read image '{path}': {reason}. The file is corrupt or truncated; "
        "re-export it or remove it from the folder."
    )


def _warn(path: Path, what: str) -> None:
    warnings.warn(f"image '{path}': {what}", ImageReadWarning, stacklevel=3)


@contextlib.contextmanager
def _open(p: Path) -> Iterator[Image.Image]:
    """``Image.open`` with Pillow's own size limit off: callers check the declared size themselves, before any
    pixel is decoded (Pillow would warn, or refuse without giving the size). Like ``warnings.catch_warnings``,
    this sets a module global for its duration: one decoding thread per process."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(p) as img:
            yield img
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_pixels(p: Path, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(
            f"image '{p}' declares {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,}: a decompression "
            "bomb, or too large to process; downscale it")


def _tiff_header(p: Path) -> tuple[int, int, int]:
    """``(width, height, orientation)`` from a TIFF's first directory, for TIFFs Pillow cannot open (float RGB)."""
    with open(p, "rb") as fh:
        ifd = TiffImagePlugin.ImageFileDirectory_v2(fh.read(8))
        fh.seek(ifd.next)
        ifd.load(fh)
    return int(ifd[256]), int(ifd[257]), int(ifd.get(274, 1))


def read_size(path: PathLike) -> tuple[int, int]:
    """``(width, height)`` as stored, from the file's header only (no pixel is decoded).

    Raises:
        FileNotFoundError: the path does not exist.
        ImageReadError: not an image, or not readable (the message says which: permission, corrupt).
    """
    p = _require_file(path)
    try:
        with _open(p) as img:
            return img.size
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if p.suffix.lower() in (".tif", ".tiff") and not isinstance(exc, PermissionError):
            with contextlib.suppress(Exception):
                return _tiff_header(p)[:2]
        raise _read_error(p, exc) from exc


def _require_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"file not found: '{p}'")
    if p.is_dir():
        raise _read_error(p, "it is a directory, not an image file")
    return p


def _png_is_16bit_colour(p: Path) -> bool:
    """True for 16-bit RGB(A) PNGs, which Pillow silently truncates to 8 bits."""
    if p.suffix.lower() != ".png":
        return False
    with open(p, "rb") as f:
        head = f.read(26)
    # IHDR: bit depth at byte 24, colour type at byte 25 (2 = RGB, 6 = RGBA).
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def _tiff_bits(img: Image.Image) -> int:
    """Largest bits-per-sample of a TIFF (tag 258), 8 for any other format."""
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258, 8) if tags is not None else 8
    return max(bits) if isinstance(bits, tuple) else int(bits)


def _float_range(x: np.ndarray, p: Path) -> np.ndarray:
    """Float pixel data brought to [0, 1]: NaN/inf refused; the range is read off the maximum (1, 255 or 65535)."""
    bad = ~np.isfinite(x)
    if bad.any():
        raise ImageReadError(f"image '{p}': {int(bad.sum()):,} of {x.size:,} pixel values are NaN or infinite; "
                             "replace them (or remove the file) and try again")
    hi, lo = float(x.max(initial=0.0)), float(x.min(initial=0.0))
    if hi > 65535.0:
        raise ImageReadError(f"image '{p}': float pixel values up to {hi:.6g} fit no image range (0-1, 0-255, "
                             "0-65535); rescale it to [0, 1] and save it again")
    if hi > 2.0:
        top = 255.0 if hi <= 255.0 else 65535.0
        _warn(p, f"float pixel values up to {hi:.6g}: read as 0-{top:g} data (divided by {top:g})")
        x = x / top
    elif hi > 1.0:
        _warn(p, f"float pixel values up to {hi:.6g}: values above 1 are clipped to white")
    if lo < 0.0:
        _warn(p, f"negative float pixel values (down to {lo:.3g}) are clipped to black")
    return x


def _from_cv2(p: Path) -> np.ndarray:
    """Decode with OpenCV (16-bit colour PNG/TIFF, float TIFF); returns float32 RGB in [0, 1]."""
    arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise _read_error(p, "OpenCV could not decode it")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
    x = arr.astype(np.float32) / scale
    if arr.dtype.kind == "f":
        x = _float_range(x, p)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    elif x.shape[2] == 4:
        x = cv2.cvtColor(x, cv2.COLOR_BGRA2RGBA)
        x = x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
    else:
        x = cv2.cvtColor(x[..., :3], cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(np.clip(x, 0.0, 1.0), dtype=np.float32)


def _pil_to_float(img: Image.Image, p: Path) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16"):
        x = np.asarray(img).astype(np.float32) / 65535.0
    elif mode == "I":
        # 32-bit integer images hold 16-bit data in practice (older Pillow opens 16-bit grey PNGs as "I").
        x = np.asarray(img).astype(np.float32) / 65535.0
    elif mode == "F":
        x = _float_range(np.asarray(img).astype(np.float32), p)  # float TIFF: range from its maximum
    elif mode in ("1", "L"):
        x = np.asarray(img.convert("L")).astype(np.float32) / 255.0
    elif mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32) / 255.0
        alpha = rgba[..., 3:]
        x = rgba[..., :3] * alpha + (1.0 - alpha)  # composite on white
    else:  # RGB, P, CMYK, YCbCr, RGBX, ...
        x = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    return np.ascontiguousarray(np.clip(x, 0.0, 1.0), dtype=np.float32)


# EXIF orientation -> the array operation that shows the image as a viewer does (PIL's ImageOps.exif_transpose)
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1),
}


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth failing the image for
        return 1


def load_image(path: PathLike, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Load an image as float32 RGB ``(H, W, 3)`` in ``[0, 1]``, oriented as an image viewer shows it.

    - The declared size is checked against ``max_pixels`` before any pixel is decoded (None: no limit).
    - The whole file is decoded up front, so a truncated file fails here and not later.
    - Grayscale is replicated to RGB; palette images become RGB.
    - Alpha (RGBA, LA, palette with transparency) is composited on **white**: transparent regions of
      logos/graphics are meant as paper-white background, and black would invent dark halos.
    - 16-bit data ('I;16', 'I', 16-bit RGB PNG/TIFF read through OpenCV) is divided by 65535.
    - Float data (float TIFF): NaN/inf pixels are an error; the range is read off the maximum: up to 1 as is, up
      to 2 clipped, up to 255 divided by 255, up to 65535 divided by 65535 (each with a warning), above: an error.
    - EXIF orientation is applied (as ``PIL.ImageOps.exif_transpose``). Depth maps (:func:`load_depth`) carry none.
    - Animated GIF / multi-page TIFF: the first frame, with a warning.

    Warns :class:`ImageReadWarning` whenever the pixels are not taken exactly as stored (the message says how).

    Raises:
        FileNotFoundError: the path does not exist (the message names it).
        ImageReadError: not a decodable image (corrupt, truncated, not an image, permission denied, NaN pixels);
            :class:`ImageTooLargeError` when the declared size is above ``max_pixels``.
    """
    p = _require_file(path)
    # Another library may have switched truncated-image tolerance on; a half-decoded training image must fail.
    old_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with _open(p) as img:
            _check_pixels(p, *img.size, max_pixels)
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1:
                img.seek(0)
                if img.format != "MPO":  # a camera's MPO: the first picture is the photo, the others previews
                    _warn(p, f"{frames} frames (an animation or a multi-page file): only the first is used")
            if _png_is_16bit_colour(p) or (img.mode in ("RGB", "RGBA") and _tiff_bits(img) > 8):
                x = _from_cv2(p)  # Pillow decodes 16-bit colour PNGs/TIFFs as 8 bits
            else:
                img.load()
                x = _pil_to_float(img, p)
            orientation = _orientation(img)
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        x = _tiff_with_cv2(p, max_pixels) if p.suffix.lower() in (".tif", ".tiff") and not isinstance(
            exc, PermissionError) else None
        if x is None:
            raise _read_error(p, exc) from exc
        return x
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old_truncated
    return _oriented(x, orientation)


def _oriented(x: np.ndarray, orientation: int) -> np.ndarray:
    return np.ascontiguousarray(_ORIENT[orientation](x)) if orientation in _ORIENT else x


def _tiff_with_cv2(p: Path, max_pixels: int | None) -> np.ndarray | None:
    """A TIFF Pillow cannot open (16-bit colour, float RGB), decoded by OpenCV; None without a TIFF directory."""
    try:
        w, h, orientation = _tiff_header(p)
    except Exception:  # noqa: BLE001 - not a TIFF at all: the caller reports Pillow's error
        return None
    _check_pixels(p, w, h, max_pixels)
    return _oriented(_from_cv2(p), orientation)  # its own errors (NaN pixels, undecodable) say what is wrong


def save_image(path: PathLike, img: np.ndarray) -> None:
    """Save a float ``(H, W, 3)`` / ``(H, W)`` image in ``[0, 1]`` (or uint8) as an 8-bit PNG."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(str(tmp), format="PNG"))


def load_depth(path: PathLike) -> np.ndarray:
    """Load a raw depth (or disparity) map as float32 ``(H, W)``; values are not normalised.

    Formats: ``.npy``; ``.npz`` (first array in the archive); 8/16-bit ``.png`` (divided by 255/65535);
    ``.tif/.tiff`` (integer or float); ``.exr``/``.pfm`` when OpenCV can read them (EXR needs
    ``OPENCV_IO_ENABLE_OPENEXR=1`` in the environment before cv2 is imported). Multi-channel files keep
    their first channel. Pass the result through :func:`normalize_depth`.
    """
    p = _require_file(path)
    ext = p.suffix.lower()
    try:
        if ext == ".npy":
            d = np.load(p, allow_pickle=False)
        elif ext == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if not z.files:
                    raise ValueError("the .npz archive holds no array")
                d = z[z.files[0]]
        else:
            d = cv2.imread(str(p), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
            if d is None:
                hint = " (set OPENCV_IO_ENABLE_OPENEXR=1 or convert it to .npy)" if ext == ".exr" else ""
                raise ValueError(f"OpenCV could not decode it{hint}")
            if d.dtype == np.uint8:
                d = d.astype(np.float32) / 255.0
            elif d.dtype == np.uint16:
                d = d.astype(np.float32) / 65535.0
    except (OSError, ValueError, EOFError) as exc:
        raise ImageReadError(
            f"cannot read depth map '{p}': {exc}. The file is corrupt or in an unsupported format; "
            "re-export it (.npy is safest) or remove it."
        ) from exc
    d = np.asarray(d)
    if d.ndim == 3:
        d = d[..., 0] if d.shape[-1] <= 4 else d[0]
    if d.ndim != 2:
        raise ImageReadError(f"cannot read depth map '{p}': expected a 2-D array, got shape {d.shape}.")
    return np.ascontiguousarray(d, dtype=np.float32)


def fill_invalid(d: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid pixels by the value of the nearest valid pixel (Euclidean distance transform)."""
    if valid.all() or not valid.any():
        return d
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return d[tuple(idx)]


def normalize_depth(d: np.ndarray, inverse: bool = False, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Map a raw depth map to ``[0, 1]`` with 0 = nearest, 1 = farthest.

    Uses robust percentiles (``low``/``high``, default 1–99) and clips, so a few outliers do not
    squash the range. Non-finite values (and, with ``inverse``, non-positive disparities) are invalid
    and take the value of the nearest valid pixel.

    Args:
        d: raw map ``(H, W)``.
        inverse: the input is a disparity / inverse depth (larger = nearer); it is converted to depth
            as ``1 / d`` before normalising.
    """
    d = np.asarray(d, dtype=np.float64)
    valid = np.isfinite(d)
    if inverse:
        valid &= d > 0
        d = np.where(valid, 1.0 / np.where(valid, d, 1.0), 0.0)
    if not valid.any():
        return np.full(d.shape, 0.5, dtype=np.float32)
    d = fill_invalid(np.where(valid, d, 0.0), valid)
    lo, hi = np.percentile(d[valid], [low, high])
    if not hi - lo > 1e-12:
        return np.full(d.shape, 0.5, dtype=np.float32)
    return np.clip((d - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def check_size(h: int, w: int, scale: int, patch_size: int | None = None, path: PathLike | None = None) -> None:
    """Raise ``ValueError`` (saying what to do) when an image cannot be used.

    - ``h`` or ``w`` not divisible by ``scale``: only legal for HR folders, which call
      :func:`crop_to_multiple` first (they crop the bottom/right remainder); for paired LR/HR data it is
      an error.
    - image smaller than ``patch_size`` (``None``/0 disables the check).
    """
    name = f"image '{path}'" if path is not None else "image"
    if h % scale or w % scale:
        raise ValueError(
            f"{name} is {w}×{h}, not divisible by the scale {scale}: crop it to a multiple of {scale} "
            f"({w - w % scale}×{h - h % scale}) or check data.scale"
        )
    if patch_size and (h < patch_size or w < patch_size):
        raise ValueError(
            f"{name} is {w}×{h} but patch_size is {patch_size}: lower data.patch_size "
            f"(or data.val_size) or remove the image"
        )


def check_pair_size(
    lr_hw: tuple[int, int], hr_hw: tuple[int, int], scale: int, lr_path: PathLike, hr_path: PathLike
) -> None:
    """Raise ``ValueError`` unless the HR image is exactly ``scale`` × the LR image."""
    (lh, lw), (hh, hw) = lr_hw, hr_hw
    if (hh, hw) != (lh * scale, lw * scale):
        raise ValueError(
            f"HR image '{hr_path}' is {hw}×{hh} but LR image '{lr_path}' is {lw}×{lh}: at scale {scale} "
            f"the HR must be {lw * scale}×{lh * scale}. Check data.scale, or crop the HR image to LR size × scale."
        )


def crop_to_multiple(x: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right remainder so that both spatial sizes are multiples of ``scale`` (HWC or HW)."""
    h, w = x.shape[:2]
    return x[: h - h % scale, : w - w % scale]
