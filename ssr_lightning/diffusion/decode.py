"""One image's sampling job and its output in row bands: decode, crop, colour fix, band by band.

:class:`SRJob` is what :meth:`LatentDiffusionSR.sample_latent` reads: the padded LR, the tiling, the tiles' inputs
(``banded.TileInputs``), the start latent and the condition image (each either a whole tensor, or a function of a row
range, so that a caller holding only latents never builds an HR-sized image), the guidance kernel.

:func:`decode_bands` turns the final latent into the output, ``rows`` HR rows at a time. A pointwise latent
(space-to-depth) decodes each band on its own; the colour fix follows it exactly: ``wavelet`` reads the band grown by
its 31-px reach (five dilated 3×3 blurs, 1 + 2 + … + 16), ``adain`` the whole image's channel mean and std, gathered in
a first pass over the bands (float64 sums). A VAE decodes the whole image at once (its tiles blend), then bands of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssr_lightning.diffusion.banded import TileInputs, row_bands, widened
from ssr_lightning.diffusion.color import color_fix, wavelet_color_fix
from ssr_lightning.diffusion.config import SamplingConfig
from ssr_lightning.diffusion.tiling import TileGrid

__all__ = ["WAVELET_REACH", "SRJob", "decode_bands"]

WAVELET_REACH = sum(2**i for i in range(5))  # rows one output pixel of the wavelet fix reads on each side
Rows = Callable[[int, int], Tensor]  # (start, stop) -> rows of a map


@dataclass
class SRJob:
    """What one call samples: ``lr`` padded to the model's multiple, ``size`` the LR size to crop back to, the
    ``grid`` and the tiles' ``inputs``; ``start`` the start latent in the process's space (strength < 1) and
    ``condition`` the condition image (HR grid, padded), each a tensor or a function of a row range (latent rows,
    HR rows); ``guidance_kernel`` a field on the LR grid or a function of a ``Tile``."""

    sampling: SamplingConfig
    lr: Tensor
    size: tuple[int, int]
    grid: TileGrid
    inputs: TileInputs
    start: Tensor | Rows | None = None
    condition: Tensor | Rows | None = None
    guidance_kernel: Any = None

    def start_rows(self, a: int, b: int) -> Tensor:
        if self.start is None:
            raise ValueError("sampling with strength < 1 starts from an image latent: the job has none")
        return self.start[..., a:b, :] if isinstance(self.start, Tensor) else self.start(a, b)

    def start_latent(self) -> Tensor | None:
        """The whole start latent (None at strength 1)."""
        if self.sampling.strength >= 1.0 or self.start is None or isinstance(self.start, Tensor):
            return self.start if self.sampling.strength < 1.0 else None
        return self.start(0, self.inputs.z_c.shape[-2])

    def condition_rows(self, a: int, b: int) -> Tensor:
        """HR rows ``[a, b)`` of the condition image (what the colour fix copies its colours from)."""
        if self.condition is None:
            raise ValueError("this job has no condition image")
        return self.condition[..., a:b, :] if isinstance(self.condition, Tensor) else self.condition(a, b)


def decode_bands(model: Any, job: SRJob, z: Tensor, rows: int = 256) -> Iterator[tuple[int, Tensor]]:
    """``(first row, band (B, 3, n, s·w))`` of the SR image of the final latent ``z``, cropped to ``s·job.size``,
    clamped and colour-fixed as ``job.sampling`` says, top to bottom."""
    s, (h, w), z_c = model.scale, job.size, job.inputs.z_c
    height, width, fix = s * h, s * w, job.sampling.color_fix
    if not model.latents.pointwise:  # a VAE decodes tile by tile with blending: the whole image
        sr = model.decode_latent(model.from_process(z, z_c), job.grid).clamp(0, 1)[..., :height, :width]
        if fix != "none":
            sr = color_fix(sr, job.condition_rows(0, height)[..., :width], fix).clamp(0, 1)
        for a, b in row_bands(height, rows):
            yield a, sr[..., a:b, :]
        return
    f = model.latents.factor

    def decoded(a: int, b: int) -> Tensor:
        la, lb = a // f, math.ceil(b / f)
        x = model.latents.decode(model.from_process(widened(z[..., la:lb, :]), widened(z_c[..., la:lb, :])))
        x = x.clamp(0, 1)
        return x[..., a - la * f : b - la * f, :width]

    def reference(a: int, b: int) -> Tensor:
        return job.condition_rows(a, b)[..., :width].to(z.device)

    if fix == "none":
        for a, b in row_bands(height, rows):
            yield a, decoded(a, b)
    elif fix == "wavelet":
        r = WAVELET_REACH
        for a, b in row_bands(height, rows):
            ea, eb = max(0, a - r), min(height, b + r)
            out = wavelet_color_fix(decoded(ea, eb), reference(ea, eb))
            yield a, out[..., a - ea : b - ea, :].clamp(0, 1)
    else:  # adain: the whole image's channel statistics first
        sums = torch.zeros(4, z.shape[0], 3, 1, 1, dtype=torch.float64, device=z.device)
        for a, b in row_bands(height, rows):
            x, ref = decoded(a, b).double(), reference(a, b).double()
            sums += torch.stack([v for t in (x, ref) for v in (t.sum((-2, -1), keepdim=True),
                                                               t.pow(2).sum((-2, -1), keepdim=True))])
        n = height * width
        mu, mu_r = sums[0] / n, sums[2] / n
        sd = ((sums[1] - n * mu * mu) / (n - 1)).clamp_min(0).sqrt()
        sd_r = ((sums[3] - n * mu_r * mu_r) / (n - 1)).clamp_min(0).sqrt()
        for a, b in row_bands(height, rows):
            x = decoded(a, b)
            out = (x - mu.to(x)) / (sd.to(x) + 1e-5) * sd_r.to(x) + mu_r.to(x)
            yield a, out.clamp(0, 1)
