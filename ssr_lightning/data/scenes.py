"""Embedded default data set: layered scenes of real photographs with a known depth map.

Built only from images that scikit-image ships inside its package (``skimage/data``), read straight from
disk, so nothing is ever downloaded. Two kinds of scene:

- *layers*: a background photo crop on a gently sloped far plane (depth 0.72–1.0), then 2–4 foreground
  layers (texture crops from other photos cut out by ellipses / rotated rectangles / smooth blobs with a
  1-px anti-aliased edge), each a slightly sloped plane in its own depth interval. Layers are composited
  far → near and the depth map holds the front-most layer, so occlusion order always agrees with depth.
- *motorcycle* (1 scene in 8): crops of the Middlebury ``motorcycle_left`` view with depth ∝ 1/disparity.
  Training crops come from the left 60 % of the image, val/test crops from the right 40 %, so no held-out
  motorcycle pixel is ever seen in training.

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


def scene_kind(index: int) -> Literal["layers", "motorcycle"]:
    """Every 8th scene of each split (by rank within the split) is a motorcycle scene."""
    return "motorcycle" if _rank_in_split(index) % 8 == 3 else "layers"


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
    info = {"kind": "layers", "background": bg_name, "layers": fg_names, "layer_id": layer_id, "planes": planes}
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
    return patch[..., :3], depth, {"kind": "motorcycle", "crop_box": crop_box, "region": box}


def render_scene_info(index: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Like :func:`render_scene` but also returns how the scene was built (for tests and figures).

    ``info`` holds ``kind``, ``split`` and, for layer scenes, ``layer_id`` (front-most layer per pixel,
    0 = background) and ``planes`` (each layer's full depth plane); for motorcycle scenes ``crop_box``
    ``(y0, y1, x0, x1)`` in the source image's pixels.
    """
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), 0x55E2])
    split = scene_split(index)
    if scene_kind(index) == "motorcycle":
        img, depth, info = _render_motorcycle(size, rng, split)
    else:
        img, depth, info = _render_layers(size, rng)
    img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0  # 8-bit grid, like PNG data
    info["split"] = split
    return np.ascontiguousarray(img), np.ascontiguousarray(depth, dtype=np.float32), info


def render_scene(index: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render scene ``index``: (image float32 ``(S, S, 3)`` in [0, 1], depth float32 ``(S, S)``, 0 = nearest).

    Deterministic in ``(index, size, seed)``; the split of ``index`` is :func:`scene_split`.
    """
    img, depth, _ = render_scene_info(index, size, seed)
    return img, depth


class EmbeddedScenes(Dataset):
    """The embedded scene data set for one split.

    Items: ``{"hr": (3, S, S) float32, "depth": (1, S, S) float32, "index": int, "name": str}`` where
    ``index`` is the position in this data set and ``name`` carries the global scene id.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; scene ids of different splits are disjoint.
        size: scene side ``S`` in pixels.
        seed: content seed (which crops, shapes and depths are drawn); does not change the split.
        num_train / num_val / num_test: number of scenes per split.
        cache_size: rendered scenes kept in memory (LRU; images as uint8, ~0.45 MB per 256² scene).
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
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.scene_ids)

    def name(self, i: int) -> str:
        sid = self.scene_ids[i]
        return f"scene{sid:05d}_{scene_kind(sid)}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene ``i`` as numpy (image ``(S, S, 3)`` float32, depth ``(S, S)`` float32), cached."""
        sid = self.scene_ids[i]
        hit = self._cache.get(sid)
        if hit is None:
            img, depth = render_scene(sid, self.size, self.seed)
            hit = (np.round(img * 255.0).astype(np.uint8), depth)  # exact: images are on the 8-bit grid
            if self.cache_size > 0:
                self._cache[sid] = hit
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(sid)
        return hit[0].astype(np.float32) / 255.0, hit[1]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} {self.split} scenes")
        img, depth = self.load(i)
        return {
            "hr": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "depth": torch.from_numpy(depth.copy())[None],
            "index": i,
            "name": self.name(i),
        }
