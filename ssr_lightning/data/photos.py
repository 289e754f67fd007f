"""Real photographs for evaluation: photos that installed packages ship and the embedded scenes never use.

``matplotlib``'s ``grace_hopper.jpg`` and the four photographs ``pyiqa`` installs for its efficiency test
(a night street, a garden, a sunset beach, a snowy highway). Each photo is area-downsampled whole so that its
longer side is ``size`` HR pixels (and cropped to a multiple of the scale), then used ``variants`` times with
different sample seeds, so its blur comes from several draws of the training kernel family (items name their
photo as ``source``). Photos carry no depth: each variant gets a smooth random depth plane (seeded), so the
depth-driven defocus still varies across the image; ``has_depth`` is False, so depth metrics skip them. Nothing is
downloaded: a photo whose package is missing is left out, and an empty set is an error naming the files.

Splits (:data:`PHOTO_SPLITS`, fixed by position in :data:`PHOTOS`, never by a result): ``val`` = the photos at odd
positions (the night street and the sunset beach), used to choose settings; ``test`` = those at even positions
(Grace Hopper, the garden, the snowy highway), scored once afterwards; ``all`` = the five (the set before the split,
for records made then). No photo is in both ``val`` and ``test``.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .image_io import crop_to_multiple, load_image

__all__ = ["PHOTOS", "PHOTO_SPLITS", "RealPhotos", "photo_paths"]

# (package, path inside it)
PHOTOS: tuple[tuple[str, str], ...] = (
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("tests", "test_efficiency_img_dir/SPAQ_10241.jpg"),  # pyiqa's test images (installed as a top-level package)
    ("tests", "test_efficiency_img_dir/frame_4wrwr48cdk6rbcjl.jpg"),
    ("tests", "test_efficiency_img_dir/frame_7gzdcz9sif0ekg31.jpg"),
    ("tests", "test_efficiency_img_dir/frame_9ogwhvvy7gfj6jzh.jpg"),
)

# positions in PHOTOS of each split: odd positions validate, even ones test (disjoint; "all" is their union)
PHOTO_SPLITS: dict[str, tuple[int, ...]] = {
    "val": tuple(range(1, len(PHOTOS), 2)),
    "test": tuple(range(0, len(PHOTOS), 2)),
    "all": tuple(range(len(PHOTOS))),
}


def photo_paths(split: str = "all") -> list[Path]:
    """The photos of :data:`PHOTOS` in ``split`` (``val``, ``test`` or ``all``) that are installed here."""
    if split not in PHOTO_SPLITS:
        raise ValueError(f"photo split must be one of {', '.join(PHOTO_SPLITS)}, got {split!r}")
    found = []
    for package, rel in (PHOTOS[k] for k in PHOTO_SPLITS[split]):
        spec = importlib.util.find_spec(package)
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
        found += [Path(r) / rel for r in roots if (Path(r) / rel).is_file()][:1]
    return found


@cache
def _photo(path: Path, size: int, scale: int) -> np.ndarray:
    img = load_image(path)
    h, w = img.shape[:2]
    f = size / max(h, w)
    img = cv2.resize(img, (max(scale, round(w * f)), max(scale, round(h * f))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop_to_multiple(np.clip(img, 0.0, 1.0), scale))


class RealPhotos(Dataset):
    """Whole real photos of one split × ``variants`` (see the module doc). Items as ``HRFolderDataset``'s.

    An item's degradation seed and depth plane depend on its photo and draw only (not on the split), so a photo
    degrades alike in ``all`` and in its own split.
    """

    def __init__(self, size: int = 256, scale: int = 4, variants: int = 5, seed: int = 0, split: str = "all") -> None:
        self.paths = photo_paths(split)
        if not self.paths:
            from .datasets import DataError

            raise DataError(f"no real photos of split {split!r} found: none of "
                            + ", ".join(f"{PHOTOS[k][0]}/{PHOTOS[k][1]}" for k in PHOTO_SPLITS[split])
                            + " is installed")
        self.size, self.scale, self.variants, self.seed, self.split = size, scale, variants, seed, split
        everything = photo_paths("all")
        # the item index the photo's draws have in the whole set: seeds and depth planes do not move with the split
        self._global = [everything.index(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths) * self.variants

    def file_path(self, i: int) -> str:
        return str(self.paths[i // self.variants])

    def global_index(self, i: int) -> int:
        """Index of item ``i`` in the ``all`` set (what its depth plane and degradation seed derive from)."""
        return self._global[i // self.variants] * self.variants + i % self.variants

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, variant = self.paths[i // self.variants], i % self.variants
        img = _photo(path, self.size, self.scale)
        h, w = img.shape[:2]
        rng = np.random.default_rng([self.seed, self.global_index(i), 0xF070])
        theta, lo = rng.uniform(-np.pi, np.pi), rng.uniform(0.0, 0.5)
        hi = rng.uniform(lo + 0.3, 1.0)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (np.cos(theta) * xx / w + np.sin(theta) * yy / h)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        depth = (lo + (hi - lo) * ramp).astype(np.float32)
        return {
            "hr": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "depth": torch.from_numpy(depth)[None],
            "has_depth": False,
            "segmentation": torch.zeros(1, h, w, dtype=torch.int64),
            "has_segmentation": False,
            "index": i,
            # the degradation seed of SRPatchDataset: the photo's draw in the whole set, under the test salt, so a
            # photo degrades as it did before the split (and alike in its split and in "all")
            "seed_key": ("test", self.global_index(i)),
            "name": f"{path.stem}_v{variant}",
            "source": path.stem,  # the variants of one photo are one source (the reports resample sources)
        }
