"""The kernel code: NBSR's per-pixel kernel condition as a PCA basis of the training kernel distribution.

Each 21x21 kernel of a field (B, 441, h, w) is encoded to a short code (B, M, h, w), M = 10-15 (docs/DESIGN.md §3).
:class:`KernelCodec` is the module that does it (basis + per-component whitening, all buffers, so a checkpoint
carries it). The basis itself is an artifact: fitted once from a ``KernelConfig`` (deterministically from a seed)
and saved as ``artifacts/kernel_basis_c{M}_{key}.pt`` (or under ``$SSR_ARTIFACTS``) by :func:`load_or_fit_basis`
or by the ``ssr-kernel-basis`` command, which also reports the held-out reconstruction error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssr_lightning.degradation.blur import KernelBasis
from ssr_lightning.degradation.kernels import KernelConfig, sample_kernel_field
from ssr_lightning.files import atomic_write, atomic_write_json

__all__ = [
    "DEFAULT_COMPONENTS",
    "KernelCodec",
    "code_std",
    "default_basis_path",
    "fit_kernel_basis",
    "load_or_fit_basis",
    "reconstruction_error",
    "sample_kernels",
]

_log = logging.getLogger(__name__)

DEFAULT_COMPONENTS: int = 12
DEFAULT_SAMPLES: int = 20000
# Held-out kernels come from this seed offset: sample_kernels seeds its per-field generators with
# seed * 1_000_003 + i, so seeds that differ give disjoint generator streams (for fewer than 10^6 fields).
HELDOUT_SEED_OFFSET: int = 1
# Pixels per synthetic kernel field: each pixel gets its own random depth, so the depth-driven defocus of one
# field (one focus plane and aperture) spans the whole depth range, as in a real scene.
_PIXELS_PER_FIELD: int = 40


def default_basis_path(n_components: int = DEFAULT_COMPONENTS, cfg: KernelConfig | None = None) -> Path:
    """``$SSR_ARTIFACTS/kernel_basis_c{n}_{key}.pt``, or under ``artifacts/`` relative to the CWD.

    ``key`` hashes the kernel distribution, so changing ``KernelConfig`` fits a new basis instead of silently
    reusing one fitted to other kernels.
    """
    root = os.environ.get("SSR_ARTIFACTS") or "artifacts"
    cfg = KernelConfig() if cfg is None else cfg
    key = hashlib.sha256(json.dumps(kernel_config_dict(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return Path(root) / f"kernel_basis_c{n_components}_{key}.pt"


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def sample_kernels(cfg: KernelConfig | None = None, n_samples: int = DEFAULT_SAMPLES, seed: int = 0) -> Tensor:
    """``n_samples`` kernels (N, k*k) drawn from the distribution of ``cfg``, a pure function of ``seed``."""
    cfg = KernelConfig() if cfg is None else cfg
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    n_fields = -(-n_samples // _PIXELS_PER_FIELD)
    gen = torch.Generator().manual_seed(int(seed))
    depth = torch.rand(n_fields, 1, 1, _PIXELS_PER_FIELD, generator=gen)
    gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + i) for i in range(n_fields)]
    field, _ = sample_kernel_field(depth, cfg, gens)
    return field.permute(0, 2, 3, 1).reshape(-1, field.shape[1])[:n_samples].contiguous()


def fit_kernel_basis(
    cfg: KernelConfig | None = None,
    n_components: int = DEFAULT_COMPONENTS,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> KernelBasis:
    """Deterministic PCA basis (``n_components`` eigen-kernels) of ``n_samples`` kernels of ``cfg``'s family."""
    return KernelBasis.fit(sample_kernels(cfg, n_samples, seed), n_components)


@torch.no_grad()
def reconstruction_error(basis: KernelBasis, kernels: Tensor) -> dict[str, float]:
    """Encode -> decode error of kernels (N, k*k): per-kernel L1 Σ|k - k̂| (mean, p99, max) and relative L2.

    ``rel_l2`` is ‖k - k̂‖₂ / ‖k‖₂ averaged over kernels (``rel_l2_max`` its maximum); ``rel_l2_total`` is the
    pooled ratio over all kernels (one minus the captured energy fraction, square-rooted).
    """
    field = kernels.to(torch.float32).T[None, :, :, None]  # (1, k*k, N, 1): one "image" column of kernels
    rec = basis.decode(basis.encode(field))[0, :, :, 0].T
    diff = rec - kernels.to(torch.float32)
    l1 = diff.abs().sum(dim=1)
    l2 = diff.norm(dim=1)
    norm = kernels.to(torch.float32).norm(dim=1)
    rel = l2 / norm
    return {
        "l1_mean": float(l1.mean()),
        "l1_p99": float(torch.quantile(l1, 0.99)),
        "l1_max": float(l1.max()),
        "rel_l2": float(rel.mean()),
        "rel_l2_max": float(rel.max()),
        "rel_l2_total": float(l2.square().sum().sqrt() / norm.square().sum().sqrt()),
    }


