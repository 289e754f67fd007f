"""Constructor-argument recording for networks, plus a self-describing save/load format.

The idea is diffusers' ``ConfigMixin`` without the dependency: a network records the arguments it was built
with, so a saved file holds everything needed to rebuild it (``{"class", "config", "state_dict"}``) and a
checkpoint can never be loaded into a differently-shaped network by accident.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["ConfigMixin", "init_args", "load_network", "save_network"]

N = TypeVar("N", bound=nn.Module)

# Names that ``locals()`` holds at the top of ``__init__`` but that are not constructor arguments.
_NOT_ARGS = {"self", "__class__"}


def init_args(frame_locals: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from ``locals()`` taken as the first statement of ``__init__``.

    ``**kwargs`` (if any) is flattened into the result so every entry is a real keyword argument.
    """
    args = {k: v for k, v in frame_locals.items() if k not in _NOT_ARGS}
    extra = args.pop("kwargs", None)
    if isinstance(extra, dict):
        args.update(extra)
    return args


class ConfigMixin:
    """Mixin giving a module a ``config`` dict of the keyword arguments that rebuild it.

    Usage (``locals()`` must be taken before any other local variable is created)::

        class Net(nn.Module, ConfigMixin):
            def __init__(self, width: int = 8) -> None:
                super().__init__()
                self.register_config(**init_args(locals()))
    """

    config: dict[str, Any]

    def register_config(self, **kwargs: Any) -> None:
        """Record ``kwargs`` as this network's config (deep-copied so later mutation cannot leak in)."""
        # object.__setattr__ keeps nn.Module's attribute routing out of it: the config is plain data.
        object.__setattr__(self, "config", copy.deepcopy(kwargs))


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def save_network(net: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``{"class", "config", "state_dict"}`` of a ``ConfigMixin`` network to ``path``; returns the path."""
    config = getattr(net, "config", None)
    if not isinstance(config, dict):
        raise TypeError(
            f"{type(net).__name__} has no recorded config; derive from ConfigMixin and call register_config"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Tensors go to CPU so the file loads on machines without the training device.
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"class": _class_name(type(net)), "config": config, "state_dict": state}, path)
    return path


def load_network(cls: type[N], path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> N:
    """Rebuild a network of type ``cls`` from a file written by :func:`save_network`.

    Raises ``FileNotFoundError`` naming the path if it does not exist, and ``ValueError`` if the file holds a
    different network class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"network file not found: {path}")
    # weights_only: the payload is plain data + tensors, so refuse anything that would need unpickling code.
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path} is not a network file written by save_network")
    stored = payload.get("class")
    if stored is not None and stored.rsplit(".", 1)[-1] != cls.__qualname__.rsplit(".", 1)[-1]:
        raise ValueError(f"{path} holds a {stored}, not a {_class_name(cls)}")
    net = cls(**payload["config"])
    net.load_state_dict(payload["state_dict"])
    return net
