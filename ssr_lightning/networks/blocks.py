"""Building blocks of DKENet: SFT modulation, mutual-affine convolution (MAConv) and the Depth-Aware Block.

Plain ``nn.Module`` code (no Lightning), following paper §3.2 and docs/DESIGN.md §3:

- ``SFT`` (Wang et al., SFTGAN): ``out = feat * gamma + beta`` with gamma/beta predicted from the condition.
- ``MAConv`` (Luo et al., MANet): channel split, each part affinely modulated by the *other* parts, then conv.
- ``DABlock``: ``x + MAConv(ReLU(MAConv(SFT(x, depth_feat))))``; without a condition it is MANet's MAB.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SFT", "DABlock", "MAConv", "split_sizes"]


def split_sizes(total: int, parts: int) -> list[int]:
    """Split ``total`` channels into ``parts`` sizes that differ by at most one (larger parts first)."""
    if parts < 1 or total < parts:
        raise ValueError(f"cannot split {total} channels into {parts} non-empty parts")
    base, rem = divmod(total, parts)
    return [base + 1] * rem + [base] * (parts - rem)


def _conv_branch(in_ch: int, hidden: int, out_ch: int) -> nn.Sequential:
    """conv3x3 -> LeakyReLU(0.1) -> conv3x3, with the last conv zero-initialised."""
    last = nn.Conv2d(hidden, out_ch, 3, padding=1)
    # Zero output at init: SFT starts as the identity, so adding it cannot disturb a working trunk.
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(in_ch, hidden, 3, padding=1), nn.LeakyReLU(0.1, inplace=True), last)


class SFT(nn.Module):
    """Spatial Feature Transform: ``feat * gamma(c) + beta(c)`` with ``c = cat(feat, cond)``.

    ``hidden`` (default ``feat_ch // 2``) is the width of each conv pair. gamma is predicted as ``1 + delta`` with a zero-initialised last layer (and beta likewise starts at 0),
    so a freshly built SFT returns its input unchanged.
    """

    def __init__(self, feat_ch: int, cond_ch: int, hidden: int | None = None) -> None:
        super().__init__()
        if feat_ch < 1 or cond_ch < 1:
            raise ValueError(f"SFT needs positive channel counts, got feat_ch={feat_ch}, cond_ch={cond_ch}")
        # Half width by default: gamma/beta are smooth modulation maps, and a full-width pair of 3x3 convs on
        # cat(feat, cond) would cost more than the MAConv trunk it modulates.
        hidden = max(feat_ch // 2, 1) if hidden is None else hidden
        self.feat_ch, self.cond_ch = feat_ch, cond_ch
        self.gamma = _conv_branch(feat_ch + cond_ch, hidden, feat_ch)
        self.beta = _conv_branch(feat_ch + cond_ch, hidden, feat_ch)

    def forward(self, feat: Tensor, cond: Tensor) -> Tensor:
        """Modulate ``feat (B,feat_ch,h,w)`` by ``cond (B,cond_ch,h,w)`` (same spatial size)."""
        if cond.shape[-2:] != feat.shape[-2:]:
            raise ValueError(f"SFT condition size {tuple(cond.shape[-2:])} != feature size {tuple(feat.shape[-2:])}")
        x = torch.cat([feat, cond], dim=1)
        return feat * (1.0 + self.gamma(x)) + self.beta(x)


class MAConv(nn.Module):
    """Mutual affine convolution (MANet).

    The input channels are split into ``split`` parts. For part ``i``, a 1x1-conv MLP (bottleneck
    ``ceil(rest / reduction)``, ReLU) over the concatenation of all other parts predicts a scale ``s_i`` and shift
    ``t_i``; the output part is ``conv_k(part_i * sigmoid(s_i) + t_i)``. Output parts (sizes split like the
    input, so ``in_ch != out_ch`` works) are concatenated. Parts thus exchange information only through the
    cheap affine path, which is MANet's way of cutting the cost of a full conv while keeping cross-channel mixing.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, split: int = 2, reduction: int = 2, bias: bool = True
    ) -> None:
        super().__init__()
        if split < 2:
            raise ValueError(f"MAConv needs split >= 2 (each part is modulated by the others), got {split}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MAConv kernel_size must be odd and positive, got {kernel_size}")
        if reduction < 1:
            raise ValueError(f"MAConv reduction must be >= 1, got {reduction}")
        self.in_ch, self.out_ch = in_ch, out_ch
        self.in_split = split_sizes(in_ch, split)
        self.out_split = split_sizes(out_ch, split)
        self.fcs = nn.ModuleList()
        self.convs = nn.ModuleList()
        for part_in, part_out in zip(self.in_split, self.out_split):
            rest = in_ch - part_in
            hidden = max(-(-rest // reduction), 1)  # ceil: odd splits keep at least half the width
            self.fcs.append(
                nn.Sequential(
                    nn.Conv2d(rest, hidden, 1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(hidden, 2 * part_in, 1),
                )
            )
            self.convs.append(nn.Conv2d(part_in, part_out, kernel_size, padding=kernel_size // 2, bias=bias))

    def forward(self, x: Tensor) -> Tensor:
        """``(B,in_ch,h,w) -> (B,out_ch,h,w)``."""
        parts = torch.split(x, self.in_split, dim=1)
        out = []
        for i, (fc, conv) in enumerate(zip(self.fcs, self.convs)):
            others = torch.cat(parts[:i] + parts[i + 1 :], dim=1)
            scale, shift = torch.split(fc(others), [self.in_split[i], self.in_split[i]], dim=1)
            out.append(conv(parts[i] * torch.sigmoid(scale) + shift))
        return torch.cat(out, dim=1)


class DABlock(nn.Module):
    """Depth-Aware Block: ``x + MAConv(ReLU(MAConv(SFT(x, cond))))``.

    With ``cond_ch=None`` there is no SFT layer at all (no parameters) and the block is MANet's mutual affine
    block — the "no DI-Kernel" baseline.
    """

    def __init__(self, ch: int, cond_ch: int | None, split: int = 2, reduction: int = 2) -> None:
        super().__init__()
        self.sft = SFT(ch, cond_ch) if cond_ch is not None else None
        self.body = nn.Sequential(
            MAConv(ch, ch, 3, split=split, reduction=reduction),
            nn.ReLU(inplace=True),
            MAConv(ch, ch, 3, split=split, reduction=reduction),
        )

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Refine ``x``; ``cond`` (depth features at x's resolution) is required iff the block has an SFT."""
        if self.sft is not None:
            if cond is None:
                raise ValueError("this DABlock was built with a depth condition (cond_ch) but got cond=None")
            y = self.sft(x, cond)
        else:
            y = x
        return x + self.body(y)
