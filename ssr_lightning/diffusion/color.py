"""Colour correction of a diffusion output from its condition image (StableSR / DiffBIR / OSEDiff practice).

A latent diffusion model's colours drift (a lossy autoencoder, too few steps, a start from noise); the condition
image (the bicubic-upsampled LR, or the front end's I_T) has the right colours but no detail. Both corrections keep
the output's detail and take the colour from the condition:

- ``wavelet``: StableSR's wavelet reconstruction. Each image is split into high frequencies and a residual low
  band by ``levels`` rounds of a 3×3 binomial blur with dilation 1, 2, 4, …; the result is the output's high
  frequencies plus the condition's low band (structures above ~2^levels pixels, colour included).
- ``adain``: per-channel mean and standard deviation of the output set to the condition's (AdaIN).

``color_fix(img, reference, "none")`` returns ``img`` itself.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ColorFix", "adain_color_fix", "color_fix", "wavelet_color_fix", "wavelet_decomposition"]

ColorFix = Literal["none", "wavelet", "adain"]


def _wavelet_blur(img: Tensor, radius: int) -> Tensor:
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=img.dtype, device=img.device) / 16
    c = img.shape[1]
    # replicate padding works for any image size (reflect needs the image larger than the dilation)
    x = F.pad(img, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c, dilation=radius)


def wavelet_decomposition(img: Tensor, levels: int = 5) -> tuple[Tensor, Tensor]:
    """``(high, low)`` with ``high + low == img``: ``levels`` dilated blurs (radius 1, 2, …, 2^(levels−1))."""
    high = torch.zeros_like(img)
    low = img
    for i in range(levels):
        blurred = _wavelet_blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(img: Tensor, reference: Tensor, levels: int = 5) -> Tensor:
    """High frequencies of ``img`` + the low band of ``reference`` (same shape ``(B, 3, H, W)``)."""
    high, _ = wavelet_decomposition(img, levels)
    _, low = wavelet_decomposition(reference.to(img), levels)
    return high + low


def adain_color_fix(img: Tensor, reference: Tensor, eps: float = 1e-5) -> Tensor:
    """``img`` with each channel's mean and std replaced by ``reference``'s (sizes may differ)."""
    ref = reference.to(img)
    mu, sd = img.mean((-2, -1), keepdim=True), img.std((-2, -1), keepdim=True)
    mu_r, sd_r = ref.mean((-2, -1), keepdim=True), ref.std((-2, -1), keepdim=True)
    return (img - mu) / (sd + eps) * sd_r + mu_r


def color_fix(img: Tensor, reference: Tensor, mode: ColorFix = "none") -> Tensor:
    """Colour-correct ``img (B, 3, H, W)`` from ``reference`` by ``mode`` (``none`` | ``wavelet`` | ``adain``)."""
    if mode == "none":
        return img
    if mode == "wavelet":
        if reference.shape != img.shape:
            raise ValueError(f"wavelet colour fix: reference {tuple(reference.shape)} must match the image "
                             f"{tuple(img.shape)}")
        return wavelet_color_fix(img, reference)
    if mode == "adain":
        return adain_color_fix(img, reference)
    raise ValueError(f"color_fix must be 'none', 'wavelet' or 'adain', got {mode!r}")
