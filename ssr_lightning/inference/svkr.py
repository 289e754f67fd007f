"""SVKR: Spatially Variant Kernel Refinement (Algorithm 1 of the SSR paper, docs/DESIGN.md §1).

Three trained stages, composed without any parameters of their own::

    D^0 = DE(LR);  K^0 = KE(LR, D^0);  I^0 = NBSR(LR, K^0)
    for t = 1..T:
        D^t = DE(I^{t-1})                          # depth from the latest SR, resampled to the LR grid
        K^t = γ·KE(LR, D^t) + (1 − γ)·K^{t−1}      # EMA of kernel fields (Algorithm 1's form, not Eq. 2)
        I^t = NBSR(LR, K^t)

Every iterate is kept (:class:`SVKRResult`) for the paper's Fig. 4 and the per-iteration metrics. Depth maps live
on the LR grid in the project convention ([0, 1], 0 = nearest), exactly where DKENet reads them; an HR-sized
depth (from DE on an SR image) is resampled as ``depth_lr`` is defined (``[..., ::s, ::s]``, else bilinear).
A convex combination of two kernel fields whose kernels each sum to 1 again sums to 1, so K^t stays a field.

``SVKR.from_config`` builds the whole chain from the stage checkpoints that ``ssr fit`` writes (no Lightning).

:meth:`SVKR.coded` runs the same algorithm in kernel-code space and in tiles, for images of any size
(``inference/svkr_codes.py``): the code and the other statistics a consumer reads are affine in the field, so their
EMA is exact, and no 441-channel field of the whole image is ever held. :meth:`SVKR.forward` keeps every field (the
per-iteration studies on crops).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ssr_lightning.inference.checkpoints import load_model, resolve_checkpoint
from ssr_lightning.inference.depth import (
    DepthEstimator,
    build_depth_estimator,
    resize_depth,
)
from ssr_lightning.inference.svkr_codes import CodedSVKR, ImageSink, Probe, run_coded
from ssr_lightning.registry import register_stage

__all__ = ["SVKR", "DepthKind", "SVKRConfig", "SVKRResult", "load_depth"]

DepthKind = Literal["gt", "learned", "midas", "dpt"]


@dataclass
class SVKRConfig:
    """Where SVKR's three stages come from, and Algorithm 1's T and γ."""

    dkenet_ckpt: str | None = None
    """KE checkpoint (None: the newest runs/dkenet run's best.ckpt)."""
    nbsr_ckpt: str | None = None
    """NBSR checkpoint (None: the newest runs/nbsr run's best.ckpt)."""
    depth: DepthKind = "learned"
    """DE: gt (oracle, the batch's depth), learned (DepthNet), midas or dpt."""
    depth_ckpt: str | None = None
    """DE weights: DepthModule checkpoint (None: the newest runs/depth run's), MiDaS .pt file or DPT folder."""
    iterations: int = 3
    """T, refinement steps after the initial pass (paper: 3; 0 = one DE -> KE -> NBSR pass)."""
    gamma: float = 0.9
    """γ, weight of the new kernel estimate in the update (paper: 0.9)."""

    def __post_init__(self) -> None:
        if self.iterations < 0 or not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"SVKR: need iterations >= 0 and gamma in [0, 1], got {self.iterations}, {self.gamma}")


@dataclass
class SVKRResult:
    """All iterates of one SVKR run: ``depths``, ``kernels`` and ``images`` each hold T+1 tensors (t = 0..T).

    ``depths[t]``: ``(B, 1, h, w)`` on the LR grid in [0, 1]; ``kernels[t]``: ``(B, k², h, w)``;
    ``images[t]``: ``(B, 3, s·h, s·w)`` clamped to [0, 1].
    """

    depths: list[Tensor] = field(default_factory=list)
    kernels: list[Tensor] = field(default_factory=list)
    images: list[Tensor] = field(default_factory=list)
    steps: int | None = None  # T when only the final iterate was kept (``SVKR(..., keep_all=False)``)

    @property
    def iterations(self) -> int:
        """T, the number of refinement steps after the initial pass."""
        return self.steps if self.steps is not None else len(self.images) - 1

    @property
    def final_depth(self) -> Tensor:
        """D^T."""
        return self.depths[-1]

    @property
    def final_kernel(self) -> Tensor:
        """K^T."""
        return self.kernels[-1]

    @property
    def final_image(self) -> Tensor:
        """I^T, the SR image SVKR returns."""
        return self.images[-1]

    @property
    def final(self) -> tuple[Tensor, Tensor, Tensor]:
        """(D^T, K^T, I^T)."""
        return self.final_depth, self.final_kernel, self.final_image


