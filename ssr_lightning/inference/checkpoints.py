"""The one checkpoint policy: where a stage's checkpoints live, which one is used, how a ``.ckpt`` becomes a network.

Where: ``ssr fit`` writes ``<root>/<name>/version_N/checkpoints/`` (``root`` = ``runs``, ``name`` = the stage name
unless ``--name``), holding ``best.ckpt`` (best validation metric), ``last.ckpt`` (refreshed every
``fit.ckpt_every_n_steps``) and ``last.prev.ckpt`` (the ``last.ckpt`` before it). Every file is written to a temporary
file beside it and renamed, and only with finite weights (``modules/checkpointing.py``). The stages, their labels,
configs and network classes come from the one registry, :data:`ssr_lightning.registry.STAGES`.

Which: :func:`find_checkpoint` takes the newest version (highest ``N``) that has the wanted file:
``best`` (default for inference; falls back to ``last`` when a run has no validation yet), ``last`` (resuming; falls
back to ``last.prev.ckpt`` when a kill left no ``last.ckpt``) or ``newest`` (the most recently written ``.ckpt``).

How: :func:`read_checkpoint` loads a file with ``weights_only=True`` (never unpickling code), refuses one whose
hyper-parameters name a class that is not a registered network or stage module of this package
(:func:`check_class_paths`, before anything imports it) or whose weights are not finite (:func:`first_nonfinite`),
and checks it is a checkpoint of the expected stage; :func:`load_model` returns the stage's ready network in eval mode
(the EMA weights for the diffusion stage). Checkpoints of earlier formats (flat module options, sampling settings in
the diffusion model's config) are upgraded on read (:mod:`ssr_lightning.inference.legacy`). Every failure names the
file, the stage expected and, for a checkpoint of another stage, the stage found.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import ssr_lightning.diffusion  # noqa: F401 (registers LatentDiffusionSR, VAELatents)
import ssr_lightning.networks  # noqa: F401 (registers DKENet, KernelConditionedSR, DepthNet, CMOS)
from ssr_lightning.inference.legacy import FORMAT, upgrade
from ssr_lightning.registry import PACKAGE, STAGES, Stage, network_class, registered_path

__all__ = [
    "FORMAT", "LAST", "PACKAGE", "PREVIOUS", "STAGES", "CheckpointError", "Stage", "Which", "build_model",
    "check_class_paths", "checkpoint_stage", "find_checkpoint", "first_nonfinite", "load_model", "model_class",
    "read_checkpoint", "require_file", "resolve_checkpoint",
]

LAST, PREVIOUS = "last.ckpt", "last.prev.ckpt"  # the resume file and the one before it
# the instantiators LightningCLI records in hyper-parameters (never called here; allowed by name)
_INSTANTIATORS = {"lightning.pytorch.cli.instantiate_module"}
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
Which = Literal["best", "last", "newest"]
_VERSION = re.compile(r"version_(\d+)$")


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of the expected stage (corrupt, not a checkpoint, wrong stage)."""


def _label(stage: str | None) -> str:
    return STAGES[stage].label if stage in STAGES else (stage or "an ssr_lightning")


