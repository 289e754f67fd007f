"""What tools/lens_reading.py and tools/ke_pooling.py share: score each seed's trained KE on the defocus crops with a
per-batch ``score`` function, summarise rows against a reference row, and write the record (issue 21).

Each tool gives its rows (key -> label) and a ``score(net, batch) -> {key: per-image tensor}``; the values come back
as ``(seeds, images)`` matrices, the summary as each row's kernel L1 × 100 (two-level bootstrap over seeds then
images) with its paired Δ to the reference row, Holm across the table.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssr_lightning.ablate.provenance import environment
from ssr_lightning.files import atomic_write_json, atomic_write_text
from ssr_lightning.frontend.ladder import make_test_batches
from ssr_lightning.inference.checkpoints import find_checkpoint, load_model
from ssr_lightning.metrics.stats import (
    bootstrap_seeds,
    ci_phrase,
    correction_note,
    mark_deltas,
    paired_difference_seeds,
)

from record_formats import estimate  # tools/ is the script's folder, first on sys.path

DEGRADATION = ["configs/degradation/defocus.yaml", "configs/degradation/clean.yaml"]


def seed_values(runs: Path, seeds: list[int], run: str, split: str, score: Callable[[Any, dict], dict[str, Tensor]],
                desc: str, on_net: Callable[[int, Any], None] | None = None
                ) -> tuple[dict[str, np.ndarray], list[str], dict[str, str]]:
    """``(seeds, images)`` matrices of every key ``score`` returns, the image names and the checkpoints read (each
    seed's best ``run`` under ``runs/seed_<k>``); ``on_net(seed, net)`` sees each KE once, before it is scored."""
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
        if on_net is not None:
            on_net(seed, net)
        per: dict[str, list[float]] = {}
        for batch in tqdm(batches, desc=f"{desc}, seed {seed}", leave=False):
            for key, v in score(net, batch).items():
                per.setdefault(key, []).extend(v.double().tolist())
        for key, v in per.items():
            values.setdefault(key, []).append(v)
    return {k: np.asarray(v) for k, v in values.items()}, names, ckpts


def summarize_rows(values: dict[str, np.ndarray], labels: dict[str, str], reference: str) -> dict[str, Any]:
    """Each row's kernel L1 × 100 and its paired Δ to ``reference`` with the Holm mark; seeds, images, CI phrase."""
    rows = {k: {"label": labels[k], "kernel_l1": bootstrap_seeds(100 * values[k]).as_dict()} for k in labels}
    deltas = {k: paired_difference_seeds(100 * values[k], 100 * values[reference]) for k in labels if k != reference}
    marks = mark_deltas(list(deltas.values()))
    for (k, d), m in zip(deltas.items(), marks, strict=True):
        rows[k]["delta"] = {**d.as_dict(), "mark": m.text if m else ""}
    seeds, n = values[reference].shape
    return {"rows": rows, "seeds": seeds, "images": n, "ci": ci_phrase(seeds, n), "correction": correction_note(marks)}


def table_lines(s: dict[str, Any], title: str, first_column: str, split: str) -> list[str]:
    """The summary's Markdown table under a bold ``title``, and the Δ note."""
    lines = [f"**{title}** (defocus family, {split} split, GT depth; kernel L1 × 100 of the per-pixel 21×21 kernel, "
             f"lower is better; 95 % CI: {s['ci']})", "",
             f"| {first_column} | kernel L1 × 100 | Δ vs as trained | mark |", "| --- | --- | --- | --- |"]
    for r in s["rows"].values():
        d = r.get("delta")
        lines.append(f"| {r['label']} | {estimate(r['kernel_l1'], 1)} | {estimate(d, 1, True) if d else '—'} | "
                     f"{d['mark'] if d else ''} |")
    return lines + ["", f"Δ: paired per-image difference, * where its CI excludes 0; {s['correction']}."]


def parse_args(doc: str, run: str, out: str, argv: list[str] | None) -> argparse.Namespace:
    """The shared command line: ``--runs``, ``--run``, ``--seeds``, ``--split``, ``--out``, ``--overwrite``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path("results/frontend_defocus/runs"),
                   help="ssr-frontend --runs folder holding seed_<k>/<run>")
    p.add_argument("--run", default=run, help="the KE's run name")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--overwrite", action="store_true", help="replace the record in --out")
    return p.parse_args(argv)


def refuses(tool: str, args: argparse.Namespace) -> bool:
    """True (after saying so) when ``--out`` holds a record and ``--overwrite`` was not given."""
    if (args.out / "summary.json").is_file() and not args.overwrite:
        print(f"{tool}: {args.out} already holds a record; pass --overwrite to replace it", file=sys.stderr)
        return True
    return False


def write_record(tool: str, args: argparse.Namespace, what: str, md: str, summary: dict[str, Any],
                 values: dict[str, np.ndarray], names: list[str], read: dict[str, Any]) -> int:
    """Write ``summary.md``/``.json``, ``per_image.json`` and ``RECORD.json`` into ``--out``; print the table; 0 when
    every row's mean is finite."""
    command = (f"OMP_NUM_THREADS=1 python tools/{tool}.py --runs " + args.runs.as_posix()
               + f" --run {args.run} --seeds {' '.join(map(str, args.seeds))} --split {args.split} --out "
               + args.out.as_posix())
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "what": what, "provenance": environment(), **read}
    atomic_write_text(args.out / "summary.md", md)
    atomic_write_json(args.out / "summary.json", {**meta, **summary})
    atomic_write_json(args.out / "per_image.json", {"names": names, "seeds": args.seeds,
                                                    **{k: v.tolist() for k, v in values.items()}})
    atomic_write_json(args.out / "RECORD.json", meta)
    print(md)
    return 0 if all(math.isfinite(r["kernel_l1"]["mean"]) for r in summary["rows"].values()) else 1
