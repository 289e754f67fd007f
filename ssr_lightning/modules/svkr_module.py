"""SVKRModule: evaluation-only stage running Algorithm 1 (SVKR) over the trained DE, KE and NBSR checkpoints.

``ssr test --config configs/svkr.yaml`` reports, for every iteration t = 0..T, the AbsRel of D^t against the GT
depth (after per-image scale/shift alignment), the kernel L1 of K^t against the GT field and PSNR/SSIM-Y of I^t
against HR (``scale`` px cropped) as ``t{t}/absrel``, ``t{t}/kernel_l1``, ``t{t}/psnr_y``, ``t{t}/ssim_y`` in
``test_metrics.json`` and TensorBoard (``test/t0/psnr_y`` ...), and draws the paper's Fig. 4 as
``svkr_iterations.png`` in the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ssr_lightning.files import atomic_write
from ssr_lightning.inference.svkr import SVKR, SVKRConfig, SVKRResult
from ssr_lightning.metrics import aligned_depth_metrics, kernel_l1, psnr_y, ssim_y
from ssr_lightning.modules.base import StageModule, as_config
from ssr_lightning.visualize import heatmap, kernel_spread

__all__ = ["SVKRModule", "iteration_metrics", "svkr_figure"]

FIGURE_NAME = "svkr_iterations.png"


def iteration_metrics(result: SVKRResult, batch: dict[str, Any], scale: int) -> dict[str, Tensor]:
    """Per-sample metrics of every iterate: ``t{t}/absrel`` (if GT depth), ``t{t}/kernel_l1`` (if GT kernels),
    ``t{t}/psnr_y`` and ``t{t}/ssim_y`` (``scale`` px cropped), each ``(B,)``."""
    out: dict[str, Tensor] = {}
    depth_lr = batch.get("depth_lr")
    has_depth = batch.get("has_depth")
    for t, (depth, kernel, image) in enumerate(zip(result.depths, result.kernels, result.images)):
        if depth_lr is not None and (has_depth is None or bool(torch.as_tensor(has_depth).all())):
            out[f"t{t}/absrel"] = aligned_depth_metrics(depth, depth_lr.to(depth))["absrel"]
        if "kernel" in batch:
            out[f"t{t}/kernel_l1"] = kernel_l1(kernel, batch["kernel"])
        out[f"t{t}/psnr_y"] = psnr_y(image, batch["hr"], crop_border=scale)
        out[f"t{t}/ssim_y"] = ssim_y(image, batch["hr"], crop_border=scale)
    return out


def svkr_figure(
    lr: Tensor,
    result: SVKRResult,
    hr: Tensor,
    gt_depth_lr: Tensor | None = None,
    gt_kernel: Tensor | None = None,
    names: list[str] | None = None,
) -> Figure:
    """The paper's Fig. 4: rows = samples; LR | D^0 | σ(K^0) | … | D^T | σ(K^T) | SR (I^T) | HR [| GT D | GT σ].

    Depth uses viridis on [0, 1] (0 = near); kernel spread σ (HR px, :func:`kernel_spread`) uses magma on a scale
    shared by the row, so a row's spread maps (and the GT) compare directly.
    """
    n = lr.shape[0]
    cols: list[tuple[str, Tensor]] = [("LR", lr.clamp(0, 1))]
    spreads = [kernel_spread(k) for k in result.kernels]
    gt_spread = kernel_spread(gt_kernel) if gt_kernel is not None else None
    vmax = torch.stack([s.flatten(1).amax(1) for s in spreads + ([gt_spread] if gt_spread is not None else [])])
    vmax = vmax.amax(0).clamp_min(1e-3)  # per row
    for t, (d, s) in enumerate(zip(result.depths, spreads)):
        cols.append((f"$D^{t}$", heatmap(d, cmap="viridis", vmin=0.0, vmax=1.0)))
        cols.append((f"$\\sigma(K^{t})$", torch.cat([heatmap(s[i : i + 1], "magma", 0.0, float(vmax[i]))
                                                     for i in range(n)])))
    cols.append((f"SR $I^{result.iterations}$", result.final_image.clamp(0, 1)))
    cols.append(("HR", hr.clamp(0, 1)))
    if gt_depth_lr is not None:
        cols.append(("GT depth", heatmap(gt_depth_lr, cmap="viridis", vmin=0.0, vmax=1.0)))
    if gt_spread is not None:
        cols.append(("GT $\\sigma(K)$", torch.cat([heatmap(gt_spread[i : i + 1], "magma", 0.0, float(vmax[i]))
                                                   for i in range(n)])))
    # Object-oriented matplotlib (no pyplot): no global backend or figure state in a library module.
    fig = Figure(figsize=(1.6 * len(cols), 1.6 * n + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, len(cols), squeeze=False)
    for r in range(n):
        for c, (title, img) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(img[r].detach().float().cpu().permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
        if names is not None:
            axes[r, 0].set_ylabel(str(names[r])[:14], fontsize=7)
    fig.suptitle(f"SVKR iterations (T={result.iterations}); σ = kernel spread in HR px, shared scale per row",
                 fontsize=9)
    fig.tight_layout()
    return fig


def _figure_to_tensor(fig: Figure) -> Tensor:
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0


class SVKRModule(StageModule):
    """Evaluation-only stage: Algorithm 1 over the DKENet, NBSR and depth checkpoints (no parameters of its own).

    The stage networks are loaded in ``setup`` (a missing checkpoint fails there with the command that makes it),
    so ``ssr test --config configs/svkr.yaml`` needs no ``--ckpt_path``. Assign ``module.svkr`` before testing to
    evaluate an SVKR built in code (the checkpoints are then not read).
    """

    monitor = "test/svkr_psnr_y"
    monitor_mode = "max"

    def __init__(self, svkr: SVKRConfig = SVKRConfig(), scale: int = 4,  # noqa: B008 (never mutated)
                 num_figure_samples: int = 4) -> None:
        """
        Args:
            svkr: The stage checkpoints (None: the newest default run of each), the depth estimator, T and γ.
            scale: SR factor s (linked to data.scale); PSNR/SSIM crop s px per side.
            num_figure_samples: Rows of the Fig. 4-style figure (first test samples).
        """
        super().__init__()
        self.save_stage_hparams()
        self.svkr_cfg = as_config(SVKRConfig, svkr)
        self.svkr: SVKR | None = None
        self._figure_rows: list[dict[str, Tensor]] = []

    # --- model -------------------------------------------------------------------------------------------------
    def build(self) -> SVKR:
        """Load DE, KE and NBSR from the configured checkpoints (unless ``self.svkr`` was set in code)."""
        if self.svkr is None:
            c = self.svkr_cfg
            self.svkr = SVKR.from_config(c)
            rank_zero_info(f"SVKR (T={c.iterations}, γ={c.gamma}): KE {c.dkenet_ckpt or 'newest runs/dkenet'}, "
                           f"NBSR {c.nbsr_ckpt or 'newest runs/nbsr'}, DE {c.depth} {c.depth_ckpt or ''}")
        return self.svkr

    def setup(self, stage: str) -> None:
        if stage == "fit":
            raise RuntimeError(self._no_training_message())
        self.build()

    def forward(self, lr: Tensor, gt_depth: Tensor | None = None) -> SVKRResult:
        return self.build()(lr, gt_depth=gt_depth)

    @staticmethod
    def _no_training_message() -> str:
        return ("SVKR has no trainable parameters of its own: it composes the trained stages. Train the stages "
                "(ssr fit --config configs/dkenet.yaml | nbsr.yaml | depth.yaml), then evaluate with "
                "ssr test --config configs/svkr.yaml.")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        raise RuntimeError(self._no_training_message())

    def configure_optimizers(self) -> Any:
        raise RuntimeError(self._no_training_message())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ssr"] = {"format": 2, "stage": self.stage, "model_class": None, "model_config": {}}

    # --- evaluation --------------------------------------------------------------------------------------------
    def _run(self, batch: dict[str, Any]) -> tuple[SVKRResult, dict[str, Tensor]]:
        result = self(batch["lr"], gt_depth=batch.get("depth"))
        return result, iteration_metrics(result, batch, self.hparams.scale)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, metrics = self._run(batch)
        for key, value in metrics.items():
            self.log(f"val/{key}", value.mean(), batch_size=value.shape[0], sync_dist=True)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._figure_rows = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        result, metrics = self._run(batch)
        self.record_test(metrics, batch.get("name"))
        self._keep_figure_rows(batch, result)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        result = self(batch["lr"], gt_depth=batch.get("depth"))
        return {"sr": result.final_image, "depth_lr": result.final_depth, "kernel": result.final_kernel}

    def _keep_figure_rows(self, batch: dict[str, Any], result: SVKRResult) -> None:
        """Keep the first ``num_figure_samples`` samples' iterates (on CPU) for the end-of-test figure."""
        need = self.hparams.num_figure_samples - len(self._figure_rows)
        names = batch.get("name")
        for i in range(min(need, batch["lr"].shape[0])):
            row = {"lr": batch["lr"][i], "hr": batch["hr"][i],
                   "depths": [d[i] for d in result.depths], "kernels": [k[i] for k in result.kernels],
                   "images": [m[i] for m in result.images]}
            if batch.get("depth_lr") is not None:
                row["gt_depth"] = batch["depth_lr"][i]
            if batch.get("kernel") is not None:
                row["gt_kernel"] = batch["kernel"][i]
            row = {k: ([x.detach().cpu() for x in v] if isinstance(v, list) else v.detach().cpu())
                   for k, v in row.items()}
            row["name"] = names[i] if names is not None else str(len(self._figure_rows))
            self._figure_rows.append(row)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self._figure_rows:
            self.write_figure(Path(self.trainer.log_dir or "."))

    def write_figure(self, out_dir: Path) -> Path:
        """Draw the kept samples as ``out_dir/svkr_iterations.png`` and log it to TensorBoard."""
        rows = self._figure_rows

        def stack(key: str) -> Tensor:
            return torch.stack([r[key] for r in rows])

        result = SVKRResult(
            depths=[torch.stack([r["depths"][t] for r in rows]) for t in range(len(rows[0]["depths"]))],
            kernels=[torch.stack([r["kernels"][t] for r in rows]) for t in range(len(rows[0]["kernels"]))],
            images=[torch.stack([r["images"][t] for r in rows]) for t in range(len(rows[0]["images"]))],
        )
        lr_up = F.interpolate(stack("lr"), size=rows[0]["hr"].shape[-2:], mode="nearest")
        fig = svkr_figure(lr_up, result, stack("hr"),
                          stack("gt_depth") if "gt_depth" in rows[0] else None,
                          stack("gt_kernel") if "gt_kernel" in rows[0] else None,
                          names=[r["name"] for r in rows])
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / FIGURE_NAME
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
        logger = self.logger
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("test/svkr_iterations", _figure_to_tensor(fig), global_step=self.global_step)
        rank_zero_info(f"SVKR figure -> {path}")
        return path
