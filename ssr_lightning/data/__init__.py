"""Data layer: image/depth I/O, the embedded scene data set (perspective, layers, motorcycle), folder data sets
and the DataModule.

``SRDataModule`` is imported lazily so that the I/O and data-set code can be used without Lightning
or the degradation engine.
"""

from __future__ import annotations

from typing import Any

from .augment import (
    AUGMENT_MODES,
    EpochSampler,
    PatchAugment,
    center_crop,
    mix_seed,
    paired_augment,
    sample_seed,
)
from .datasets import (
    DataError,
    HRFolderDataset,
    PairedFolderDataset,
    SRPatchDataset,
    collate,
    list_images,
)
from .image_io import (
    ImageReadError,
    check_pair_size,
    check_size,
    crop_to_multiple,
    load_depth,
    load_image,
    normalize_depth,
    save_image,
)
from .scenes import (
    EmbeddedScenes,
    render_scene,
    render_scene_info,
    scene_kind,
    scene_split,
    split_indices,
)

__all__ = [
    "AUGMENT_MODES",
    "DataError",
    "EmbeddedScenes",
    "EpochSampler",
    "HRFolderDataset",
    "ImageReadError",
    "PairedFolderDataset",
    "PatchAugment",
    "SRDataModule",
    "SRPatchDataset",
    "center_crop",
    "check_pair_size",
    "check_size",
    "collate",
    "crop_to_multiple",
    "list_images",
    "load_depth",
    "load_image",
    "mix_seed",
    "normalize_depth",
    "paired_augment",
    "render_scene",
    "render_scene_info",
    "sample_seed",
    "save_image",
    "scene_kind",
    "scene_split",
    "split_indices",
]


def __getattr__(name: str) -> Any:
    if name == "SRDataModule":
        from .datamodule import SRDataModule

        return SRDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
