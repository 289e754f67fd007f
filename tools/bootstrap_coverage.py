"""How often the statistics library's 95 % CIs contain the truth, on simulated experiments (docs/DESIGN.md §5).

    OMP_NUM_THREADS=1 python tools/bootstrap_coverage.py      # writes results/metrics/bootstrap_coverage.json

Cells: values ``(seeds, images)`` = image effect (sd 1) + seed offset (sd ``seed_sd``) + noise (sd 0.3), true mean
0, 24 images. Compared: the two-level bootstrap (:func:`bootstrap_seeds`) and averaging the seeds first, then
bootstrapping images (the report before issue 19). Clusters: 5 sources × 5 draws, a source effect (sd 1) shared by
its draws plus a draw effect (sd 0.3); clustered vs image-level resampling. 1000 experiments per setting, 1000
bootstrap draws each; a coverage estimate has a binomial standard error of about 0.7 points at 95 %.
"""

from __future__ import annotations

import numpy as np
from embedded_pairs import write_record  # tools/ is the script's folder, first on sys.path

from ssr_lightning.metrics.stats import bootstrap_ci, bootstrap_seeds

EXPERIMENTS, N_BOOT = 1000, 1000


def covers(lo: float, hi: float) -> bool:
    return lo <= 0.0 <= hi


def seeds_setting(seeds: int, seed_sd: float, rng: np.random.Generator) -> dict[str, float]:
    two = image_only = 0
    for r in range(EXPERIMENTS):
        x = rng.normal(0, 1.0, 24)[None] + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, 0.3, (seeds, 24))
        e = bootstrap_seeds(x, n_boot=N_BOOT, seed=r)
        two += covers(e.lo, e.hi)
        o = bootstrap_ci(x.mean(axis=0), n_boot=N_BOOT, seed=r)
        image_only += covers(o.lo, o.hi)
    return {"seeds": seeds, "seed_sd": seed_sd, "two_level": two / EXPERIMENTS, "image_only": image_only / EXPERIMENTS}


def cluster_setting(rng: np.random.Generator) -> dict[str, float]:
    labels = np.repeat(np.arange(5), 5)
    clustered = naive = 0
    for r in range(EXPERIMENTS):
        x = rng.normal(0, 1.0, 5)[labels] + rng.normal(0, 0.3, 25)
        c = bootstrap_seeds(x, clusters=labels, n_boot=N_BOOT, seed=r)
        clustered += covers(c.lo, c.hi)
        n = bootstrap_ci(x, n_boot=N_BOOT, seed=r)
        naive += covers(n.lo, n.hi)
    return {"sources": 5, "draws": 5, "clustered": clustered / EXPERIMENTS, "images_as_independent": naive / EXPERIMENTS}


def main() -> None:
    rng = np.random.default_rng(2024)
    cells = [seeds_setting(s, sd, rng) for s in (2, 3, 5) for sd in (0.0, 0.1, 0.2, 0.5, 1.0)]
    clusters = cluster_setting(rng)
    write_record("results/metrics/bootstrap_coverage.json", {
        "what": "coverage of nominal 95 % bootstrap CIs on simulated (seeds x 24 images) cells and clustered photos",
        "data": f"simulated, numpy default_rng(2024); {EXPERIMENTS} experiments x {N_BOOT} bootstrap draws per setting",
        "summary": {"cells": cells, "clusters": clusters},
    })


if __name__ == "__main__":
    main()
