"""Per-sample seeds, paired patch augmentation and the epoch-aware sampler.

Reproducibility rule (docs/ARCHITECTURE.md): every random draw of a sample comes from the sample's own
integer seed. Training seeds are ``f(seed, epoch, index)`` and evaluation seeds ``f(seed, index)``, with
``f`` a fixed integer mixer (splitmix64), never Python's salted ``hash``. The epoch reaches the data set
through :class:`EpochSampler`, which runs in the main process and hands ``(epoch, index)`` keys to the
workers, so persistent workers stay correct without any worker-side state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, overload

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["AUGMENT_MODES", "AugmentMode", "EpochSampler", "PatchAugment", "center_crop", "mix_seed",
           "paired_augment", "sample_seed"]

_MASK64 = (1 << 64) - 1
_SPLIT_SALT = {"train": 0x7A11, "val": 0x7A12, "test": 0x7A13, "predict": 0x7A13}


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """Deterministic mix of integers into a non-negative 63-bit seed (fits an int64 tensor)."""
    h = 0x243F6A8885A308D3
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


def sample_seed(seed: int, split: str, index: int, epoch: int | None = None) -> int:
    """Seed of one sample: ``f(seed, epoch, index)`` for training, ``f(seed, index)`` for val/test."""
    salt = _SPLIT_SALT[split]
    if split == "train":
        return mix_seed(seed, salt, 0 if epoch is None else epoch, index)
    return mix_seed(seed, salt, index)


AugmentMode = Literal["full", "hflip"]
AUGMENT_MODES: tuple[str, ...] = ("full", "hflip")


class PatchAugment:
    """Random ``patch_size`` crop + flips (+ rot90), identical on image, depth and segmentation.

    ``augment="full"``: random crop, horizontal and vertical flips and rot90. ``augment="hflip"``: random crop
    and horizontal flip only, which keeps the image's up direction (and with it the geometric prior "up = far"
    that a monocular depth network may learn from ground planes and horizons).

    Built on albumentations with depth and segmentation as ``mask`` targets (nearest-neighbour semantics, so
    depth edges and labels stay exact); reseeded for every call, so ``(image, depth, segmentation, seed)``
    fully determines the output.
    """

    def __init__(self, patch_size: int, augment: AugmentMode = "full") -> None:
        if augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {AUGMENT_MODES}, got {augment!r}")
        transforms: list[A.BasicTransform] = [A.RandomCrop(height=patch_size, width=patch_size),
                                              A.HorizontalFlip(p=0.5)]
        if augment == "full":
            transforms += [A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
        self.patch_size = patch_size
        self.augment = augment
        self.compose = A.Compose(transforms, additional_targets={"depth": "mask", "segmentation": "mask"}, seed=0)

    @overload
    def __call__(self, image: np.ndarray, depth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def __call__(
        self, image: np.ndarray, depth: np.ndarray, seed: int, segmentation: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def __call__(
        self, image: np.ndarray, depth: np.ndarray, seed: int, segmentation: np.ndarray | None = None
    ) -> tuple[np.ndarray, ...]:
        """``(image, depth)`` patches, or ``(image, depth, segmentation)`` when a segmentation is given.

        The segmentation (integer labels ``(H, W)``) gets exactly the crop / flips / rotation of the depth and
        keeps its dtype (int64 comes back as int32 from albumentations and is cast back).
        """
        self.compose.set_random_seed(int(seed) & 0xFFFFFFFF)
        if segmentation is None:
            out = self.compose(image=image, depth=depth)
            return np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["depth"])
        out = self.compose(image=image, depth=depth, segmentation=segmentation)
        seg = np.ascontiguousarray(out["segmentation"]).astype(segmentation.dtype, copy=False)
        return np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["depth"]), seg


def paired_augment(
    lr: np.ndarray, hr: np.ndarray, scale: int, patch_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned random crop (HR ``patch_size``, LR ``patch_size // scale``) + the same flips/rot90 on both.

    Done in numpy because albumentations' crops need equal-sized targets.
    """
    rng = np.random.default_rng(int(seed) & _MASK64)
    lp = patch_size // scale
    lh, lw = lr.shape[:2]
    y, x = int(rng.integers(0, lh - lp + 1)), int(rng.integers(0, lw - lp + 1))
    lr = lr[y : y + lp, x : x + lp]
    hr = hr[scale * y : scale * (y + lp), scale * x : scale * (x + lp)]
    hflip, vflip, k = rng.random() < 0.5, rng.random() < 0.5, int(rng.integers(0, 4))
    out = []
    for a in (lr, hr):
        a = a[:, ::-1] if hflip else a
        a = a[::-1] if vflip else a
        out.append(np.ascontiguousarray(np.rot90(a, k)))
    return out[0], out[1]


def center_crop(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Centre crop of an ``(H, W, ...)`` array (image, depth or segmentation) to ``size`` (int = square)."""
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[:2]
    y, xx = (h - th) // 2, (w - tw) // 2
    return x[y : y + th, xx : xx + tw]


class EpochSampler(Sampler):
    """Shuffling sampler that yields ``(epoch, index)`` keys.

    Lightning calls :meth:`set_epoch` at the start of each training epoch, so the per-sample seeds (crop,
    flips, degradation) change every epoch yet stay reproducible. ``num_samples`` larger than the data set
    concatenates independent permutations (useful for small data sets and long epochs).

    Under DDP Lightning wraps this sampler and the wrapped copy's epoch is not updated; seeds then repeat
    across epochs (the order still changes). Single-device training is unaffected.
    """

    def __init__(self, size: int, num_samples: int | None = None, shuffle: bool = True, seed: int = 0) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty data set")
        self.size = size
        self.num_samples = int(num_samples) if num_samples else size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0x5A3) & 0xFFFFFFFFFFFF)
        chunks, left = [], self.num_samples
        while left > 0:
            perm = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
            chunks.append(perm[:left])
            left -= len(chunks[-1])
        for i in torch.cat(chunks).tolist():
            yield (self.epoch, i)
