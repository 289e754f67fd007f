"""What every stage's LightningModule shares: checkpointing, the LR schedule, image grids and test reports."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchvision.utils import make_grid


class StageModule(LightningModule):
    """Base class of the stage modules.

    Subclasses set `monitor`/`monitor_mode` (the validation metric that picks `best.ckpt`), call
    `self.record_test(metrics_per_sample, names)` from `test_step`, and may use `log_grid` for TensorBoard.
    """

    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(self) -> None:
        # subclasses call `save_hyperparameters()` with at least lr, min_lr, warmup_steps and ckpt_every_n_steps
        super().__init__()
        self._test_rows: list[dict[str, Any]] = []

    # --- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.hparams.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup, base, floor = self.hparams.warmup_steps, self.hparams.lr, self.hparams.min_lr

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = min((step - warmup) / max(total - warmup, 1), 1.0)
            return (floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t))) / base

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self) -> list[Callback]:
        # One callback keeps `last.ckpt` fresh during training (so a killed run loses at most N steps),
        # the other keeps the best checkpoint by the stage's validation metric.
        every = self.hparams.ckpt_every_n_steps
        periodic = ModelCheckpoint(filename="step{step}", save_last=True, save_top_k=0, every_n_train_steps=every)
        best = ModelCheckpoint(
            filename="best", monitor=self.monitor, mode=self.monitor_mode, save_top_k=1, auto_insert_metric_name=False
        )
        callbacks: list[Callback] = [periodic, best]
        if self.logger is not None:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return callbacks

    # --- TensorBoard images -------------------------------------------------------------------------------------
    def log_grid(self, tag: str, columns: list[Tensor], max_rows: int = 4) -> None:
        """Log one image: rows are samples, columns the given `(B, 3, h, w)` tensors (resized to the largest)."""
        logger = self.logger
        if not isinstance(logger, TensorBoardLogger) or self.trainer.sanity_checking:
            return
        rows = min(max_rows, columns[0].shape[0])
        height = max(c.shape[-2] for c in columns)
        width = max(c.shape[-1] for c in columns)
        tiles = []
        for r in range(rows):
            for col in columns:
                img = col[r : r + 1].detach().float().clamp(0, 1)
                if img.shape[1] == 1:
                    img = img.expand(-1, 3, -1, -1)
                img = torch.nn.functional.interpolate(img, size=(height, width), mode="nearest")
                tiles.append(img[0].cpu())
        grid = make_grid(tiles, nrow=len(columns), padding=2, pad_value=1.0)
        logger.experiment.add_image(tag, grid, global_step=self.global_step)

    # --- test reports -------------------------------------------------------------------------------------------
    def record_test(self, metrics: dict[str, Tensor], names: list[str] | None = None) -> None:
        """Keep per-sample test metrics; `on_test_epoch_end` logs their means and writes `test_metrics.json`."""
        batch = next(iter(metrics.values())).shape[0]
        for i in range(batch):
            row = {k: float(v[i]) for k, v in metrics.items()}
            if names is not None:
                row["name"] = names[i]
            self._test_rows.append(row)

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_test_epoch_end(self) -> None:
        if not self._test_rows:
            return
        keys = [k for k in self._test_rows[0] if k != "name"]
        summary = {k: sum(r[k] for r in self._test_rows) / len(self._test_rows) for k in keys}
        for k, v in summary.items():
            self.log(f"test/{k}", v, sync_dist=True)
        out_dir = Path(self.trainer.log_dir or ".")
        out_dir.mkdir(parents=True, exist_ok=True)
        report = {"summary": summary, "num_samples": len(self._test_rows), "per_sample": self._test_rows,
                  "hparams": {k: v for k, v in self.hparams.items() if isinstance(v, (int, float, str, bool, type(None)))}}
        path = out_dir / "test_metrics.json"
        path.write_text(json.dumps(report, indent=2))
        self.print(f"test metrics -> {path}: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))
