"""``SRDataModule``: HR (+ depth) patches from the embedded scenes or folders, degraded on the model's device.

Data loaders yield clean HR patches, depth and one integer ``seed`` per sample; the synthetic degradation
(depth-driven kernel field, blur + ↓s, noise, JPEG) runs in :meth:`SRDataModule.on_after_batch_transfer`, i.e.
batched on the GPU as BasicSR does, and is a pure function of the per-sample seeds.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssr_lightning.degradation import DegradationConfig, Degrader

from .augment import AUGMENT_MODES, EpochSampler
from .datasets import (
    DataError,
    HRFolderDataset,
    PairedFolderDataset,
    SRPatchDataset,
    collate,
    scan_images,
)
from .photos import RealPhotos
from .scenes import EmbeddedScenes

__all__ = ["SRDataModule"]

Stage = Literal["fit", "validate", "test", "predict"]


class SRDataModule(L.LightningDataModule):
    """Data for every SSR stage.

    Batches after :meth:`on_after_batch_transfer` (or :meth:`degrade`) hold ``hr (B,3,H,W)``,
    ``depth (B,1,H,W)``, ``segmentation (B,1,H,W) int64`` (0 = background, 1 = ground, 2+ = objects/layers;
    zeros where ``has_segmentation`` is False: folders, motorcycle scenes), ``has_segmentation (B,)``, ``seed (B,)``,
    ``index``, ``name``, ``has_depth`` and, from the degradation, ``lr (B,3,h,w)``, ``kernel (B,441,h,w)``,
    ``depth_lr (B,1,h,w)``, ``segmentation_lr (B,1,h,w)`` (the labels at the LR sample positions,
    ``segmentation[..., ::s, ::s]``, as ``depth_lr``), ``noise_sigma``, ``jpeg_quality``, ``invariant``. Paired
    batches hold ``lr``, ``hr``, ``seed``, ``index``, ``name`` and no kernel or segmentation.

    Args:
        dataset: ``"embedded"`` (perspective / layered scenes of scikit-image photos with known depth and
            segmentation, no files needed),
            ``"folder"`` (HR image folders, optional depth files; LR is synthesised), ``"paired"`` (real
            LR/HR folders such as DRealSR; no kernel or depth) or ``"photos"`` (evaluation only: whole real
            photos that installed packages ship and the scenes never use, ``data.photos``; its ``test`` and
            ``val`` photos are disjoint, see ``eval_split``; use test_size 0, batch 1).
        train_root: HR training folder (``folder``/``paired``).
        val_root: HR validation folder (``folder``/``paired``); without it there is no validation.
        test_root: HR test folder (``folder``/``paired``), also used for prediction.
        train_lr_root: LR training folder, ``paired`` only (pairs matched by stem, ``_x4`` tags ignored).
        val_lr_root: LR validation folder, ``paired`` only.
        test_lr_root: LR test folder, ``paired`` only.
        depth_dir: folder of depth maps for ``folder`` data, named like the images (same relative path or
            stem, ``.npy``/``.npz``/``.png``/``.tif``/``.exr``); by default ``<stem>_depth.<ext>`` files are
            looked up beside each image. Images without depth get a constant map (spatially invariant defocus).
        depth_inverse: the depth files hold disparity / inverse depth (larger = nearer).
        patch_size: HR training patch side; a multiple of ``scale``.
        augment: training patch augmentation: ``"full"`` (random crop + horizontal/vertical flips + rot90) or
            ``"hflip"`` (random crop + horizontal flip only, which keeps the geometric prior "up = far" that
            depth training can use; ``configs/data/embedded_depth.yaml``). Validation/test crops are never
            augmented.
        val_size: HR validation centre-crop side (multiple of ``scale``); 0 keeps whole images (then use
            ``val_batch_size=1`` for folders of mixed sizes).
        test_size: HR test/predict centre-crop side; ``None``/0 keeps whole images (cropped to a multiple of
            ``scale``).
        eval_split: what ``ssr test`` / ``ssr predict`` score: ``"test"`` (the test split, scored once, after every
            choice) or ``"val"`` (the validation split, where settings are chosen): ``num_val`` embedded validation
            scenes, the ``val_root`` folder (``val_lr_root`` for paired data) or the validation photos, cropped by
            ``test_size`` and batched by ``test_batch_size`` exactly as the test split would be. Each item keeps the
            degradation it has in validation during training. Training and validation ignore it.
        scale: super-resolution factor ``s``; it overrides ``degradation.scale``.
        batch_size: training batch size.
        val_batch_size: validation batch size.
        test_batch_size: test/predict batch size (1 for whole images of mixed sizes).
        num_workers: data-loader worker processes (persistent when > 0).
        seed: data seed: embedded scene content, crops/flips and degradation draws all derive from it.
        embedded_scene_size: side of the rendered embedded scenes in HR pixels.
        num_train: number of embedded training scenes.
        num_val: number of embedded validation scenes.
        num_test: number of embedded test scenes.
        degradation: the synthetic degradation (kernels, noise, JPEG) applied to HR batches.
        train_samples_per_epoch: samples per training epoch (default: the training set size); larger values
            repeat the data with fresh random patches and degradations.
    """

    def __init__(
        self,
        dataset: Literal["embedded", "folder", "paired", "photos"] = "embedded",
        train_root: str | None = None,
        val_root: str | None = None,
        test_root: str | None = None,
        train_lr_root: str | None = None,
        val_lr_root: str | None = None,
        test_lr_root: str | None = None,
        depth_dir: str | None = None,
        depth_inverse: bool = False,
        patch_size: int = 192,
        augment: Literal["full", "hflip"] = "full",
        val_size: int = 192,
        test_size: int | None = None,
        scale: int = 4,
        batch_size: int = 8,
        val_batch_size: int = 4,
        test_batch_size: int = 1,
        eval_split: Literal["test", "val"] = "test",
        num_workers: int = 0,
        seed: int = 0,
        embedded_scene_size: int = 256,
        num_train: int = 240,
        num_val: int = 16,
        num_test: int = 24,
        degradation: DegradationConfig = DegradationConfig(),  # noqa: B008 (never mutated; jsonargparse needs it)
        train_samples_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        if dataset not in ("embedded", "folder", "paired", "photos"):
            raise DataError(f"data.dataset must be 'embedded', 'folder', 'paired' or 'photos', got {dataset!r}")
        if scale < 1:
            raise DataError(f"data.scale must be >= 1, got {scale}")
        if eval_split not in ("test", "val"):
            raise DataError(f"data.eval_split must be 'test' or 'val', got {eval_split!r}")
        if augment not in AUGMENT_MODES:
            raise DataError(f"data.augment must be one of {AUGMENT_MODES}, got {augment!r}")
        positive = {"patch_size": patch_size, "batch_size": batch_size, "val_batch_size": val_batch_size,
                    "test_batch_size": test_batch_size, "embedded_scene_size": embedded_scene_size,
                    "num_train": num_train, "num_val": num_val, "num_test": num_test}
        for name, value in positive.items():
            if value < 1:
                raise DataError(f"data.{name}={value}: must be >= 1")
        for name, value in (("val_size", val_size), ("test_size", test_size), ("num_workers", num_workers)):
            if value is not None and value < 0:
                raise DataError(f"data.{name}={value}: must be >= 0 (0 keeps whole images / loads in the main process)")
        for name, size in (("patch_size", patch_size), ("val_size", val_size), ("test_size", test_size)):
            if size and size % scale:
                raise DataError(
                    f"data.{name}={size} is not a multiple of data.scale={scale}; "
                    f"use {size - size % scale} or {size - size % scale + scale}"
                )
        if dataset == "embedded":
            for name, size in (("patch_size", patch_size), ("val_size", val_size), ("test_size", test_size)):
                if size and size > embedded_scene_size:
                    raise DataError(
                        f"data.{name}={size} exceeds data.embedded_scene_size={embedded_scene_size}: "
                        f"lower data.{name} or raise data.embedded_scene_size"
                    )
        self.save_hyperparameters()
        self.dataset = dataset
        self.roots = {"train": train_root, "val": val_root, "test": test_root}
        self.lr_roots = {"train": train_lr_root, "val": val_lr_root, "test": test_lr_root}
        self.depth_dir, self.depth_inverse = depth_dir, depth_inverse
        self.sizes = {"train": patch_size, "val": val_size, "test": test_size}
        self.augment = augment
        self.scale, self.seed = scale, seed
        self.batch_sizes = {"train": batch_size, "val": val_batch_size, "test": test_batch_size}
        self.eval_split = eval_split
        self.batch_size = batch_size  # Lightning's batch-size finder looks for this attribute
        self.num_workers = num_workers
        self.embedded = {"size": embedded_scene_size, "seed": seed, "num_train": num_train,
                         "num_val": num_val, "num_test": num_test}
        # scale is the single source of truth; a differing degradation.scale would mismatch LR and HR
        self.degradation_config = dataclasses.replace(degradation, scale=scale)
        self.train_samples_per_epoch = train_samples_per_epoch
        self.datasets: dict[str, SRPatchDataset | None] = {}
        self._degraders: dict[bool, Any] = {}
        self._degrader_device: dict[bool, torch.device] = {}

    # ---------------------------------------------------------------- data sets
    def _base(self, split: str) -> Dataset | None:
        if self.dataset == "embedded":
            return EmbeddedScenes(split, **self.embedded)  # type: ignore[arg-type]
        if self.dataset == "photos":
            if split == "train":
                raise DataError("data.dataset='photos' is an evaluation set (real photos the scenes never use): "
                                "train with 'embedded' or 'folder', and test or predict with 'photos'")
            return RealPhotos(self.embedded["size"], self.scale, seed=self.seed, split=split)
        root = self.roots[split]
        if root is None:
            if split == "train":
                raise DataError(f"data.dataset={self.dataset!r} needs data.train_root (a folder of HR images)")
            return None
        if self.dataset == "folder":
            return HRFolderDataset(root, self.scale, depth_dir=self.depth_dir, depth_inverse=self.depth_inverse)
        lr_root = self.lr_roots[split]
        if lr_root is None:
            raise DataError(f"data.dataset='paired' needs data.{split}_lr_root next to data.{split}_root")
        return PairedFolderDataset(lr_root, root, self.scale)

    def _make(self, split: str) -> SRPatchDataset | None:
        if split not in self.datasets:
            base = self._base(split)
            self._scan(base, split)
            self.datasets[split] = (
                None if base is None
                else SRPatchDataset(base, split, self.sizes[split], self.scale, self.seed, augment=self.augment)
            )
        return self.datasets[split]

    def _make_eval(self) -> SRPatchDataset | None:
        """The data set ``ssr test`` / ``ssr predict`` score: ``eval_split``'s items, cropped as the test split."""
        split = self.eval_split
        if split == "test":
            return self._make("test")
        key = "eval:val"  # the val items at test_size (validation during training keeps its val_size crops)
        if key not in self.datasets:
            base = self._base("val")
            self._scan(base, "val", self.sizes["test"])
            self.datasets[key] = (None if base is None else
                                  SRPatchDataset(base, "val", self.sizes["test"], self.scale, self.seed))
        return self.datasets[key]

    def _scan(self, base: Dataset | None, split: str, size: int | None = None) -> None:
        """Decode every file of a folder data set once, before training, and report all bad files together."""
        size = self.sizes[split] if size is None else size
        if isinstance(base, HRFolderDataset):
            scan_images(base.files, self.scale, size, f"{split} image")
        elif isinstance(base, PairedFolderDataset):
            scan_images([lr for lr, _ in base.pairs], self.scale, size, f"{split} pair",
                        partners=[hr for _, hr in base.pairs])

    def setup(self, stage: str | None = None) -> None:
        """Build the data sets a stage needs (files are listed here, decoded only per item)."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": (), "predict": ()}
        for split in splits.get(stage or "fit", ("train", "val", "test")):
            self._make(split)
        if stage in ("test", "predict"):
            self._make_eval()

    # ------------------------------------------------------------- data loaders
    def _loader(self, split: str, sampler: Any = None, ds: Dataset | None = None) -> DataLoader:
        ds = ds if ds is not None else self._make(split)
        assert ds is not None
        return DataLoader(
            ds,
            batch_size=self.batch_sizes[split],
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=split == "train" and (sampler is not None and len(sampler) >= self.batch_sizes[split]),
        )

    def train_dataloader(self) -> DataLoader:
        ds = self._make("train")
        assert ds is not None
        sampler = EpochSampler(len(ds), self.train_samples_per_epoch, shuffle=True, seed=self.seed)
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader | list:
        if self._make("val") is None:
            warnings.warn("no validation data (data.val_root is not set): validation is skipped", stacklevel=2)
            return []
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Batches of ``eval_split`` (the test split by default), at the test crop and batch size."""
        ds = self._make_eval()
        if ds is None:
            root = "data.test_root" if self.eval_split == "test" else "data.val_root"
            raise DataError(f"data.dataset={self.dataset!r} needs {root} to test or predict "
                            f"(data.eval_split={self.eval_split})")
        return self._loader("test", ds=ds)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # -------------------------------------------------------------- degradation
    @property
    def degrader(self) -> Any:
        """The evaluation degrader (``clean_prob`` is a training schedule: validation and test never use it)."""
        return self._get_degrader(training=False)

    def _get_degrader(self, training: bool) -> Any:
        if training not in self._degraders:
            cfg = self.degradation_config
            self._degraders[training] = Degrader(cfg if training else dataclasses.replace(cfg, clean_prob=0.0))
        return self._degraders[training]

    def degrade(self, batch: dict[str, Any], training: bool = False) -> dict[str, Any]:
        """Add ``lr``, ``kernel``, ``depth_lr``, ``noise_sigma``, ``jpeg_quality``, ``invariant`` to an HR batch,
        and ``segmentation_lr`` (``segmentation[..., ::s, ::s]``) when it has a ``segmentation``.

        Runs on the device of ``batch["hr"]``; usable outside a Trainer. Batches that already hold ``lr``
        (paired data) are returned unchanged. ``training`` applies ``degradation.clean_prob`` (a training-only
        schedule), so validation and test data do not depend on it.
        """
        if "lr" in batch:
            return batch
        hr = batch["hr"]
        deg = self._get_degrader(training)
        if isinstance(deg, nn.Module) and self._degrader_device.get(training) != hr.device:
            deg.to(hr.device)
            self._degrader_device[training] = hr.device
        with torch.no_grad():
            out = deg(hr, batch["depth"].to(hr.device), batch["seed"])
        batch = dict(batch)
        batch.update(out)
        if "segmentation" in batch:
            s = self.scale  # the LR sample positions, exactly as depth_lr
            batch["segmentation_lr"] = batch["segmentation"][..., ::s, ::s].to(hr.device).contiguous()
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "hr" in batch:
            trainer = getattr(self, "trainer", None)
            return self.degrade(batch, training=bool(trainer is not None and trainer.training))
        return batch
