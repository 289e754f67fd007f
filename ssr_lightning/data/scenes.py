"""Embedded default data set: scenes of real photographs with a known depth map and segmentation.

Built only from images that scikit-image ships inside its package (``skimage/data``), read straight from
disk, so nothing is ever downloaded. Three kinds of scene:

- *perspective*: a pinhole camera at height 1 above a textured ground plane. Ground row ``y`` below the
  vanishing line ``y_v`` is at depth ``z = f / (y − y_v)``; its texture is sampled at plane coordinates
  ``(u, v) = (x·z/f, z)`` from a mirror-tiled photo crop through an anisotropic mipmap (per-row footprint), so
  texture frequency grows with distance without aliasing. The ground ends at the visible horizon (25–45 % from
  the top), where it meets a far background photo at the far limit ``z_max`` (the vanishing line lies a little
  above it, hidden by the background). 2–5 upright cut-outs (textured ellipses, boxes, houses, trapezoids,
  blobs) stand on the plane: an object with ground contact row ``y_c`` has the ground's depth there, constant
  over the object, and image height ``f·H / z`` for its world height ``H``; objects are drawn far → near with a
  soft contact shadow, and everything fades slightly towards a haze colour with depth (aerial perspective).
  Depth is visible in the content: height in the frame, texture frequency, object size, occlusion, haze.
  Normalised depth ``d = (z − z_min) / (z_max − z_min)``: 0 at the bottom row, 1 at the horizon/background;
  ``z_max / z_min`` is drawn log-uniformly from 4–16.
- *layers*: a background photo crop on a gently sloped far plane (depth 0.72–1.0), then 2–4 foreground
  layers (texture crops from other photos cut out by ellipses / rotated rectangles / smooth blobs with a
  1-px anti-aliased edge), each a slightly sloped plane in its own depth interval. Layers are composited
  far → near and the depth map holds the front-most layer, so occlusion order always agrees with depth.
  Only occlusion tells depth here.
- *motorcycle*: crops of the Middlebury ``motorcycle_left`` view with depth ∝ 1/disparity.
  Training crops come from the left 60 % of the image, val/test crops from the right 40 %, so no held-out
  motorcycle pixel is ever seen in training.

Kinds are mixed by a scene's rank within its split, cycling through :data:`_KIND_CYCLE`
(perspective, layers, perspective, motorcycle, perspective, layers, perspective, perspective): 5/8
perspective, 2/8 layers, 1/8 motorcycle in every split.

Every scene has a segmentation map (int16, CMOS's semantic map): 0 = background / sky, 1 = ground plane
(perspective), ``2 + k`` = object or layer ``k`` (perspective: drawing order, far → near; layers: the
front-most layer id + 1). Motorcycle scenes have none (all zeros, ``has_segmentation = False``).

The split of a scene index is fixed by the index alone (``index % 10``: 0–7 train, 8 val, 9 test), so
enlarging the training set never changes which scenes are held out. Images are quantised to the 8-bit
grid (as PNG data sets are); depth is float32 in ``[0, 1]``, 0 = nearest.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .image_io import fill_invalid, load_depth, load_image, normalize_depth

Split = Literal["train", "val", "test"]

Kind = Literal["perspective", "layers", "motorcycle"]

__all__ = ["EmbeddedScenes", "render_scene", "render_scene_info", "scene_kind", "scene_split", "split_indices"]

# Source photos (file name, crop box as fractions y0, y1, x0, x1): boxes skip the empty black borders.
_COLOUR_SOURCES: dict[str, tuple[str, tuple[float, float, float, float]]] = {
    "astronaut": ("astronaut.png", (0.0, 1.0, 0.0, 1.0)),
    "chelsea": ("chelsea.png", (0.0, 1.0, 0.0, 1.0)),
    "coffee": ("coffee.png", (0.0, 1.0, 0.0, 1.0)),
    "rocket": ("rocket.jpg", (0.0, 1.0, 0.0, 1.0)),
    "hubble": ("hubble_deep_field.jpg", (0.0, 1.0, 0.0, 1.0)),
    "retina": ("retina.jpg", (0.2, 0.8, 0.2, 0.8)),
    "ihc": ("ihc.png", (0.0, 1.0, 0.0, 1.0)),
}
# Greyscale textures are tinted with a random colour so that layers differ in hue as well.
_GREY_SOURCES: dict[str, tuple[str, tuple[float, float, float, float]]] = {
    "brick": ("brick.png", (0.0, 1.0, 0.0, 1.0)),
    "grass": ("grass.png", (0.0, 1.0, 0.0, 1.0)),
    "gravel": ("gravel.png", (0.0, 1.0, 0.0, 1.0)),
    "camera": ("camera.png", (0.0, 1.0, 0.0, 1.0)),
    "moon": ("moon.png", (0.0, 1.0, 0.0, 1.0)),
    "coins": ("coins.png", (0.0, 1.0, 0.0, 1.0)),
}
# Photos that make a good far background (dark, mostly empty images such as hubble do not).
_BACKGROUNDS = ("astronaut", "chelsea", "coffee", "rocket", "brick", "grass", "gravel", "ihc", "camera")
_TRAIN_FRACTION = 0.6  # motorcycle: x < 0.6 W for training, x >= 0.6 W for val/test
_FG_DEPTH = (0.03, 0.66)  # foreground layers share this depth range, one disjoint interval each
_BG_DEPTH = (0.72, 1.0)

# Kind of a scene by its rank within its split, cycled: 5/8 perspective, 2/8 layers, 1/8 motorcycle.
_KIND_CYCLE: tuple[Kind, ...] = (
    "perspective", "layers", "perspective", "motorcycle", "perspective", "layers", "perspective", "perspective",
)

# Perspective scenes (lengths in pixels are fractions of the scene side S; the camera height is the unit).
_HORIZON = (0.25, 0.45)  # visible horizon row / S, from the top
_DEPTH_RATIO = (4.0, 16.0)  # z_max / z_min, drawn log-uniformly
_FOCAL = (0.9, 1.5)  # focal length / S
_GROUND_RATE = (0.6, 1.3)  # ground texels per pixel across the bottom row
_GROUNDS = ("brick", "grass", "gravel")  # ground textures, 17 scenes in 20
_GROUNDS_RARE = ("moon", "retina", "ihc")  # fine structure: mirror tiling stays inconspicuous
_GROUND_TILE = 256  # ground texture tile, mirror-tiled to a 512-texel (power-of-two) period for the mipmap
_OBJECTS = (2, 5)  # number of upright objects
_OBJECT_HEIGHT = (0.2, 0.75)  # world height / camera height
_OBJECT_ASPECT = (0.35, 1.1)  # width / height
_OBJECT_SHAPES = ("ellipse", "box", "house", "trapezoid", "blob")
_MASK_SUPERSAMPLING = 4  # object masks are filled at 4× and area-averaged: sub-pixel exact coverage
_HAZE = (0.0, 0.35)  # aerial perspective: blend towards the haze colour by haze·d


def _data_dir() -> Path:
    import skimage  # local: only the package location is needed, not skimage.data's fetchers

    d = Path(skimage.__file__).parent / "data"
    if not d.is_dir():
        raise FileNotFoundError(f"scikit-image's bundled data folder is missing: '{d}'; reinstall scikit-image")
    return d


@cache
def _source(name: str) -> np.ndarray:
    """Source photo as float32 RGB, already cut to its crop box."""
    fname, (y0, y1, x0, x1) = {**_COLOUR_SOURCES, **_GREY_SOURCES}[name]
    img = load_image(_data_dir() / fname)
    h, w = img.shape[:2]
    return np.ascontiguousarray(img[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)])


@lru_cache(maxsize=1)
def _motorcycle() -> tuple[np.ndarray, np.ndarray]:
    """Left view (float32 RGB) and raw depth 1/disparity with invalid pixels filled from the nearest valid."""
    img = load_image(_data_dir() / "motorcycle_left.png")
    disp = load_depth(_data_dir() / "motorcycle_disp.npz").astype(np.float64)
    valid = np.isfinite(disp) & (disp > 0)
    depth = fill_invalid(np.where(valid, 1.0 / np.where(valid, disp, 1.0), 0.0), valid)
    return img, depth.astype(np.float32)


def scene_split(index: int) -> Split:
    """Split of a scene index: ``index % 10`` in 0–7 → train, 8 → val, 9 → test."""
    r = index % 10
    return "train" if r < 8 else ("val" if r == 8 else "test")


def _rank_in_split(index: int) -> int:
    r = index % 10
    return (index // 10) * 8 + r if r < 8 else index // 10


def scene_kind(index: int) -> Kind:
    """Kind of scene ``index``: :data:`_KIND_CYCLE` at its rank within its split (5/8 perspective, 2/8 layers,
    1/8 motorcycle in every split)."""
    return _KIND_CYCLE[_rank_in_split(index) % len(_KIND_CYCLE)]


def split_indices(split: Split, n: int) -> list[int]:
    """The first ``n`` scene indices of ``split`` (disjoint across splits by construction)."""
    offset = {"train": None, "val": 8, "test": 9}[split]
    if offset is None:
        return [(k // 8) * 10 + k % 8 for k in range(n)]
    return [10 * k + offset for k in range(n)]


def _plane(
    size: int, lo: float, hi: float, theta: float, box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Planar depth ramp from ``lo`` to ``hi`` across the whole image along ``theta``, evaluated on ``box``."""
    y0, y1, x0, x1 = box if box is not None else (0, size, 0, size)
    c, s = np.cos(theta), np.sin(theta)
    k = (hi - lo) / (size * (abs(c) + abs(s)) + 1e-6)
    # separable: a plane is a sum of a row term and a column term, far cheaper than a full meshgrid
    ax = (np.arange(x0, x1, dtype=np.float32) - size / 2) * (c * k)
    ay = (np.arange(y0, y1, dtype=np.float32) - size / 2) * (s * k) + (lo + hi) / 2
    return (ay[:, None] + ax[None, :]).astype(np.float32)


