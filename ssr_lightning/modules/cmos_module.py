"""CMOSModule: trains the CMOS peer row (blur map + semantics estimator and its σ-conditioned SR; docs/DESIGN.md §3)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssr_lightning.files import atomic_write_json
from ssr_lightning.metrics import psnr_y, ssim_y
from ssr_lightning.modules.base import FitConfig, StageModule, as_network
from ssr_lightning.networks.cmos import CMOS
from ssr_lightning.visualize import Panel, kernel_spread

__all__ = ["CMOSModule", "mean_iou"]

_IGNORE = -100  # F.cross_entropy's default ignore_index: negative (unknown) labels


def mean_iou(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-image mIoU ``(B,)``: IoU of each class present in the prediction or the labels, averaged over them.

    ``labels (B, 1, h, w)`` integers, ≥ C − 1 folded into C − 1, negative ignored. (Per-image means, averaged over
    images by the caller; a data-set mIoU would pool the confusion matrix instead.)
    """
    lab = labels[:, 0].long() if labels.dim() == 4 else labels.long()
    valid = lab >= 0
    lab = lab.clamp(0, num_classes - 1)
    pred = logits.argmax(1)
    out = []
    for b in range(lab.shape[0]):
        v = valid[b]
        p = F.one_hot(pred[b][v], num_classes).bool()
        g = F.one_hot(lab[b][v], num_classes).bool()
        inter = (p & g).sum(0).float()
        union = (p | g).sum(0).float()
        present = union > 0
        out.append((inter[present] / union[present]).mean() if present.any() else logits.new_tensor(float("nan")))
    return torch.stack(out).float()


