"""The kernel-code artifact: a PCA basis of the training kernel distribution, NBSR's per-pixel kernel condition.

Each 21x21 kernel of a field (B, 441, h, w) is encoded to a short code (B, M, h, w), M = 10-15 (DESIGN.md §3), by
``KernelBasis.encode``. The basis is fitted once from a ``KernelConfig`` (deterministically from a seed) and saved
as ``artifacts/kernel_basis_c{M}.pt`` (or under ``$SSR_ARTIFACTS``); NBSR checkpoints carry a copy of it.

CLI (also ``ssr-kernel-basis``)::

    python -m ssr_lightning.kernel_code --components 12 --out artifacts/kernel_basis_c12.pt

fits, saves, and reports the reconstruction error on held-out kernels drawn with a different seed (also written
to a JSON file beside the artifact).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssr_lightning.degradation.blur import KernelBasis
from ssr_lightning.degradation.kernels import KernelConfig, sample_kernel_field

__all__ = [
    "DEFAULT_COMPONENTS",
    "code_std",
    "default_basis_path",
    "fit_kernel_basis",
    "load_or_fit_basis",
    "main",
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
    key = hashlib.sha256(json.dumps(_config_dict(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return Path(root) / f"kernel_basis_c{n_components}_{key}.pt"


def _sidecar(path: Path) -> Path:
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


def _config_dict(cfg: KernelConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, comparable with a loaded JSON


def _save_atomic(basis: KernelBasis, path: Path) -> None:
    # Write-then-rename: several DDP ranks (or runs) may fit the same missing artifact at once; readers must
    # never see a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    basis.save(tmp)
    os.replace(tmp, path)


def _write_report(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)


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
        side = _sidecar(path)
        if side.is_file():
            stored = json.loads(side.read_text()).get("kernel_config")
            if stored is not None and stored != _config_dict(cfg):
                log(f"kernel basis {path} was fitted to a different KernelConfig than the data's; using it anyway")
        return basis
    basis = fit_kernel_basis(cfg, n_components, n_samples, seed)
    _save_atomic(basis, path)
    _write_report(_sidecar(path), {"n_components": n_components, "n_samples": n_samples, "seed": seed,
                                   "explained": float(basis.explained.sum()), "kernel_config": _config_dict(cfg)})
    log(f"kernel basis {path} was missing: fitted {n_components} components on {n_samples} kernels "
        f"(seed {seed}, explained variance {float(basis.explained.sum()):.4f}) and saved it")
    return basis


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ssr-kernel-basis", description=__doc__.split("\n\n")[0])
    p.add_argument("--components", type=int, default=DEFAULT_COMPONENTS, help="code length M (default 12)")
    p.add_argument("--out", type=Path, default=None, help="artifact path (default artifacts/kernel_basis_c{M}.pt)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="kernels the PCA is fitted on")
    p.add_argument("--heldout", type=int, default=DEFAULT_SAMPLES, help="held-out kernels for the error report")
    p.add_argument("--seed", type=int, default=0, help="fit seed (held-out kernels use seed + 1)")
    p.add_argument("--multiplicative-noise", type=float, default=0.0,
                   help="KernelConfig.multiplicative_noise (0..0.25) of the kernel distribution")
    p.add_argument("--no-defocus", action="store_true", help="anisotropic Gaussians only (no depth defocus)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Fit and save the basis, report held-out reconstruction error (stdout + JSON beside the artifact)."""
    args = _parse(argv)
    cfg = KernelConfig(multiplicative_noise=args.multiplicative_noise, defocus=not args.no_defocus)
    out = default_basis_path(args.components, KernelConfig()) if args.out is None else args.out
    basis = fit_kernel_basis(cfg, args.components, args.samples, args.seed)
    _save_atomic(basis, out)
    heldout_seed = args.seed + HELDOUT_SEED_OFFSET
    err = reconstruction_error(basis, sample_kernels(cfg, args.heldout, heldout_seed))
    report = {"n_components": args.components, "n_samples": args.samples, "seed": args.seed,
              "heldout_samples": args.heldout, "heldout_seed": heldout_seed,
              "explained": float(basis.explained.sum()), "heldout_error": err, "kernel_config": _config_dict(cfg)}
    _write_report(_sidecar(out), report)
    print(f"saved {out} ({args.components} components, explained variance {report['explained']:.4f})")
    print(f"held-out reconstruction ({args.heldout} kernels, seed {heldout_seed}): "
          f"L1 mean {err['l1_mean']:.4f}, p99 {err['l1_p99']:.4f}, max {err['l1_max']:.4f}; "
          f"relative L2 mean {err['rel_l2']:.4f}, max {err['rel_l2_max']:.4f}, pooled {err['rel_l2_total']:.4f}")
    print(f"report -> {_sidecar(out)}")
    return report


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
