"""Depth-pooled kernels: DKENet's ``depth_pool_bins`` option (issue 21, docs/DESIGN.md §3).

In a depth-driven blur the kernel is a function of depth and a few per-image constants (focal plane, aperture,
optics), so every pixel at one depth has one kernel. A pixel alone says little about its kernel where it has no
edge; pooled with the pixels at its depth that do, it says much more. This module pools the per-pixel kernels in
soft depth bins, each pixel weighted by a learned confidence (where its own estimate is reliable), and gives each
pixel the pooled kernel of its depth, mixed with its own by a learned share. The pool is a mean of kernels, not of
log-kernels: a geometric mean is ruled by every pixel's worst tail (a first KE pooled that way trained worse than
one without depth), an arithmetic one by the bulk. The thin-lens head (``thin_lens``)
asks a network to *name* the lens (focal depth above all) from pooled features; pooling asks only that pixels at one
depth agree, which needs no focal depth: the sign ambiguity of a Gaussian blur about the focal plane does not arise.

The pooling is a sum over the image, so a tiled caller gives the whole image's sums (:meth:`DepthKernelPool.sums`
over every tile, then :meth:`DepthKernelPool.table`) and each tile's kernels equal the whole-image run's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DepthKernelPool"]

# Weight (in confidence-weighted pixels) of the image's overall pooled kernel in every bin: a bin with no pixels
# takes the image's kernel instead of a uniform one, a bin with many is hardly moved.
_GLOBAL_PRIOR = 1.0
# The pixel's own kernel's initial share of the mix (sigmoid(−3)): training starts from the pooled kernel.
_INIT_MIX_LOGIT = -3.0


class DepthKernelPool(nn.Module):
    """Confidence-weighted pooling of per-pixel kernels ``(B, k², h, w)`` in ``bins`` soft depth bins."""

    def __init__(self, channels: int, bins: int) -> None:
        """
        Args:
            channels: Feature width of the last features the confidence is read from.
            bins: Soft depth bins (triangular weights, centres evenly spaced over the [0, 1] depth range), ≥ 2.
        """
        super().__init__()
        if bins < 2:
            raise ValueError(f"depth_pool_bins must be 0 (off) or >= 2, got {bins}")
        self.bins = bins
        self.confidence = nn.Conv2d(channels, 1, 3, padding=1)
        self.mix = nn.Parameter(torch.tensor(_INIT_MIX_LOGIT))

    def bin_weights(self, depth: Tensor) -> Tensor:
        """``(B, bins, h, w)`` triangular weights of ``depth (B, 1, h, w)`` clamped to [0, 1]; they sum to 1."""
        centres = torch.linspace(0.0, 1.0, self.bins, device=depth.device, dtype=depth.dtype).view(1, -1, 1, 1)
        return (1.0 - (depth[:, :1].clamp(0, 1) - centres).abs() * (self.bins - 1)).clamp_min(0.0)

    def inputs(self, f3: Tensor, logits: Tensor) -> Tensor:
        """``(B, k² + 1, h, w)``: the per-pixel kernels (softmax of ``logits``) and the confidence in (0, 1) read
        from the last features ``f3``, in one tensor (a tiled caller crops both alike)."""
        return torch.cat([F.softmax(logits.float(), dim=1), torch.sigmoid(self.confidence(f3).float())], dim=1)

    def sums(self, inputs: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        """Confidence- and bin-weighted sums of the kernels in ``inputs`` (:meth:`inputs`), ``(B, bins, k²)``, and of
        the weights, ``(B, bins)``: additive over disjoint parts of an image."""
        kernels, conf = inputs[:, :-1], inputs[:, -1:]
        w = self.bin_weights(depth.to(inputs.dtype)) * conf
        return torch.einsum("bnhw,bkhw->bnk", w, kernels), w.sum(dim=(2, 3))

    @staticmethod
    def table(num: Tensor, den: Tensor) -> Tensor:
        """``(B, bins, k²)`` pooled kernel of each depth bin from :meth:`sums`, shrunk towards the image's own pooled
        kernel by ``_GLOBAL_PRIOR`` pixels (an empty bin is the image's kernel)."""
        overall = num.sum(dim=1) / den.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return (num + _GLOBAL_PRIOR * overall[:, None]) / (den + _GLOBAL_PRIOR)[..., None]

    def forward(self, inputs: Tensor, depth: Tensor, table: Tensor | None = None) -> Tensor:
        """Log-kernels ``(B, k², h, w)``: each pixel's depth-interpolated pooled kernel mixed with its own (a convex
        mix of kernels, so still a kernel); ``table`` (:meth:`table` of the whole image's sums) replaces the pooling
        of ``inputs`` itself."""
        if table is None:
            table = self.table(*self.sums(inputs, depth))
        pooled = torch.einsum("bnhw,bnk->bkhw", self.bin_weights(depth.to(inputs.dtype)), table.to(inputs.dtype))
        share = torch.sigmoid(self.mix)
        return torch.log(((1 - share) * pooled + share * inputs[:, :-1]).clamp_min(1e-30))