class CMOSModule(StageModule):
    """CMOS row: LR → (σ map, semantic map) → σ(+semantics)-conditioned RRDB-SFT SR (the CMOS paper, §4).

    ``self.model`` is a :class:`~ssr_lightning.networks.cmos.CMOS` (``estimator`` + ``sr``). Training loss:

      L = |σ̂ − σ|₁ + λ_aux·mean_i |σ̂_i − σ|₁
          + λ_seg·[CE(Ŝ, S) + λ_aux·mean_i CE(Ŝ_i, S)]          (samples with segmentation only)
          + λ_sr·|SR(LR; σ, S) − HR|₁                              (SR on GT maps: teacher forcing)

    with σ the GT blur map, the kernel spread of the batch's kernel field per LR pixel (``visualize.kernel_spread``;
    σ for isotropic Gaussians), S the LR-grid segmentation (``segmentation_lr``, labels ≥ C − 1 folded into C − 1)
    and the i-indexed terms the auxiliary outputs of every scale. The SR network sees the GT σ map and the GT
    one-hot semantics (the paper's upper-bound RRDB-SFT; samples without segmentation get the estimator's own,
    detached semantics). Validation, test and predict are blind: the SR network gets the *estimated* maps.
    Validation/test report ``psnr_y``, ``ssim_y`` (``scale`` px cropped), ``sigma_l1`` and, where segmentation
    exists, ``miou``. Batches without ``segmentation_lr``/``has_segmentation`` are treated as unsegmented.
    """

    monitor = "val/psnr_y"
    monitor_mode = "max"

    def __init__(
        self,
        net: CMOS,
        lambda_seg: float = 1.0,
        lambda_aux: float = 1.0,
        lambda_sr: float = 1.0,
        kernel_size: int = 21,
        fit: FitConfig = FitConfig(learning_rate=1e-3, min_learning_rate=1e-5, warmup_steps=50),  # noqa: B008
    ) -> None:
        """
        Args:
            net: The CMOS row (``CMOS``: estimator widths, GIA groups, SR trunk, classes, semantics switch, scale).
            lambda_seg: Weight of the cross-entropy terms (1: the paper's plain sum of the losses).
            lambda_aux: Weight of the auxiliary terms (each the mean over the 3 scales) relative to the final
                outputs' terms (1, as the paper's sum).
            lambda_sr: Weight of the SR L1 term.
            kernel_size: Kernel side k of the data's kernel fields (k² channels), for the GT σ map.
            fit: Optimiser, schedule, checkpoint interval and logged images.
        """
        super().__init__()
        net = as_network(net, CMOS)  # a class_path/init_args block (load_from_checkpoint) is built
        self.save_stage_hparams()
        self.model = net
        self._test_miou: list[float | None] = []

    def forward(self, lr: Tensor) -> Tensor:
        """Blind SR (B, 3, s·h, s·w) from the estimated maps (not clamped)."""
        return self.model(lr)

    # --- targets ----------------------------------------------------------------------------------------------
    def gt_sigma(self, batch: dict[str, Any]) -> Tensor:
        """GT blur map (B, 1, h, w) in HR px: the kernel spread of the batch's kernel field."""
        if "kernel" not in batch:
            raise ValueError("CMOS needs GT kernel fields for its σ target: use an HR data set (data.dataset: "
                             "embedded or folder), not paired LR/HR folders, to train or evaluate it.")
        return kernel_spread(batch["kernel"], self.hparams.kernel_size).to(batch["lr"].dtype)

    @staticmethod
    def segmentation(batch: dict[str, Any]) -> tuple[Tensor | None, Tensor | None]:
        """``(labels (B, 1, h, w) int64, mask (B,) bool)`` of the samples that have segmentation, or (None, None)."""
        labels = batch.get("segmentation_lr")
        if labels is None:
            return None, None
        mask = batch.get("has_segmentation")
        if mask is None:
            mask = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
        mask = torch.as_tensor(mask, device=labels.device).bool().reshape(-1)
        if labels.dim() == 3:
            labels = labels.unsqueeze(1)
        return labels.long(), mask

    def _ce(self, logits: Tensor, labels: Tensor) -> Tensor:
        target = labels[:, 0].clamp_max(self.model.config.num_classes - 1)
        target = torch.where(target < 0, torch.full_like(target, _IGNORE), target)
        return F.cross_entropy(logits, target, ignore_index=_IGNORE)

    # --- steps ------------------------------------------------------------------------------------------------
    def losses(self, batch: dict[str, Any], with_sr: bool = True) -> dict[str, Tensor]:
        """The training loss terms (``loss`` = their weighted sum) on a degraded batch."""
        hp = self.hparams
        lr = batch["lr"]
        sigma_gt = self.gt_sigma(batch)
        sigma, logits, aux = self.model.estimator(lr, return_aux=True)
        out: dict[str, Tensor] = {"sigma_l1": F.l1_loss(sigma, sigma_gt)}
        out["sigma_aux"] = torch.stack([F.l1_loss(s, sigma_gt) for s, _ in aux]).mean()
        loss = out["sigma_l1"] + hp.lambda_aux * out["sigma_aux"]

        labels, mask = self.segmentation(batch)
        if labels is not None and bool(mask.any()):
            lab = labels[mask]
            out["ce"] = self._ce(logits[mask], lab)
            out["ce_aux"] = torch.stack([self._ce(s[mask], lab) for _, s in aux]).mean()
            loss = loss + hp.lambda_seg * (out["ce"] + hp.lambda_aux * out["ce_aux"])

        if with_sr:
            sem: Tensor | None = None
            if self.model.config.use_semantics:
                # teacher forcing: GT labels where they exist, else the estimator's own (detached) semantics
                sem = logits.detach().argmax(1, keepdim=True)
                if labels is not None:
                    sem = torch.where(mask.view(-1, 1, 1, 1), labels.clamp_max(self.model.config.num_classes - 1), sem)
            sr = self.model.sr(lr, sigma_gt, sem)
            out["sr_l1"] = F.l1_loss(sr, batch["hr"])
            loss = loss + hp.lambda_sr * out["sr_l1"]
        out["loss"] = loss
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms = self.losses(batch)
        bs = batch["lr"].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=bs)
        for key in ("sigma_l1", "ce", "sr_l1"):
            if key in terms:
                self.log(f"train/{key}", terms[key], batch_size=bs)
        return terms["loss"]

    def _evaluate(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        lr, hr, s = batch["lr"], batch["hr"], self.model.config.scale
        sigma, logits = self.model.estimate(lr)
        sr = self.model.sr(lr, sigma, logits)
        sigma_gt = self.gt_sigma(batch)
        metrics = {
            "psnr_y": psnr_y(sr, hr, crop_border=s),
            "ssim_y": ssim_y(sr, hr, crop_border=s),
            "sigma_l1": (sigma - sigma_gt).abs().mean(dim=(1, 2, 3)).float(),
        }
        labels, mask = self.segmentation(batch)
        if labels is not None and bool(mask.any()):
            miou = mean_iou(logits, labels, self.model.config.num_classes)
            metrics["miou"] = torch.where(mask, miou, torch.full_like(miou, float("nan")))
        return {"sr": sr, "sigma": sigma, "sigma_gt": sigma_gt, "logits": logits}, metrics

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        maps, metrics = self._evaluate(batch)
        bs = batch["lr"].shape[0]
        for key, prog in (("psnr_y", True), ("ssim_y", False), ("sigma_l1", True)):
            self.log(f"val/{key}", metrics[key].mean(), prog_bar=prog, batch_size=bs, sync_dist=True)
        if "miou" in metrics:
            miou = metrics["miou"]
            ok = ~torch.isnan(miou)
            self.log("val/miou", miou[ok].mean(), batch_size=int(ok.sum()), sync_dist=True)
        if batch_idx == 0:
            self._log_images(batch, maps)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, metrics = self._evaluate(batch)
        self.record_test({k: metrics[k] for k in ("psnr_y", "ssim_y", "sigma_l1")}, batch.get("name"))
        miou = metrics.get("miou")
        if miou is None:
            self._test_miou += [None] * batch["lr"].shape[0]
        else:
            self._test_miou += [None if math.isnan(v) else v for v in miou.tolist()]

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._test_miou = []

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        values = [v for v in self._test_miou if v is not None]
        if not values or not self._test_rows:
            return
        miou = sum(values) / len(values)
        self.log("test/miou", miou, sync_dist=True)
        # add the mIoU (over the samples that have segmentation) to the report the base class wrote
        path = Path(self.trainer.log_dir or ".") / "test_metrics.json"
        if path.is_file():
            report = json.loads(path.read_text())
            report["summary"]["miou"] = miou
            report["num_segmented"] = len(values)
            for row, v in zip(report["per_sample"], self._test_miou, strict=False):
                if v is not None:
                    row["miou"] = v
            atomic_write_json(path, report)
        self.print(f"test miou={miou:.4f} over {len(values)} segmented samples")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self.model(batch["lr"]).clamp(0, 1)

    # --- images -----------------------------------------------------------------------------------------------
    def _log_images(self, batch: dict[str, Any], maps: dict[str, Tensor]) -> None:
        """LR | SR | HR | GT σ | estimated σ | estimated semantics."""
        n = self.fit_args.num_log_images
        gt, est = maps["sigma_gt"][:n], maps["sigma"][:n]
        vmax = float(torch.maximum(gt.amax(), est.amax()))
        sem = maps["logits"][:n].argmax(1, keepdim=True).float()
        columns = [Panel("LR", batch["lr"][:n]), Panel("SR", maps["sr"][:n]), Panel("HR", batch["hr"][:n]),
                   Panel.map("GT blur σ", gt, "magma", 0.0, vmax, "σ (HR px)"),
                   Panel.map("estimated σ", est, "magma", 0.0, vmax, "σ (HR px)"),
                   Panel.map("semantics", sem, "tab10", 0.0, max(self.model.config.num_classes - 1, 1), "class")]
        self.log_grid("val/lr|sr|hr|gt_sigma|est_sigma|semantics", columns, max_rows=n, names=batch.get("name"))
