"""The one registry of SSR's stages (BasicSR's registry decorator is the model): name, label, config, classes.

Each stage's network class registers itself where it is defined::

    @register_stage("dkenet", label="DKENet (KE)", config="configs/dkenet.yaml", module="DKENetModule")
    class DKENet(ModelMixin, ConfigMixin): ...

and everything that used to keep a table of stages reads :data:`STAGES` instead: the checkpoint policy (labels,
"train it with" hints, the class a checkpoint's ``ssr.model_class`` names), the first-format upgrade (which stage a
``DKENetModule`` checkpoint belongs to), the stage modules (their ``stage`` attribute), ``ssr`` (the default run name)
and ``ssr-frontend`` (the config that trains a stage).

Only registered classes can ever be resolved from a checkpoint: :func:`network_class` looks a name up here and
imports nothing, and :func:`registered_path` says whether a dotted ``class_path`` names a registered network or
stage module of this package (``inference/checkpoints.check_class_paths`` refuses every other one).

A leaf module: it imports no project module, so ``networks/`` and ``diffusion/`` stay Lightning-free. The entries
exist once the registering modules are imported (``ssr_lightning.inference.checkpoints`` imports them all).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["PACKAGE", "STAGES", "Stage", "class_path", "network_class", "register_stage", "registered_path",
           "stage_of_module"]

PACKAGE = "ssr_lightning."  # the only package a checkpoint may name classes of
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Stage:
    """One stage: its checkpoint name, label, training config, network class and the LightningModule that trains it."""

    name: str
    """Checkpoint stage and default run name (``runs/<name>/version_N``)."""
    label: str
    """How messages name it."""
    config: str
    """The config that trains (or, without weights, evaluates) it, relative to the repository root."""
    module: str
    """Class name of its LightningModule in ``ssr_lightning.modules``."""
    network: type
    """The registered class: what ``load_model`` rebuilds (a stage without weights: the class it runs)."""
    weights: bool = True
    """Whether its checkpoints hold this network (False: SVKR, built from other stages' checkpoints)."""

    @property
    def model_class(self) -> str:
        """The name a checkpoint's ``ssr.model_class`` records."""
        return self.network.__name__

    def train_hint(self, run: str | None = None) -> str:
        return f"ssr fit --config {self.config}  (-> runs/{run or self.name}/version_N/checkpoints/best.ckpt)"


STAGES: dict[str, Stage] = {}


def register_stage(name: str, *, label: str, config: str, module: str,
                   weights: bool = True) -> Callable[[T], T]:
    """Class decorator: register ``cls`` as the network of stage ``name`` (see :class:`Stage` for the fields)."""

    def decorate(cls: T) -> T:
        if not cls.__module__.startswith(PACKAGE):
            raise ValueError(f"register_stage: {cls.__module__}.{cls.__qualname__} is not a class of ssr_lightning")
        known = STAGES.get(name)
        if known is not None and known.network.__qualname__ != cls.__qualname__:
            raise ValueError(f"stage {name!r} is registered twice: {known.network.__qualname__} and {cls.__qualname__}")
        STAGES[name] = Stage(name, label, config, module, cls, weights)
        return cls

    return decorate


def stage_of_module(class_name: str) -> Stage | None:
    """The stage a LightningModule class (by name, e.g. ``"DKENetModule"``) trains, or None."""
    return next((s for s in STAGES.values() if s.module == class_name), None)


def network_class(name: str) -> type:
    """The registered network class a checkpoint names (``ssr.model_class``, a class name or a dotted path).

    ``LookupError`` for a class that is not a registered network with weights: nothing is imported for it.
    """
    short = name.rsplit(".", 1)[-1]
    for s in STAGES.values():
        if s.weights and s.model_class == short and ("." not in name or _names(s.network, name)):
            return s.network
    known = ", ".join(sorted(s.model_class for s in STAGES.values() if s.weights))
    raise LookupError(f"{name!r} is not a registered network of ssr_lightning (known: {known})")


def registered_path(path: Any) -> bool:
    """Whether ``path`` is a dotted class path of this package naming a registered network or stage module (the
    module or any package above it that re-exports the class: ``ssr_lightning.networks.DKENet``,
    ``ssr_lightning.networks.dkenet.DKENet``, ``ssr_lightning.modules.DKENetModule``). Nothing is imported."""
    if not isinstance(path, str) or _DOTTED.fullmatch(path) is None or not path.startswith(PACKAGE):
        return False
    where, _, short = path.rpartition(".")
    for s in STAGES.values():
        if s.model_class == short and _names(s.network, path):
            return True
        if s.module == short and where.startswith(PACKAGE + "modules"):
            return True
    return False


def _names(cls: type, path: str) -> bool:
    """``path`` is ``cls``'s defining module + name, or a package above that module + name."""
    where, _, short = path.rpartition(".")
    return short == cls.__name__ and (cls.__module__ == where or cls.__module__.startswith(where + "."))


def class_path(cls: type) -> str:
    """The shortest import path of a registered class: the highest package that re-exports it
    (``ssr_lightning.networks.DKENet`` rather than ``ssr_lightning.networks.dkenet.DKENet``)."""
    parts = cls.__module__.split(".")
    for i in range(2, len(parts) + 1):
        package = sys.modules.get(".".join(parts[:i]))
        if package is not None and getattr(package, cls.__name__, None) is cls:
            return f"{'.'.join(parts[:i])}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__name__}"
