"""``ssr-kernel-basis``: fit NBSR's kernel PCA basis and report its held-out reconstruction error.

    ssr-kernel-basis --components 12                       # -> artifacts/kernel_basis_c12_<key>.pt (+ .json report)
    ssr-kernel-basis --components 12 --out artifacts/my_basis.pt --multiplicative-noise 0.1

The artifact is what ``NBSRModule`` loads (or fits itself when missing); the JSON beside it records the kernel
distribution and the held-out errors.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from ssr_lightning.degradation.kernels import KernelConfig
from ssr_lightning.files import unwritable
from ssr_lightning.networks.kernel_codec import (
    DEFAULT_COMPONENTS,
    DEFAULT_SAMPLES,
    HELDOUT_SEED_OFFSET,
    default_basis_path,
    fit_kernel_basis,
    kernel_config_dict,
    reconstruction_error,
    sample_kernels,
    save_basis_atomic,
    sidecar,
    write_report_atomic,
)

__all__ = ["build_parser", "main"]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="ssr-kernel-basis", description=__doc__.split("\n\n")[0], default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
    p.add_argument("--components", type=int, default=DEFAULT_COMPONENTS, help="code length M")
    p.add_argument("--out", type=str | None, default=None,
                   help="artifact path (default artifacts/kernel_basis_c{M}_{key}.pt, or under $SSR_ARTIFACTS)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="kernels the PCA is fitted on")
    p.add_argument("--heldout", type=int, default=DEFAULT_SAMPLES, help="held-out kernels for the error report")
    p.add_argument("--seed", type=int, default=0, help="fit seed (held-out kernels use seed + 1)")
    p.add_argument("--multiplicative-noise", type=float, default=0.0,
                   help="KernelConfig.multiplicative_noise (0..0.25) of the kernel distribution")
    p.add_argument("--no-defocus", action="store_true", help="anisotropic Gaussians only (no depth defocus)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Fit and save the basis, report held-out reconstruction error (stdout + JSON beside the artifact).

    Returns the report when called with ``argv``; as the console script (no ``argv``) it returns None, so the exit
    status is 0. Bad options exit with status 2 and a failed write with 1, each with one line.
    """
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.components < 1 or args.samples < args.components or args.heldout < 1:
        print(f"ssr-kernel-basis: need --components >= 1, --samples >= --components and --heldout >= 1 "
              f"(got {args.components}, {args.samples}, {args.heldout})", file=sys.stderr)
        sys.exit(2)
    cfg = KernelConfig(multiplicative_noise=args.multiplicative_noise, defocus=not args.no_defocus)
    out = default_basis_path(args.components, cfg) if args.out is None else Path(args.out)
    problem = f"{out} is a folder" if out.is_dir() else unwritable(out.parent)
    if problem:
        print(f"ssr-kernel-basis: --out {out}: cannot write there ({problem}): give the path of a .pt file in a "
              "writable folder", file=sys.stderr)
        sys.exit(2)
    try:
        report = _fit_and_save(args, cfg, out)
    except OSError as err:  # a full disk is failed work (1); a path that cannot be written is a bad --out (2)
        print(f"ssr-kernel-basis: cannot write {err.filename or out}: {err.strerror or err}", file=sys.stderr)
        sys.exit(1 if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO) else 2)
    return report if argv is not None else None


def _fit_and_save(args: Any, cfg: KernelConfig, out: Path) -> dict[str, Any]:
    basis = fit_kernel_basis(cfg, args.components, args.samples, args.seed)
    save_basis_atomic(basis, out)
    heldout_seed = args.seed + HELDOUT_SEED_OFFSET
    err = reconstruction_error(basis, sample_kernels(cfg, args.heldout, heldout_seed))
    report = {"n_components": args.components, "n_samples": args.samples, "seed": args.seed,
              "heldout_samples": args.heldout, "heldout_seed": heldout_seed,
              "explained": float(basis.explained.sum()), "heldout_error": err, "kernel_config": kernel_config_dict(cfg)}
    write_report_atomic(sidecar(out), report)
    print(f"saved {out} ({args.components} components, explained variance {report['explained']:.4f})")
    print(f"held-out reconstruction ({args.heldout} kernels, seed {heldout_seed}): "
          f"L1 mean {err['l1_mean']:.4f}, p99 {err['l1_p99']:.4f}, max {err['l1_max']:.4f}; "
          f"relative L2 mean {err['rel_l2']:.4f}, max {err['rel_l2_max']:.4f}, pooled {err['rel_l2_total']:.4f}")
    print(f"report -> {sidecar(out)}")
    return report


if __name__ == "__main__":  # pragma: no cover
    main()
