"""Folder data sets (HR folders with optional depth, paired LR/HR folders) and the patch wrapper.

Base data sets return whole images as tensors; :class:`SRPatchDataset` turns any of them into training
patches (random crop + flips (+ rot90), seeded per sample) or evaluation crops (deterministic centre crop)
and attaches each sample's integer ``seed`` (see :mod:`ssr_lightning.data.augment`). Depth and segmentation
are cropped, flipped and rotated exactly like the image (nearest neighbour).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .augment import AugmentMode, PatchAugment, center_crop, paired_augment, sample_seed
from .image_io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    check_pair_size,
    check_size,
    crop_to_multiple,
    load_depth,
    load_image,
    normalize_depth,
)

__all__ = ["DataError", "HRFolderDataset", "PairedFolderDataset", "SRPatchDataset", "collate", "list_images",
           "scan_images"]


class DataError(ValueError):
    """A problem with the user's data or data options; the message names the files or the option."""


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) as training sees it: decoded by ``load_image`` (EXIF orientation applied), so a truncated
    file, NaN pixels or an oversized one fail here, not mid-training."""
    h, w = load_image(path).shape[:2]
    return h, w


def scan_images(files: Sequence[Path], scale: int, min_side: int | None, what: str,
                partners: Sequence[Path] | None = None) -> None:
    """Decode every file once and raise one :class:`DataError` listing *every* bad file.

    Checks: decodable; at least ``min_side`` px per side (after cropping to a multiple of ``scale``); with
    ``partners`` (HR files of paired data, one per LR file) each HR must be exactly ``scale`` × its LR.
    """
    bad: list[str] = []
    for i, f in enumerate(tqdm(files, desc=f"checking {what}", leave=False, disable=len(files) < 200)):
        try:
            h, w = _image_size(f)
        except ImageReadError as err:  # names the file and what is wrong (corrupt, permission, NaN, too large)
            bad.append(str(err))
            continue
        except Exception as err:  # noqa: BLE001 - every decoder error means "unusable file"
            bad.append(f"{f}: cannot be decoded ({type(err).__name__}: {str(err)[:80]})")
            continue
        if partners is not None:
            try:
                hh, hw = _image_size(partners[i])
            except ImageReadError as err:
                bad.append(str(err))
                continue
            except Exception as err:  # noqa: BLE001
                bad.append(f"{partners[i]}: cannot be decoded ({type(err).__name__}: {str(err)[:80]})")
                continue
            if (hh, hw) != (h * scale, w * scale):
                bad.append(f"{partners[i]} is {hw}×{hh} but its LR {f.name} is {w}×{h}: at scale {scale} the HR "
                           f"must be {w * scale}×{h * scale}")
            h, w = hh, hw
        side = min(h - h % scale, w - w % scale)
        if min_side and side < min_side:
            bad.append(f"{f}: {w}×{h} px is smaller than the {min_side} px patch/crop")
    if bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(f"{len(bad)} unusable {what} file(s) (remove or fix them, or lower data.patch_size / "
                        f"data.val_size / data.test_size): {shown}")

DEPTH_SUFFIXES = ("_depth.npy", "_depth.npz", "_depth.png", "_depth.tif", "_depth.tiff", "_depth.exr")
_SCALE_TAG = re.compile(r"([_\-.](lr|hr)\d*|[_\-.]?x\d+)+$", re.IGNORECASE)


def _to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


def _no_segmentation(hw: tuple[int, ...]) -> torch.Tensor:
    """All-zero ``(1, H, W)`` int64 segmentation as a broadcast view of one element (no per-pixel memory)."""
    return torch.zeros((1, 1, 1), dtype=torch.int64).expand(1, int(hw[0]), int(hw[1]))


def list_images(root: str | Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Image files under ``root`` (recursive, sorted), skipping ``*_depth.*`` files and ``exclude`` folders."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: '{root}'; check data.train_root / val_root / test_root")
    if not root.is_dir():
        raise DataError(f"expected a folder of images, got a file: '{root}'")
    excl = [Path(e).resolve() for e in exclude]
    files = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file() or p.stem.endswith("_depth"):
            continue
        rp = p.resolve()
        if any(e == rp or e in rp.parents for e in excl):
            continue
        files.append(p)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in '{root}'")
    return files


class HRFolderDataset(Dataset):
    """Any folder of HR images (DIV2K, BSDS100, Urban100, ...), optionally with depth maps.

    Depth for ``a/b/img.png`` is looked up as ``a/b/img_depth.{npy,npz,png,tif,tiff,exr}`` beside it, or, with
    ``depth_dir``, as ``depth_dir/a/b/img.<ext>``, ``depth_dir/img.<ext>`` or the ``_depth`` variants there.
    Depth is normalised to [0, 1] (0 = nearest, robust 1–99 percentiles); pass ``depth_inverse=True`` for
    disparity / inverse-depth files. A depth map of another resolution but the same aspect ratio is resized.

    Without a depth file the item's depth is a constant 0.5 map and ``has_depth`` is False: depth-driven
    defocus is then the same everywhere, i.e. the blur of that image is spatially invariant.

    Images whose size is not a multiple of ``scale`` are cropped (bottom/right remainder) to one, as
    BasicSR does for HR folders. Files are decoded only in ``__getitem__``; a corrupt file raises
    :class:`~ssr_lightning.data.image_io.ImageReadError` naming it.

    Items: ``{"hr": (3, H, W), "depth": (1, H, W), "has_depth": bool, "segmentation": (1, H, W) int64,
    "has_segmentation": bool, "index": int, "name": str}``; folders have no segmentation, so it is all zeros
    (a broadcast view that costs no memory until a patch is cropped) and ``has_segmentation`` is False.
    """

    def __init__(
        self,
        root: str | Path,
        scale: int = 4,
        depth_dir: str | Path | None = None,
        depth_suffixes: Sequence[str] = DEPTH_SUFFIXES,
        depth_inverse: bool = False,
    ) -> None:
        self.root = Path(root)
        self.scale = int(scale)
        self.depth_dir = Path(depth_dir) if depth_dir else None
        if self.depth_dir is not None and not self.depth_dir.is_dir():
            raise FileNotFoundError(f"depth folder not found: '{self.depth_dir}'")
        self.depth_suffixes = tuple(depth_suffixes)
        self.depth_inverse = depth_inverse
        self.files = list_images(self.root, exclude=[self.depth_dir] if self.depth_dir else [])
        self.depth_files = [self._find_depth(p) for p in self.files]

    def _find_depth(self, img: Path) -> Path | None:
        cands = [img.with_name(img.stem + s) for s in self.depth_suffixes]
        if self.depth_dir is not None:
            rel = img.relative_to(self.root).with_suffix("")
            exts = sorted({Path(s).suffix for s in self.depth_suffixes})
            for base in (self.depth_dir / rel, self.depth_dir / img.stem):
                cands += [base.with_name(base.name + e) for e in exts]
                cands += [base.with_name(base.name + s) for s in self.depth_suffixes]
        return next((c for c in cands if c.is_file()), None)

    def __len__(self) -> int:
        return len(self.files)

    def file_path(self, i: int) -> str:
        return str(self.files[i])

    def _depth(self, i: int, hw: tuple[int, int]) -> np.ndarray | None:
        path = self.depth_files[i]
        if path is None:
            return None
        d = normalize_depth(load_depth(path), inverse=self.depth_inverse)
        if d.shape != hw:
            (h, w), (dh, dw) = hw, d.shape
            if abs(dw / dh - w / h) > 0.01 * (w / h):
                raise ValueError(
                    f"depth map '{path}' is {dw}×{dh} but image '{self.files[i]}' is {w}×{h}: "
                    "the aspect ratios differ, so they cannot be aligned; regenerate the depth map"
                )
            d = cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR)
        return d

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = load_image(self.files[i])
        depth = self._depth(i, img.shape[:2])
        has_depth = depth is not None
        if depth is None:
            depth = np.full(img.shape[:2], 0.5, np.float32)
        img, depth = crop_to_multiple(img, self.scale), crop_to_multiple(depth, self.scale)
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"image '{self.files[i]}' is smaller than the scale {self.scale}; remove it")
        return {
            "hr": _to_chw(img),
            "depth": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None],
            "has_depth": has_depth,
            "segmentation": _no_segmentation(depth.shape),
            "has_segmentation": False,
            "index": i,
            "name": str(self.files[i].relative_to(self.root)),
        }


def _pair_key(path: Path) -> str:
    """Stem without scale tags: ``0001x4``, ``0001_x4`` → ``0001``; ``DSC_1_x1`` → ``DSC_1``; ``img_LR`` → ``img``."""
    stem = _SCALE_TAG.sub("", path.stem)
    return stem or path.stem


class PairedFolderDataset(Dataset):
    """Real LR/HR pairs (DRealSR-style) matched by file stem, tolerating scale tags (``_x4``, ``x4``, ``_x1``).

    Every HR image must be exactly ``scale`` × its LR image (checked per item with a message naming both
    files). There is no GT kernel or depth for real pairs. Items:
    ``{"lr": (3, h, w), "hr": (3, s·h, s·w), "index": int, "name": str}``.
    """

    def __init__(self, lr_root: str | Path, hr_root: str | Path, scale: int = 4) -> None:
        self.lr_root, self.hr_root, self.scale = Path(lr_root), Path(hr_root), int(scale)
        lr_map = self._index(list_images(self.lr_root), "LR")
        hr_map = self._index(list_images(self.hr_root), "HR")
        missing = sorted(set(lr_map) - set(hr_map))
        if missing:
            shown = ", ".join(f"'{lr_map[k].name}'" for k in missing[:5])
            raise ValueError(
                f"{len(missing)} LR image(s) in '{self.lr_root}' have no HR partner in '{self.hr_root}' "
                f"(matched by stem without scale tags such as _x4): {shown}"
            )
        self.keys = sorted(lr_map)
        self.pairs = [(lr_map[k], hr_map[k]) for k in self.keys]

    @staticmethod
    def _index(files: list[Path], what: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in files:
            k = _pair_key(p)
            if k in out:
                raise ValueError(f"two {what} images map to the same pair name '{k}': '{out[k]}' and '{p}'")
            out[k] = p
        return out

    def __len__(self) -> int:
        return len(self.pairs)

    def file_path(self, i: int) -> str:
        return str(self.pairs[i][1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        lr_path, hr_path = self.pairs[i]
        lr, hr = load_image(lr_path), load_image(hr_path)
        check_pair_size(lr.shape[:2], hr.shape[:2], self.scale, lr_path, hr_path)
        return {"lr": _to_chw(lr), "hr": _to_chw(hr), "index": i, "name": self.keys[i]}


class SRPatchDataset(Dataset):
    """Wrap a base data set into training patches or evaluation crops, adding each sample's ``seed``.

    Keys may be ints or ``(epoch, index)`` tuples (from :class:`~ssr_lightning.data.augment.EpochSampler`).

    Args:
        base: an ``EmbeddedScenes``, ``HRFolderDataset`` or ``PairedFolderDataset``.
        split: ``"train"`` (random patches, epoch-dependent seeds) or ``"val"``/``"test"`` (centre crops,
            fixed seeds).
        size: HR patch / crop side (a multiple of ``scale``); ``None`` or 0 keeps the whole image.
        scale: SR factor.
        seed: global data seed.
        augment: training augmentation, ``"full"`` (random crop + h/v flips + rot90) or ``"hflip"`` (random
            crop + horizontal flip only: keeps "up" up, e.g. for depth training).

    Items gain ``seed`` and, for HR data, always carry ``segmentation`` ``(1, P, P)`` int64 and
    ``has_segmentation`` (zeros / False when the base data set has none).
    """

    def __init__(
        self, base: Dataset, split: str, size: int | None, scale: int, seed: int = 0, augment: AugmentMode = "full"
    ) -> None:
        if size and size % scale:
            raise ValueError(f"patch/crop size {size} is not a multiple of the scale {scale}")
        self.base, self.split, self.size, self.scale, self.seed = base, split, size or None, scale, seed
        self.train = split == "train"
        self.augment = PatchAugment(size, augment) if (self.train and size) else None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def _where(self, i: int, item: dict[str, Any]) -> str:
        fp = getattr(self.base, "file_path", None)
        return fp(i) if fp is not None else str(item.get("name", i))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (None, int(key))
        item = dict(self.base[i])
        # a base data set may fix an item's seed key (split salt, index): RealPhotos keeps a photo's draws across splits
        seed_split, seed_index = item.pop("seed_key", (self.split, i))
        seed = sample_seed(self.seed, seed_split, seed_index, epoch)
        item["seed"] = seed
        item["index"] = i
        if "lr" in item:
            return self._paired(item, i, seed)
        item.setdefault("has_depth", True)
        if "segmentation" not in item:
            item["segmentation"] = _no_segmentation(item["hr"].shape[-2:])
            item["has_segmentation"] = False
        item.setdefault("has_segmentation", True)
        # HR data can always be cropped to a multiple of the scale (synthetic LR is made afterwards)
        hr = crop_to_multiple(item["hr"].permute(1, 2, 0).numpy(), self.scale)
        depth = crop_to_multiple(item["depth"][0].numpy(), self.scale)
        # without a segmentation the map is all zeros, which every crop / flip / rotation leaves as it is
        seg = crop_to_multiple(item["segmentation"][0].numpy(), self.scale) if item["has_segmentation"] else None
        if self.size:
            check_size(hr.shape[0], hr.shape[1], self.scale, self.size, self._where(i, item))
            if self.augment is not None and seg is not None:
                # int32 for albumentations (labels are small); the same crop / flips / rotation as the depth
                hr, depth, seg = self.augment(hr, depth, seed, np.ascontiguousarray(seg, dtype=np.int32))
            elif self.augment is not None:
                hr, depth = self.augment(hr, depth, seed)
            else:
                hr, depth = center_crop(hr, self.size), center_crop(depth, self.size)
                seg = None if seg is None else center_crop(seg, self.size)
        item["hr"] = _to_chw(hr)
        item["depth"] = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None]
        item["segmentation"] = (torch.zeros((1, *hr.shape[:2]), dtype=torch.int64) if seg is None else
                                torch.from_numpy(np.ascontiguousarray(seg, dtype=np.int64))[None])
        return item

    def _paired(self, item: dict[str, Any], i: int, seed: int) -> dict[str, Any]:
        lr, hr = item["lr"].permute(1, 2, 0).numpy(), item["hr"].permute(1, 2, 0).numpy()
        if self.size:
            check_size(hr.shape[0], hr.shape[1], self.scale, self.size, self._where(i, item))
            if self.train:
                lr, hr = paired_augment(lr, hr, self.scale, self.size, seed)
            else:
                ls = self.size // self.scale
                lr = center_crop(lr, ls)
                y, x = (item["lr"].shape[1] - ls) // 2, (item["lr"].shape[2] - ls) // 2
                hr = hr[self.scale * y : self.scale * (y + ls), self.scale * x : self.scale * (x + ls)]
        item["lr"], item["hr"] = _to_chw(lr), _to_chw(hr)
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, turn ints/bools into tensors and keep strings as lists; clear error on size mismatch."""
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if isinstance(vals[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                names = [it.get("name", "?") for it in items]
                raise ValueError(
                    f"cannot batch '{k}' tensors of different sizes {sorted(shapes)} (samples {names}); "
                    "set data.val_size / data.patch_size so that all crops are equal, or use a batch size of 1"
                )
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], bool):
            out[k] = torch.tensor(vals, dtype=torch.bool)
        elif isinstance(vals[0], int):
            out[k] = torch.tensor(vals, dtype=torch.int64)
        else:
            out[k] = vals
    return out
