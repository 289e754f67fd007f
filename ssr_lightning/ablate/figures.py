"""Report figures: a bar chart per table, the qualitative grid (LR | each row's SR | HR) and TensorBoard hparams.

Samples come from `<out>/cells/<cell_id>/samples/{name}_{lr,sr,hr}.png`, written by `EvalWriter` during a cell's
`ssr predict` (a stage's own test step may write the same files into `$SSR_SAMPLES_DIR`). A cell without samples
is left out of the grid; without any, no grid is drawn.
"""

from __future__ import annotations

import math
import shutil
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files only
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from ssr_lightning.ablate.plan import Plan
from ssr_lightning.ablate.report import Table
from ssr_lightning.files import atomic_write

__all__ = ["bar_chart", "qualitative_grid", "tensorboard_hparams"]


def bar_chart(table: Table, path: Path) -> Path | None:
    """One panel per metric, bars = rows (grouped by dataset), error bars = std over seeds; None if no numbers."""
    metrics = list(dict.fromkeys(c.metric for c in table.columns))
    panels = [m for m in metrics if any(e.mean is not None for row in table.entries
                                        for e, c in zip(row, table.columns, strict=True) if c.metric == m)]
    if not panels:
        return None
    datasets = table.datasets
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.2 * len(panels), 5), 3.8), squeeze=False)
    width = 0.8 / max(len(table.labels), 1)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes[0], panels, strict=True):
        col0 = next(c for c in table.columns if c.metric == metric)
        lo, hi = float("inf"), float("-inf")
        for r, label in enumerate(table.labels):
            xs, ys, errs = [], [], []
            for d, ds in enumerate(datasets):
                j = next((j for j, c in enumerate(table.columns) if c.metric == metric and c.dataset == ds), None)
                entry = table.entries[r][j] if j is not None else None
                if entry is not None and entry.mean is not None:
                    xs.append(d + (r - (len(table.labels) - 1) / 2) * width)
                    ys.append(entry.mean)
                    errs.append(entry.std or 0.0)
            ax.bar(xs, ys, width=width, yerr=errs, capsize=2, color=colours(r % 10), label=label)
            for y, e in zip(ys, errs, strict=True):
                lo, hi = min(lo, y - e), max(hi, y + e)
        if lo <= hi:
            # zoom on the values (ablation rows differ by tenths of a dB); the axis does not start at 0
            pad = max(0.25 * (hi - lo), 0.02 * max(abs(hi), 1e-6))
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(range(len(datasets)), datasets, fontsize=8)
        ax.set_title(col0.label() + col0.arrow(), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(len(labels), 3), frameon=False)
    fig.suptitle(table.title, fontsize=10)
    rows_of_legend = math.ceil(len(labels) / 3) if labels else 0
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _crop(img: np.ndarray, size: int, scale: int = 1) -> np.ndarray:
    """Centre crop of `size` HR pixels (`size/scale` for an LR image), so LR and HR crops cover one region."""
    h, w = img.shape[:2]
    s = max(1, min(size // scale, h, w))
    top, left = (h - s) // 2, (w - s) // 2
    return img[top : top + s, left : left + s]


def qualitative_grid(plan: Plan, records: dict[str, dict[str, Any]], out: Path, path: Path,
                     crop: int | None = None, max_samples: int | None = None) -> Path | None:
    """Crops of LR | each row's SR | HR for a few test images (first dataset, first seed); None without samples."""
    cfg = plan.study.report.get("qualitative", {}) or {}
    crop = int(crop or cfg.get("crop", 96))
    max_samples = int(max_samples or cfg.get("max_samples", 2))
    dataset, seed = plan.study.datasets[0].name, plan.study.seeds[0]
    columns: list[tuple[str, Path]] = []  # (row label, samples folder)
    for cell in plan.cells:
        rec = records.get(cell.cell_id)
        if cell.dataset != dataset or cell.seed != seed or not rec or rec.get("status") != "ok":
            continue
        if not rec.get("samples"):  # this cell saved no outputs: the grid skips it
            continue
        folder = out / rec["samples"]
        if any(folder.glob("*_sr.png")):
            columns.append((cell.label, folder))
    if not columns:
        return None
    names = sorted(p.name[: -len("_sr.png")] for p in columns[0][1].glob("*_sr.png"))[:max_samples]
    if not names:
        return None
    ncols = len(columns) + 2
    fig, axes = plt.subplots(len(names), ncols, figsize=(1.9 * ncols, 2.0 * len(names) + 0.3), squeeze=False)
    for i, name in enumerate(names):
        hr_file = next((f / f"{name}_hr.png" for _, f in columns if (f / f"{name}_hr.png").is_file()), None)
        lr_file = next((f / f"{name}_lr.png" for _, f in columns if (f / f"{name}_lr.png").is_file()), None)
        hr = _load(hr_file) if hr_file else None
        tiles: list[tuple[str, np.ndarray | None]] = []
        if lr_file is not None and hr is not None:
            lr = _load(lr_file)
            scale = max(1, round(hr.shape[0] / lr.shape[0]))
            lr_crop = _crop(lr, crop, scale)
            tiles.append(("LR", np.kron(lr_crop, np.ones((scale, scale, 1), dtype=lr.dtype))))  # nearest upsampling
        else:
            tiles.append(("LR", None))
        for label, folder in columns:
            f = folder / f"{name}_sr.png"
            tiles.append((label, _crop(_load(f), crop) if f.is_file() else None))
        tiles.append(("HR", _crop(hr, crop) if hr is not None else None))
        for j, (title, img) in enumerate(tiles):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            if i == 0:
                ax.set_title(textwrap.fill(title, 20), fontsize=7)  # wrap: long labels differ at the end
        axes[i, 0].set_ylabel(name[:16], fontsize=7)
    fig.suptitle(f"{plan.study.name}: {dataset}, seed {seed}, centre crops of {crop} px", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _hparam(value: Any) -> int | float | str | bool:
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def tensorboard_hparams(plan: Plan, records: dict[str, dict[str, Any]], folder: Path) -> int:
    """One `add_hparams` entry per finished cell under `folder/<cell_id>`; returns how many were (re)written.

    A cell's entry is rewritten only when its result changed (its key and finish time are kept beside it),
    so repeated reports do not pile up duplicate runs in TensorBoard's HPARAMS tab.
    """
    from torch.utils.tensorboard import (
        SummaryWriter,  # tensorboard is heavy: only when a report is written
    )

    written = 0
    for cell in plan.cells:
        rec = records.get(cell.cell_id)
        if not rec or rec.get("status") != "ok" or rec.get("key") != cell.key:
            continue
        run_dir = folder / cell.cell_id
        stamp = f"{cell.key}:{rec.get('finished_at')}"
        marker = run_dir / "RESULT_KEY"
        if marker.is_file() and marker.read_text() == stamp:
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        hparams = {**{k: _hparam(v) for k, v in cell.settings.items()}, "row": cell.label, "dataset": cell.dataset,
                   "seed": cell.seed}
        metrics = {f"ablate/{k}": float(v) for k, v in rec.get("metrics", {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
        with SummaryWriter(log_dir=str(run_dir)) as writer:
            writer.add_hparams(hparams, metrics, run_name=".")
        marker.write_text(stamp)
        written += 1
    return written
