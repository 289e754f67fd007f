"""Is a KE's kernel error noise that depth could pool away, or bias? (issue 21)

    OMP_NUM_THREADS=1 python tools/ke_pooling.py --runs results/frontend_defocus/runs --run dkenet_nodepth \\
        --out results/ke_pooling/dkenet_nodepth

In the defocus family every pixel at one depth has one kernel (docs/DESIGN.md §2). If a KE's per-pixel kernels
scatter around the right one, averaging them over the pixels at each depth (soft depth bins of the GT depth,
``networks/depth_pooling.py``'s pooling with every pixel weighted alike) removes the scatter; if they are wrong
together, it does not. Scores each seed's KE (``seed_<k>/<run>`` under ``--runs``, best checkpoint) on the crops
of ``--split`` as trained, pooled in 8 and 16 depth bins and pooled over the whole image, beside two floors that need
no KE: the GT kernels pooled in 16 depth bins (what the pooling itself loses) and the GT kernels' per-image mean
(one kernel per image). Writes ``summary.md`` / ``summary.json``, ``per_image.json`` and ``RECORD.json`` into
``--out``, refusing to replace them without ``--overwrite``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssr_lightning.metrics import kernel_l1
from ssr_lightning.networks.depth_maps import normalize_depth_map
from ssr_lightning.networks.depth_pooling import DepthKernelPool

from ke_readings import (  # tools/ is the script's folder, first on sys.path
    parse_args,
    refuses,
    seed_values,
    summarize_rows,
    table_lines,
    write_record,
)

ROWS = {"trained": "KE as trained",
        "pool8": "… pooled in 8 depth bins (GT depth)",
        "pool16": "… pooled in 16 depth bins (GT depth)",
        "image": "… pooled over the whole image (one kernel)",
        "gt_pool16": "GT kernels pooled in 16 depth bins (the pooling's own loss)",
        "gt_image": "GT kernels' per-image mean (one kernel per image)"}
REFERENCE = "trained"


def depth_pooled(field: Tensor, depth: Tensor, bins: int) -> Tensor:
    """``field (B, k², h, w)`` averaged over the pixels of each soft depth bin of ``depth (B, 1, h, w)`` in [0, 1],
    every pixel weighted alike, then read back at each pixel's depth."""
    pool = DepthKernelPool(channels=1, bins=bins)
    table = pool.table(*pool.sums(torch.cat([field, torch.ones_like(field[:, :1])], 1), depth))
    return torch.einsum("bnhw,bnk->bkhw", pool.bin_weights(depth), table)


@torch.no_grad()
def score_batch(net: Any, batch: dict[str, Any]) -> dict[str, Tensor]:
    """Per-image kernel L1 of every row of :data:`ROWS` on one batch."""
    lr, gt = batch["lr"], batch["kernel"]
    field = net(lr, batch["depth_lr"]) if net.use_depth else net(lr)
    depth = normalize_depth_map(batch["depth_lr"].float())  # bins over each crop's own depth range
    return {"trained": kernel_l1(field, gt),
            "pool8": kernel_l1(depth_pooled(field, depth, 8), gt),
            "pool16": kernel_l1(depth_pooled(field, depth, 16), gt),
            "image": kernel_l1(field.mean(dim=(2, 3), keepdim=True).expand_as(field), gt),
            "gt_pool16": kernel_l1(depth_pooled(gt, depth, 16), gt),
            "gt_image": kernel_l1(gt.mean(dim=(2, 3), keepdim=True).expand_as(gt), gt)}


def summarize(values: dict[str, np.ndarray]) -> dict[str, Any]:
    return summarize_rows(values, ROWS, REFERENCE)


def markdown(s: dict[str, Any], run: str, split: str) -> str:
    return "\n".join([*table_lines(s, f"{run}: its kernels pooled by depth", "kernels", split), ""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, "dkenet_nodepth", "results/ke_pooling/dkenet_nodepth", argv)
    if refuses("ke_pooling", args):
        return 2
    values, names, ckpts = seed_values(args.runs, args.seeds, args.run, args.split, score_batch, "ke pooling")
    summary = summarize(values)
    return write_record("ke_pooling", args, "a KE's kernel L1 with its kernels pooled by depth (issue 21)",
                        markdown(summary, args.run, args.split), summary, values, names, {"checkpoints": ckpts})


if __name__ == "__main__":
    raise SystemExit(main())