@register_stage("svkr", label="SVKR", config="configs/svkr.yaml", module="SVKRModule", weights=False)
class SVKR(nn.Module):
    """Algorithm 1 over a depth estimator, a kernel estimator and a kernel-conditioned non-blind SR model.

    Args:
        depth_estimator: ``DE(image, gt_depth=None) -> (B, 1, H, W)`` in [0, 1] (a :class:`DepthEstimator`).
        kernel_estimator: KE, a ``DKENet``: ``KE(lr, depth_lr) -> (B, k², h, w)``.
        sr_model: NBSR on kernel fields, a ``KernelConditionedSR``: ``NBSR(lr, kernel | None) -> (B, 3, s·h, s·w)``.
        iterations: T, refinement steps after the initial pass (paper: 3).
        gamma: γ, weight of the new kernel estimate in the EMA update (paper: 0.9; 1 = no memory).
        grad: run with autograd enabled (default: inference under ``torch.no_grad``).
    """

    def __init__(
        self, depth_estimator: DepthEstimator, kernel_estimator: nn.Module, sr_model: nn.Module, iterations: int = 3,
        gamma: float = 0.9, *, grad: bool = False,
    ) -> None:
        super().__init__()
        if iterations < 0:
            raise ValueError(f"SVKR: iterations must be >= 0, got {iterations}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"SVKR: gamma must be in [0, 1], got {gamma}")
        self.depth_estimator = depth_estimator
        self.kernel_estimator = kernel_estimator
        self.sr_model = sr_model
        self.iterations, self.gamma, self.grad = int(iterations), float(gamma), grad

    # --- the three stage calls --------------------------------------------------------------------------------
    def estimate_depth(self, image: Tensor, lr_size: tuple[int, int], gt_depth: Tensor | None = None) -> Tensor:
        """DE on ``image`` (LR or SR), resampled to the LR grid as ``depth_lr`` is (``[::s, ::s]`` or bilinear)."""
        depth = self.depth_estimator(image.clamp(0.0, 1.0), gt_depth=gt_depth)
        return resize_depth(depth, lr_size).float()

    def estimate_kernel(self, lr: Tensor, depth_lr: Tensor) -> Tensor:
        """KE(LR, D): the raw kernel field, before the EMA."""
        return self.kernel_estimator(lr, depth_lr).float()

    def super_resolve(self, lr: Tensor, kernel: Tensor | None) -> Tensor:
        """NBSR(LR, K) clamped to [0, 1]; ``kernel=None`` zeroes the condition (the mean-kernel code)."""
        return self.sr_model(lr, kernel).clamp(0.0, 1.0)

    @staticmethod
    def ema(new: Tensor, previous: Tensor, gamma: float) -> Tensor:
        """K^t = γ·KE(LR, D^t) + (1 − γ)·K^{t−1}."""
        return gamma * new + (1.0 - gamma) * previous

    # --- Algorithm 1 -----------------------------------------------------------------------------------------
    def forward(
        self,
        lr: Tensor,
        gt_depth: Tensor | None = None,
        iterations: int | None = None,
        gamma: float | None = None,
        keep_all: bool = True,
        on_stage: Callable[[str, int], None] | None = None,
    ) -> SVKRResult:
        """Run Algorithm 1 on ``lr (B, 3, h, w)``; ``gt_depth`` feeds a ground-truth DE. Overrides T and γ if given.

        ``keep_all=False`` keeps only (D^T, K^T, I^T), for large images: a 441-channel kernel field per iterate is
        ~1.8 kB per LR pixel. ``on_stage(name, t)`` is called before each stage call (``"DE"``, ``"KE"``,
        ``"NBSR"``; t = 0..T), for progress reports."""
        steps = self.iterations if iterations is None else int(iterations)
        g = self.gamma if gamma is None else float(gamma)
        size = (lr.shape[-2], lr.shape[-1])
        out = SVKRResult()
        stage = on_stage or (lambda name, t: None)
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            stage("DE", 0)
            depth = self.estimate_depth(lr, size, gt_depth)  # D^0 = DE(I^0), I^0 = LR
            stage("KE", 0)
            kernel = self.estimate_kernel(lr, depth)
            stage("NBSR", 0)
            image = self.super_resolve(lr, kernel)
            out.depths.append(depth)
            out.kernels.append(kernel)
            out.images.append(image)
            for t in range(1, steps + 1):
                stage("DE", t)
                depth = self.estimate_depth(image, size, gt_depth)
                if not keep_all:
                    out = SVKRResult(steps=steps)  # drop the previous iterates before the next KE allocates
                stage("KE", t)
                new = self.estimate_kernel(lr, depth)
                # in place without the iterates: one field less at the peak (same values as ema())
                kernel = self.ema(new, kernel, g) if keep_all else new.mul_(g).add_(kernel, alpha=1.0 - g)
                stage("NBSR", t)
                image = self.super_resolve(lr, kernel)
                out.depths.append(depth)
                out.kernels.append(kernel)
                out.images.append(image)
        if not keep_all:
            out.steps = steps
        return out

    def coded(
        self, lr: Tensor, gt_depth: Tensor | None = None, iterations: int | None = None, gamma: float | None = None,
        *, tile: int = 256, align: int = 2, dtype: torch.dtype | None = None, probes: dict[str, Probe] | None = None,
        keep_all: bool = False, image_sink: ImageSink | None = None, on_stage: Callable[[str, int], None] | None = None,
        probe_dtype: torch.dtype = torch.float32,
    ) -> CodedSVKR:
        """Algorithm 1 in kernel-code space, KE and NBSR in ``tile``-px tiles with a halo (module doc): the same
        depths, images and (through the codec) kernels as :meth:`forward` up to float round-off.

        ``probes`` (``{name: (weight (c, k²), bias (c,) | None)}``) are extra affine statistics of K_T kept per pixel
        (the diffusion's kernel-encoder projection), in ``probe_dtype``; ``image_sink(window, tile)`` takes I_T tile by tile instead of one
        HR tensor; ``keep_all`` keeps every iterate's code and image; ``dtype`` is the autocast dtype of KE and NBSR
        (None: float32); core tiles start at multiples of ``align`` LR px; ``on_stage`` as in :meth:`forward`."""
        with torch.set_grad_enabled(False):
            return run_coded(
                self.depth_estimator, self.kernel_estimator, self.sr_model, lr,
                iterations=self.iterations if iterations is None else int(iterations),
                gamma=self.gamma if gamma is None else float(gamma), gt_depth=gt_depth, tile=tile, align=align,
                dtype=dtype, probes=probes, probe_dtype=probe_dtype, keep_all=keep_all, image_sink=image_sink, on_stage=on_stage,
                estimate_depth=self.estimate_depth,
            )

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, gamma={self.gamma}"

    # --- construction from stage checkpoints ------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: SVKRConfig, map_location: str | torch.device = "cpu", **depth_kw: Any) -> SVKR:
        """Load KE, NBSR and DE from ``ssr fit`` checkpoints (the newest default runs where a path is None)."""
        ke = load_model(resolve_checkpoint(cfg.dkenet_ckpt, "dkenet"), "dkenet", map_location)
        sr = load_model(resolve_checkpoint(cfg.nbsr_ckpt, "nbsr"), "nbsr", map_location)
        de = load_depth(cfg.depth, cfg.depth_ckpt, **depth_kw)
        return cls(de, ke, sr, iterations=cfg.iterations, gamma=cfg.gamma).eval()


def load_depth(kind: DepthKind, path: str | os.PathLike[str] | None = None, **kw: Any) -> DepthEstimator:
    """A depth estimator by kind; ``learned`` without a path takes the newest runs/depth checkpoint."""
    if kind == "learned":
        path = resolve_checkpoint(path, "depth")
    elif kind in ("midas", "dpt") and (path is None or not Path(path).exists()):
        raise FileNotFoundError(
            f"SVKR: {kind} depth weights not found: {path}. Give a local path (nothing is downloaded): a MiDaS "
            "v3.1 .pt file for 'midas', a HuggingFace DPT folder for 'dpt'."
        )
    return build_depth_estimator(kind, None if path is None else str(path), **kw).eval()
