"""Depth estimators (DE, DESIGN.md §3): one interface, four sources of depth.

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
import math
import os
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssr_lightning.networks.config import load_network
from ssr_lightning.networks.depthnet import DepthNet

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

# torch.quantile sorts; estimate the robust range from at most this many pixels per image.
_MAX_QUANTILE_SAMPLES = 1 << 20


def resize_depth(depth: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a depth map ``(B, 1, H, W)`` to ``size``.

    An exact integer down-factor ``s`` takes ``depth[..., ::s, ::s]``: the project's LR sampling convention, so
    the result equals the data module's ``depth_lr``. Other sizes use bilinear (antialiased when shrinking).
    """
    h, w = depth.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if (h, w) == (th, tw):
        return depth
    if h % th == 0 and w % tw == 0 and h // th == w // tw:
        s = h // th
        return depth[..., ::s, ::s]
    shrink = th < h or tw < w
    return F.interpolate(depth.float(), size=(th, tw), mode="bilinear", align_corners=False, antialias=shrink)


def normalize_depth_map(depth: Tensor, quantile: float = 0.01) -> Tensor:
    """Per-image robust min/max normalisation to [0, 1] (quantiles ``q`` and ``1 − q``, then clamp).

    A (near-)constant map becomes 0.5 everywhere: the data module's "no depth" placeholder.
    """
    x = depth.float()
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] > _MAX_QUANTILE_SAMPLES:
        flat = flat[:, :: math.ceil(flat.shape[1] / _MAX_QUANTILE_SAMPLES)]
    if quantile > 0:
        q = torch.tensor([quantile, 1.0 - quantile], device=x.device, dtype=x.dtype)
        lo, hi = torch.quantile(flat, q, dim=1)
    else:
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    span = hi - lo
    flat_ok = span > 1e-8 * (1.0 + hi.abs())
    view = (-1,) + (1,) * (x.dim() - 1)
    out = ((x - lo.view(view)) / span.clamp_min(1e-12).view(view)).clamp(0.0, 1.0)
    return torch.where(flat_ok.view(view), out, torch.full_like(out, 0.5))


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
        """Load a ``DepthModule`` Lightning ``.ckpt`` (or a ``save_network`` file of a DepthNet)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"depth checkpoint not found: {path}. Train the project's depth network first with "
                "`ssr fit --config configs/depth.yaml` (checkpoints: runs/depth/version_N/checkpoints/)."
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - Lightning checkpoints can hold pickled hparams containers
            # The user's own training output, so full unpickling is acceptable (Lightning does the same).
            payload = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(payload, dict) and "class" in payload and "config" in payload:
            return cls(load_network(DepthNet, path), freeze=freeze)
        if not isinstance(payload, dict) or "state_dict" not in payload:
            raise ValueError(f"{path} is neither a DepthModule checkpoint nor a DepthNet network file")
        config = payload.get("depthnet_config")
        if config is None:  # older checkpoints: rebuild from the module's hyper-parameters
            hp = dict(payload.get("hyper_parameters", {}))
            config = {k: hp[k] for k in ("channels", "blocks_per_level", "output", "global_context") if k in hp}
        state = {k[len("net."):]: v for k, v in payload["state_dict"].items() if k.startswith("net.")}
        if not state:
            raise ValueError(f"{path} holds no 'net.*' weights: not a DepthModule checkpoint")
        net = DepthNet(**config)
        net.load_state_dict(state)
        return cls(net, freeze=freeze)


# --- MiDaS v3.1 DPT, rebuilt in code with MiDaS's module names so official state dicts load -------------------


class _Readout(nn.Module):
    """How the class token enters the patch tokens: ``ignore``, ``add`` or ``project`` (MiDaS ProjectReadout)."""

    def __init__(self, mode: str, dim: int) -> None:
        super().__init__()
        self.mode = mode
        if mode == "project":
            self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())
        elif mode not in ("ignore", "add"):
            raise ValueError(f"readout must be ignore/add/project, got {mode!r}")

    def forward(self, tokens: Tensor, prefix: Tensor) -> Tensor:
        if self.mode == "ignore":
            return tokens
        cls_tok = prefix[:, :1].expand_as(tokens)
        return tokens + cls_tok if self.mode == "add" else self.project(torch.cat([tokens, cls_tok], dim=-1))


class _ResidualConvUnit(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _FusionBlock(nn.Module):
    """MiDaS ``FeatureFusionBlock_custom`` (no BN, no expand, align_corners=True)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(ch, ch, 1)
        self.resConfUnit1 = _ResidualConvUnit(ch)
        self.resConfUnit2 = _ResidualConvUnit(ch)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        kw: dict[str, Any] = {"size": tuple(size)} if size is not None else {"scale_factor": 2.0}
        return self.out_conv(F.interpolate(x, **kw, mode="bilinear", align_corners=True))


class _Interpolate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


