"""SSRUNet: a diffusers denoising UNet with AMF after its input conv, every down block and the mid block.

Paper §3.3 / docs/DESIGN.md §4: features of the kernel (f_1), depth (f_2) and LR (f_3) encoders modulate the
denoising UNet (ε-, x0- or v-prediction: the process's ``prediction_type``) at several levels through AMF
(``networks/amf.py``).

Where the AMFs sit (one AMF per level, modulating the tensor that leaves the named sub-module):

- ``"in"`` (``amf_on_input``): the output of ``conv_in``. In a diffusers UNet that tensor is both the input of
  the first down block and the first skip residual, so conditioning reaches the decoder at full latent
  resolution through the skip too.
- ``"down{i}"``: the hidden state a down block returns (after its downsampler, if any). A diffusers down block
  also returns the tuple of its skip residuals, whose **last** entry is that same tensor; it is replaced by the
  modulated one, so the decoder's skip and the next block see identical conditioned features. The block's
  earlier skip residuals (outputs of its ResNets before the downsampler) pass unmodulated; at that resolution
  the previous level's AMF already acted.
- ``"mid"``: the output of the mid block.

The AMFs are applied by forward hooks on those diffusers sub-modules, not by re-implementing the UNet's
forward, so the same code wraps ``UNet2DModel`` (tiny, trained from scratch here) and ``UNet2DConditionModel``
(Stable-Diffusion-sized, loaded from a local folder; it gets a learned "null" text context of one token).
A modality that is switched off has no encoder, no AMF parameters and no hook effect; with all three off (and
``concat_lr=False``) the network is exactly the plain backbone. ``concat_lr`` additionally concatenates the LR
latent to the UNet input (SR3/LDM-SR style); for a pretrained backbone the extra input channels of ``conv_in``
start at zero, so the pretrained behaviour is kept at init.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from .amf import AMF, AMFMode
from .cond_encoders import Level, LREncoder, MapEncoder

__all__ = ["MODALITIES", "PADDING_MODES", "SSRUNet", "load_pretrained_unet", "set_padding_mode"]

# f_1, f_2, f_3 of the paper, in that order.
MODALITIES = ("kernel", "depth", "lr")
PADDING_MODES = ("zeros", "reflect")


def set_padding_mode(module: nn.Module, mode: str) -> int:
    """Pad every padded ``Conv2d`` of ``module`` with ``mode`` (same weights, same output size); returns how many."""
    n = 0
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and isinstance(conv.padding, tuple) and any(conv.padding):
            conv.padding_mode = mode
            n += 1
    return n


def load_pretrained_unet(path: str) -> nn.Module:
    """The UNet of a local diffusers folder (``<path>/unet``); nothing is downloaded."""
    root = Path(path)
    cfg_file = root / "unet" / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"pretrained UNet not found: {cfg_file} does not exist. Give a local diffusers folder with a unet/ "
            "subfolder (e.g. a Stable Diffusion checkpoint); nothing is downloaded."
        )
    from diffusers import UNet2DConditionModel, UNet2DModel

    cls = UNet2DModel if json.loads(cfg_file.read_text()).get("_class_name") == "UNet2DModel" else UNet2DConditionModel
    return cls.from_pretrained(str(root), subfolder="unet", local_files_only=True)


def _expand_conv_in(unet: nn.Module, extra: int) -> None:
    """Give ``unet.conv_in`` ``extra`` more input channels, zero-initialised (pretrained output kept at init)."""
    old: nn.Conv2d = unet.conv_in
    new = nn.Conv2d(old.in_channels + extra, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra)


def _amf_hook(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: apply the AMF that :meth:`SSRUNet.denoise` attached to ``module`` to its output."""
    cond = getattr(module, "_ssr_cond", None)
    if cond is None:
        raise RuntimeError("SSRUNet backbone called directly: use SSRUNet.forward/denoise, which pass the features")
    amf, feats = cond
    if isinstance(output, tuple):  # down block: (hidden, skip residuals); the last skip is the hidden state itself
        new = amf(output[0], feats)
        return (new, tuple(output[1][:-1]) + (new,), *output[2:])
    return amf(output, feats)


