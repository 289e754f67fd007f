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

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssr_lightning.ablate.provenance import environment
from ssr_lightning.files import atomic_write_json, atomic_write_text
from ssr_lightning.frontend.ladder import make_test_batches
from ssr_lightning.inference.checkpoints import find_checkpoint, load_model
from ssr_lightning.metrics import kernel_l1
from ssr_lightning.metrics.stats import (
    bootstrap_seeds,
    ci_phrase,
    correction_note,
    mark_deltas,
    paired_difference_seeds,
)
from ssr_lightning.networks.depth_maps import normalize_depth_map
from ssr_lightning.networks.depth_pooling import DepthKernelPool

from record_formats import estimate  # tools/ is the script's folder, first on sys.path

DEGRADATION = ["configs/degradation/defocus.yaml", "configs/degradation/clean.yaml"]
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


def evaluate(runs: Path, seeds: list[int], run: str, split: str) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """``(seeds, images)`` matrices of every row, the image names and the checkpoints read."""
    batches, _ = make_test_batches(noise=False, jpeg=False, degradation=DEGRADATION, split=split)
    names = [str(n) for b in batches for n in b["name"]]
    values: dict[str, list[list[float]]] = {}
    ckpts: dict[str, str] = {}
    for seed in seeds:
        ckpt = find_checkpoint(run, runs / f"seed_{seed}", "best")
        if ckpt is None:
            raise FileNotFoundError(f"--runs {runs}: no {run} checkpoint for seed {seed} under "
                                    f"{runs / f'seed_{seed}' / run}; train it with ssr-frontend --train --stages "
                                    f"'[{run}, ...]' --runs {runs}")
        ckpts[str(seed)] = ckpt.relative_to(REPO).as_posix() if ckpt.is_relative_to(REPO) else ckpt.name
        net = load_model(ckpt, "dkenet").eval()
        per: dict[str, list[float]] = {}
        for batch in tqdm(batches, desc=f"ke pooling, seed {seed}", leave=False):
            for key, v in score_batch(net, batch).items():
                per.setdefault(key, []).extend(v.double().tolist())
        for key, v in per.items():
            values.setdefault(key, []).append(v)
    return {k: np.asarray(v) for k, v in values.items()}, names, {"checkpoints": ckpts}


def summarize(values: dict[str, np.ndarray]) -> dict[str, Any]:
    rows = {k: {"label": ROWS[k], "kernel_l1": bootstrap_seeds(100 * values[k]).as_dict()} for k in ROWS}
    deltas = {k: paired_difference_seeds(100 * values[k], 100 * values[REFERENCE]) for k in ROWS if k != REFERENCE}
    marks = mark_deltas(list(deltas.values()))
    for (k, d), m in zip(deltas.items(), marks, strict=True):
        rows[k]["delta"] = {**d.as_dict(), "mark": m.text if m else ""}
    seeds, n = values[REFERENCE].shape
    return {"rows": rows, "seeds": seeds, "images": n, "ci": ci_phrase(seeds, n), "correction": correction_note(marks)}


def markdown(s: dict[str, Any], run: str, split: str) -> str:
    lines = [f"**{run}: its kernels pooled by depth** (defocus family, {split} split, GT depth; kernel L1 × 100 of "
             f"the per-pixel 21×21 kernel, lower is better; 95 % CI: {s['ci']})", "",
             "| kernels | kernel L1 × 100 | Δ vs as trained | mark |", "| --- | --- | --- | --- |"]
    for r in s["rows"].values():
        d = r.get("delta")
        lines.append(f"| {r['label']} | {estimate(r['kernel_l1'], 1)} | {estimate(d, 1, True) if d else '—'} | "
                     f"{d['mark'] if d else ''} |")
    lines += ["", f"Δ: paired per-image difference, * where its CI excludes 0; {s['correction']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path("results/frontend_defocus/runs"),
                   help="ssr-frontend --runs folder holding seed_<k>/<run>")
    p.add_argument("--run", default="dkenet_nodepth", help="the KE's run name")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--out", type=Path, default=Path("results/ke_pooling/dkenet_nodepth"))
    p.add_argument("--overwrite", action="store_true", help="replace the record in --out")
    args = p.parse_args(argv)
    if (args.out / "summary.json").is_file() and not args.overwrite:
        print(f"ke_pooling: {args.out} already holds a record; pass --overwrite to replace it", file=sys.stderr)
        return 2
    values, names, read = evaluate(args.runs, args.seeds, args.run, args.split)
    summary = summarize(values)
    md = markdown(summary, args.run, args.split)
    command = ("OMP_NUM_THREADS=1 python tools/ke_pooling.py --runs " + args.runs.as_posix()
               + f" --run {args.run} --seeds {' '.join(map(str, args.seeds))} --split {args.split} --out "
               + args.out.as_posix())
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "what": "a KE's kernel L1 with its kernels pooled by depth (issue 21)",
            "provenance": environment(), **read}
    atomic_write_text(args.out / "summary.md", md)
    atomic_write_json(args.out / "summary.json", {**meta, **summary})
    atomic_write_json(args.out / "per_image.json", {"names": names, "seeds": args.seeds,
                                                    **{k: v.tolist() for k, v in values.items()}})
    atomic_write_json(args.out / "RECORD.json", meta)
    print(md)
    return 0 if all(math.isfinite(r["kernel_l1"]["mean"]) for r in summary["rows"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
