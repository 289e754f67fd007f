"""Per-row means with 95 % CIs and paired differences to a reference row, from an ``ssr-ablate`` results folder.

    python tools/paired_rows.py ablations/results/issue12 [--reference "NBSR + SVKR"] [--also Bicubic]
        [--metrics psnr_y ssim_y niqe color_shift psnr_y_raw color_shift_raw] [--out OUT.json]

Reads every finished cell's per-image scores (``cells/<id>/predict_metrics.json`` of the predict pass and the test
pass's ``test_metrics.json``, which adds e.g. ``psnr_y_raw``), matches images by name, and prints per dataset one
Markdown table: each row's mean [bootstrap 95 % CI] per metric and, for each reference row, the paired difference
row − reference [CI] (``*`` = the CI excludes 0). The issue-12 targets read off these columns (PSNR-Y ≥ bicubic + 1 dB
and ≥ front end − 0.5 dB, NIQE ≥ 1 lower than the front end, colour shift ≤ 2 levels).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssr_lightning.metrics.stats import bootstrap_ci, paired_difference


def per_image(cell_dir: Path) -> dict[str, dict[str, float]]:
    """``{image name: {metric: value}}`` from a cell's predict and test passes (numbers only)."""
    out: dict[str, dict[str, float]] = {}
    files = [cell_dir / "predict_metrics.json", *sorted(cell_dir.glob("eval/*_test/version_*/test_metrics.json"))]
    for f in files:
        if not f.is_file():
            continue
        for row in json.loads(f.read_text()).get("per_sample", []):
            name = str(row.get("name"))
            out.setdefault(name, {}).update({k: float(v) for k, v in row.items()
                                             if k != "name" and isinstance(v, (int, float))})
    return out


def load(out: Path) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{dataset: {row label: per-image scores}}`` of the finished cells, in row order."""
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    cells = sorted((c for c in cells if c.get("status") == "ok"), key=lambda c: (c.get("row", 0), c["cell_id"]))
    data: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for c in cells:
        data.setdefault(c["dataset"], {})[c["label"]] = per_image(out / "cells" / c["cell_id"])
    return data


def _values(scores: dict[str, dict[str, float]], metric: str, names: list[str]) -> np.ndarray:
    return np.array([scores[n].get(metric, math.nan) for n in names], dtype=np.float64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="ssr-ablate results folder")
    p.add_argument("--reference", default="NBSR + SVKR", help="row label the paired differences are taken to")
    p.add_argument("--also", nargs="*", default=["Bicubic"], help="more reference rows")
    p.add_argument("--metrics", nargs="+", default=["psnr_y", "ssim_y", "niqe", "color_shift", "psnr_y_raw",
                                                     "color_shift_raw"])
    p.add_argument("--out-json", default=None)
    args = p.parse_args()
    data = load(Path(args.out))
    if not data:
        sys.exit(f"{args.out}: no finished cells")
    refs = [args.reference, *[r for r in args.also if r != args.reference]]
    report: dict[str, Any] = {}
    for dataset, rows in data.items():
        metrics = [m for m in args.metrics if any(m in s for sc in rows.values() for s in sc.values())]
        print(f"\n### {dataset}\n")
        head = ["row", *metrics, *[f"Δ{m} vs {r}" for r in refs if r in rows for m in metrics]]
        print("| " + " | ".join(head) + " |")
        print("| " + " | ".join("---" for _ in head) + " |")
        report[dataset] = {}
        for label, scores in rows.items():
            names = sorted(scores)
            cells, entry = [label], {}
            for m in metrics:
                est = bootstrap_ci(_values(scores, m, names))
                entry[m] = est.as_dict()
                cells.append(est.format() if est.n else "—")
            for r in refs:
                if r not in rows:
                    continue
                common = sorted(set(names) & set(rows[r]))
                for m in metrics:
                    a, b = _values(scores, m, common), _values(rows[r], m, common)
                    ok = np.isfinite(a) & np.isfinite(b)
                    if label == r or not ok.any():
                        cells.append("—")
                        continue
                    d = paired_difference(a[ok], b[ok])
                    entry[f"delta_{m}_vs_{r}"] = d.as_dict()
                    cells.append(d.format(signed=True) + (" *" if d.significant else ""))
            report[dataset][label] = entry
            print("| " + " | ".join(cells) + " |")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(report, indent=2))
        print(f"-> {args.out_json}")


if __name__ == "__main__":
    main()
