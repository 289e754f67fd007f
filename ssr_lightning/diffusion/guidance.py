"""Kernel-aware guidance (BlindDiff, ``../shared/papers/blinddiff.txt``) as a step hook of ``GaussianDiffusion.sample``.

Between sampling steps the predicted clean latent x̂0 is decoded, re-degraded with the estimated kernel field
through the project's own differentiable blur + ↓s (``degradation.blur.blur_downsample``), and moved down the
gradient of the LR-consistency error ``E(x̂0) = ‖LR − (D(x̂0) ⊗ K)↓s‖²``:

    x̂0' = x̂0 − η · α* · ∇E(x̂0),        α* = ‖∇E‖² / (2 ‖J ∇E‖²)

``α*`` is the exact minimiser of ``E`` along the gradient for the linearised problem (``J`` = the Jacobian of
decode → blur → ↓s, applied by a finite difference), so the step size ``η`` is dimensionless and does not depend on
the autoencoder, the image size or the noise level: ``η = 1`` is a full line-search step, ``0`` is off. It works for
both autoencoders: for space-to-depth ``D`` is linear, for a VAE the gradient flows through the decoder's autograd.
The sampler's latent is then rebuilt from the corrected x̂0 at fixed ε̂: ``z_{t−1} += x0_coef · (x̂0' − x̂0)``
(``StepState.x0_coef``: √ᾱ_prev for DDIM).

On a tiled image the error is the sum over tiles of the tile's residuals weighted by its blending weights on the LR
grid (a partition of unity), so one tile is exactly the whole-image error and tile borders, where a tile's blur sees
reflect padding instead of its neighbour, weigh little.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ssr_lightning.degradation.blur import blur_downsample
from ssr_lightning.diffusion.process import StepState
from ssr_lightning.diffusion.tiling import TileGrid

__all__ = ["KernelGuidance", "lr_consistency"]


def lr_consistency(sr: Tensor, lr: Tensor, kernel: Tensor, scale: int) -> Tensor:
    """Per-sample ``‖LR − (SR ⊗ K)↓s‖²`` (sum over pixels and channels), ``(B,)``."""
    return (lr - blur_downsample(sr, kernel, scale, method="shift")).pow(2).flatten(1).sum(1)


class KernelGuidance:
    """Step hook: one guidance step on x̂0 per sampling step (see the module doc).

    Args:
        decode: Latent → image in [0, 1] (``latents.decode``; differentiable).
        lr: The LR image ``(B, 3, h, w)`` the sample must be consistent with.
        kernel: Kernel field ``(B, k², h, w)`` on the LR grid (SVKR's K_T), or a function of a ``Tile`` giving the
            field on that tile (K_T rebuilt on demand: ``SVKR.coded``'s ``kernel``).
        scale: SR factor s.
        step: η, the fraction of the line-search step (0 = off).
        grid: Tiling of the LR image (None: the whole image at once).
        latent_factor: Latent pixels per LR pixel (``s / vae_factor``).
        offset: ``(z_c, scale)`` when the process diffuses a residual: x̂0 is decoded as ``x̂0 / scale + z_c``.
    """

    def __init__(self, decode: Callable[[Tensor], Tensor], lr: Tensor, kernel: Tensor | Callable[[Any], Tensor],
                 scale: int, step: float, grid: TileGrid | None = None, latent_factor: float = 1.0,
                 offset: tuple[Tensor, float] | None = None) -> None:
        if step < 0:
            raise ValueError(f"guidance step must be >= 0 (0 = off), got {step}")
        self.decode, self.lr, self.kernel, self.scale, self.step = decode, lr, kernel, int(scale), float(step)
        self.grid = grid or TileGrid(lr.shape[-2], lr.shape[-1], 0, 0)
        self.f = latent_factor
        self.offset = offset
        self.history: list[Tensor] = []  # E(x̂0) before each step, per sample (for tests and diagnostics)

    def _forward(self, xt: Tensor, i: int) -> Tensor:
        """(decode → blur with tile ``i``'s kernels → ↓s) of a latent tile."""
        # clone: under torch.inference_mode (Lightning's test/predict) the field is an inference tensor, which
        # autograd may not save for backward
        tile = self.grid.tiles[i]
        kernel = self.kernel[tile.window(1)].clone() if isinstance(self.kernel, Tensor) else self.kernel(tile)
        if self.offset is not None:
            z_c, scale = self.offset
            xt = xt / scale + z_c[tile.window(self.f)].clone()
        return blur_downsample(self.decode(xt), kernel, self.scale, method="shift")

    def correct(self, x0: Tensor) -> Tensor:
        """x̂0 after one guidance step (the error before it is appended to :attr:`history`)."""
        tiles, weights = self.grid.tiles, [w.to(x0) for w in self.grid.weights(1)]
        grad = torch.zeros_like(x0)
        err = torch.zeros(x0.shape[0], device=x0.device)
        before: list[Tensor] = []
        for i, tile in enumerate(tiles):
            with torch.inference_mode(False), torch.enable_grad():
                xt = x0[tile.window(self.f)].detach().clone().requires_grad_(True)
                out = self._forward(xt, i)
                e = (weights[i].clone() * (self.lr[tile.window(1)].clone() - out).pow(2)).flatten(1).sum(1)
                (g,) = torch.autograd.grad(e.sum(), xt)
            err += e.detach()
            grad[tile.window(self.f)] += g  # the weighted errors add up, so do their gradients
            before.append(out.detach())
        self.history.append(err.cpu())
        # ‖J g‖² by a finite difference; h per sample gives h·g an rms of 1e-2 latent units (a VAE's linear regime)
        h = 1e-2 / grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
        hb = h.view(-1, *([1] * (x0.dim() - 1)))
        jg2 = torch.zeros_like(err)
        for i, tile in enumerate(tiles):
            moved = self._forward(x0[tile.window(self.f)] + hb * grad[tile.window(self.f)], i)
            jg2 += (weights[i] * (moved - before[i]).pow(2)).flatten(1).sum(1)
        jg2 = jg2 / h.pow(2)
        g2 = grad.flatten(1).pow(2).sum(1)
        alpha = torch.where(jg2 > 0, g2 / (2 * jg2.clamp_min(1e-30)), torch.zeros_like(g2))
        return x0 - (self.step * alpha).view(-1, *([1] * (x0.dim() - 1))) * grad

    def __call__(self, state: StepState) -> Tensor | None:
        if self.step == 0 or state.x0 is None:
            return None
        new_x0 = self.correct(state.x0)
        return state.latent + state.x0_coef * (new_x0 - state.x0)
