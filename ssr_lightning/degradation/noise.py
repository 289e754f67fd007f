"""Sensor noise (Gaussian, optionally Poisson) and JPEG compression, batched with per-sample parameters.

Random draws come from each sample's CPU ``torch.Generator`` (so a sample's noise does not depend on its batch
neighbours or on the device) and are moved to the image's device afterwards.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = ["add_noise", "estimate_noise", "jpeg"]

JpegBackend = Literal["kornia", "cv2"]


def add_noise(lr: Tensor, sigma: Tensor, generators: list[torch.Generator], poisson: Tensor | None = None) -> Tensor:
    """Add per-sample noise to lr (B, C, h, w) in [0, 1] and clamp to [0, 1].

    sigma (B,): standard deviation in [0, 1] units. For samples with ``poisson[b]`` true the noise is
    signal-dependent instead: Poisson(lr * lam) / lam with lam = 1 / sigma^2, i.e. its std is sigma at white
    (sigma * sqrt(lr) elsewhere); this keeps one noise-strength parameter for both models.
    """
    b = lr.shape[0]
    if sigma.shape != (b,) or len(generators) != b:
        raise ValueError(
            f"need sigma (B,) and B generators for batch size {b}, got {tuple(sigma.shape)} and {len(generators)}"
        )
    sig = sigma.detach().to("cpu", torch.float64)
    pois = torch.zeros(b, dtype=torch.bool) if poisson is None else poisson.detach().to("cpu", torch.bool)
    noisy = []
    for i, g in enumerate(generators):
        s = float(sig[i])
        if bool(pois[i]) and s > 0:
            # torch.poisson has no generator argument on every device: draw on CPU from the sample's generator.
            lam = 1.0 / (s * s)
            clean = lr[i].detach().to("cpu", torch.float32).clamp(0.0, 1.0)
            counts = torch.poisson(clean * lam, generator=g)
            noisy.append((counts / lam).to(device=lr.device, dtype=lr.dtype))
        else:
            n = torch.randn(lr.shape[1:], generator=g, dtype=torch.float32)
            noisy.append(lr[i] + (s * n).to(device=lr.device, dtype=lr.dtype))
    return torch.stack(noisy).clamp_(0.0, 1.0)


def _jpeg_kornia(lr: Tensor, quality: Tensor) -> Tensor:
    from kornia.enhance import jpeg_codec_differentiable

    # kornia >= 0.7 takes a per-image quality (B,) and pads H, W to a multiple of 16 internally (replicate, as a
    # real encoder does) and crops back, so any LR size works. Its rounding is a differentiable cubic
    # surrogate, so the output is close to, not bit-equal with, libjpeg's (see tests for the measured gap).
    with torch.no_grad():
        out = jpeg_codec_differentiable(lr.clamp(0.0, 1.0), quality.to(device=lr.device, dtype=lr.dtype))
    return out.clamp_(0.0, 1.0)


def _jpeg_cv2(lr: Tensor, quality: Tensor) -> Tensor:
    out = []
    for img, q in zip(lr.detach().clamp(0.0, 1.0), quality.detach().cpu()):
        arr = (img.permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
        if arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)  # libjpeg's YCbCr conversion expects BGR from cv2
        ok, buf = cv2.imencode(".jpg", arr, [int(cv2.IMWRITE_JPEG_QUALITY), round(float(q))])
        if not ok:
            raise RuntimeError("cv2.imencode failed to encode a JPEG")
        dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if dec.ndim == 2:
            dec = dec[:, :, None]
        elif dec.shape[2] == 3:
            dec = cv2.cvtColor(dec, cv2.COLOR_BGR2RGB)
        out.append(torch.from_numpy(np.ascontiguousarray(dec)).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out).to(device=lr.device, dtype=lr.dtype)


def jpeg(lr: Tensor, quality: Tensor, backend: JpegBackend = "kornia") -> Tensor:
    """JPEG encode-decode lr (B, 3, h, w) in [0, 1] with per-sample quality (B,) in [1, 100].

    backend "kornia" (default): one batched torch call, runs on the images' device (GPU inside
    on_after_batch_transfer). backend "cv2": real libjpeg per sample on CPU (8-bit in and out), the reference.
    """
    if quality.shape != (lr.shape[0],):
        raise ValueError(f"quality must have shape (B,) = ({lr.shape[0]},), got {tuple(quality.shape)}")
    if backend == "kornia":
        if lr.shape[1] != 3:
            raise ValueError(f"the kornia JPEG backend needs RGB (B, 3, h, w), got {tuple(lr.shape)}")
        return _jpeg_kornia(lr, quality)
    if backend == "cv2":
        return _jpeg_cv2(lr, quality)
    raise ValueError(f'unknown JPEG backend {backend!r}; expected "kornia" or "cv2"')


def estimate_noise(img: Tensor) -> Tensor:
    """Per-image noise standard deviation (B,) in [0, 1] units, read from the pixels alone.

    Donoho's wavelet estimator: the median absolute value of the finest diagonal Haar detail of every colour
    channel, divided by 0.6745 (the MAD of a unit Gaussian). Texture also puts energy into that band, so clean detailed
    images read slightly above 0; it is a condition signal, computed identically at training and at test time.
    """
    if img.ndim != 4 or img.shape[-1] < 2 or img.shape[-2] < 2:
        raise ValueError(f"estimate_noise expects (B, C, h, w) with h, w >= 2, got {tuple(img.shape)}")
    h, w = img.shape[-2] // 2 * 2, img.shape[-1] // 2 * 2
    g = img.float()[..., :h, :w]
    hh = (g[..., 0::2, 0::2] - g[..., 0::2, 1::2] - g[..., 1::2, 0::2] + g[..., 1::2, 1::2]) / 2.0
    return hh.abs().flatten(1).median(dim=1).values / 0.6745
