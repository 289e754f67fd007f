"""The bare training loop of the tools' one-off experiments (depth, KE, NBSR oracle gap): no logger, no checkpoints,
no validation, in a temporary run folder (so `runs/` is never touched). Returns the wall seconds of the fit.

:func:`stage_module` builds a stage module from a tool spec's flat options (the network's and the module's together,
as the specs have always named them) the way a config does: ``Module(net=Network(...), ...)``."""

from __future__ import annotations

import inspect
import tempfile
import time
from typing import Any

import lightning as L


def stage_module(module_cls: type, net_cls: type, net_defaults: dict[str, Any] | None = None,
                 **options: Any) -> L.LightningModule:
    """``module_cls(net=net_cls(**network options), **module options)``: ``options`` that are ``net_cls``'s arguments
    build the network (over ``net_defaults``, the tool's own sizes), the rest go to the module."""
    params = set(inspect.signature(net_cls.__init__).parameters) - {"self"}
    net = {**(net_defaults or {}), **{k: options.pop(k) for k in list(options) if k in params}}
    return module_cls(net=net_cls(**net), **options)


def quick_fit(module: L.LightningModule, datamodule: L.LightningDataModule, steps: int) -> float:
    """Fit ``module`` for ``steps`` optimiser steps and leave it in eval mode; wall-clock seconds of the fit."""
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False,
                        default_root_dir=tempfile.mkdtemp(prefix="ssr_tool_"))
    t = time.time()
    trainer.fit(module, datamodule=datamodule)
    module.eval()
    return time.time() - t
