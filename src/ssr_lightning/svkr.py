"""SVKR: Spatially Variant Kernel Refinement (Algorithm 1 of the SSR paper, DESIGN.md §1).

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

``SVKR.from_checkpoints`` builds the whole chain from the stage checkpoints that ``ssr fit`` writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ssr_lightning.degradation.blur import KernelBasis
from ssr_lightning.depth import DepthEstimator, build_depth_estimator, resize_depth

__all__ = ["SVKR", "DepthKind", "SVKRResult", "require_checkpoint"]

DepthKind = Literal["gt", "learned", "midas", "dpt"]

# The command that makes each stage's checkpoint, named in FileNotFoundError messages.
_MAKE = {
    "dkenet": "ssr fit --config configs/dkenet.yaml  (-> runs/dkenet/version_0/checkpoints/best.ckpt)",
    "nbsr": "ssr fit --config configs/nbsr.yaml  (-> runs/nbsr/version_0/checkpoints/best.ckpt)",
    "depth": "ssr fit --config configs/depth.yaml  (-> runs/depth/version_0/checkpoints/best.ckpt)",
}


def require_checkpoint(path: str | os.PathLike[str] | None, stage: str) -> Path:
    """``Path(path)`` if it is a file, else ``FileNotFoundError`` naming the path and the command that makes it."""
    what = {"dkenet": "DKENet (KE)", "nbsr": "NBSR", "depth": "depth network (DE)"}.get(stage, stage)
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"SVKR: {what} checkpoint not found: {path}. Train that stage first: {_MAKE.get(stage, 'ssr fit ...')}, "
            "or pass the path of an existing best.ckpt/last.ckpt."
        )
    return Path(path)


@dataclass
class SVKRResult:
    """All iterates of one SVKR run: ``depths``, ``kernels`` and ``images`` each hold T+1 tensors (t = 0..T).

    ``depths[t]``: ``(B, 1, h, w)`` on the LR grid in [0, 1]; ``kernels[t]``: ``(B, k², h, w)``;
    ``images[t]``: ``(B, 3, s·h, s·w)`` clamped to [0, 1].
    """

    depths: list[Tensor] = field(default_factory=list)
    kernels: list[Tensor] = field(default_factory=list)
    images: list[Tensor] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        """T, the number of refinement steps after the initial pass."""
        return len(self.images) - 1

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


class SVKR(nn.Module):
    """Algorithm 1 over a depth estimator, a kernel estimator and a kernel-conditioned non-blind SR model.

    Args:
        depth_estimator: ``DE(image, gt_depth=None) -> (B, 1, H, W)`` in [0, 1] (a :class:`DepthEstimator`).
        kernel_estimator: KE, a ``DKENet`` network or a ``DKENetModule``: ``KE(lr, depth_lr) -> (B, k², h, w)``.
        sr_model: NBSR, an ``NBSRModule`` (takes the kernel field, encodes it with its own PCA basis) or a bare
            ``NBSR`` network (takes a code map: then ``kernel_basis`` is required).
        iterations: T, refinement steps after the initial pass (paper: 3).
        gamma: γ, weight of the new kernel estimate in the EMA update (paper: 0.9; 1 = no memory).
        kernel_basis: PCA basis that encodes kernel fields for a bare ``NBSR`` network.
        code_std: per-component whitening of the codes (``NBSRModule.code_std``); default ones.
        grad: run with autograd enabled (default: inference under ``torch.no_grad``).
    """

    def __init__(
        self,
        depth_estimator: DepthEstimator,
        kernel_estimator: nn.Module,
        sr_model: nn.Module,
        iterations: int = 3,
        gamma: float = 0.9,
        *,
        kernel_basis: KernelBasis | None = None,
        code_std: Tensor | None = None,
        grad: bool = False,
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
        # A module with `encode` (NBSRModule) maps kernel fields itself; a bare network needs a basis.
        self._takes_field = callable(getattr(sr_model, "encode", None))
        if not self._takes_field and kernel_basis is None:
            raise ValueError("SVKR: a bare NBSR network needs kernel_basis= to encode kernel fields into codes")
        self.kernel_basis = kernel_basis
        if code_std is None and kernel_basis is not None:
            code_std = torch.ones(kernel_basis.n_components)
        self.register_buffer("code_std", code_std.detach().clone().float() if code_std is not None else None)

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
        if self._takes_field:
            sr = self.sr_model(lr, kernel)
        else:
            code = None
            if kernel is not None:
                assert self.kernel_basis is not None and self.code_std is not None
                code = self.kernel_basis.encode(kernel.float()) / self.code_std.view(1, -1, 1, 1)
            sr = self.sr_model(lr, code)
        return sr.clamp(0.0, 1.0)

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
    ) -> SVKRResult:
        """Run Algorithm 1 on ``lr (B, 3, h, w)``; ``gt_depth`` feeds a ground-truth DE. Overrides T and γ if given."""
        steps = self.iterations if iterations is None else int(iterations)
        g = self.gamma if gamma is None else float(gamma)
        size = (lr.shape[-2], lr.shape[-1])
        out = SVKRResult()
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            depth = self.estimate_depth(lr, size, gt_depth)  # D^0 = DE(I^0), I^0 = LR
            kernel = self.estimate_kernel(lr, depth)
            image = self.super_resolve(lr, kernel)
            out.depths.append(depth)
            out.kernels.append(kernel)
            out.images.append(image)
            for _ in range(steps):
                depth = self.estimate_depth(image, size, gt_depth)
                kernel = self.ema(self.estimate_kernel(lr, depth), kernel, g)
                image = self.super_resolve(lr, kernel)
                out.depths.append(depth)
                out.kernels.append(kernel)
                out.images.append(image)
        return out

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, gamma={self.gamma}"

    # --- construction from stage checkpoints ------------------------------------------------------------------
    @classmethod
    def from_checkpoints(
        cls,
        dkenet_ckpt: str | os.PathLike[str],
        nbsr_ckpt: str | os.PathLike[str],
        depth: DepthKind = "learned",
        depth_path: str | os.PathLike[str] | None = None,
        iterations: int = 3,
        gamma: float = 0.9,
        map_location: str | torch.device = "cpu",
        **depth_kw: Any,
    ) -> SVKR:
        """Load KE, NBSR and DE from ``ssr fit`` checkpoints (DE from ``depth_path``; ``gt`` needs none)."""
        ke = load_dkenet(dkenet_ckpt, map_location)
        sr = load_nbsr(nbsr_ckpt, map_location)
        de = load_depth(depth, depth_path, **depth_kw)
        return cls(de, ke, sr, iterations=iterations, gamma=gamma).eval()


def load_dkenet(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """A frozen ``DKENetModule`` from its checkpoint (clear error naming the path when missing)."""
    from ssr_lightning.modules.dkenet_module import (
        DKENetModule,  # lazy: keeps Lightning out of plain imports
    )

    ckpt = require_checkpoint(path, "dkenet")
    # The user's own training output, so full unpickling is acceptable (Lightning does the same).
    hp = torch.load(ckpt, map_location="cpu", weights_only=False).get("hyper_parameters", {})
    # Checkpoints written before DKENet had `global_context` have no such weights: build them without it.
    extra = {} if "global_context" in hp else {"global_context": False}
    module = DKENetModule.load_from_checkpoint(ckpt, map_location=map_location, **extra)
    return module.eval().requires_grad_(False)


def load_nbsr(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """A frozen ``NBSRModule`` (with its kernel basis) from its checkpoint.

    A model fine-tuned on DKENet estimates records ``kernel_source=dkenet`` and the DKENet path it was trained
    with; inference never needs that file, so both are reset here (SVKR supplies the kernels).
    """
    from ssr_lightning.modules.nbsr_module import NBSRModule

    ckpt = require_checkpoint(path, "nbsr")
    module = NBSRModule.load_from_checkpoint(
        ckpt, map_location=map_location, kernel_source="gt", dkenet_ckpt=None, init_ckpt=None
    )
    if not bool(module.basis_ready):
        raise ValueError(f"{ckpt} holds no fitted kernel basis (basis_ready is False): not a trained NBSR checkpoint")
    return module.eval().requires_grad_(False)


def load_depth(kind: DepthKind, path: str | os.PathLike[str] | None = None, **kw: Any) -> DepthEstimator:
    """``build_depth_estimator`` with SVKR's error message for a missing learned-depth checkpoint."""
    if kind == "learned":
        require_checkpoint(path, "depth")
    elif kind in ("midas", "dpt") and (path is None or not Path(path).exists()):
        raise FileNotFoundError(
            f"SVKR: {kind} depth weights not found: {path}. Give a local path (nothing is downloaded): a MiDaS "
            "v3.1 .pt file for 'midas', a HuggingFace DPT folder for 'dpt'."
        )
    return build_depth_estimator(kind, None if path is None else str(path), **kw).eval()
