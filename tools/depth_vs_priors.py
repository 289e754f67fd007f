"""DepthNet on the embedded test split next to trivial predictors (constant, image row), AbsRel / δ<1.25.

    OMP_NUM_THREADS=1 python tools/depth_vs_priors.py runs/depth/version_0/checkpoints/best.ckpt [grid.png]

Metrics after per-image scale-and-shift alignment to z = 1 + 9·d (as DepthModule's test). The optional PNG shows
GT depth | prediction for the first test batch.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssr_lightning.data import SRDataModule
from ssr_lightning.inference.checkpoints import load_model
from ssr_lightning.metrics import aligned_depth_metrics


def main(ckpt: str, figure: str | None = None) -> None:
    net = load_model(ckpt, "depth").eval()
    dm = SRDataModule(dataset="embedded", val_size=128, scale=4, batch_size=8, val_batch_size=8, num_workers=0)
    dm.setup("test")
    rows: dict[str, list[dict[str, torch.Tensor]]] = {"DepthNet (HR)": [], "DepthNet (LR)": [], "constant": [],
                                                      "image row": []}
    for i, batch in enumerate(dm.test_dataloader()):
        batch = dm.degrade(batch)
        hr, depth = batch["hr"], batch["depth"]
        with torch.no_grad():
            pred = net(hr)
            pred_lr = F.interpolate(net(batch["lr"]), size=depth.shape[-2:], mode="bilinear", align_corners=False)
        rows["DepthNet (HR)"].append(aligned_depth_metrics(pred, depth))
        rows["DepthNet (LR)"].append(aligned_depth_metrics(pred_lr, depth))
        rows["constant"].append(aligned_depth_metrics(torch.full_like(depth, 0.5) + 1e-4 * torch.rand_like(depth),
                                                      depth))
        row = torch.linspace(1, 0, depth.shape[-2]).view(1, 1, -1, 1).expand_as(depth).contiguous()
        rows["image row"].append(aligned_depth_metrics(row, depth))
        if i == 0 and figure:
            lo = pred.amin((1, 2, 3), keepdim=True)
            norm = (pred - lo) / (pred.amax((1, 2, 3), keepdim=True) - lo + 1e-6)
            grid = torch.cat([torch.cat(list(depth[:4]), -1), torch.cat(list(norm[:4]), -1)], -2)[0].numpy()
            Image.fromarray((grid * 255).astype(np.uint8)).save(figure)
    for name, parts in rows.items():
        absrel = torch.cat([p["absrel"] for p in parts])
        delta1 = torch.cat([p["delta1"] for p in parts])
        print(f"{name:16s} AbsRel {absrel.mean():.3f}  delta1 {delta1.mean():.3f}  (n={len(absrel)})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