class SSRUNet(ModelMixin, ConfigMixin):
    """Denoising UNet conditioned by AMF on kernel, depth and LR features (see the module doc).

    Args:
        latent_channels: Channels of the VAE latent (the UNet's output has this many channels).
        block_out_channels: Tiny backbone widths per level (ignored with ``pretrained_path``).
        down_block_types: Tiny backbone down blocks (diffusers names).
        up_block_types: Tiny backbone up blocks.
        layers_per_block: ResNets per block of the tiny backbone.
        attention_head_dim: Head width of the tiny backbone's attention blocks.
        pretrained_path: Local diffusers folder with a ``unet/`` subfolder; replaces the tiny backbone.
        use_kernel: f_1, the kernel-field modality.
        use_depth: f_2, the depth modality.
        use_lr: f_3, the LR-latent modality (through the half-UNet LR encoder).
        concat_lr: Concatenate the LR latent to the noisy latent at the UNet input.
        kernel_channels: Channels of the kernel condition (441 = raw 21×21 field; 10-15 for a PCA code).
        amf_hidden: Hidden width of the AMF MLPs (paper: 128).
        amf_pooled: Global (pooled) AMF instead of per-pixel.
        amf_mode: ``"residual"`` (identity at init) or ``"paper"`` (literal Eq. 3).
        amf_on_input: Also modulate the ``conv_in`` output (full latent resolution).
        lr_width_mult: LR encoder width relative to the UNet's per level.
        map_width: Width of the depth and kernel encoders.
        map_out: Channels of the depth / kernel features f_1, f_2.
        padding_mode: Padding of every padded convolution of the backbone and the encoders: ``"zeros"`` (diffusers'
            own) or ``"reflect"``. Zero padding tells a convolution where the border of its input is, so a model
            trained on small patches learns position-dependent output near (and a patch side away from) every edge
            and repeats it at every tile edge of a larger image (stripes, docs/DESIGN.md §4); reflect padding gives
            it no border signal.
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        block_out_channels: Sequence[int] = (32, 64, 64),
        down_block_types: Sequence[str] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types: Sequence[str] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block: int = 1,
        attention_head_dim: int = 8,
        pretrained_path: str | None = None,
        use_kernel: bool = True,
        use_depth: bool = True,
        use_lr: bool = True,
        concat_lr: bool = False,
        kernel_channels: int = 441,
        amf_hidden: int = 128,
        amf_pooled: bool = False,
        amf_mode: AMFMode = "residual",
        amf_on_input: bool = True,
        lr_width_mult: float = 1.0,
        map_width: int = 32,
        map_out: int = 32,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        self.latent_channels, self.concat_lr = latent_channels, concat_lr
        if pretrained_path is not None:
            self.backbone = load_pretrained_unet(pretrained_path)
            if concat_lr:
                _expand_conv_in(self.backbone, latent_channels)
        else:
            from diffusers import UNet2DModel

            self.backbone = UNet2DModel(
                in_channels=latent_channels * (2 if concat_lr else 1),
                out_channels=latent_channels,
                down_block_types=tuple(down_block_types),
                up_block_types=tuple(up_block_types),
                block_out_channels=tuple(block_out_channels),
                layers_per_block=layers_per_block,
                attention_head_dim=attention_head_dim,
                norm_num_groups=min(32, min(block_out_channels)),
            )
        cross_dim = getattr(self.backbone.config, "cross_attention_dim", None)
        # UNet2DConditionModel needs a text context: one learned token (zero at init) stands in for the prompt.
        self.null_context = nn.Parameter(torch.zeros(1, 1, cross_dim)) if cross_dim else None
        self._levels = self._find_levels(amf_on_input)
        self.enabled = [m for m, on in zip(MODALITIES, (use_kernel, use_depth, use_lr), strict=True) if on]

        encoders: dict[str, nn.Module] = {}
        if use_kernel:
            encoders["kernel"] = MapEncoder(kernel_channels, self._levels, map_width, map_out)
        if use_depth:
            encoders["depth"] = MapEncoder(1, self._levels, map_width, map_out)
        if use_lr:
            encoders["lr"] = LREncoder(latent_channels, self._levels, width_mult=lr_width_mult)
        self.encoders = nn.ModuleDict(encoders)
        self.amf = nn.ModuleDict()
        if encoders:
            for i, (name, _, ch) in enumerate(self._levels):
                mods = {m: enc.out_channels[i] for m, enc in encoders.items()}
                self.amf[name] = AMF(ch, mods, amf_hidden, amf_pooled, amf_mode)
        # Module-level hook function reading its (AMF, features) from the hooked module, so a copy of this
        # network (copy.deepcopy) hooks its own AMFs, which a closure over `self` would not.
        for name in self.amf:
            self._module_at(name).register_forward_hook(_amf_hook)
        if padding_mode != "zeros":
            set_padding_mode(self, padding_mode)

    # --- structure ----------------------------------------------------------------------------------------------
    def _module_at(self, level: str) -> nn.Module:
        if level == "in":
            return self.backbone.conv_in
        if level == "mid":
            return self.backbone.mid_block
        return self.backbone.down_blocks[int(level.removeprefix("down"))]

    def _find_levels(self, on_input: bool) -> list[Level]:
        chans = list(self.backbone.config.block_out_channels)
        levels: list[Level] = [("in", 1, chans[0])] if on_input else []
        stride = 1
        for i, block in enumerate(self.backbone.down_blocks):
            if getattr(block, "downsamplers", None) is not None:
                stride *= 2
            levels.append((f"down{i}", stride, chans[i]))
        if getattr(self.backbone, "mid_block", None) is not None:
            levels.append(("mid", stride, chans[-1]))
        return levels

    @property
    def levels(self) -> list[Level]:
        """``(name, stride, channels)`` of every AMF site, in forward order."""
        return list(self._levels)

    @property
    def size_multiple(self) -> int:
        """Latent sides must be multiples of this (the backbone's total downsampling)."""
        return max(s for _, s, _ in self._levels) if self._levels else 1

    def conditioning_parameters(self) -> list[nn.Parameter]:
        """Encoders + AMF (+ null context): what trains when the backbone is frozen."""
        params = list(self.encoders.parameters()) + list(self.amf.parameters())
        return params + ([self.null_context] if self.null_context is not None else [])

    # --- forward ------------------------------------------------------------------------------------------------
    def encode(
        self, size: tuple[int, int], z_lr: Tensor | None = None, depth: Tensor | None = None,
        kernel: Tensor | None = None, kernel_projected: bool = False,
    ) -> dict[str, list[Tensor]]:
        """Features ``{modality: [one map per level]}`` of the enabled modalities; ``size`` is the latent grid.
        ``kernel_projected``: ``kernel`` is the kernel encoder's per-pixel projection of K_T
        (:meth:`kernel_projection`), not the field."""
        inputs = {"kernel": kernel, "depth": depth, "lr": z_lr}
        feats: dict[str, list[Tensor]] = {}
        for name, enc in self.encoders.items():
            x = inputs[name]
            if x is None:
                raise ValueError(f"SSRUNet was built with use_{name}=True but got no {name} condition")
            if name == "lr":
                feats[name] = enc(x)
            else:
                feats[name] = enc(x.to(self.param_dtype), size, projected=name == "kernel" and kernel_projected)
        return feats

    def kernel_projection(self) -> tuple[Tensor, Tensor] | None:
        """``(weight (width, k²), bias (width,))`` of the kernel encoder's first layer, a per-pixel affine map of the
        field: what the kernel modality reads of K_T (None without it)."""
        if "kernel" not in self.encoders:
            return None
        conv = self.encoders["kernel"].proj[0]
        return conv.weight.detach().float().flatten(1), conv.bias.detach().float()

    @property
    def param_dtype(self) -> torch.dtype:
        """dtype of the weights (map conditions arrive as float32 and are cast to it)."""
        return next(self.parameters()).dtype

    def denoise(self, z_t: Tensor, t: Tensor | int, feats: dict[str, list[Tensor]], z_lr: Tensor | None = None) -> Tensor:
        """The UNet output (ε̂, x̂0 or v̂) from precomputed ``feats`` (reused across sampling steps)."""
        x = z_t
        if self.concat_lr:
            if z_lr is None:
                raise ValueError("SSRUNet(concat_lr=True) needs the LR latent z_lr")
            x = torch.cat([z_t, z_lr.to(z_t.dtype)], dim=1)
        for i, (name, _, _) in enumerate(self._levels):
            if name in self.amf:
                self._module_at(name)._ssr_cond = (self.amf[name], {m: feats[m][i] for m in feats})
        try:
            kwargs: dict[str, Any] = {}
            if self.null_context is not None:
                kwargs["encoder_hidden_states"] = self.null_context.expand(x.shape[0], -1, -1).to(x.dtype)
            return self.backbone(x, t, return_dict=False, **kwargs)[0]
        finally:
            for name in self.amf:
                self._module_at(name)._ssr_cond = None

    def forward(
        self, z_t: Tensor, t: Tensor | int, z_lr: Tensor | None = None, depth: Tensor | None = None,
        kernel: Tensor | None = None,
    ) -> Tensor:
        """The UNet output (ε̂, x̂0 or v̂) for noisy latents ``z_t (B, C, h, w)`` at timesteps ``t``; depth/kernel on
        the LR grid, any size."""
        size = (z_t.shape[-2], z_t.shape[-1])
        return self.denoise(z_t, t, self.encode(size, z_lr, depth, kernel), z_lr)
