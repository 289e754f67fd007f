"""DepthNet: the small monocular depth network the project trains itself (DE, docs/DESIGN.md §3).

A compact U-Net (3 levels by default), RGB ``(B, 3, H, W)`` in [0, 1] -> relative depth ``(B, 1, H, W)``:

- level 1 (full resolution, ``c`` channels), level 2 (1/2, ``2c``), level 3 (1/4, ``4c``), further levels
  (1/8, ... at ``4c``; ``levels``) widen the receptive field cheaply, the last one is the bottleneck;
- stride-2 convs down, bilinear resize to the skip's *exact* size + concat + conv up, so odd sizes work;
- a global-context branch at the bottleneck (pooled features broadcast back): monocular depth depends on the
  whole scene layout, which a 3-level U-Net's receptive field would otherwise not see on HR-size inputs;
- GroupNorm rather than BatchNorm because the same weights see LR and HR inputs of very different sizes in
  one step and batches are small.

The output (sigmoid in (0, 1), or softplus > 0) is *relative* depth in the project convention (larger =
farther); training uses a scale-and-shift-invariant loss, so only its affine class is meaningful. The network is
fully convolutional: the same weights run on LR-size and on SR/HR-size images.

``working_size`` (MiDaS runs at 384 px whatever the input) resizes every input so that its shorter side has that
many pixels, predicts there and resizes the depth back: LR and SR/HR inputs of one scene are then seen at the
same scale and the receptive field covers the same share of the view, which a monocular depth cue such as the
horizon or an object's size needs (docs/history/EXPERIMENTS_issues_2-13.md, "Depth from the embedded scenes").
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from ssr_lightning.registry import register_stage

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


# Parameter names of the fixed three-level DepthNet (before ``levels``) -> their place in the level lists.
_OLD_NAMES = {"enc1.": "encoders.0.", "enc2.": "encoders.1.", "bottleneck.": "encoders.2.", "down1.": "downs.0.",
              "down2.": "downs.1.", "up2.": "ups.0.", "up1.": "ups.1."}


def _rename_fixed_levels(state: dict, prefix: str, *args: object) -> None:
    """Load-state pre-hook: checkpoints of the three-level DepthNet load into the level lists unchanged."""
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in _OLD_NAMES.items():
            if rest.startswith(old):
                state[prefix + new + rest[len(old):]] = state.pop(key)
                break


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


@register_stage("depth", label="depth network (DE)", config="configs/depth.yaml", module="DepthModule")
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
        levels: int = 3,
        working_size: int = 0,
    ) -> None:
        """
        Args:
            channels: Width ``c`` of level 1; level 2 uses ``2c``, levels 3 and deeper ``4c``.
            blocks_per_level: Residual blocks per encoder/decoder stage.
            output: ``"sigmoid"`` (depth in (0, 1)) or ``"softplus"`` (depth > 0, unbounded).
            global_context: Add pooled scene context at the bottleneck.
            in_channels: Input channels (3 for RGB).
            levels: Resolution levels of the U-Net (>= 2; 3 = the original DepthNet).
            working_size: Shorter side (px) every input is resized to before the network (0: native size).
        """
        super().__init__()
        if output not in ("sigmoid", "softplus"):
            raise ValueError(f"DepthNet: output must be 'sigmoid' or 'softplus', got {output!r}")
        if levels < 2:
            raise ValueError(f"DepthNet: levels must be >= 2, got {levels}")
        if working_size < 0 or 0 < working_size < 8:
            raise ValueError(f"DepthNet: working_size must be 0 (native) or >= 8 px, got {working_size}")
        c, b = channels, blocks_per_level
        widths = [c * min(2**i, 4) for i in range(levels)]
        self.head = nn.Conv2d(in_channels, c, 3, padding=1)
        # encoder: level i runs at 1/2^i; the last level is the bottleneck
        self.encoders = nn.ModuleList([_stage(widths[i], widths[i], b) for i in range(levels)])
        self.downs = nn.ModuleList(
            [nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(levels - 1)]
        )
        self.context = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(widths[-1], widths[-1], 1), nn.SiLU(inplace=True))
            if global_context
            else None
        )
        # decoder, deepest first: ups[i] brings level i + 1 to level i
        self.ups = nn.ModuleList([_Up(widths[i + 1], widths[i], widths[i], b) for i in reversed(range(levels - 1))])
        self.out = nn.Conv2d(c, 1, 3, padding=1)
        # Small (not zero) output conv: a near-constant mid-range start, but never exactly constant, because the
        # scale-and-shift-invariant loss has zero gradient at a constant prediction (its best scale is 0).
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
        self._register_load_state_dict_pre_hook(_rename_fixed_levels)

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
        size = image.shape[-2:]
        wsize = self.working_shape(size)
        if wsize is not None:
            k = self.config["working_size"] / min(size)
            image = F.interpolate(image, size=wsize, mode="bilinear", align_corners=False, antialias=k < 1)
        y = self.logits(image)
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.activate(y)

    def working_shape(self, size: tuple[int, int] | torch.Size) -> tuple[int, int] | None:
        """The size an input of ``size`` is resized to before the network (None: used as it is)."""
        work = self.config.get("working_size", 0)
        if not work:
            return None
        k = work / min(size)
        wsize = (max(8, round(size[0] * k)), max(8, round(size[1] * k)))
        return None if wsize == tuple(size) else wsize

    def logits(self, image: Tensor) -> Tensor:
        """The network on an image already at its working size: ``(B, 1, h, w)`` before the output activation."""
        x = self.head(image * 2.0 - 1.0)  # centre the [0, 1] input so the first layer sees zero-mean data
        skips = []
        for i, enc in enumerate(self.encoders):
            if i:
                x = self.downs[i - 1](x)
            x = enc(x)
            skips.append(x)
        if self.context is not None:
            x = x + self.context(x)
        for up, skip in zip(self.ups, reversed(skips[:-1]), strict=True):
            x = up(x, skip)
        return self.out(x)

    def activate(self, y: Tensor) -> Tensor:
        """The output activation (sigmoid or softplus), applied after the logits are resized to the input."""
        return torch.sigmoid(y) if self.config["output"] == "sigmoid" else F.softplus(y)
