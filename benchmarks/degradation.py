"""Speed of spatially variant blur + x4 downsampling against the BasicSR-style spatially invariant pipeline.

    python benchmarks/degradation.py [--batch 16 --repeats 5 --components 12 --out benchmarks/results/degradation.json]

Patches: 192x192 RGB crops of real photographs (skimage astronaut / chelsea / coffee), float32. Kernel fields: 21x21
per-LR-pixel kernels from ``sample_kernel_field`` (all samples spatially variant) driven by a ground-plane depth
ramp (far at the top, near at the bottom). Baseline (a): per patch ``cv2.filter2D`` with one 21x21 kernel
(BORDER_REFLECT_101) + ``cv2.resize`` to 48x48 (INTER_CUBIC). Methods (b): "exact" (unfold), "shift", "basis"
(PCA basis fitted beforehand; the fit is timed separately). Times are medians over ``--repeats`` after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing the package

from ssr_lightning.ablate.provenance import add_overwrite_flag, refuse_overwrite, write_record
from ssr_lightning.degradation import (
    KernelBasis,
    KernelConfig,
    blur_downsample,
    sample_kernel_field,
)

PATCH = 192
SCALE = 4


def real_patches(n: int, size: int = PATCH) -> torch.Tensor:
    """n deterministic size x size crops cycling over three real photographs: (n, 3, size, size) in [0, 1]."""
    from skimage import data

    images = [data.astronaut(), data.chelsea(), data.coffee()]
    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        img = images[i % len(images)]
        y = int(rng.integers(0, img.shape[0] - size + 1))
        x = int(rng.integers(0, img.shape[1] - size + 1))
        crops.append(np.ascontiguousarray(img[y : y + size, x : x + size, :3]))
    arr = np.stack(crops).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def depth_ramp(n: int, h: int, w: int) -> torch.Tensor:
    """Ground-plane depth at LR resolution: 1 (far) at the top row, 0 (near) at the bottom."""
    return torch.linspace(1.0, 0.0, h).view(1, 1, h, 1).expand(n, 1, h, w).contiguous()


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time every function once per round, round-robin, after one warm-up call each.

    On a shared machine the load changes within seconds; interleaving exposes every method to the same
    conditions, so the ratios stay meaningful even when the absolute times drift.
    """
    for fn in fns.values():
        fn()  # warm-up: allocator, oneDNN primitive creation, cv2 DFT plans
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="patches per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--components", type=int, default=12, help="eigen-kernels M of the basis path")
    parser.add_argument("--basis-samples", type=int, default=20000, help="kernels drawn to fit the basis")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and cv2 threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/degradation.json"))
    add_overwrite_flag(parser)
    args = parser.parse_args(argv)
    refuse_overwrite(parser, args.overwrite, args.out)

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    load_before = os.getloadavg()
    hr = real_patches(args.batch)
    h = w = PATCH // SCALE
    cfg = KernelConfig(invariant_prob=0.0)
    gens = [torch.Generator().manual_seed(i) for i in range(args.batch)]
    t0 = time.perf_counter()
    field, _ = sample_kernel_field(depth_ramp(args.batch, h, w), cfg, gens)
    t_sample = time.perf_counter() - t0

    t0 = time.perf_counter()
    basis = KernelBasis.from_distribution(cfg, args.components, n_samples=args.basis_samples, seed=0)
    t_fit = time.perf_counter() - t0

    # (a) invariant baseline over the same patches, each with one kernel (its field's kernel at the centre pixel).
    imgs = [p.permute(1, 2, 0).numpy().copy() for p in hr]
    kerns = [field[i, :, h // 2, w // 2].reshape(21, 21).numpy().copy() for i in range(args.batch)]

    def invariant() -> list[np.ndarray]:
        return [
            cv2.resize(
                cv2.filter2D(im, -1, k, borderType=cv2.BORDER_REFLECT_101), (w, h), interpolation=cv2.INTER_CUBIC
            )
            for im, k in zip(imgs, kerns)
        ]

    def blur(method: str) -> Callable[[], torch.Tensor]:
        return lambda: blur_downsample(hr, field, SCALE, method=method, basis=basis)  # type: ignore[arg-type]

    methods = ("exact", "shift", "basis")
    with torch.no_grad():
        times = interleaved_times({"invariant_cv2": invariant, **{m: blur(m) for m in methods}}, args.repeats)
        ref = blur("exact")()
        results: dict[str, dict] = {
            "invariant_cv2": {
                "max_abs_err_vs_exact": None,
                "note": "different operator (one kernel + bicubic resize): no error reported",
            }
        }
        for method in methods:
            err = (blur(method)() - ref).abs()
            mse = float((err.double() ** 2).mean())
            results[method] = {
                "max_abs_err_vs_exact": float(err.max()),
                "mean_abs_err_vs_exact": float(err.mean()),
                "psnr_vs_exact_db": float("inf") if mse == 0 else 10 * float(np.log10(1.0 / mse)),
            }
    t_inv = statistics.median(times["invariant_cv2"])
    for name, r in results.items():
        r["seconds_per_batch"] = statistics.median(times[name])
        r["all_seconds_per_batch"] = times[name]
    for r in results.values():
        r["seconds_per_patch"] = r["seconds_per_batch"] / args.batch
        r["ratio_vs_invariant"] = r["seconds_per_batch"] / t_inv

    report = {
        "config": {
            "batch": args.batch,
            "patch": PATCH,
            "scale": SCALE,
            "kernel_size": 21,
            "repeats": args.repeats,
            "images": "skimage astronaut/chelsea/coffee crops",
            "depth": "ground-plane ramp, far at top",
            "invariant_prob": 0.0,
        },
        "methods": results,
        "basis": {
            "M": args.components,
            "explained_variance": float(basis.explained.sum()),
            "fit_seconds": t_fit,
            "fit_samples": args.basis_samples,
        },
        "sample_kernel_field_seconds": t_sample,
        "versions": {
            "torch": torch.__version__,
            "cv2": cv2.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "threads": {"torch": torch.get_num_threads(), "cv2": cv2.getNumThreads(), "cpu_count": os.cpu_count()},
        "cpu": platform.processor() or platform.machine(),
        "loadavg_before_after": [list(load_before), list(os.getloadavg())],
    }

    print(
        f"blur + x{SCALE} downsample, {args.batch} x {PATCH}x{PATCH} RGB, 21x21 kernels, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, cv2 {cv2.__version__}"
    )
    print(f"{'method':<15}{'s/batch':>10}{'ms/patch':>10}{'ratio':>8}{'max|err|':>11}{'PSNR(dB)':>10}")
    for name, r in results.items():
        err = "-" if r["max_abs_err_vs_exact"] is None else f"{r['max_abs_err_vs_exact']:.2e}"
        psnr = r.get("psnr_vs_exact_db")
        psnr_s = "-" if psnr is None else ("inf" if psnr == float("inf") else f"{psnr:.1f}")
        print(
            f"{name:<15}{r['seconds_per_batch']:>10.4f}{1e3 * r['seconds_per_patch']:>10.2f}"
            f"{r['ratio_vs_invariant']:>8.2f}{err:>11}{psnr_s:>10}"
        )
    print(
        f"basis: M={args.components}, explained variance {basis.explained.sum():.4f}, fit {t_fit:.2f} s "
        f"(excluded); sample_kernel_field {t_sample:.3f} s; load avg {load_before[0]:.2f} -> "
        f"{os.getloadavg()[0]:.2f}"
    )

    write_record(args.out, json.loads(json.dumps(report, default=str)), "benchmarks/degradation.py", sys.argv[1:],
                 "time of the degradation pipeline per batch and kernel family")
    print(f"saved {args.out}")
    return report


if __name__ == "__main__":
    main()
