"""What every stage's LightningModule shares: the fit arguments, the LR schedule, checkpoints, image grids, test reports.

A stage module is thin (lightning-hydra-template style): it is given its built network as ``net`` (a Lightning-free
object from ``networks/`` or ``diffusion/``; in a config, ``model.init_args.net`` with the network's ``class_path``
and ``init_args``, its ``register_to_config`` arguments), holds it as ``self.model`` and adds the optimiser, schedule,
losses, logging and the stage's own loads. Its stage name comes from the registry (``ssr_lightning.registry``).
Its checkpoints carry an ``ssr`` block (stage, model class, model config: the same schema as ``net``) so that
``ssr_lightning.inference.load_model`` rebuilds the network without this class (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from ssr_lightning.files import atomic_write_json
from ssr_lightning.inference.checkpoints import FORMAT
from ssr_lightning.inference.legacy import upgrade
from ssr_lightning.modules.checkpointing import (
    BestCheckpoint,
    KeepPreviousCheckpoint,
    TrainingError,
    check_loss,
)
from ssr_lightning.registry import class_path, network_class, stage_of_module
from ssr_lightning.visualize import Panel, labelled_grid

__all__ = ["FitConfig", "KeepPreviousCheckpoint", "StageModule", "TrainingError", "as_config", "as_network",
           "network_config"]

C = TypeVar("C")
N = TypeVar("N", bound=torch.nn.Module)


@dataclass
class FitConfig:
    """Training arguments every stage shares: Adam, linear warm-up then cosine decay, checkpoints, logged images."""

    learning_rate: float = 2e-4
    """Adam learning rate after warm-up."""
    min_learning_rate: float = 1e-6
    """Floor of the cosine schedule."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    ckpt_every_n_steps: int = 100
    """How often last.ckpt is refreshed during training (the one before it is kept as last.prev.ckpt)."""
    num_log_images: int = 4
    """Samples shown in the TensorBoard grids at each validation."""