# --- where and which ----------------------------------------------------------------------------------------------
def _versions(run_dir: Path) -> list[Path]:
    """``version_N`` folders of a run, newest (highest N) first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("version_*") if (m := _VERSION.search(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def _pick(ckpt_dir: Path, which: Which) -> Path | None:
    if which == "newest":  # not the hidden temporary files of a save in progress
        files = sorted((p for p in ckpt_dir.glob("*.ckpt") if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
        return files[-1] if files else None
    names = ("best.ckpt", LAST) if which == "best" else (LAST, PREVIOUS)
    return next((ckpt_dir / n for n in names if (ckpt_dir / n).is_file()), None)


def find_checkpoint(name: str, root: str | os.PathLike[str] = "runs", which: Which = "best") -> Path | None:
    """The ``which`` checkpoint of the newest version of run ``<root>/<name>`` that has one, else None."""
    for version in _versions(Path(root) / name):
        found = _pick(version / "checkpoints", which)
        if found is not None:
            return found
    return None


def resolve_checkpoint(path: str | os.PathLike[str] | None, stage: str, which: Which = "best",
                       root: str | os.PathLike[str] = "runs") -> Path:
    """A checkpoint file from a file path, a run/version folder, or (``path=None``) the stage's default run.

    Raises ``FileNotFoundError`` naming what was looked for and the command that makes it.
    """
    info = STAGES.get(stage)
    hint = info.train_hint(stage) if info else f"ssr fit ... (stage {stage})"
    if path is None:
        found = find_checkpoint(stage, root, which)
        if found is None:
            raise FileNotFoundError(f"no {_label(stage)} checkpoint under {Path(root) / stage}/version_*/checkpoints: "
                                    f"train it first ({hint}) or pass the path of a .ckpt")
        return found
    p = Path(path)
    if p.is_dir():
        ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        found = _pick(ckpt_dir, which) or find_checkpoint("", p, which)
        if found is None:
            raise FileNotFoundError(f"{p} holds no {which} {_label(stage)} checkpoint (looked for {which}.ckpt in "
                                    f"{ckpt_dir} and in version_*/checkpoints); pass a .ckpt file")
        return found
    return require_file(p, stage)


def require_file(path: str | os.PathLike[str] | None, stage: str) -> Path:
    """``Path(path)`` if it is a file, else ``FileNotFoundError`` naming it and the command that makes it."""
    info = STAGES.get(stage)
    if path is None or not Path(path).is_file():
        hint = info.train_hint(stage) if info else "ssr fit ..."
        raise FileNotFoundError(f"{_label(stage)} checkpoint not found: {path}. Train that stage first ({hint}), "
                                "or pass the path of an existing best.ckpt/last.ckpt.")
    return Path(path)


# --- reading ------------------------------------------------------------------------------------------------------
def checkpoint_stage(ckpt: dict[str, Any]) -> str | None:
    """The stage a (format-2) checkpoint dict belongs to."""
    meta = ckpt.get("ssr")
    return meta.get("stage") if isinstance(meta, dict) else None


def _class_paths(value: Any, where: str) -> list[tuple[str, Any]]:
    """``(key, value)`` of every ``class_path``/``_class_path``/``_instantiator`` entry in nested hyper-parameters."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}"
            if key in ("class_path", "_class_path", "_instantiator"):
                found.append((here, item))
            found += _class_paths(item, here)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += _class_paths(item, f"{where}[{i}]")
    return found


def _allowed(section: str, key: str, value: Any) -> bool:
    if not isinstance(value, str) or _DOTTED.fullmatch(value) is None:
        return False
    if key.endswith("_instantiator"):
        return value in _INSTANTIATORS
    if section == "hyper_parameters":  # what `ssr test/fit --ckpt_path` rebuilds: registered classes only
        return registered_path(value)
    return value.startswith(PACKAGE)  # the data module's class path is recorded, never resolved


