"""MiDaS v3.1 DPT rebuilt in code with MiDaS's module names, so official state dicts load (no download).

Used by ``ssr_lightning.inference.depth.MiDaSAdapter``; the backbone comes from timm with ``pretrained=False``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MIDAS_PRESETS", "MiDaSDPT"]


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
