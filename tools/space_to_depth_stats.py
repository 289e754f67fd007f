"""Measure the per-colour affine constants of the space-to-depth latent (``diffusion/space_to_depth.py``).

    python tools/space_to_depth_stats.py [--num-train 240] [--size 256]

Mean and standard deviation of ``2·x − 1`` per RGB channel over the HR images of the embedded train split
(``EmbeddedScenes("train")``, seed 0, the default data config): the space-to-depth latent subtracts the mean and
divides by the std so the diffusion sees ~unit-variance channels, as ``VAELatents.scale`` does for a VAE. Printed as
Python literals to paste into ``SPACE_TO_DEPTH_MEAN`` / ``SPACE_TO_DEPTH_STD``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssr_lightning.data.scenes import EmbeddedScenes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-train", type=int, default=240)
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    data = EmbeddedScenes("train", size=args.size, num_train=args.num_train)
    s = torch.zeros(3, dtype=torch.float64)
    sq = torch.zeros(3, dtype=torch.float64)
    n = 0
    for i in range(len(data)):
        x = data[i]["hr"].double() * 2 - 1
        s += x.sum((1, 2))
        sq += x.pow(2).sum((1, 2))
        n += x[0].numel()
    mean = s / n
    std = (sq / n - mean**2).sqrt()
    print(f"{len(data)} scenes of {args.size}^2")
    print("SPACE_TO_DEPTH_MEAN =", tuple(round(float(v), 4) for v in mean))
    print("SPACE_TO_DEPTH_STD =", tuple(round(float(v), 4) for v in std))


if __name__ == "__main__":
    main()
