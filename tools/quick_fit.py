"""The bare training loop of the tools' one-off experiments (depth, KE, NBSR oracle gap): no logger, no checkpoints,
no validation, in a temporary run folder (so `runs/` is never touched). Returns the wall seconds of the fit."""

from __future__ import annotations

import tempfile
import time

import lightning as L


def quick_fit(module: L.LightningModule, datamodule: L.LightningDataModule, steps: int) -> float:
    """Fit ``module`` for ``steps`` optimiser steps and leave it in eval mode; wall-clock seconds of the fit."""
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False,
                        default_root_dir=tempfile.mkdtemp(prefix="ssr_tool_"))
    t = time.time()
    trainer.fit(module, datamodule=datamodule)
    module.eval()
    return time.time() - t
