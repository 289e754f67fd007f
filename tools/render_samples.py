"""Render a PNG grid of degraded training samples: HR | depth | kernel spread σ | LR.

    python tools/render_samples.py --split train --n 8 --out samples.png [--seed 0]
    python tools/render_samples.py --dataset folder --root /data/DIV2K_valid_HR --split test --n 4 --out div2k.png

Rows are samples; the σ column is the per-LR-pixel kernel spread (``ssr_lightning.visualize.kernel_spread``,
in HR pixels, equal to σ for an isotropic Gaussian) on a colour scale shared by all rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from ssr_lightning.data import SRDataModule
from ssr_lightning.visualize import heatmap, kernel_spread


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=("train", "val", "test"), default="train")
    p.add_argument("--n", type=int, default=8, help="number of samples (rows)")
    p.add_argument("--out", type=Path, default=Path("samples.png"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", choices=("embedded", "folder"), default="embedded")
    p.add_argument("--root", type=str, default=None, help="HR folder for --dataset folder")
    p.add_argument("--depth-dir", type=str, default=None)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--size", type=int, default=192, help="HR patch / crop size")
    p.add_argument("--scene-size", type=int, default=256, help="embedded scene size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    roots = {f"{args.split}_root": args.root} if args.dataset == "folder" else {}
    dm = SRDataModule(
        dataset=args.dataset,
        depth_dir=args.depth_dir,
        patch_size=args.size,
        val_size=args.size,
        test_size=args.size,
        scale=args.scale,
        batch_size=args.n,
        val_batch_size=args.n,
        test_batch_size=args.n,
        seed=args.seed,
        embedded_scene_size=max(args.scene_size, args.size),
        num_train=max(args.n, 8),
        num_val=max(args.n, 1),
        num_test=max(args.n, 1),
        **roots,
    )
    dm.setup({"train": "fit", "val": "validate", "test": "test"}[args.split])
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[args.split]()
    batch = next(iter(loader))
    batch = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    t0 = time.perf_counter()
    batch = dm.degrade(batch)
    t_deg = time.perf_counter() - t0

    n = batch["hr"].shape[0]
    spread = kernel_spread(batch["kernel"]).cpu()
    smax = max(float(spread.max()), 1e-3)
    depth_rgb = heatmap(batch["depth"].cpu(), "magma", 0.0, 1.0)
    fig, axes = plt.subplots(n, 4, figsize=(4 * 2.6 + 0.8, n * 2.6), squeeze=False, layout="constrained")
    titles = ("HR", "depth (0 = near)", f"kernel σ (0–{smax:.1f} px)", f"LR (nearest ×{args.scale})")
    for r in range(n):
        im_sigma = axes[r, 2].imshow(spread[r, 0].numpy(), cmap="viridis", vmin=0, vmax=smax,
                                     interpolation="nearest")
        axes[r, 0].imshow(batch["hr"][r].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        axes[r, 1].imshow(depth_rgb[r].permute(1, 2, 0).numpy())
        axes[r, 3].imshow(batch["lr"][r].permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        info = []
        for key, fmt in (("noise_sigma", "n={:.1f}/255"), ("jpeg_quality", "q={:.0f}")):
            if key in batch:
                v = float(torch.as_tensor(batch[key][r]).float())
                info.append(fmt.format(v * 255 if key == "noise_sigma" and v <= 1 else v))
        if "invariant" in batch and bool(torch.as_tensor(batch["invariant"][r])):
            info.append("invariant")
        axes[r, 0].set_ylabel(f"{batch['name'][r]}\n{' '.join(info)}", fontsize=7)
        for c in range(4):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
    fig.colorbar(im_sigma, ax=axes[:, 3].tolist(), shrink=0.6, label="kernel σ (HR px)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    plt.close(fig)
    print(f"wrote {args.out} ({n} samples, degradation {t_deg * 1000:.0f} ms on {args.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
