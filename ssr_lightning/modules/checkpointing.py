"""How a stage's checkpoints reach the disk: atomically, with finite weights only, and in place on resume.

- :class:`RunCheckpointIO` (a Lightning ``CheckpointIO``) is the one writer and reader. Every save passes the
  finite-weights guard (:func:`~ssr_lightning.inference.checkpoints.first_nonfinite`) and goes through
  :func:`~ssr_lightning.files.atomic_write` (a temporary file beside the target, then a rename); a new ``last.ckpt``
  keeps the one before it as ``last.prev.ckpt`` only once it is complete. A failed write (a full disk) leaves the
  old files as they were and stops training with a :class:`TrainingError`. Every load goes through
  :func:`~ssr_lightning.inference.checkpoints.read_checkpoint` (``weights_only=True``, class paths and finite
  weights checked).
- :class:`KeepPreviousCheckpoint` (``last.ckpt`` every ``fit.ckpt_every_n_steps``) and :class:`BestCheckpoint`
  (``best.ckpt`` by the stage's metric) install that writer, never write ``-vN`` copies, and on resume update their
  own files: the paths a checkpoint recorded are mapped into this run's folder (whatever the working directory or
  the spelling of ``--root``), and ``best.ckpt`` is replaced only by a better score than the one it holds.
- :func:`check_loss` stops training at the first non-finite loss, before the optimiser step.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from ssr_lightning.files import atomic_write
from ssr_lightning.inference.checkpoints import (
    LAST,
    PREVIOUS,
    first_nonfinite,
    read_checkpoint,
)

__all__ = ["BestCheckpoint", "KeepPreviousCheckpoint", "RunCheckpointIO", "TrainingError", "check_loss"]


_ADVICE = ("Start a new run with a lower --model.init_args.fit.learning_rate or more "
           "--model.init_args.fit.warmup_steps")


class TrainingError(RuntimeError):
    """Failed work (divergence, non-finite weights, a checkpoint that could not be written): one line, exit 1."""


def check_loss(loss: Tensor, step: int) -> None:
    """Raise :class:`TrainingError` naming ``step`` when ``loss`` is NaN or infinite."""
    if not bool(torch.isfinite(loss.detach()).all()):
        value = float(loss.detach().float().flatten()[0]) if loss.numel() else math.nan
        raise TrainingError(f"training diverged: the loss is {value} at step {step}; stopped before the optimiser "
                            f"step, so the run's checkpoints keep the last finite weights. {_ADVICE}")


def _write_file(path: Path, data: memoryview) -> None:
    with path.open("wb") as fh:
        fh.write(data)


class RunCheckpointIO(TorchCheckpointIO):
    """Saves atomically and only finite weights (``last.ckpt`` keeps its predecessor); loads through
    ``read_checkpoint``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        bad = first_nonfinite(checkpoint)
        if bad is not None:
            raise TrainingError(f"training diverged: the weights are not finite at step {checkpoint.get('global_step')} "
                                f"({bad} holds NaN or inf), so {target} was not written; the run's checkpoints keep "
                                f"the last finite weights. {_ADVICE}")
        previous = target.with_name(PREVIOUS) if target.name == LAST else None
        # serialised in memory first (as Lightning's own writer does): torch's zip writer reports a full disk as a
        # RuntimeError mid-file, Python's file write as OSError(ENOSPC)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            atomic_write(target, lambda tmp: _write_file(tmp, buffer.getbuffer()), previous=previous)
        except OSError as err:
            raise TrainingError(f"cannot write {target}: {err.strerror or err}; the checkpoints already there are "
                                "intact. Free space (or make the folder writable), then resume with --ckpt_path last"
                                ) from None

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


class _RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes through :class:`RunCheckpointIO` and keeps its file names on resume."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(enable_version_counter=False, **kwargs)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # the stock writer only: a user's own CheckpointIO plugin (async, remote) is left alone
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = RunCheckpointIO()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resuming the same run (its ``<name>/version_N/checkpoints`` folder, however ``--root`` is spelled now), the
        paths recorded at save time name this folder: Lightning's own rule compares the spelling, drops the scores
        and writes ``best-v1.ckpt``/``last-v1.ckpt`` beside the run's files. Another run's state is dropped, as
        Lightning does."""
        state = dict(state_dict)
        recorded = state.get("dirpath")
        if self.dirpath and recorded and _same_folder(Path(recorded), Path(self.dirpath)):
            here = Path(self.dirpath)

            def moved(p: Any) -> Any:
                return str(here / Path(p).name) if p else p

            state["dirpath"] = self.dirpath
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state:
                    state[key] = moved(state[key])
            if isinstance(state.get("best_k_models"), dict):
                state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
        super().load_state_dict(state)


def _same_folder(recorded: Path, here: Path) -> bool:
    """``recorded`` and ``here`` are one run's checkpoint folder: the same path, or the same last three parts
    (``<name>/version_N/checkpoints``) under a root spelled differently (relative, absolute, moved)."""
    return recorded.absolute() == here.absolute() or recorded.parts[-3:] == here.absolute().parts[-3:]


class KeepPreviousCheckpoint(_RunCheckpoint):
    """``last.ckpt`` every N steps; the one before it stays as ``last.prev.ckpt`` (see :class:`RunCheckpointIO`)."""


class BestCheckpoint(_RunCheckpoint):
    """``best.ckpt`` by the stage's validation metric; on resume it is replaced only by a better score than its own."""

    @property
    def state_key(self) -> str:
        # the key of a plain ModelCheckpoint, as runs written before this class recorded it
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        best = Path(self.dirpath or ".") / f"{self.filename}{self.FILE_EXTENSION}"
        score = self._recorded_score(best)
        if score is not None:  # the score the existing best.ckpt was saved with is the one to beat
            self.best_model_path = self.kth_best_model_path = str(best)
            self.best_model_score = self.kth_value = score
            self.best_k_models = {str(best): score}

    def _recorded_score(self, path: Path) -> Tensor | None:
        """The ``best_model_score`` stored in ``path`` by this callback (None: no file, unreadable, other metric)."""
        if not path.is_file():
            return None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            score = ckpt["callbacks"][self.state_key]["best_model_score"]
        except Exception:  # noqa: BLE001 - a file we cannot read sets no bar; read_checkpoint reports it when used
            return None
        if not isinstance(score, Tensor) or not bool(torch.isfinite(score).all()):
            return None
        return score
