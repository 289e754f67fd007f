"""Depth estimators (DE, docs/DESIGN.md §3): one interface, four sources of depth.

Every estimator maps an image ``(B, 3, H, W)`` in [0, 1] to a depth map ``(B, 1, H, W)`` of the *same* size in
the project convention (docs/ARCHITECTURE.md): [0, 1], **0 = nearest, 1 = farthest**. Only *relative* depth is
required: SSR uses depth as a condition (DKENet's SFT branch, the diffusion depth encoder), both of which see
depth normalised per image, so any affine-invariant estimate (MiDaS/DPT disparity, the project's DepthNet) is
enough; outputs are normalised per image with a robust min/max (quantiles) to fill [0, 1].

- :class:`GroundTruthDepth`: the data set's depth, resized to the image (the oracle rows of Table 2).
- :class:`LearnedDepth`: the project's :class:`~ssr_lightning.networks.depthnet.DepthNet` trained by
  ``ssr fit --config configs/depth.yaml``.
- :class:`MiDaSAdapter`: MiDaS v3.1 DPT checkpoints (``dpt_beit_large_512.pt`` ...) given as a local file.
- :class:`DPTAdapter`: a local HuggingFace folder for ``transformers.DPTForDepthEstimation`` (Intel/dpt-large,
  Intel/dpt-hybrid-midas, Intel/dpt-beit-*, Intel/dpt-swinv2-*).

Nothing downloads weights: a missing path raises ``FileNotFoundError`` naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssr_lightning.networks.depth_maps import normalize_depth_map, resize_depth
from ssr_lightning.networks.depthnet import DepthNet
from ssr_lightning.networks.midas import MIDAS_PRESETS, MiDaSDPT

__all__ = [
    "MIDAS_PRESETS",
    "DPTAdapter",
    "DepthEstimator",
    "GroundTruthDepth",
    "LearnedDepth",
    "MiDaSAdapter",
    "MiDaSDPT",
    "build_depth_estimator",
    "normalize_depth_map",
    "resize_depth",
]

def _check_image(image: Tensor) -> None:
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"depth estimators expect RGB images (B, 3, H, W), got {tuple(image.shape)}")


class DepthEstimator(nn.Module):
    """Interface: ``forward(image (B,3,H,W) in [0,1]) -> depth (B,1,H,W) in [0,1], 0 = nearest``.

    Subclasses implement :meth:`estimate` (raw relative depth, larger = farther, any size and affine scale);
    ``forward`` resizes it to the image and normalises it per image. ``gt_depth`` is accepted by every
    estimator so callers can pass the batch's depth uniformly; only :class:`GroundTruthDepth` uses it.
    """

    def __init__(self, quantile: float = 0.01) -> None:
        super().__init__()
        self.quantile = quantile

    def estimate(self, image: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, image: Tensor, gt_depth: Tensor | None = None) -> Tensor:
        _check_image(image)
        raw = self.estimate(image)
        raw = resize_depth(raw.float(), image.shape[-2:])
        return normalize_depth_map(raw, self.quantile)


class GroundTruthDepth(DepthEstimator):
    """The data set's depth, resized to the image (``[::s, ::s]`` for an exact LR factor, else bilinear).

    GT depth already obeys the convention, so it is only clamped to [0, 1] unless ``normalize=True``.
    """

    def __init__(self, normalize: bool = False, quantile: float = 0.0) -> None:
        super().__init__(quantile)
        self.normalize = normalize

    def forward(self, image: Tensor, gt_depth: Tensor | None = None) -> Tensor:
        _check_image(image)
        if gt_depth is None:
            raise ValueError("GroundTruthDepth needs gt_depth (the batch's 'depth'); this data has none")
        if gt_depth.dim() == 3:
            gt_depth = gt_depth.unsqueeze(1)
        depth = resize_depth(gt_depth.float(), image.shape[-2:])
        return normalize_depth_map(depth, self.quantile) if self.normalize else depth.clamp(0.0, 1.0)


class _FrozenNet(DepthEstimator):
    """Holds a network ``self.net``; frozen (eval mode, no grads) unless ``freeze=False``."""

    net: nn.Module

    def _setup(self, net: nn.Module, freeze: bool) -> None:
        self.net = net
        self.frozen = freeze
        if freeze:
            net.requires_grad_(False)
            net.eval()

    def train(self, mode: bool = True) -> _FrozenNet:
        # A frozen estimator stays in eval mode even when the LightningModule that owns it goes to train mode.
        super().train(mode)
        if self.frozen:
            self.net.eval()
        return self


class LearnedDepth(_FrozenNet):
    """The project's :class:`DepthNet`, trained with the scale-and-shift-invariant loss (``DepthModule``)."""

    def __init__(self, net: DepthNet, freeze: bool = True, quantile: float = 0.01) -> None:
        super().__init__(quantile)
        self._setup(net, freeze)

    def estimate(self, image: Tensor) -> Tensor:
        return self.net(image)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], freeze: bool = True) -> LearnedDepth:
        """The DepthNet of a ``DepthModule`` checkpoint (``ssr fit --config configs/depth.yaml``)."""
        from ssr_lightning.inference.checkpoints import load_model

        return cls(load_model(path, "depth"), freeze=freeze)


