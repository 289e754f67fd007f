"""DKENetModule: trains the kernel estimator KE on degraded batches (paper §3.2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ssr_lightning.degradation import blur_downsample
from ssr_lightning.degradation.kernels import anisotropic_covariance
from ssr_lightning.metrics import kernel_l1, psnr
from ssr_lightning.modules.base import FitConfig, StageModule, as_network
from ssr_lightning.networks import DKENet
from ssr_lightning.visualize import Panel, kernel_spread


class DKENetModule(StageModule):
    """Kernel-field estimation stage: LR (+ depth) → per-pixel 21×21 kernels.

    Loss: L1 between the estimated and the GT kernel field (the "blur map"), summed over the k² taps and
    averaged over pixels. Validation/test report the kernel L1 and the LR re-synthesis PSNR: the HR image
    re-degraded (blur + ↓s, no noise or JPEG) with the estimated field against the same with the GT field.
    """

    monitor = "val/kernel_l1"
    monitor_mode = "min"

    def __init__(
        self,
        net: DKENet,
        depth_dropout: float = 0.0,
        lens_loss: float = 0.0,
        fit: FitConfig = FitConfig(),  # noqa: B008 (never mutated)
    ) -> None:
        """
        Args:
            net: The kernel estimator (``DKENet``: width, depth branch, context heads, scale, ...).
            depth_dropout: Training only: the fraction of samples whose depth is replaced by the constant 0.5
                ("no depth"), so the LR branch must read the blur from the pixels instead of leaning on depth.
            lens_loss: Training only: weight of an auxiliary L1 loss between the thin-lens head's lens (focal depth,
                gain, threshold, optics covariance: ``DKENet.lens_terms``) and the lens that made each depth-driven
                sample's kernel (the batch's ``lens``, ``degradation.lens_targets``); spatially invariant samples are
                left out. 0 (default) trains on the kernel L1 alone. Needs ``thin_lens``, ``use_depth`` and absolute
                depth (``normalize_depth`` false): the targets are on that depth scale.
            fit: Optimiser, schedule, checkpoint interval and logged images.
        """
        super().__init__()
        net = as_network(net, DKENet)  # a class_path/init_args block (load_from_checkpoint) is built
        if lens_loss < 0:
            raise ValueError(f"DKENetModule lens_loss {lens_loss}: must be >= 0")
        if lens_loss > 0 and not (net.lens_head is not None and net.use_depth and not net.normalize_depth):
            raise ValueError("DKENetModule lens_loss > 0 supervises the thin-lens head on absolute depth: set "
                             "net thin_lens true, use_depth true and normalize_depth false, or lens_loss 0")
        self.save_stage_hparams()
        self.model = net

    def forward(self, lr: Tensor, depth_lr: Tensor | None = None) -> Tensor:
        return self.model(lr, depth_lr if self.model.use_depth else None)

    def _estimate(self, batch: dict[str, Any]) -> Tensor:
        return self(batch["lr"], self._depth_in(batch))

    @staticmethod
    def _require_kernel(batch: dict[str, Any]) -> Tensor:
        if "kernel" not in batch:
            raise ValueError(
                "DKENet needs GT kernel fields: use an HR data set (data.dataset: embedded or folder), "
                "not paired LR/HR folders, to train or evaluate it."
            )
        return batch["kernel"]

    def _depth_in(self, batch: dict[str, Any]) -> Tensor | None:
        """The batch's depth as the network reads it in this step (``depth_dropout`` applied in training)."""
        depth = batch.get("depth_lr")
        if depth is not None and self.model.use_depth and self.training and self.hparams.depth_dropout > 0:
            drop = torch.rand(depth.shape[0], 1, 1, 1, device=depth.device) < self.hparams.depth_dropout
            depth = torch.where(drop, torch.full_like(depth, 0.5), depth)
        return depth

    def _estimate_with_lens(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The kernel field and the auxiliary lens loss (``lens_loss``) of one pass: the loss is the mean over the
        batch's depth-driven samples (0 if none) of the L1 between the head's lens terms and ``batch["lens"]``."""
        if "lens" not in batch:
            raise ValueError("lens_loss needs the batch's lens (degradation.lens_targets): use an HR data set that "
                             "is degraded on the fly (data.dataset embedded or folder)")
        field, est = self.model.forward_with_lens(batch["lr"], self._depth_in(batch))
        gt = batch["lens"].float()
        cov = anisotropic_covariance(est["sigma_x"], est["sigma_y"], est["theta"]).flatten(1)
        cov_gt = anisotropic_covariance(gt[:, 3], gt[:, 4], gt[:, 5]).flatten(1)
        per = ((est["focus"] - gt[:, 0]).abs() + (est["gain"] - gt[:, 1]).abs() / (1.0 + gt[:, 1])
               + (est["threshold"] - gt[:, 2]).abs() + (cov - cov_gt).abs().sum(1) / (1.0 + cov_gt.abs().sum(1)))
        keep = ~batch["invariant"].to(per.device).bool().reshape(-1)
        lens = per[keep].mean() if bool(keep.any()) else per.sum() * 0.0
        return field, lens

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        gt = self._require_kernel(batch)
        if self.hparams.lens_loss > 0:
            est, lens = self._estimate_with_lens(batch)
            self.log("train/lens_l1", lens, batch_size=gt.shape[0])
        else:
            est, lens = self._estimate(batch), None
        loss = kernel_l1(est, gt).mean()
        if lens is not None:
            loss = loss + self.hparams.lens_loss * lens
        self.log("train/loss", loss, prog_bar=True, batch_size=gt.shape[0])
        return loss

    def _evaluate(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        gt = self._require_kernel(batch)
        est = self._estimate(batch)
        s = self.model.scale
        lr_est = blur_downsample(batch["hr"], est, s, method="shift")
        lr_gt = blur_downsample(batch["hr"], gt, s, method="shift")
        metrics = {"kernel_l1": kernel_l1(est, gt), "resynth_psnr": psnr(lr_est, lr_gt)}
        return est, metrics

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        est, metrics = self._evaluate(batch)
        bs = est.shape[0]
        self.log("val/kernel_l1", metrics["kernel_l1"].mean(), prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("val/resynth_psnr", metrics["resynth_psnr"].mean(), prog_bar=True, batch_size=bs, sync_dist=True)
        if batch_idx == 0:
            self._log_images(batch, est)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, metrics = self._evaluate(batch)
        self.record_test(metrics, batch.get("name"))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        est = self._estimate(batch)
        return {"kernel": est, "kernel_spread": kernel_spread(est, self.model.kernel_size)}

    def _log_images(self, batch: dict[str, Any], est: Tensor) -> None:
        """LR | depth | GT kernel spread | estimated kernel spread | |error| — as the paper's Fig. 8 heatmaps."""
        n = self.fit_args.num_log_images
        k = self.model.kernel_size
        gt_spread = kernel_spread(batch["kernel"][:n], k)
        est_spread = kernel_spread(est[:n], k)
        vmax = float(torch.maximum(gt_spread.amax(), est_spread.amax()))
        columns = [
            Panel("LR", batch["lr"][:n]),
            Panel.map("depth", batch["depth_lr"][:n], "viridis", 0.0, 1.0, "0 = near, 1 = far"),
            Panel.map("GT kernel spread", gt_spread, "magma", 0.0, vmax, "σ (HR px)"),
            Panel.map("estimated spread", est_spread, "magma", 0.0, vmax, "σ (HR px)"),
            Panel.map("|error|", (est_spread - gt_spread).abs(), "inferno", 0.0, vmax, "|Δσ| (HR px)"),
        ]
        self.log_grid("val/lr|depth|gt_spread|est_spread|abs_err", columns, max_rows=n, names=batch.get("name"))

