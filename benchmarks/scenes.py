"""Time embedded-scene rendering (all kinds mixed, and per kind) and a full data batch (render + crop + degrade).

    python benchmarks/scenes.py [--n 24 --size 256 --out benchmarks/results/scenes.json]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from ssr_lightning.ablate.provenance import add_overwrite_flag, refuse_overwrite, write_record
from ssr_lightning.data import SRDataModule
from ssr_lightning.data.scenes import (
    _KIND_CYCLE,
    render_scene,
    scene_kind,
    split_indices,
)


def _ms_per_scene(ids: list[int], size: int) -> tuple[float, float]:
    """(wall, CPU) milliseconds per scene over ``ids``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in ids:
        render_scene(i, size)
    return 1000 * (time.perf_counter() - wall) / len(ids), 1000 * (time.process_time() - cpu) / len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=24, help="scenes to render")
    parser.add_argument("--size", type=int, default=256, help="scene side in pixels")
    parser.add_argument("--batches", type=int, default=5, help="training batches to time")
    parser.add_argument("--out", default="benchmarks/results/scenes.json")
    add_overwrite_flag(parser)
    args = parser.parse_args()
    refuse_overwrite(parser, args.overwrite, args.out)

    ids = split_indices("train", args.n)
    for i in split_indices("train", len(_KIND_CYCLE)):
        render_scene(i, args.size)  # decode the source photos of every kind once
    per_scene_wall, per_scene_cpu = _ms_per_scene(ids, args.size)
    per_kind = {}
    pool = split_indices("train", 8 * args.n)
    for kind in dict.fromkeys(_KIND_CYCLE):
        kind_ids = [i for i in pool if scene_kind(i) == kind][: args.n]
        per_kind[f"ms_per_scene_{kind}_wall"], per_kind[f"ms_per_scene_{kind}_cpu"] = _ms_per_scene(kind_ids, args.size)

    dm = SRDataModule()
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    times = []
    for _ in range(args.batches):
        t = time.perf_counter()
        dm.degrade(next(loader))
        times.append(time.perf_counter() - t)
    result = {
        "scene_size": args.size,
        "ms_per_scene_wall": per_scene_wall,
        "ms_per_scene_cpu": per_scene_cpu,
        **per_kind,
        "batch_size": dm.batch_size,
        "patch_size": dm.sizes["train"],
        "ms_per_training_batch_median": 1000 * sorted(times)[len(times) // 2],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    for k, v in result.items():
        print(f"{k:32s} {v:.2f}" if isinstance(v, float) else f"{k:32s} {v}")
    write_record(Path(args.out), result, "benchmarks/scenes.py", sys.argv[1:], "time to build embedded scenes and "
                 "training batches")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