@torch.no_grad()
def code_std(basis: KernelBasis, cfg: KernelConfig | None = None, n_samples: int = 4096, seed: int = 0) -> Tensor:
    """Per-component std (M,) of the codes of ``n_samples`` kernels of ``cfg``: the scale that whitens the codes.

    Raw PCA codes are small (std ~0.004-0.05 for 21x21 kernels) and differ 10x between components; a network
    condition wants them near unit scale. Zero stays zero (the mean kernel), since PCA codes are centred.
    """
    k = sample_kernels(cfg, n_samples, seed).to(basis.mean.device)
    codes = basis.encode(k.T[None, :, :, None])[0, :, :, 0]
    return codes.std(dim=1).clamp_min(1e-6)


def kernel_config_dict(cfg: KernelConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, comparable with a loaded JSON


def save_basis_atomic(basis: KernelBasis, path: Path) -> None:
    # Several DDP ranks (or runs) may fit the same missing artifact at once; readers never see a half-written file.
    atomic_write(path, basis.save)


def write_report_atomic(path: Path, report: dict[str, Any]) -> None:
    atomic_write_json(path, report)


def load_or_fit_basis(
    path: str | os.PathLike[str] | None,
    cfg: KernelConfig | None = None,
    n_components: int = DEFAULT_COMPONENTS,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> KernelBasis:
    """Load the basis at ``path`` (default :func:`default_basis_path`); fit, save and log it when missing.

    A loaded basis must have ``n_components`` components and ``cfg.size`` kernels (else ``ValueError``). When the
    JSON beside the artifact records a different kernel distribution than ``cfg``, the stored basis is still used
    (checkpoints must stay comparable) but a message says so.
    """
    cfg = KernelConfig() if cfg is None else cfg
    log = _log.info if log is None else log
    path = default_basis_path(n_components, cfg) if path is None else Path(path)
    if path.is_file():
        basis = KernelBasis.load(path)
        if basis.n_components != n_components or basis.kernel_size != cfg.size:
            raise ValueError(
                f"kernel basis {path} has {basis.n_components} components of {basis.kernel_size}x{basis.kernel_size} "
                f"kernels; expected {n_components} of {cfg.size}x{cfg.size}. Point basis_path elsewhere or delete it."
            )
        side = sidecar(path)
        if side.is_file():
            stored = json.loads(side.read_text()).get("kernel_config")
            if stored is not None and stored != kernel_config_dict(cfg):
                log(f"kernel basis {path} was fitted to a different KernelConfig than the data's; using it anyway")
        return basis
    basis = fit_kernel_basis(cfg, n_components, n_samples, seed)
    save_basis_atomic(basis, path)
    write_report_atomic(sidecar(path), {"n_components": n_components, "n_samples": n_samples, "seed": seed,
                                   "explained": float(basis.explained.sum()), "kernel_config": kernel_config_dict(cfg)})
    log(f"kernel basis {path} was missing: fitted {n_components} components on {n_samples} kernels "
        f"(seed {seed}, explained variance {float(basis.explained.sum()):.4f}) and saved it")
    return basis


class KernelCodec(nn.Module):
    """Kernel field ``(B, k², h, w)`` ↔ whitened PCA code map ``(B, M, h, w)``: NBSR's kernel condition.

    Buffers: the :class:`KernelBasis` (``basis.mean``, ``basis.components``, ``basis.explained``), the
    per-component whitening ``code_std`` and ``ready`` (False until a basis was set). Zero code = the mean kernel.
    """

    code_std: Tensor
    ready: Tensor

    def __init__(self, kernel_size: int = 21, n_components: int = DEFAULT_COMPONENTS) -> None:
        super().__init__()
        kk = kernel_size * kernel_size
        self.kernel_size, self.n_components = kernel_size, n_components
        self.basis = KernelBasis(torch.zeros(kk), torch.zeros(n_components, kk), torch.zeros(n_components))
        self.register_buffer("code_std", torch.ones(n_components))
        self.register_buffer("ready", torch.tensor(False))

    @torch.no_grad()
    def set_basis(self, basis: KernelBasis, std: Tensor) -> None:
        """Copy a fitted basis and its code std into the buffers."""
        if basis.n_components != self.n_components or basis.kernel_size != self.kernel_size:
            raise ValueError(f"basis has {basis.n_components} components of {basis.kernel_size}² kernels; this codec "
                             f"needs {self.n_components} of {self.kernel_size}²")
        for name in ("mean", "components", "explained"):
            getattr(self.basis, name).copy_(getattr(basis, name))
        self.code_std.copy_(std)
        self.ready.fill_(True)

    def _check(self) -> None:
        if not bool(self.ready):
            raise RuntimeError("KernelCodec has no basis yet: call set_basis (NBSRModule does it on first use)")

    def encode(self, field: Tensor) -> Tensor:
        """Kernel field (B, k², h, w) → whitened code map (B, M, h, w)."""
        self._check()
        return self.basis.encode(field.float()) / self.code_std.view(1, -1, 1, 1)

    def decode(self, code: Tensor) -> Tensor:
        """Whitened code map → kernel field (the basis projection of the encoded field)."""
        self._check()
        return self.basis.decode(code.float() * self.code_std.view(1, -1, 1, 1))