def as_config(cls: type[C], value: Any) -> C:
    """``value`` as a ``cls`` dataclass: an instance passes, a mapping (checkpoint hparams) is converted."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**dict(value))
    if value is None:
        return cls()
    if dataclasses.is_dataclass(value):
        return cls(**dataclasses.asdict(value))
    return cls(**vars(value))


def as_network(value: Any, cls: type[N]) -> N:
    """``net`` as a ``cls``: a built network passes; ``{"class_path", "init_args"}`` (the block a config or a
    checkpoint's hyper-parameters hold, as ``load_from_checkpoint`` passes it) is built through the registry, which
    resolves only registered classes of this package."""
    if isinstance(value, Mapping) and "class_path" in value:
        value = network_class(str(value["class_path"]))(**dict(value.get("init_args") or {}))
    if not isinstance(value, cls):
        raise TypeError(f"net must be a {cls.__name__} (or its class_path/init_args), got {type(value).__name__}")
    return value


def _plain(value: Any) -> Any:
    """Hyper-parameter values as plain data (dataclasses → dicts, a network → its ``class_path``/``init_args``), so
    checkpoints load with weights_only=True."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json.loads(json.dumps(dataclasses.asdict(value)))
    if isinstance(value, torch.nn.Module) and hasattr(value, "config"):
        return {"class_path": class_path(type(value)), "init_args": network_config(value)}
    return value


def network_config(net: Any) -> dict[str, Any]:
    """The plain config that rebuilds ``net`` (its diffusers ``register_to_config`` arguments)."""
    return json.loads(json.dumps({k: v for k, v in net.config.items() if not k.startswith("_")}))


class FitTiming(Callback):
    """Writes ``fit_timing.json`` (wall seconds, process CPU seconds over all threads, steps, threads) into the
    run folder when a fit ends: the budget figures of the records (results/README.md), comparable across machine loads (CPU
    seconds barely change when other jobs share the cores; wall seconds do)."""

    def on_fit_start(self, trainer: Any, pl_module: LightningModule) -> None:
        self._t0 = (time.perf_counter(), time.process_time(), int(trainer.global_step))

    def on_fit_end(self, trainer: Any, pl_module: LightningModule) -> None:
        t0 = getattr(self, "_t0", None)
        if t0 is None or not trainer.is_global_zero or trainer.log_dir is None:
            return
        atomic_write_json(Path(trainer.log_dir) / "fit_timing.json", {
            "wall_s": round(time.perf_counter() - t0[0], 1), "cpu_s": round(time.process_time() - t0[1], 1),
            "steps": int(trainer.global_step) - t0[2], "threads": torch.get_num_threads(),
            "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        })


class StageModule(LightningModule):
    """Base class of the stage modules.

    Subclasses set ``monitor``/``monitor_mode`` (the validation metric that picks ``best.ckpt``) and
    ``self.model`` (the ``net`` they are given); their ``stage`` (the checkpoint's stage name) is the registry's entry
    whose ``module`` is the class's name. They call :meth:`save_stage_hparams` first in ``__init__``, call
    ``self.record_test(metrics_per_sample, names)`` from ``test_step`` and may use :meth:`log_grid`.
    """

    stage: str = "stage"
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    fit_args: FitConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        registered = stage_of_module(cls.__name__)
        if registered is not None:
            cls.stage = registered.name

    def __init__(self) -> None:
        super().__init__()
        self._test_rows: list[dict[str, Any]] = []
        self.fit_args = FitConfig()

    def save_stage_hparams(self) -> None:
        """``save_hyperparameters`` of the subclass's ``__init__`` arguments, with argument groups as plain dicts and
        the network as ``{"class_path", "init_args"}``: its complete config, the block a config's ``net:`` holds."""
        frame = inspect.currentframe()
        assert frame is not None and frame.f_back is not None
        net = frame.f_back.f_locals.get("net")
        self.save_hyperparameters(frame=frame.f_back, ignore=["net"])
        if net is not None:  # the built network's own config (a config's `net:` may leave arguments out)
            self.hparams["net"] = net
        for key in list(self.hparams):
            self.hparams[key] = _plain(self.hparams[key])
        if "fit" in self.hparams:
            self.fit_args = as_config(FitConfig, self.hparams["fit"])

    # --- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        f = self.fit_args
        opt = torch.optim.Adam(params, lr=f.learning_rate)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup, base, floor = f.warmup_steps, f.learning_rate, f.min_learning_rate

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = min((step - warmup) / max(total - warmup, 1), 1.0)
            return (floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t))) / base

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self) -> list[Callback]:
        # One callback keeps `last.ckpt` fresh during training (so a killed run loses at most N steps),
        # the other keeps the best checkpoint by the stage's validation metric; both write atomically, finite
        # weights only, and update their own files on resume (modules/checkpointing.py).
        periodic = KeepPreviousCheckpoint(filename="step{step}", save_last=True, save_top_k=0,
                                          every_n_train_steps=self.fit_args.ckpt_every_n_steps)
        best = BestCheckpoint(
            filename="best", monitor=self.monitor, mode=self.monitor_mode, save_top_k=1, auto_insert_metric_name=False
        )
        callbacks: list[Callback] = [periodic, best, FitTiming()]
        if self.logger is not None:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return callbacks

    def on_before_backward(self, loss: Tensor) -> None:
        check_loss(loss, self.global_step)  # a NaN/inf loss stops training before it reaches the weights

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def model_config(self) -> dict[str, Any]:
        """The plain config that rebuilds ``self.model`` (its diffusers ``register_to_config`` arguments)."""
        return network_config(self.model)

    def setup(self, stage: str) -> None:
        # data.scale reaches the network through `ssr`'s argument link; a module built in Python is checked here
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        net_config = getattr(getattr(self, "model", None), "config", None) or {}
        data_scale, net_scale = getattr(dm, "scale", None), net_config.get("scale")
        if isinstance(data_scale, int) and isinstance(net_scale, int) and data_scale != net_scale:
            raise ValueError(f"data.scale is {data_scale} but model.init_args.net.init_args.scale is {net_scale}: "
                             "make them agree (`ssr` sets the network's scale from data.scale)")

    def checkpoint_metadata(self) -> dict[str, Any]:
        """The ``ssr`` block of this stage's checkpoints (subclasses may add entries)."""
        return {"format": FORMAT, "stage": self.stage, "model_class": type(self.model).__name__,
                "model_config": self.model_config()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ssr"] = self.checkpoint_metadata()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming a checkpoint of the first format: rename its weights in place before Lightning loads them.
        upgraded = upgrade(checkpoint)
        checkpoint["state_dict"] = upgraded["state_dict"]
        if "ema" in upgraded:
            checkpoint["ema"] = upgraded["ema"]

    # --- TensorBoard images -------------------------------------------------------------------------------------
    def log_grid(self, tag: str, columns: list[Panel | Tensor], max_rows: int = 4,
                 names: list[str] | None = None) -> None:
        """Log one labelled image grid (:func:`~ssr_lightning.visualize.labelled_grid`): rows are samples.

        Columns are :class:`~ssr_lightning.visualize.Panel`s (``Panel.map(...)`` for heat maps: a colour bar with
        its unit is drawn) or plain ``(B, 3, h, w)`` tensors, titled by the tag's ``a|b|c`` parts.
        """
        logger = self.logger
        if not isinstance(logger, TensorBoardLogger) or self.trainer.sanity_checking:
            return
        titles = tag.rsplit("/", 1)[-1].split("|")
        panels = [c if isinstance(c, Panel) else Panel(titles[i] if i < len(titles) else f"column {i}", c)
                  for i, c in enumerate(columns)]
        grid = labelled_grid(panels, max_rows=max_rows, names=[str(n) for n in names] if names else None,
                             title=f"{self.stage}, step {self.global_step}")
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
        path = atomic_write_json(out_dir / "test_metrics.json", report)
        self.print(f"test metrics -> {path}: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))