# MiDaS v3.1 model types (file stems of the official release) -> architecture. All use readout "project",
# 256 fusion features and mean = std = 0.5 input normalisation.
MIDAS_PRESETS: dict[str, dict[str, Any]] = {
    "dpt_beit_large_512": {"family": "beit", "timm_name": "beit_large_patch16_512", "img_size": 512,
                           "hooks": (5, 11, 17, 23), "in_features": (256, 512, 1024, 1024)},
    "dpt_beit_large_384": {"family": "beit", "timm_name": "beit_large_patch16_384", "img_size": 384,
                           "hooks": (5, 11, 17, 23), "in_features": (256, 512, 1024, 1024)},
    "dpt_beit_base_384": {"family": "beit", "timm_name": "beit_base_patch16_384", "img_size": 384,
                          "hooks": (2, 5, 8, 11), "in_features": (96, 192, 384, 768)},
    "dpt_large_384": {"family": "vit", "timm_name": "vit_large_patch16_384", "img_size": 384,
                      "hooks": (5, 11, 17, 23), "in_features": (256, 512, 1024, 1024)},
    "dpt_hybrid_384": {"family": "vit_hybrid", "timm_name": "vit_base_r50_s16_384", "img_size": 384,
                       "hooks": (0, 1, 8, 11), "in_features": (256, 512, 768, 768)},
}


class MiDaSDPT(nn.Module):
    """DPT as in MiDaS (``DPTDepthModel``): timm ViT/BEiT(/R50-hybrid) encoder, reassemble, fusion, head.

    Module names match MiDaS (``pretrained.model``, ``pretrained.act_postprocess{1-4}``, ``scratch.layer{1-4}_rn``,
    ``scratch.refinenet{1-4}``, ``scratch.output_conv``), so an official state dict loads with key filtering
    only. The backbone is built with ``pretrained=False`` (no download). Output: non-negative inverse depth
    ``(B, 1, H, W)`` for an input whose side is ``img_size`` (fixed, because BEiT's relative position tables
    are tied to the training grid).
    """

    def __init__(
        self,
        family: Literal["vit", "vit_hybrid", "beit"],
        timm_name: str,
        img_size: int,
        hooks: tuple[int, ...],
        in_features: tuple[int, ...],
        features: int = 256,
        readout: str = "project",
        head_features: int = 32,
        timm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.family, self.img_size, self.hooks = family, img_size, tuple(hooks)
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, img_size=img_size, **(timm_kwargs or {}))
        dim = model.embed_dim
        self.pretrained = nn.Module()
        self.pretrained.model = model
        ups = [nn.ConvTranspose2d(in_features[0], in_features[0], 4, stride=4),
               nn.ConvTranspose2d(in_features[1], in_features[1], 2, stride=2), nn.Identity(),
               nn.Conv2d(in_features[3], in_features[3], 3, stride=2, padding=1)]
        for i in range(4):
            if family == "vit_hybrid" and i < 2:  # ResNet stage features need no reassembly
                post = nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity())
            else:
                post = nn.Sequential(_Readout(readout, dim), nn.Identity(), nn.Identity(),
                                     nn.Conv2d(dim, in_features[i], 1), ups[i])
            setattr(self.pretrained, f"act_postprocess{i + 1}", post)
        self._stage_feats: list[Tensor] = []
        if family == "vit_hybrid":
            for stage in model.patch_embed.backbone.stages[:2]:
                stage.register_forward_hook(lambda _m, _i, out: self._stage_feats.append(out))
        self.scratch = nn.Module()
        for i in range(4):
            setattr(self.scratch, f"layer{i + 1}_rn", nn.Conv2d(in_features[i], features, 3, padding=1, bias=False))
            setattr(self.scratch, f"refinenet{i + 1}", _FusionBlock(features))
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1), _Interpolate(),
            nn.Conv2d(features // 2, head_features, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(head_features, 1, 1), nn.ReLU(True), nn.Identity(),
        )

    def _encode(self, x: Tensor) -> list[Tensor]:
        model = self.pretrained.model
        self._stage_feats = []
        block_ids = list(self.hooks[2:] if self.family == "vit_hybrid" else self.hooks)
        inter = model.forward_intermediates(x, indices=block_ids, return_prefix_tokens=True, norm=False,
                                            output_fmt="NLC", intermediates_only=True)
        layers: list[Tensor] = list(self._stage_feats[:2]) if self.family == "vit_hybrid" else []
        for tokens, prefix in inter:
            i = len(layers)
            post = getattr(self.pretrained, f"act_postprocess{i + 1}")
            t = post[0](tokens, prefix)
            # token grid from the count and the aspect ratio (hybrid embeds report patch_size 1, not 16)
            gh = round(math.sqrt(t.shape[1] * x.shape[-2] / x.shape[-1]))
            t = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], gh, t.shape[1] // gh)
            layers.append(post[3:](t))
        self._stage_feats = []
        return layers

    def forward(self, x: Tensor) -> Tensor:
        l1, l2, l3, l4 = (getattr(self.scratch, f"layer{i + 1}_rn")(f) for i, f in enumerate(self._encode(x)))
        p = self.scratch.refinenet4(l4, size=l3.shape[2:])
        p = self.scratch.refinenet3(p, l3, size=l2.shape[2:])
        p = self.scratch.refinenet2(p, l2, size=l1.shape[2:])
        p = self.scratch.refinenet1(p, l1)
        return self.scratch.output_conv(p)


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
