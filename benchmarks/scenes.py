"""Time embedded-scene rendering and a full data batch (render + crop + degrade) on this machine.

    python benchmarks/scenes.py [--n 24 --size 256 --out benchmarks/results/scenes.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ssr_lightning.data import SRDataModule
from ssr_lightning.data.scenes import render_scene, split_indices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=24, help="scenes to render")
    parser.add_argument("--size", type=int, default=256, help="scene side in pixels")
    parser.add_argument("--batches", type=int, default=5, help="training batches to time")
    parser.add_argument("--out", default="benchmarks/results/scenes.json")
    args = parser.parse_args()

    ids = split_indices("train", args.n)
    render_scene(ids[0], args.size)  # decode the source photos once
    wall, cpu = time.perf_counter(), time.process_time()
    for i in ids:
        render_scene(i, args.size)
    per_scene_wall = (time.perf_counter() - wall) / len(ids)
    per_scene_cpu = (time.process_time() - cpu) / len(ids)

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
        "ms_per_scene_wall": 1000 * per_scene_wall,
        "ms_per_scene_cpu": 1000 * per_scene_cpu,
        "batch_size": dm.batch_size,
        "patch_size": dm.sizes["train"],
        "ms_per_training_batch_median": 1000 * sorted(times)[len(times) // 2],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    for k, v in result.items():
        print(f"{k:32s} {v:.2f}" if isinstance(v, float) else f"{k:32s} {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
