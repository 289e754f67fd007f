"""DepthNet: the small monocular depth network the project trains itself (DE, docs/DESIGN.md §3).

A compact three-level U-Net, RGB ``(B, 3, H, W)`` in [0, 1] -> relative depth ``(B, 1, H, W)``:

- level 1 (full resolution, ``c`` channels), level 2 (1/2, ``2c``), level 3 (1/4, ``4c``, the bottleneck);
- stride-2 convs down, bilinear resize to the skip's *exact* size + concat + conv up, so odd sizes work;
- a global-context branch at the bottleneck (pooled features broadcast back): monocular depth depends on the
  whole scene layout, which a 3-level U-Net's receptive field would otherwise not see on HR-size inputs;
- GroupNorm rather than BatchNorm because the same weights see LR and HR inputs of very different sizes in
  one step and batches are small.

The output (sigmoid in (0, 1), or softplus > 0) is *relative* depth in the project convention (larger =
farther); training uses a scale-and-shift-invariant loss, so only its affine class is meaningful. The network is
fully convolutional: the same weights run on LR-size and on SR/HR-size images.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

__all__ = ["DepthNet"]


def _groups(ch: int) -> int:
    """GroupNorm groups: 8 where the width allows it, else the largest of 4/2/1 that divides ``ch``."""
    for g in (8, 4, 2):
        if ch % g == 0 and ch // g >= 2:
            return g
    return 1


class _ResBlock(nn.Module):
    """``act(x' + conv-GN-act-conv-GN(x'))`` where ``x'`` is ``x`` projected to ``out_ch`` (1x1) if needed."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.GroupNorm(_groups(out_ch), out_ch),
            nn.SiLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.GroupNorm(_groups(out_ch), out_ch),
        )
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.skip(x) + self.body(x))


def _stage(in_ch: int, out_ch: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(_ResBlock(in_ch, out_ch), *[_ResBlock(out_ch, out_ch) for _ in range(blocks - 1)])


class _Up(nn.Module):
    """Resize to the skip's exact size (bilinear), concat the skip, then a residual stage."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, blocks: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_ch, out_ch, 1)
        self.stage = _stage(out_ch + skip_ch, out_ch, blocks)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.stage(torch.cat([x, skip], dim=1))


class DepthNet(ModelMixin, ConfigMixin):
    """Compact U-Net monocular depth estimator: image -> relative depth (0 nearest), any input size."""

    @register_to_config
    def __init__(
        self,
        channels: int = 16,
        blocks_per_level: int = 1,
        output: Literal["sigmoid", "softplus"] = "sigmoid",
        global_context: bool = True,
        in_channels: int = 3,
    ) -> None:
        """
        Args:
            channels: Width ``c`` of level 1; levels 2 and 3 use ``2c`` and ``4c``.
            blocks_per_level: Residual blocks per encoder/decoder stage.
            output: ``"sigmoid"`` (depth in (0, 1)) or ``"softplus"`` (depth > 0, unbounded).
            global_context: Add pooled scene context at the bottleneck.
            in_channels: Input channels (3 for RGB).
        """
        super().__init__()
        if output not in ("sigmoid", "softplus"):
            raise ValueError(f"DepthNet: output must be 'sigmoid' or 'softplus', got {output!r}")
        c, b = channels, blocks_per_level
        self.head = nn.Conv2d(in_channels, c, 3, padding=1)
        self.enc1 = _stage(c, c, b)
        self.down1 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.enc2 = _stage(2 * c, 2 * c, b)
        self.down2 = nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1)
        self.bottleneck = _stage(4 * c, 4 * c, b)
        self.context = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4 * c, 4 * c, 1), nn.SiLU(inplace=True))
            if global_context
            else None
        )
        self.up2 = _Up(4 * c, 2 * c, 2 * c, b)
        self.up1 = _Up(2 * c, c, c, b)
        self.out = nn.Conv2d(c, 1, 3, padding=1)
        # Small (not zero) output conv: a near-constant mid-range start, but never exactly constant, because the
        # scale-and-shift-invariant loss has zero gradient at a constant prediction (its best scale is 0).
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    @classmethod
    def tiny(cls) -> DepthNet:
        """CPU-sized preset (c=16, one block per level; 0.17 M parameters)."""
        return cls(channels=16, blocks_per_level=1)

    @classmethod
    def paper(cls) -> DepthNet:
        """GPU-sized preset (c=48, two blocks per level; 2.56 M parameters)."""
        return cls(channels=48, blocks_per_level=2)

    def forward(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> relative depth ``(B, 1, H, W)`` (larger = farther)."""
        if image.dim() != 4 or image.shape[1] != self.config["in_channels"]:
            raise ValueError(f"DepthNet expects (B, {self.config['in_channels']}, H, W), got {tuple(image.shape)}")
        x = self.head(image * 2.0 - 1.0)  # centre the [0, 1] input so the first layer sees zero-mean data
        f1 = self.enc1(x)
        f2 = self.enc2(self.down1(f1))
        f3 = self.bottleneck(self.down2(f2))
        if self.context is not None:
            f3 = f3 + self.context(f3)
        y = self.up1(self.up2(f3, f2), f1)
        y = self.out(y)
        return torch.sigmoid(y) if self.config["output"] == "sigmoid" else F.softplus(y)
