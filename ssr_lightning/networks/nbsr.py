"""NBSR: the lightweight, kernel-conditioned non-blind SR network of SVKR (paper §3.2, docs/DESIGN.md §3).

ESRGAN's RRDB trunk (residual-in-residual dense blocks, residual scaling 0.2) where every RRDB is modulated by
an SFT layer whose condition is the per-pixel kernel code map (PCA codes of the kernel field, see
``ssr_lightning.networks.kernel_codec``) passed through a small conv net. Then conv -> PixelShuffle x s -> conv, plus a
global residual: the bicubic-upsampled LR image, so the network only learns the correction to bicubic (a tiny
model then trains in minutes instead of first having to learn the identity).

Shapes: ``lr (B, 3, h, w)``, ``code (B, code_channels, h, w)`` on the LR grid -> ``(B, 3, s*h, s*w)``; any h, w.
A zero code is the PCA *mean* kernel of the training distribution; ``code=None`` means exactly that (the
"kernel condition zeroed" ablation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from ssr_lightning.degradation.noise import estimate_noise
from ssr_lightning.registry import register_stage

from .blocks import SFT
from .kernel_codec import KernelCodec

__all__ = ["NBSR", "RRDB", "SFTRRDB", "KernelConditionedSR", "ResidualDenseBlock"]

# ESRGAN's residual scaling: keeps each block's contribution small so deep trunks train stably without BN.
_RES_SCALE = 0.2
# ESRGAN's `default_init_weights(scale=0.1)` for the dense-block convs, same reason.
_INIT_SCALE = 0.1


def _scaled_init(module: nn.Module, scale: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0.0, mode="fan_in")
            m.weight.data.mul_(scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResidualDenseBlock(nn.Module):
    """ESRGAN's RDB: 5 densely connected 3x3 convs (LeakyReLU 0.2), ``x + 0.2 * conv5(...)``."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(channels + i * growth, growth, 3, padding=1) for i in range(4)]
            + [nn.Conv2d(channels + 4 * growth, channels, 3, padding=1)]
        )
        self.act = nn.LeakyReLU(0.2, inplace=True)
        _scaled_init(self, _INIT_SCALE)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in self.convs[:-1]:
            feats.append(self.act(conv(torch.cat(feats, dim=1))))
        return x + _RES_SCALE * self.convs[-1](torch.cat(feats, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs and an outer scaled residual."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*[ResidualDenseBlock(channels, growth) for _ in range(3)])

    def forward(self, x: Tensor) -> Tensor:
        return x + _RES_SCALE * self.body(x)


class SFTRRDB(nn.Module):
    """RRDB whose input is modulated by the kernel condition: ``x + 0.2 * RDB³(SFT(x, cond))``.

    SFT starts as the identity (zero-initialised gamma/beta heads), so a fresh block is a plain RRDB and the
    condition is learned as a correction on top of it.
    """

    def __init__(self, channels: int, growth: int, cond_channels: int) -> None:
        super().__init__()
        self.sft = SFT(channels, cond_channels)
        self.body = nn.Sequential(*[ResidualDenseBlock(channels, growth) for _ in range(3)])

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x + _RES_SCALE * self.body(self.sft(x, cond))


def _upsampler(channels: int, scale: int) -> nn.Sequential:
    """conv -> PixelShuffle stages: x2, x4 = two x2 stages (as ESRGAN), x3 = one x3 stage."""
    if scale in (2, 4):
        stages = [2] * (scale // 2)
    elif scale == 3:
        stages = [3]
    else:
        raise ValueError(f"NBSR supports scale 2, 3 or 4, got {scale}")
    layers: list[nn.Module] = []
    for f in stages:
        layers += [nn.Conv2d(channels, channels * f * f, 3, padding=1), nn.PixelShuffle(f),
                   nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers)


class NBSR(ModelMixin, ConfigMixin):
    """Kernel-conditioned RRDB super-resolver: ``(lr, code) -> sr``.

    The trunk's sizes have no defaults here: they are declared once by the network that owns the trunk
    (:class:`KernelConditionedSR`, the NBSR stage; ``SigmaConditionedSR``, CMOS's SR) or by a preset (:meth:`tiny`,
    :meth:`paper`)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        code_channels: int = 12,
        *,
        channels: int,
        num_blocks: int,
        growth: int,
        scale: int = 4,
        cond_channels: int | None = None,
        input_condition: bool = False,
        sft_init: float = 0.0,
    ) -> None:
        """
        Args:
            in_channels: Image channels (3, RGB).
            code_channels: Length of the per-pixel condition (PCA kernel code, plus a noise channel if any).
            channels: Trunk feature width (>= 1).
            num_blocks: Number of SFT-modulated RRDBs (>= 1).
            growth: Dense-block growth channels (>= 1).
            scale: SR factor (2, 3 or 4).
            cond_channels: Width of the condition features fed to every SFT (default ``max(channels // 2, 8)``).
            input_condition: Also concatenate the code map to the LR image at the input (SRMD's stretched
                degradation maps), so the first convolution sees the condition directly.
            sft_init: Std of the SFT heads' last layers at initialisation (0: zero, every SFT starts as the
                identity; > 0: the condition acts from the first step instead of waiting for a gradient path).
        """
        super().__init__()
        sizes = {"in_channels": in_channels, "code_channels": code_channels, "channels": channels,
                 "num_blocks": num_blocks, "growth": growth}
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:  # the one check of these sizes, whichever network or config set them
            raise ValueError(f"NBSR: {', '.join(f'{k} {v}' for k, v in bad.items())}: must be >= 1")
        # Half width by default: the code is a smooth, low-dimensional map; the trunk's full width is not needed.
        cond_channels = max(channels // 2, 8) if cond_channels is None else cond_channels
        self.in_channels, self.code_channels, self.scale = in_channels, code_channels, scale
        self.cond_channels = cond_channels

        # Condition net on the code map: per-pixel mixing (1x1) then a little spatial context (3x3).
        self.cond_net = nn.Sequential(
            nn.Conv2d(code_channels, cond_channels, 1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(cond_channels, cond_channels, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(cond_channels, cond_channels, 3, padding=1),
        )
        self.input_condition = input_condition
        self.conv_first = nn.Conv2d(in_channels + (code_channels if input_condition else 0), channels, 3, padding=1)
        self.blocks = nn.ModuleList([SFTRRDB(channels, growth, cond_channels) for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(channels, channels, 3, padding=1)
        self.upsample = _upsampler(channels, scale)
        self.conv_hr = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last = nn.Conv2d(channels, in_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        # Small output at init: with the bicubic global residual the untrained network starts near bicubic.
        _scaled_init(self.conv_last, _INIT_SCALE)
        if sft_init > 0:
            for block in self.blocks:
                for branch in (block.sft.gamma, block.sft.beta):
                    nn.init.normal_(branch[-1].weight, std=sft_init)

    # ----------------------------------------------------------------------------------------------- presets
    @classmethod
    def tiny(cls, **kw: object) -> NBSR:
        """CPU preset for tests and smoke runs (channels 16, 2 blocks, growth 8); keyword arguments override."""
        return cls(**{"channels": 16, "num_blocks": 2, "growth": 8, **kw})  # type: ignore[arg-type]

    @classmethod
    def paper(cls, **kw: object) -> NBSR:
        """Paper-scale preset: "lightweight" RRDB (channels 64, 8 blocks, growth 32; ESRGAN uses 23 blocks)."""
        return cls(**{"channels": 64, "num_blocks": 8, "growth": 32, **kw})  # type: ignore[arg-type]

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, lr: Tensor, code: Tensor | None = None) -> Tensor:
        """Super-resolve ``lr (B, in_channels, h, w)`` under the kernel code map ``code (B, code_channels, h, w)``.

        ``code=None`` is an all-zero code (the mean kernel). Returns ``(B, in_channels, s*h, s*w)``, not clamped
        (callers clamp for display and metrics; the loss sees the raw output).
        """
        if lr.ndim != 4 or lr.shape[1] != self.in_channels:
            raise ValueError(f"lr must be (B, {self.in_channels}, h, w), got shape {tuple(lr.shape)}")
        b, _, h, w = lr.shape
        if code is None:
            code = lr.new_zeros(b, self.code_channels, h, w)
        if code.shape != (b, self.code_channels, h, w):
            raise ValueError(
                f"code must be (B, {self.code_channels}, h, w) = {(b, self.code_channels, h, w)} on the LR grid, "
                f"got {tuple(code.shape)}"
            )
        return self.tail(self.trunk(lr, code), lr)

    def trunk(self, lr: Tensor, code: Tensor) -> Tensor:
        """LR-grid features before the upsampler (``code`` as :meth:`forward` checked it)."""
        code = code.to(lr.dtype)
        cond = self.cond_net(code)
        feat = self.conv_first(torch.cat([lr, code], dim=1) if self.input_condition else lr)
        trunk = feat
        for block in self.blocks:
            trunk = block(trunk, cond)
        return feat + self.conv_body(trunk)

    def tail(self, feat: Tensor, lr: Tensor) -> Tensor:
        """Upsampler and HR convolutions of the trunk features, plus the bicubic residual of ``lr`` (same grid):
        within 2 LR px of each output pixel, so it can run on row chunks of the trunk with a 2 px halo."""
        h, w = lr.shape[-2:]
        out = self.conv_last(self.act(self.conv_hr(self.upsample(feat))))
        base = F.interpolate(lr, size=(self.scale * h, self.scale * w), mode="bicubic", align_corners=False)
        return base + out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if not k.startswith("_"))


@register_stage("nbsr", label="NBSR", config="configs/nbsr.yaml", module="NBSRModule")
class KernelConditionedSR(ModelMixin, ConfigMixin):
    """NBSR on kernel *fields*: ``(lr, kernel (B, k², h, w) | None) -> sr``; the field is encoded by a :class:`KernelCodec`.

    This is what SVKR and the pipeline call "NBSR". ``kernel=None`` is the zeroed code (the mean kernel). With
    ``noise_condition`` the condition also carries a noise-level channel (SRMD conditions on noise as well as on the
    kernel, so a network trained on noisy data still knows when the kernel's detail is recoverable): the noise
    level is *estimated from the LR pixels* (:func:`~ssr_lightning.degradation.noise.estimate_noise`), the same way at
    training and at test time, so no ground truth is needed; zeroing the kernel code leaves that channel in place.
    """

    @register_to_config
    def __init__(
        self, code_channels: int = 12, channels: int = 16, num_blocks: int = 2, growth: int = 8, scale: int = 4,
        kernel_size: int = 21, noise_condition: bool = False, input_condition: bool = False, sft_init: float = 0.0,
    ) -> None:
        """
        Args:
            code_channels: Kernel code length = PCA components of the kernel basis (10-15).
            channels: RRDB trunk width (16: tiny CPU model, 64: paper size).
            num_blocks: SFT-modulated RRDBs (2 tiny, 8 paper).
            growth: Dense-block growth channels (8 tiny, 32 paper).
            scale: SR factor s, 2, 3 or 4 (set from data.scale by ``ssr``).
            kernel_size: Kernel side k of the kernel fields it is conditioned on (k² channels).
            noise_condition: Add a noise-level channel to the condition, estimated from the LR pixels.
            input_condition: Also concatenate the condition map to the LR image at the input (SRMD-style).
            sft_init: Std of the SFT heads' last layers at initialisation (0: identity SFTs).
        """
        super().__init__()
        self.noise_condition = noise_condition
        self.net = NBSR(code_channels=code_channels + int(noise_condition), channels=channels, num_blocks=num_blocks,
                        growth=growth, scale=scale, input_condition=input_condition, sft_init=sft_init)
        self.codec = KernelCodec(kernel_size, code_channels)

    def encode(self, kernel: Tensor) -> Tensor:
        """Kernel field → whitened code map."""
        return self.codec.encode(kernel)

    def condition(self, lr: Tensor, kernel: Tensor | None) -> Tensor | None:
        """The condition map: the kernel code (zeros for ``kernel=None``) and, if enabled, the noise channel."""
        code = None if kernel is None else self.codec.encode(kernel).to(lr.dtype)
        return self.code_condition(lr, code)

    def noise_level(self, lr: Tensor) -> Tensor | None:
        """The noise channel's value per image ``(B,)`` (σ̂ in 8-bit levels mapped to about [-1, 1] over the training
        range, 1-30 levels), read from the whole LR; None without ``noise_condition``."""
        if not self.noise_condition:
            return None
        return estimate_noise(lr) * 255.0 / 15.0 - 1.0

    def code_condition(self, lr: Tensor, code: Tensor | None, level: Tensor | None = None) -> Tensor | None:
        """The condition map of a whitened code map ``code (B, M, h, w)`` (None: zeros) for ``lr``; ``level`` is
        :meth:`noise_level` of the whole image when ``lr`` is a tile of it (default: measured on ``lr``)."""
        if not self.noise_condition:
            return code
        b, _, h, w = lr.shape
        if code is None:
            code = lr.new_zeros(b, self.codec.n_components, h, w)
        level = self.noise_level(lr) if level is None else level
        return torch.cat([code.to(lr.dtype), level.to(lr.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)], dim=1)

    def forward_code(self, lr: Tensor, code: Tensor | None, level: Tensor | None = None) -> Tensor:
        """NBSR on a code map instead of a field (the codec is linear: SVKR's iterates stay in code space)."""
        return self.net(lr, self.code_condition(lr, code, level))

    def forward(self, lr: Tensor, kernel: Tensor | None = None) -> Tensor:
        return self.net(lr, self.condition(lr, kernel))


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":  # quick size report: python -m ssr_lightning.networks.nbsr
    for name in ("tiny", "paper"):
        print(f"{name:5s} params={_num_params(getattr(NBSR, name)()):,}")
