"""Render a PNG grid of degraded training samples: HR | depth | segmentation | kernel spread σ | LR.

    python tools/render_samples.py --split train --n 8 --out samples.png [--seed 0]
    python tools/render_samples.py --kind perspective --n 6 --out perspective.png
    python tools/render_samples.py --dataset folder --root /data/DIV2K_valid_HR --split test --n 4 --out div2k.png

Rows are samples (the first ``--n`` of the split, or of one embedded scene kind with ``--kind``); the σ column is
the per-LR-pixel kernel spread (``ssr_lightning.visualize.kernel_spread``, in HR pixels, equal to σ for an
isotropic Gaussian) on a colour scale shared by all rows. The segmentation column shows the label map
(0 = background / sky, 1 = ground, 2+ = objects / layers) in categorical colours; "none" where the sample has
no segmentation (folders, motorcycle scenes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ssr_lightning.data import SRDataModule, collate, scene_kind
from ssr_lightning.visualize import heatmap, kernel_spread

KINDS = ("all", "perspective", "layers", "motorcycle")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=("train", "val", "test"), default="train")
    p.add_argument("--n", type=int, default=8, help="number of samples (rows)")
    p.add_argument("--out", type=Path, default=Path("samples.png"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", choices=("embedded", "folder"), default="embedded")
    p.add_argument("--kind", choices=KINDS, default="all", help="embedded scene kind to show (default: all kinds)")
    p.add_argument("--augment", choices=("full", "hflip"), default="full", help="training patch augmentation")
    p.add_argument("--root", type=str, default=None, help="HR folder for --dataset folder")
    p.add_argument("--depth-dir", type=str, default=None)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--size", type=int, default=192, help="HR patch / crop size")
    p.add_argument("--scene-size", type=int, default=256, help="embedded scene size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def _select(ds, n: int, kind: str) -> list[int]:
    """The first ``n`` indices of ``ds`` (an ``SRPatchDataset``) whose embedded scene is of ``kind``."""
    ids = getattr(ds.base, "scene_ids", None)
    if kind == "all" or ids is None:
        return list(range(min(n, len(ds))))
    return [i for i, sid in enumerate(ids) if scene_kind(sid) == kind][:n]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.kind != "all" and args.dataset != "embedded":
        raise SystemExit("--kind selects embedded scene kinds; use it with --dataset embedded")
    roots = {f"{args.split}_root": args.root} if args.dataset == "folder" else {}
    # enough scenes that the first n of one kind exist (motorcycle: 1 scene in 8)
    pool = args.n if args.kind == "all" else 8 * args.n + 8
    dm = SRDataModule(
        dataset=args.dataset,
        depth_dir=args.depth_dir,
        patch_size=args.size,
        augment=args.augment,
        val_size=args.size,
        test_size=args.size,
        scale=args.scale,
        batch_size=args.n,
        val_batch_size=args.n,
        test_batch_size=args.n,
        seed=args.seed,
        embedded_scene_size=max(args.scene_size, args.size),
        num_train=max(pool, 8),
        num_val=max(pool, 1),
        num_test=max(pool, 1),
        **roots,
    )
    dm.setup({"train": "fit", "val": "validate", "test": "test"}[args.split])
    ds = dm.datasets[args.split]
    if ds is None:
        raise SystemExit(f"no {args.split} data (set --root)")
    idx = _select(ds, args.n, args.kind)
    if not idx:
        raise SystemExit(f"no {args.kind} scenes in the first {len(ds)} {args.split} scenes")
    t0 = time.perf_counter()
    batch = collate([ds[(0, i)] if args.split == "train" else ds[i] for i in idx])  # epoch 0 patches
    t_load = time.perf_counter() - t0
    batch = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    t0 = time.perf_counter()
    batch = dm.degrade(batch)
    t_deg = time.perf_counter() - t0

    n = batch["hr"].shape[0]
    spread = kernel_spread(batch["kernel"]).cpu()
    smax = max(float(spread.max()), 1e-3)
    depth_rgb = heatmap(batch["depth"].cpu(), "magma", 0.0, 1.0)
    seg = batch["segmentation"][:, 0].cpu().numpy()
    has_seg = batch["has_segmentation"].cpu().numpy()
    ncol = 5
    fig, axes = plt.subplots(n, ncol, figsize=(ncol * 2.6 + 0.8, n * 2.6), squeeze=False, layout="constrained")
    titles = ("HR", "depth (0 = near)", "segmentation (0 bg, 1 ground)", f"kernel σ (0–{smax:.1f} px)",
              f"LR (nearest ×{args.scale})")
    for r in range(n):
        im_sigma = axes[r, 3].imshow(spread[r, 0].numpy(), cmap="viridis", vmin=0, vmax=smax,
                                     interpolation="nearest")
        axes[r, 0].imshow(batch["hr"][r].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        axes[r, 1].imshow(depth_rgb[r].permute(1, 2, 0).numpy())
        if has_seg[r]:
            # tab20 is categorical: label 0 (background) is its first colour, the ground its second, ...
            axes[r, 2].imshow(np.mod(seg[r], 20), cmap="tab20", vmin=-0.5, vmax=19.5, interpolation="nearest")
        else:
            axes[r, 2].imshow(np.full(seg[r].shape, 0.85), cmap="gray", vmin=0, vmax=1)
            axes[r, 2].text(0.5, 0.5, "none", ha="center", va="center", transform=axes[r, 2].transAxes, fontsize=9)
        axes[r, 4].imshow(batch["lr"][r].permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        info = []
        for key, fmt in (("noise_sigma", "n={:.1f}/255"), ("jpeg_quality", "q={:.0f}")):
            if key in batch:
                v = float(torch.as_tensor(batch[key][r]).float())
                info.append(fmt.format(v * 255 if key == "noise_sigma" and v <= 1 else v))
        if "invariant" in batch and bool(torch.as_tensor(batch["invariant"][r])):
            info.append("invariant")
        axes[r, 0].set_ylabel(f"{batch['name'][r]}\n{' '.join(info)}", fontsize=7)
        for c in range(ncol):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
    fig.colorbar(im_sigma, ax=axes[:, 3].tolist(), shrink=0.6, label="kernel σ (HR px)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    plt.close(fig)
    print(f"wrote {args.out} ({n} samples, kind {args.kind}; render + crop {t_load * 1000:.0f} ms, "
          f"degradation {t_deg * 1000:.0f} ms on {args.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