def _crop(
    src: np.ndarray,
    shape: tuple[int, int],
    rng: np.random.Generator,
    box: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Random crop of ``src`` rescaled by r ∈ [0.5, 1] (INTER_AREA) to ``shape``; returns it and its source box.

    Equivalent to rescaling the whole photo by r and cropping ``shape`` px, but only the needed region is
    resampled, which keeps rendering fast. ``r`` is raised when the region is too small for ``shape``.
    """
    th, tw = shape
    y0, y1, x0, x1 = box if box is not None else (0, src.shape[0], 0, src.shape[1])
    hb, wb = y1 - y0, x1 - x0
    r_min = max(0.5, th / hb, tw / wb)
    r = rng.uniform(r_min, max(1.0, r_min))
    ch, cw = min(max(1, round(th / r)), hb), min(max(1, round(tw / r)), wb)
    y = y0 + int(rng.integers(0, hb - ch + 1))
    x = x0 + int(rng.integers(0, wb - cw + 1))
    patch = src[y : y + ch, x : x + cw]
    if (ch, cw) != (th, tw):
        interp = cv2.INTER_AREA if ch * cw > th * tw else cv2.INTER_LINEAR
        patch = cv2.resize(patch, (tw, th), interpolation=interp)
    return np.ascontiguousarray(patch, dtype=np.float32), (y, y + ch, x, x + cw)


def _texture(name: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    patch, _ = _crop(_source(name), shape, rng)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if name in _GREY_SOURCES:
        tint = rng.uniform(0.45, 1.0, size=3).astype(np.float32)
        patch = patch * (tint / tint.max())
    return patch


def _mask(size: int, rng: np.random.Generator, radius: float) -> np.ndarray:
    """Soft alpha of a random ellipse / rotated rectangle / smooth blob, 1-px anti-aliased edge."""
    canvas = np.zeros((size, size), np.uint8)
    cx, cy = rng.uniform(0.12, 0.88, size=2) * size
    shift = 4  # sub-pixel vertex precision for cv2's drawing functions
    f = 1 << shift
    kind = rng.integers(0, 3)
    if kind == 0:
        axes = (int(radius * rng.uniform(0.6, 1.3) * f), int(radius * rng.uniform(0.6, 1.3) * f))
        cv2.ellipse(canvas, (int(cx * f), int(cy * f)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1,
                    cv2.LINE_AA, shift)
    else:
        if kind == 1:
            wh = (2 * radius * rng.uniform(0.6, 1.3), 2 * radius * rng.uniform(0.5, 1.1))
            pts = cv2.boxPoints(((cx, cy), wh, float(rng.uniform(0, 180))))
        else:
            t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
            r = np.ones_like(t)
            for k in (2, 3, 4, 5):
                r += rng.uniform(0, 0.28 / k * 2) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
            pts = np.stack([cx + radius * r * np.cos(t), cy + radius * r * np.sin(t)], axis=1)
        cv2.fillPoly(canvas, [np.round(pts * f).astype(np.int32)], 255, cv2.LINE_AA, shift)
    return canvas.astype(np.float32) / 255.0


def _render_layers(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    names = list(_COLOUR_SOURCES) + list(_GREY_SOURCES)
    bg_name = str(rng.choice(_BACKGROUNDS))
    img = np.array(_texture(bg_name, (size, size), rng))
    lo = rng.uniform(_BG_DEPTH[0], 0.86)
    hi = min(_BG_DEPTH[1], lo + rng.uniform(0.05, 0.15))
    depth = _plane(size, lo, hi, rng.uniform(-np.pi, np.pi))
    layer_id = np.zeros((size, size), np.int16)
    planes = [depth.copy()]

    n = int(rng.integers(2, 5))
    fg_names = [str(x) for x in rng.choice([x for x in names if x != bg_name], size=n, replace=False)]
    edges = np.linspace(_FG_DEPTH[1], _FG_DEPTH[0], n + 1)  # far → near, disjoint intervals
    for k, name in enumerate(fg_names):
        far, near = edges[k], edges[k + 1]
        width = far - near
        # a slight slope inside the layer's own interval keeps the depth order strict everywhere
        a = near + width * rng.uniform(0.05, 0.45)
        b = a + width * rng.uniform(0.05, 0.45)
        theta = rng.uniform(-np.pi, np.pi)
        # nearer layers tend to be smaller, as objects close to a camera are usually fewer and framed
        radius = size * rng.uniform(0.14, 0.34) * (1.0 - 0.12 * k)
        alpha_full = _mask(size, rng, radius)
        bx, by, bw, bh = cv2.boundingRect((alpha_full > 0).astype(np.uint8))
        if bw == 0 or bh == 0:
            continue
        box = (by, by + bh, bx, bx + bw)
        sl = np.s_[by : by + bh, bx : bx + bw]
        # work only inside the mask's bounding box: most of the cost of a layer is per pixel
        alpha = alpha_full[sl][..., None]
        tex = _texture(name, (bh, bw), rng)
        img[sl] = img[sl] * (1.0 - alpha) + tex * alpha
        front = alpha[..., 0] >= 0.5
        depth[sl] = np.where(front, _plane(size, a, b, theta, box), depth[sl])
        layer_id[sl][front] = k + 1
        planes.append(_plane(size, a, b, theta))
    segmentation = np.where(layer_id > 0, layer_id + 1, 0).astype(np.int16)  # layer k → id k + 1 ≥ 2
    info = {"kind": "layers", "background": bg_name, "layers": fg_names, "layer_id": layer_id, "planes": planes,
            "segmentation": segmentation, "has_segmentation": True}
    return img, depth, info


def _render_motorcycle(
    size: int, rng: np.random.Generator, split: Split
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    img, raw = _motorcycle()
    h, w = raw.shape
    cut = round(_TRAIN_FRACTION * w)
    box = (0, h, 0, cut) if split == "train" else (0, h, cut, w)
    stacked = np.concatenate([img, raw[..., None]], axis=2)  # one crop for image and depth
    patch, crop_box = _crop(stacked, (size, size), rng, box)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    depth = normalize_depth(patch[..., 3])
    info = {"kind": "motorcycle", "crop_box": crop_box, "region": box,
            "segmentation": np.zeros((size, size), np.int16), "has_segmentation": False}
    return patch[..., :3], depth, info


# ------------------------------------------------------------------------------------------ perspective scenes
def _ground_tile(name: str, rng: np.random.Generator) -> np.ndarray:
    """A ``_GROUND_TILE``² texture crop mirrored in x and y: seamless with a power-of-two period."""
    t = _texture(name, (_GROUND_TILE, _GROUND_TILE), rng)
    t = np.concatenate([t, t[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([t, t[::-1]], axis=0))


def _sample_plane(tile: np.ndarray, u: np.ndarray, v: np.ndarray, fu: np.ndarray, fv: np.ndarray) -> np.ndarray:
    """Antialiased samples of the periodic ``tile`` at texel coordinates ``u (R, W)``, ``v (R,)`` (one per row).

    ``fu``, ``fv`` (R,) are the per-row pixel footprints in texels along u and v. An anisotropic mipmap (a
    rip-map: the tile box-averaged by ``2^a`` along u and ``2^b`` along v) is sampled bilinearly in space and
    in ``(log2 fu, log2 fv)``, so each pixel averages about its own footprint: the far ground, minified
    strongly along v, neither aliases nor blurs along u more than its footprint.
    """
    period = tile.shape[0]
    lmax = int(np.log2(period))
    lu = np.clip(np.log2(np.maximum(fu, 1e-9)), 0.0, lmax)
    lv = np.clip(np.log2(np.maximum(fv, 1e-9)), 0.0, lmax)
    a0 = np.minimum(np.floor(lu).astype(np.int64), lmax - 1)
    b0 = np.minimum(np.floor(lv).astype(np.int64), lmax - 1)
    wa, wb = lu - a0, lv - b0
    levels: dict[tuple[int, int], np.ndarray] = {(0, 0): tile}

    def level(a: int, b: int) -> np.ndarray:
        # halving a finer level: box averages compose, so this equals box-averaging the tile by (2^a, 2^b)
        if (a, b) not in levels:
            finer = level(a - 1, b) if a > 0 else level(a, b - 1)
            h, w = finer.shape[:2]
            levels[(a, b)] = cv2.resize(finer, (w // 2 if a > 0 else w, h if a > 0 else h // 2),
                                        interpolation=cv2.INTER_AREA)
        return levels[(a, b)]

    out = np.zeros((*u.shape, tile.shape[2]), np.float32)
    for ga, gb in sorted(set(zip(a0.tolist(), b0.tolist(), strict=True))):
        rows = np.nonzero((a0 == ga) & (b0 == gb))[0]
        for da in (0, 1):
            for db in (0, 1):
                w = (wa[rows] if da else 1.0 - wa[rows]) * (wb[rows] if db else 1.0 - wb[rows])
                if not (w > 1e-6).any():
                    continue
                a, b = ga + da, gb + db
                lev = level(a, b)
                # texel centres of level (a, b) sit at base coordinates (i + 0.5)·2^a − 0.5
                mx = np.mod((u[rows] + 0.5) / (1 << a) - 0.5, lev.shape[1]).astype(np.float32)
                my = np.mod((v[rows] + 0.5) / (1 << b) - 0.5, lev.shape[0]).astype(np.float32)
                my = np.ascontiguousarray(np.broadcast_to(my[:, None], mx.shape))
                smp = cv2.remap(lev, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
                out[rows] += w[:, None, None].astype(np.float32) * smp.reshape(out[rows].shape)
    return out


def _upright_polygon(shape: str, box: tuple[float, float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Outline ``(N, 2)`` (x, y) of an upright object filling ``box = (left, top, right, bottom)`` exactly."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "box":
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif shape == "house":
        roof = y0 + h * rng.uniform(0.2, 0.45)
        pts = [(x0, y1), (x1, y1), (x1, roof), ((x0 + x1) / 2, y0), (x0, roof)]
    elif shape == "trapezoid":
        inset = w * rng.uniform(0.1, 0.35)
        pts = [(x0, y1), (x1, y1), (x1 - inset, y0), (x0 + inset, y0)]
    else:
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        r = np.ones_like(t)
        if shape == "blob":
            for k in (2, 3, 4, 5):
                r += rng.uniform(0, 0.28 / k * 2) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        px, py = r * np.cos(t), r * np.sin(t)
        # stretch the outline onto the box so that its extent is exactly the object's
        px = x0 + (px - px.min()) / (px.max() - px.min()) * w
        py = y0 + (py - py.min()) / (py.max() - py.min()) * h
        return np.stack([px, py], axis=1)
    return np.asarray(pts, np.float64)


def _fill_coverage(pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area coverage in [0, 1] of a polygon (pixel-centre coordinates) on a ``shape`` canvas (4× supersampled)."""
    ss = _MASK_SUPERSAMPLING
    canvas = np.zeros((shape[0] * ss, shape[1] * ss), np.uint8)
    shift = 4
    fine = ((pts + 0.5) * ss - 0.5) * (1 << shift)  # sub-pixel centres of the supersampled grid
    cv2.fillPoly(canvas, [np.round(fine).astype(np.int32)], 255, cv2.LINE_8, shift)
    return cv2.resize(canvas.astype(np.float32) / 255.0, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def _render_perspective(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    s = size
    names = list(_COLOUR_SOURCES) + list(_GREY_SOURCES)
    ground_name = str(rng.choice(_GROUNDS if rng.random() < 0.85 else _GROUNDS_RARE))
    bg_name = str(rng.choice([x for x in _BACKGROUNDS if x != ground_name]))

    # camera: height 1, focal f px; ground row y (pixel centres are integers) is at depth f / (y − y_v)
    y_h = s * rng.uniform(*_HORIZON)  # visible horizon: the ground meets the background at z_max
    ratio = float(np.exp(rng.uniform(np.log(_DEPTH_RATIO[0]), np.log(_DEPTH_RATIO[1]))))
    y_bot = s - 1.0
    y_v = (ratio * y_h - y_bot) / (ratio - 1.0)  # vanishing line, so that z(y_h) / z(y_bot) = ratio
    f = s * rng.uniform(*_FOCAL)
    z_min, z_max = f / (y_bot - y_v), f / (y_h - y_v)

    def norm(z: np.ndarray | float) -> np.ndarray:
        return np.clip((np.asarray(z, np.float64) - z_min) / (z_max - z_min), 0.0, 1.0)

    haze_k = rng.uniform(*_HAZE)

    # far background: rows whose centre lies at or above the horizon (+ one row for the anti-aliased seam)
    y0 = int(np.floor(y_h))  # last background row
    bg = _texture(bg_name, (min(s, y0 + 2), s), rng)
    # haze colour: half the mean of the background's lowest rows, half a light, slightly bluish grey
    horizon_colour = bg[-max(1, bg.shape[0] // 4) :].mean(axis=(0, 1))
    grey = rng.uniform(0.6, 0.9) * np.array([0.94, 0.98, 1.04])
    haze = np.clip(0.5 * horizon_colour + 0.5 * grey, 0.0, 1.0).astype(np.float32)
    bg = bg * (1.0 - haze_k) + haze * haze_k

    # ground plane: inverse-map every pixel to plane coordinates and sample the mirror-tiled texture
    tile = _ground_tile(ground_name, rng)
    ys = np.arange(y0 + 1, s, dtype=np.float64)
    inv = 1.0 / (ys - y_v)
    rate = rng.uniform(*_GROUND_RATE) * (y_bot - y_v)  # texels per unit length on the plane
    u0, v0 = rng.uniform(0, tile.shape[1]), rng.uniform(0, tile.shape[0])
    fu, fv = rate * inv, f * rate * inv**2  # |du/dx|, |dv/dy| in texels per pixel
    xs = np.arange(s, dtype=np.float64) - (s - 1) / 2
    ground = _sample_plane(tile, xs[None, :] * fu[:, None] + u0, f * rate * inv + v0, fu, fv)
    ground_depth = norm(f * inv).astype(np.float32)
    a = (haze_k * ground_depth)[:, None, None]
    ground = ground * (1.0 - a) + haze * a

    img = np.empty((s, s, 3), np.float32)
    img[: y0 + 1] = bg[: y0 + 1]
    img[y0 + 1 :] = ground
    c0 = max(0.0, y0 + 0.5 - y_h)  # ground share of the last background row
    c1 = max(0.0, y_h - (y0 + 0.5))  # background share of the first ground row
    img[y0] = img[y0] * (1.0 - c0) + ground[0] * c0
    if y0 + 1 < bg.shape[0]:
        img[y0 + 1] = img[y0 + 1] * (1.0 - c1) + bg[y0 + 1] * c1
    depth = np.ones((s, s), np.float32)
    depth[y0 + 1 :] = ground_depth[:, None]
    seg = np.zeros((s, s), np.int16)
    seg[y0 + 1 :] = 1

    # upright objects standing on the plane, far → near
    n = int(rng.integers(_OBJECTS[0], _OBJECTS[1] + 1))
    obj_names = [str(x) for x in rng.choice([x for x in names if x not in (ground_name, bg_name)], n, replace=False)]
    lo = y_h + 0.08 * (y_bot - y_h)
    for _ in range(10):  # distinct contact rows keep the drawing order a strict depth order
        contacts = np.sort(rng.uniform(lo, y_bot, n))
        if n < 2 or np.diff(contacts).min() > 0.25:
            break
    objects = []
    for k, (name, yc) in enumerate(zip(obj_names, contacts.tolist(), strict=True)):
        dist = yc - y_v  # image height of a world unit at the contact depth, in px
        z = f / dist
        d = float(norm(z))
        height_world = float(np.clip(rng.uniform(*_OBJECT_HEIGHT), max(6.0, 0.04 * s) / dist, 0.85 * s / dist))
        h_px = height_world * f / z
        w_px = h_px * rng.uniform(*_OBJECT_ASPECT)
        xc = rng.uniform(0.06, 0.94) * s - 0.5
        shape = _OBJECT_SHAPES[int(rng.integers(0, len(_OBJECT_SHAPES)))]
        ox, oy = int(np.floor(xc - w_px / 2)) - 1, int(np.floor(yc - h_px)) - 1
        cw, ch = int(np.ceil(xc + w_px / 2)) + 2 - ox, int(np.ceil(yc)) + 2 - oy
        pts = _upright_polygon(shape, (xc - w_px / 2 - ox, yc - h_px - oy, xc + w_px / 2 - ox, yc - oy), rng)
        alpha = _fill_coverage(pts, (ch, cw))
        # front pixels: at least half covered, and never below the contact row (the ground there is nearer)
        front = (alpha >= 0.5) & (np.arange(oy, oy + ch)[:, None] <= yc)
        fr, fc = np.nonzero(front)  # never empty: objects are at least 6 px tall
        box = (oy + int(fr.min()), oy + int(fr.max()) + 1, ox + int(fc.min()), ox + int(fc.max()) + 1)

        tex = _texture(name, (ch, cw), rng)
        shade = 1.0 - rng.uniform(0.0, 0.3) * np.clip((np.arange(ch) + oy - (yc - h_px)) / h_px, 0, 1)
        tex = tex * shade[:, None, None].astype(np.float32)
        tex = tex * (1.0 - haze_k * d) + haze * (haze_k * d)

        # the intersection of the object's canvas with the image
        iy0, iy1, ix0, ix1 = max(oy, 0), min(oy + ch, s), max(ox, 0), min(ox + cw, s)
        if iy0 < iy1 and ix0 < ix1:
            sl = np.s_[iy0:iy1, ix0:ix1]
            lsl = np.s_[iy0 - oy : iy1 - oy, ix0 - ox : ix1 - ox]
            # soft contact shadow on the ground under the object's base
            sw, sh = 0.3 * w_px + 0.5, 0.18 * w_px * dist / f + 0.5
            gy = np.exp(-0.5 * ((np.arange(iy0, iy1) - yc) / sh) ** 2)
            gx = np.exp(-0.5 * ((np.arange(ix0, ix1) - xc) / sw) ** 2)
            dark = (rng.uniform(0.25, 0.5) * gy[:, None] * gx[None, :] * (seg[sl] == 1)).astype(np.float32)
            img[sl] *= 1.0 - dark[..., None]
            al = alpha[lsl][..., None]
            img[sl] = img[sl] * (1.0 - al) + tex[lsl] * al
            fm = front[lsl]
            depth[sl][fm] = d
            seg[sl][fm] = 2 + k
        objects.append({
            "id": 2 + k, "source": name, "shape": shape, "contact_row": yc, "x": xc, "z": z, "depth": d,
            "world_height": height_world, "world_width": w_px / dist, "height_px": h_px, "width_px": w_px,
            "box": box,
        })
    info = {
        "kind": "perspective", "ground": ground_name, "background": bg_name, "horizon": y_h, "vanishing_row": y_v,
        "focal": f, "z_min": z_min, "z_max": z_max, "depth_ratio": ratio, "haze": haze_k, "objects": objects,
        "segmentation": seg, "has_segmentation": True,
    }
    return img, depth, info


def render_scene_info(index: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Like :func:`render_scene` but also returns how the scene was built (for tests and figures).

    ``info`` holds ``kind``, ``split``, ``segmentation`` (int16 ``(S, S)``: 0 = background / sky, 1 = ground,
    ``2 + k`` = object / layer ``k``; all zeros for motorcycle scenes) and ``has_segmentation`` (False for
    motorcycle scenes). Perspective scenes add the camera (``horizon`` and ``vanishing_row`` in pixel-centre
    rows, ``focal`` in px, ``z_min``, ``z_max``, ``depth_ratio``) and ``objects``: per object, in drawing order
    (far → near), its segmentation ``id``, ``source`` photo, ``shape``, ``contact_row``, ``x``, metric ``z``,
    normalised ``depth``, ``world_height`` / ``world_width`` (camera height = 1), ``height_px`` / ``width_px``
    (``= f·H / z``) and ``box`` ``(y0, y1, x0, x1)`` of its own rasterised mask (before occlusion, unclipped).
    Layer scenes add ``layer_id`` (front-most layer per pixel, 0 = background) and ``planes`` (each layer's
    full depth plane); motorcycle scenes ``crop_box`` ``(y0, y1, x0, x1)`` in the source image's pixels.
    """
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), 0x55E2])
    split = scene_split(index)
    kind = scene_kind(index)
    if kind == "motorcycle":
        img, depth, info = _render_motorcycle(size, rng, split)
    elif kind == "perspective":
        img, depth, info = _render_perspective(size, rng)
    else:
        img, depth, info = _render_layers(size, rng)
    img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0  # 8-bit grid, like PNG data
    info["split"] = split
    return np.ascontiguousarray(img), np.ascontiguousarray(depth, dtype=np.float32), info


def render_scene(index: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render scene ``index``: (image float32 ``(S, S, 3)`` in [0, 1], depth float32 ``(S, S)``, 0 = nearest).

    Deterministic in ``(index, size, seed)``; the split of ``index`` is :func:`scene_split`, its kind
    :func:`scene_kind`.
    """
    img, depth, _ = render_scene_info(index, size, seed)
    return img, depth


class EmbeddedScenes(Dataset):
    """The embedded scene data set for one split.

    Items: ``{"hr": (3, S, S) float32, "depth": (1, S, S) float32, "segmentation": (1, S, S) int64,
    "has_segmentation": bool, "index": int, "name": str}`` where ``index`` is the position in this data set
    and ``name`` carries the global scene id and kind. ``segmentation`` is all zeros and ``has_segmentation``
    False for motorcycle scenes.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; scene ids of different splits are disjoint.
        size: scene side ``S`` in pixels.
        seed: content seed (which crops, shapes and depths are drawn); does not change the split.
        num_train / num_val / num_test: number of scenes per split.
        cache_size: rendered scenes kept in memory (LRU; image uint8 + depth float32 + segmentation int16,
            ~0.58 MB per 256² scene).
    """

    def __init__(
        self,
        split: Split,
        size: int = 256,
        seed: int = 0,
        num_train: int = 240,
        num_val: int = 16,
        num_test: int = 24,
        cache_size: int = 512,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if size < 32:
            raise ValueError(f"embedded scene size must be >= 32 px, got {size}")
        self.split = split
        self.size = int(size)
        self.seed = int(seed)
        n = {"train": num_train, "val": num_val, "test": num_test}[split]
        self.scene_ids = split_indices(split, int(n))
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.scene_ids)

    def name(self, i: int) -> str:
        sid = self.scene_ids[i]
        return f"scene{sid:05d}_{scene_kind(sid)}"

    def kind(self, i: int) -> Kind:
        return scene_kind(self.scene_ids[i])

    def _entry(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        sid = self.scene_ids[i]
        hit = self._cache.get(sid)
        if hit is None:
            img, depth, info = render_scene_info(sid, self.size, self.seed)
            # exact: images are on the 8-bit grid
            hit = (np.round(img * 255.0).astype(np.uint8), depth, info["segmentation"].astype(np.int16),
                   bool(info["has_segmentation"]))
            if self.cache_size > 0:
                self._cache[sid] = hit
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(sid)
        return hit

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene ``i`` as numpy (image ``(S, S, 3)`` float32, depth ``(S, S)`` float32), cached."""
        img, depth, _, _ = self._entry(i)
        return img.astype(np.float32) / 255.0, depth

    def load_segmentation(self, i: int) -> tuple[np.ndarray, bool]:
        """Scene ``i``'s segmentation ``(S, S)`` int16 and whether it has one (False: motorcycle), cached."""
        _, _, seg, has = self._entry(i)
        return seg, has

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} {self.split} scenes")
        img, depth = self.load(i)
        seg, has_seg = self.load_segmentation(i)
        return {
            "hr": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "depth": torch.from_numpy(depth.copy())[None],
            "segmentation": torch.from_numpy(seg.astype(np.int64))[None],
            "has_segmentation": has_seg,
            "index": i,
            "name": self.name(i),
        }