def check_class_paths(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse a checkpoint whose hyper-parameters name a class that is not a registered network or stage module of
    ``ssr_lightning`` (:func:`ssr_lightning.registry.registered_path`): LightningCLI would import it (running that
    module's code) to rebuild the model. Nothing is imported here."""
    for section in ("hyper_parameters", "datamodule_hyper_parameters"):
        for key, value in _class_paths(ckpt.get(section), section):
            if not _allowed(section, key, value):
                where = "a class outside ssr_lightning" if not str(value).startswith(PACKAGE) else (
                    "not a registered network or stage module of ssr_lightning")
                raise CheckpointError(f"{path}: refused: its {key} is {str(value)[:120]!r}, {where} (importing it "
                                      "could run any code). Only checkpoints written by `ssr fit` are accepted")


def _tensors(value: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{where}[{i}]")


def first_nonfinite(ckpt: dict[str, Any]) -> str | None:
    """The name of the first weight, EMA weight or optimiser-state tensor holding NaN or inf, else None: the one
    finite-weights guard, used on every checkpoint save and load."""
    for section in ("state_dict", "ema", "optimizer_states"):
        for name, tensor in _tensors(ckpt.get(section), ""):
            if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
                return f"{section}: {name}" if section != "state_dict" else name
    return None


def read_checkpoint(path: str | os.PathLike[str], stage: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``, upgraded to the current format, of stage ``stage``; refused
    (``CheckpointError`` naming the file) when it names a class outside this package or holds non-finite weights."""
    p = require_file(path, stage or "checkpoint")
    expected = f"{'a ' + _label(stage) if stage else 'an ssr_lightning'} checkpoint"
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{p}: refused to load: it holds Python objects that only code execution could rebuild "
            f"({str(err).splitlines()[0][:160]}). Only checkpoints written by `ssr fit` are accepted; expected "
            f"{expected}."
        ) from None
    except Exception as err:  # noqa: BLE001 - any other failure to unpickle means a corrupt or foreign file
        raise CheckpointError(
            f"{p}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:160]}); the file is "
            f"truncated or corrupt. Expected {expected}: use the run's last.prev.ckpt or best.ckpt, or retrain."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p}: not a Lightning checkpoint (no state_dict); expected {expected} written by "
                              "`ssr fit`")
    check_class_paths(ckpt, p)
    ckpt = upgrade(ckpt, p)
    found = checkpoint_stage(ckpt)
    if stage is not None and found != stage:
        raise CheckpointError(f"{p} is a checkpoint of stage '{found or 'unknown'}' ({_label(found)}), but a "
                              f"'{stage}' ({_label(stage)}) checkpoint is expected here: pass the {_label(stage)} "
                              "checkpoint")
    bad = first_nonfinite(ckpt)
    if bad is not None:
        raise CheckpointError(f"{p}: refused: its weights are not finite ({bad} holds NaN or inf; training had "
                              "diverged). Use an earlier checkpoint of the run (last.prev.ckpt, best.ckpt) or retrain "
                              "with a lower learning rate")
    return ckpt


def model_class(name: str) -> type[nn.Module]:
    """The registered network class a checkpoint's ``ssr.model_class`` names (:data:`STAGES`); CheckpointError for
    any other name."""
    try:
        return network_class(str(name))
    except LookupError as err:
        raise CheckpointError(f"unknown model class in checkpoint: {err}") from None


def build_model(ckpt: dict[str, Any], ema: bool = True) -> nn.Module:
    """Rebuild the network of a (format-2) checkpoint dict and load its weights (EMA ones if present and ``ema``)."""
    meta = ckpt["ssr"]
    bad = first_nonfinite({"state_dict": ckpt["state_dict"], "ema": ckpt.get("ema") if ema else None})
    if bad is not None:
        raise CheckpointError(f"refused: the checkpoint's weights are not finite ({bad} holds NaN or inf)")
    model = model_class(meta["model_class"]).from_config(dict(meta["model_config"]))
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    # A frozen pretrained backbone is not saved in the checkpoint: it comes from its pretrained_path.
    strict = not meta["model_config"].get("pretrained_path")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise CheckpointError(f"checkpoint weights do not match {meta['model_class']}{dict(meta['model_config'])}: "
                              f"{detail}") from None
    if unexpected or (strict and missing):
        raise CheckpointError(f"checkpoint weights do not match {meta['model_class']}: missing {missing[:4]} "
                              f"({len(missing)}), unexpected {unexpected[:4]} ({len(unexpected)})")
    shadow = (ckpt.get("ema") or {}).get("shadow") if ema else None
    if shadow:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in shadow.items():
                params[name].copy_(value)
    return model


def load_model(path: str | os.PathLike[str], stage: str, map_location: str | torch.device = "cpu",
               ema: bool = True) -> nn.Module:
    """The ready network (eval mode, no gradients) of a stage checkpoint: see :data:`STAGES` for the classes."""
    ckpt = read_checkpoint(path, stage, map_location)
    try:
        model = build_model(ckpt, ema)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return model.eval().requires_grad_(False)