def _load_state(path: Path) -> dict[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "optimizer" in state and "model" in state:  # MiDaS training checkpoints
        state = state["model"]
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


class _ImageAdapter(_FrozenNet):
    """Shared pre-processing of the pretrained adapters: square resize, mean/std normalisation."""

    def _prepare(self, image: Tensor, size: tuple[int, int], mean: list[float], std: list[float]) -> Tensor:
        x = F.interpolate(image.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
        m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
        return (x.clamp(0, 1) - m) / s


class MiDaSAdapter(_ImageAdapter):
    """MiDaS v3.1 DPT from a local ``.pt`` state dict (``dpt_beit_large_512.pt``, ``dpt_large_384.pt`` ...).

    ``model_type`` is one of :data:`MIDAS_PRESETS` (default: the file's stem, as MiDaS's ``run.py`` names
    them); ``arch`` overrides preset fields (tests build tiny variants). Swin/Swin2/LeViT/Next-ViT MiDaS
    files are not rebuilt here: use their HuggingFace conversions (``Intel/dpt-swinv2-*``) with
    :class:`DPTAdapter`. The net outputs disparity; :meth:`estimate` negates it so larger = farther.
    Images are resized (stretched) to the preset's square ``img_size``; MiDaS's ``run.py`` keeps the aspect
    ratio instead, which BEiT's fixed position tables do not allow without MiDaS's timm patches.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        model_type: str | None = None,
        freeze: bool = True,
        quantile: float = 0.01,
        **arch: Any,
    ) -> None:
        super().__init__(quantile)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"MiDaS weights not found: {path}. Give the local path of a MiDaS v3.1 .pt file "
                f"({', '.join(MIDAS_PRESETS)}); nothing is downloaded."
            )
        model_type = model_type or path.stem
        if model_type not in MIDAS_PRESETS:
            raise ValueError(f"unknown MiDaS model type {model_type!r} (from {path}); pass model_type= one of "
                             f"{sorted(MIDAS_PRESETS)}")
        cfg = {**MIDAS_PRESETS[model_type], **arch}
        net = MiDaSDPT(**cfg)
        net.load_state_dict(self._match_keys(_load_state(path), net, path))
        self.model_type, self.mean, self.std = model_type, [0.5] * 3, [0.5] * 3
        self._setup(net, freeze)

    @staticmethod
    def _match_keys(state: dict[str, Tensor], net: nn.Module, path: Path) -> dict[str, Tensor]:
        """Drop keys the DPT path never uses (classifier head, old timm's persistent BEiT index buffers)."""
        own = net.state_dict()
        unused = ("pretrained.model.head.", "pretrained.model.norm.", "pretrained.model.fc_norm.")
        state = {k: v for k, v in state.items()
                 if k in own or not (k.startswith(unused) or k.endswith("relative_position_index"))}
        missing = [k for k in own if k not in state and not k.startswith(unused)]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise ValueError(f"{path} does not match the MiDaS architecture: missing {missing[:5]} "
                             f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
        return {**{k: v for k, v in own.items() if k not in state}, **state}

    def estimate(self, image: Tensor) -> Tensor:
        size = (self.net.img_size, self.net.img_size)
        return -self.net(self._prepare(image, size, self.mean, self.std))


class DPTAdapter(_ImageAdapter):
    """HuggingFace ``DPTForDepthEstimation`` from a local folder (``config.json`` + weights), offline only.

    Pre-processing follows the folder's ``preprocessor_config.json`` (mean, std, size) when present, else
    mean = std = 0.5 at ``config.image_size`` (or ``size``). Inputs are resized to a square because the DPT
    ViT reassembly assumes a square token grid. ``predicted_depth`` is disparity; it is negated.
    """

    def __init__(
        self, path: str | os.PathLike[str], size: int | None = None, freeze: bool = True, quantile: float = 0.01
    ) -> None:
        super().__init__(quantile)
        folder = Path(path)
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"DPT weights folder not found or without config.json: {folder}. Give a local HuggingFace "
                "folder (e.g. a copy of Intel/dpt-large) holding config.json and the weights; nothing is downloaded."
            )
        # lazy import: transformers is heavy and only this adapter needs it
        from transformers import DPTForDepthEstimation

        net = DPTForDepthEstimation.from_pretrained(str(folder), local_files_only=True)
        prep: dict[str, Any] = {}
        if (folder / "preprocessor_config.json").is_file():
            prep = json.loads((folder / "preprocessor_config.json").read_text())
        self.mean = list(prep.get("image_mean", [0.5] * 3))
        self.std = list(prep.get("image_std", [0.5] * 3))
        self.size = size or self._size(prep.get("size"), net.config)
        self._setup(net, freeze)

    @staticmethod
    def _size(prep_size: Any, config: Any) -> int:
        if isinstance(prep_size, int):
            return prep_size
        if isinstance(prep_size, dict) and prep_size:
            return int(prep_size.get("height") or prep_size.get("shortest_edge") or next(iter(prep_size.values())))
        for cfg in (config, getattr(config, "backbone_config", None)):
            img = getattr(cfg, "image_size", None)
            if img:
                return int(img if isinstance(img, int) else img[0])
        return 384

    def estimate(self, image: Tensor) -> Tensor:
        x = self._prepare(image, (self.size, self.size), self.mean, self.std)
        return -self.net(pixel_values=x).predicted_depth.unsqueeze(1)


def build_depth_estimator(
    kind: Literal["gt", "learned", "midas", "dpt"], path: str | None = None, **kw: Any
) -> DepthEstimator:
    """Build a depth estimator by name; ``path`` is the checkpoint/weights for every kind but ``gt``."""
    if kind == "gt":
        return GroundTruthDepth(**kw)
    if path is None:
        hint = " (train one: `ssr fit --config configs/depth.yaml`)" if kind == "learned" else ""
        raise ValueError(f"depth estimator {kind!r} needs path= to its weights{hint}")
    if kind == "learned":
        return LearnedDepth.from_checkpoint(path, **kw)
    if kind == "midas":
        return MiDaSAdapter(path, **kw)
    if kind == "dpt":
        return DPTAdapter(path, **kw)
    raise ValueError(f"unknown depth estimator kind {kind!r}; use gt, learned, midas or dpt")
