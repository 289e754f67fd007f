"""Condition encoders of SSR's generative stage (paper §3.3, docs/DESIGN.md §4): one feature map per UNet level.

The paper sizes the encoders by how much information a modality carries: the LR image is the primary modality and
gets the largest encoder, a half UNet with an Input Block (IB), a Middle Block (MB) and a Feature Translate Block
(FTB); depth maps and kernel fields get small conv encoders.

Every encoder is built for a list of **levels** ``(name, stride, channels)`` that the denoising UNet reports
(:meth:`ssr_lightning.networks.ssr_unet.SSRUNet.levels`): ``stride`` is the level's downsampling factor relative to
the latent grid, ``channels`` the UNet's width there. Strides must be non-decreasing and each step 1× or 2×, as in
a UNet's encoder path. ``forward`` returns a list with one ``(B, C_l, h/stride, w/stride)`` map per level.

The encoders take **no timestep**: their features are computed once per image and reused at every sampling step
(a large saving with DDIM), and the time dependence lives in the UNet the AMF modulates.

- :class:`LREncoder`: VAE latent of the bicubic-upsampled LR (latent grid) → IB → down path → MB → FTB per level.
- :class:`MapEncoder`: depth ``(B, 1, h, w)`` or kernel field ``(B, 441, h, w)`` / kernel code on the LR grid →
  per-pixel projection → resized to the latent grid → small conv pyramid → 1×1 translate per level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LREncoder", "Level", "MapEncoder", "ResBlock", "check_levels", "resize_to"]

Level = tuple[str, int, int]  # (name, stride relative to the latent grid, UNet channels at that level)


def _norm(ch: int) -> nn.GroupNorm:
    # The largest group count <= 32 that divides ch, so any width works.
    return nn.GroupNorm(math.gcd(32, ch), ch)


def check_levels(levels: Sequence[Level]) -> list[Level]:
    """Validate level specs: non-empty, stride 1 first, each next stride equal to or twice the previous."""
    levels = [(str(n), int(s), int(c)) for n, s, c in levels]
    if not levels:
        raise ValueError("an encoder needs at least one level")
    prev = 1
    for name, stride, ch in levels:
        if stride not in (prev, 2 * prev) or ch < 1:
            raise ValueError(f"level {name!r}: stride {stride} after {prev} (must be x1 or x2), channels {ch}")
        prev = stride
    return levels


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a map to ``size``: area averaging when shrinking (no aliasing), bilinear when growing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3 → GroupNorm → SiLU → conv3×3, plus a (1×1-projected) skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
            _norm(out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class _SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual (used once, at the coarsest level of the MB)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.attn = nn.MultiheadAttention(ch, num_heads=1, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(t, t, t, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def _translate(in_ch: int, out_ch: int) -> nn.Sequential:
    """Feature Translate Block of one level: conv3×3 → SiLU → conv1×1 into the modality feature f_i."""
    return nn.Sequential(nn.Conv2d(in_ch, in_ch, 3, padding=1), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 1))


class LREncoder(nn.Module):
    """Half UNet over the LR latent: Input Block, down path, Middle Block, Feature Translate Block.

    Args:
        in_ch: Latent channels of the VAE (4 for SD and the tiny VAE).
        levels: ``(name, stride, channels)`` per UNet level; a level named ``"mid"`` (the last) is the MB output.
        width_mult: Encoder width at each level = ``channels * width_mult`` (1.0 mirrors the UNet, like
            ControlNet; smaller saves compute).
        out_mult: Channels of each f_3 map = ``channels * out_mult`` (what the AMF's MLPs read).
        num_res: ResBlocks per level in the IB / down path.
        mid_attention: Self-attention in the MB.
    """

    def __init__(
        self,
        in_ch: int,
        levels: Sequence[Level],
        width_mult: float = 1.0,
        out_mult: float = 1.0,
        num_res: int = 1,
        mid_attention: bool = True,
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        widths = [max(8, int(round(c * width_mult))) for _, _, c in self.levels]
        # Input Block: the latent enters at the first level's width.
        self.conv_in = nn.Conv2d(in_ch, widths[0], 3, padding=1)
        self.stages = nn.ModuleList()
        prev_w, prev_s = widths[0], 1
        for (name, stride, _), w in zip(self.levels, widths, strict=True):
            mods: list[nn.Module] = []
            if stride == 2 * prev_s:
                mods.append(nn.Conv2d(prev_w, prev_w, 3, stride=2, padding=1))
            if name == "mid":
                # Middle Block: ResBlock → attention → ResBlock at the coarsest level.
                mods += [ResBlock(prev_w, w)] + ([_SelfAttention(w)] if mid_attention else []) + [ResBlock(w, w)]
            else:
                mods += [ResBlock(prev_w if i == 0 else w, w) for i in range(num_res)]
            self.stages.append(nn.Sequential(*mods))
            prev_w, prev_s = w, stride
        self.out_channels = [max(1, int(round(c * out_mult))) for _, _, c in self.levels]
        self.translate = nn.ModuleList(_translate(w, o) for w, o in zip(widths, self.out_channels, strict=True))

    def forward(self, z_lr: Tensor) -> list[Tensor]:
        """``z_lr (B, in_ch, h, w)`` (latent grid) → one f_3 map per level."""
        x = self.conv_in(z_lr)
        out = []
        for stage, ftb in zip(self.stages, self.translate, strict=True):
            x = stage(x)
            out.append(ftb(x))
        return out


class MapEncoder(nn.Module):
    """Small encoder of a per-pixel map on the LR grid (depth: 1 channel; kernel field: k² channels or a code).

    The map is first projected per pixel (1×1 conv, i.e. a learned linear code for a 441-channel kernel field,
    cheaper than resizing 441 channels) and then resized to the latent grid, so it works for any scale / VAE factor.

    Args:
        in_ch: Channels of the map.
        levels: ``(name, stride, channels)`` per UNet level.
        width: Encoder width at every level (small: these modalities carry little information).
        out_ch: Channels of each output feature map.
    """

    def __init__(self, in_ch: int, levels: Sequence[Level], width: int = 32, out_ch: int = 32) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        self.proj = nn.Sequential(nn.Conv2d(in_ch, width, 1), nn.SiLU())
        self.conv_in = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.stages = nn.ModuleList()
        prev_s = 1
        for _, stride, _ in self.levels:
            down = stride == 2 * prev_s
            self.stages.append(nn.Sequential(
                nn.Conv2d(width, width, 3, stride=2 if down else 1, padding=1), nn.SiLU(),
            ))
            prev_s = stride
        self.out_channels = [out_ch] * len(self.levels)
        self.translate = nn.ModuleList(nn.Conv2d(width, out_ch, 1) for _ in self.levels)

    def forward(self, x: Tensor, size: tuple[int, int], projected: bool = False) -> list[Tensor]:
        """``x (B, in_ch, h, w)`` → one ``(B, out_ch, size/stride)`` map per level; ``size`` = the latent grid.
        ``projected``: ``x`` is already the output of the per-pixel linear projection ``proj[0]`` (``(B, width, h,
        w)``, before its activation), e.g. kept by SVKR as an affine statistic of the kernel field."""
        h = self.conv_in(resize_to(self.proj[1](x) if projected else self.proj(x), size))
        out = []
        for stage, ftb in zip(self.stages, self.translate, strict=True):
            h = stage(h)
            out.append(ftb(h))
        return out
