"""Report figures: means with CI whiskers, Δ vs the reference, perception–distortion, and the qualitative grid.

Every figure is drawn on matplotlib's object API (no pyplot state) and saved with fixed metadata (no "Software"
entry, no timestamps), so `--report-only` rewrites the same bytes. Axes are honest: a value axis spans the CIs
and reference lines it shows, so two rows whose whiskers overlap look like what they are; the Δ axis is
symmetric about 0. Samples for the grid come from `<out>/cells/<cell_id>/samples/{name}_{lr,sr,hr}.png`, written
by `EvalWriter` during a cell's `ssr predict`; a cell without samples is left out of the grid.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from ssr_lightning.ablate.plan import Plan
from ssr_lightning.ablate.table import Column, Entry, Table
from ssr_lightning.files import atomic_write

__all__ = ["FIGURES", "delta_chart", "perception_distortion", "point_chart", "qualitative_grid", "save_figure"]

_COLOURS = ("#1f4e79", "#c55a11", "#2e7d32", "#7030a0", "#806000", "#00838f", "#d4a017", "#5d4037", "#e91e63",
            "#607d8b")
_LINE_COLOURS = ("#c62828", "#6d6d6d", "#00695c", "#ad1457")
_METADATA = {"Software": None}  # matplotlib writes its version otherwise; nothing time-dependent is written


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Atomically save `fig` as a PNG with fixed metadata."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", metadata=_METADATA))


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _whisker(e: Entry) -> tuple[float, float]:
    lo = e.lo if e.lo is not None and e.images > 1 else e.mean
    hi = e.hi if e.hi is not None and e.images > 1 else e.mean
    return float(e.mean - lo), float(hi - e.mean)  # type: ignore[operator]


def _span(lo: float, hi: float, symmetric: bool = False) -> tuple[float, float]:
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1e-3
        return -1.15 * m, 1.15 * m
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.01, 1e-3)
    return lo - pad, hi + pad


def _value_panels(table: Table, kind: str = "value") -> list[str]:
    cols = [c for c in table.columns if c.kind == kind]
    metrics = list(dict.fromkeys(c.metric for c in cols))
    return [m for m in metrics if any(table.entry(lab, c) is not None and table.entry(lab, c).mean is not None
                                      for lab in table.labels for c in cols if c.metric == m)]


def _caption(fig: Figure, table: Table, bottom: float) -> None:
    width = int(fig.get_figwidth() * 19)  # characters of 6 pt text per line at this width
    fig.text(0.01, 0.01, textwrap.fill(table.caption(), width), fontsize=6, va="bottom", color="#444444")
    fig.subplots_adjust(bottom=bottom)


def point_chart(plan: Plan, table: Table, records: dict[str, Any], out: Path, path: Path) -> Path | None:
    """One panel per metric: each row's mean with its 95 % CI (the caption's; per-seed means as open circles), the
    study's reference rows (bicubic, front end) as vertical lines with their CI band; None if no numbers."""
    panels = _value_panels(table)
    if not panels:
        return None
    lines = [lab for lab in table.reference_lines if lab in table.labels]
    rows = [lab for lab in table.labels if lab not in lines]
    datasets = table.datasets
    fig = _figure(max(3.6 * len(panels), 6.0), 0.42 * len(rows) * len(datasets) + 2.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for p, (ax, metric) in enumerate(zip(axes, panels, strict=True)):
        lo, hi = np.inf, -np.inf
        for d, ds in enumerate(datasets):
            col = Column(metric, ds, next(c.higher_is_better for c in table.columns if c.metric == metric))
            for r, lab in enumerate(rows):
                e = table.entry(lab, col)
                if e is None or e.mean is None:
                    continue
                y = (len(rows) - 1 - r) + (d - (len(datasets) - 1) / 2) * 0.7 / max(len(datasets), 1)
                left, right = _whisker(e)
                ax.errorbar([e.mean], [y], xerr=[[left], [right]], fmt="o", ms=5, capsize=3,
                            color=_COLOURS[d % len(_COLOURS)], label=ds if r == 0 and p == 0 else None)
                lo, hi = min(lo, e.mean - left), max(hi, e.mean + right)
                seeds = [rec["metrics"][metric] for c in plan.cells if c.label == lab and c.dataset == ds
                         and (rec := records.get(c.cell_id)) and rec.get("status") == "ok"
                         and isinstance(rec.get("metrics", {}).get(metric), (int, float))]
                if len(seeds) > 1:
                    ax.plot(seeds, [y] * len(seeds), "o", mfc="none", ms=4, color=_COLOURS[d % len(_COLOURS)],
                            alpha=0.6)
                    lo, hi = min(lo, *seeds), max(hi, *seeds)
            for k, lab in enumerate(lines):
                e = table.entry(lab, col)
                if e is None or e.mean is None:
                    continue
                colour = _LINE_COLOURS[k % len(_LINE_COLOURS)]
                ax.axvline(e.mean, ls="--", lw=1.2, color=colour, label=lab if p == 0 and d == 0 else None)
                left, right = _whisker(e)
                ax.axvspan(e.mean - left, e.mean + right, color=colour, alpha=0.12, lw=0)
                lo, hi = min(lo, e.mean - left), max(hi, e.mean + right)
        if np.isfinite(lo):
            ax.set_xlim(*_span(lo, hi))
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(list(reversed(rows)) if p == 0 else [""] * len(rows), fontsize=8)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.grid(axis="x", alpha=0.3)
        c0 = next(c for c in table.columns if c.metric == metric)
        ax.set_title(c0.label() + c0.arrow(), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(datasets) == 1:  # one dataset: the legend only names the reference lines
        keep = [i for i, lab in enumerate(labels) if lab in lines]
        handles, labels = [handles[i] for i in keep], [labels[i] for i in keep]
    if labels:
        fig.legend(handles, labels, fontsize=7, loc="upper right", ncol=min(len(labels), 4), frameon=False)
    fig.suptitle(table.title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.09, 1, 0.95))
    _caption(fig, table, bottom=max(fig.subplotpars.bottom, 0.16))
    return save_figure(fig, path)


def delta_chart(plan: Plan, table: Table, records: dict[str, Any], out: Path, path: Path) -> Path | None:
    """Δ vs the reference row per Δ metric, with the paired CI, on an axis centred on 0; None without Δ columns."""
    panels = _value_panels(table, "delta")
    if not panels or table.reference is None:
        return None
    rows = [lab for lab in table.labels if lab != table.reference]
    datasets = table.datasets
    fig = _figure(max(3.8 * len(panels), 6.0), 0.42 * len(rows) * len(datasets) + 2.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for p, (ax, metric) in enumerate(zip(axes, panels, strict=True)):
        lo, hi = 0.0, 0.0
        higher = next(c.higher_is_better for c in table.columns if c.metric == metric)
        for d, ds in enumerate(datasets):
            col = Column(metric, ds, higher, "delta")
            for r, lab in enumerate(rows):
                e = table.entry(lab, col)
                if e is None or e.mean is None:
                    continue
                y = (len(rows) - 1 - r) + (d - (len(datasets) - 1) / 2) * 0.7 / max(len(datasets), 1)
                colour = "#8c8c8c" if not e.significant else ("#2e7d32" if e.better else "#c62828")
                left, right = _whisker(e)
                ax.errorbar([e.mean], [y], xerr=[[left], [right]], fmt="o" if d == 0 else "s", ms=5, capsize=3,
                            color=colour)
                ax.annotate(e.mark or ("*" if e.significant else "n.s."), (e.mean + right, y), xytext=(3, 0),
                            textcoords="offset points", fontsize=7, va="center", color=colour)
                lo, hi = min(lo, e.mean - left), max(hi, e.mean + right)
        ax.axvline(0.0, color="black", lw=1)
        ax.set_xlim(*_span(lo, hi, symmetric=True))
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(list(reversed(rows)) if p == 0 else [""] * len(rows), fontsize=8)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.grid(axis="x", alpha=0.3)
        good = "" if higher is None else (" (> 0 better)" if higher else " (< 0 better)")
        c0 = Column(metric, datasets[0], higher, "delta")
        ax.set_title(f"{c0.label()}{good}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{table.title}: Δ vs {table.reference}\n(green / red: 95 % CI excludes 0, better / worse; grey: "
                 "n.s.; the Holm-corrected mark in brackets; which CI: see below)", fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.09, 1, 0.95))
    _caption(fig, table, bottom=max(fig.subplotpars.bottom, 0.16))
    return save_figure(fig, path)


def perception_distortion(plan: Plan, table: Table, records: dict[str, Any], out: Path, path: Path) -> Path | None:
    """PSNR-Y (distortion, ↑) against a no-reference perceptual metric (NIQE, else the next one with numbers) per
    row, both with their CIs (first dataset); None unless the study asks for it and both have numbers."""
    cfg = plan.study.report.get("perception_distortion")
    if not cfg:
        return None
    ds = table.datasets[0]
    dist = str(cfg.get("distortion", "psnr_y"))
    options = cfg.get("perception") or []
    options = [options] if isinstance(options, str) else list(options)
    cols = {c.metric: c for c in table.value_columns if c.dataset == ds}
    if dist not in cols:
        return None
    per = next((m for m in options if m in cols and any((e := table.entry(lab, cols[m])) is not None
                                                         and e.mean is not None for lab in table.labels)), None)
    if per is None:
        return None
    fig = _figure(8.4, 5.0)
    ax = fig.add_subplot(111)
    others = [lab for lab in table.labels if lab not in table.reference_lines]  # one colour each, never shared
    for lab in table.labels:
        ey, ex = table.entry(lab, cols[dist]), table.entry(lab, cols[per])
        if ey is None or ex is None or ey.mean is None or ex.mean is None:
            continue
        ref = lab in table.reference_lines
        # reference rows in the colours of their lines in the means chart
        colour = _LINE_COLOURS[table.reference_lines.index(lab) % len(_LINE_COLOURS)] if ref \
            else _COLOURS[others.index(lab) % len(_COLOURS)]
        (xl, xr), (yl, yh) = _whisker(ex), _whisker(ey)
        # a legend, not labels at the points: rows of an ablation often sit on top of each other
        ax.errorbar([ex.mean], [ey.mean], xerr=[[xl], [xr]], yerr=[[yl], [yh]], fmt="s" if ref else "o", ms=6,
                    capsize=3, color=colour, label=lab, alpha=0.85)
    px, py = cols[per], cols[dist]
    ax.set_xlabel(f"{px.label()}{px.arrow()} (no-reference, perception)", fontsize=8)
    ax.set_ylabel(f"{py.label()}{py.arrow()} (distortion)", fontsize=8)
    if px.higher_is_better is False:
        ax.invert_xaxis()  # better perception to the right, better distortion up: the ideal corner is top right
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(f"{table.title}\nperception–distortion ({ds}; better: up and right)", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _caption(fig, table, bottom=max(fig.subplotpars.bottom, 0.2))
    return save_figure(fig, path)


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _detail_crop(hr: np.ndarray, size: int) -> tuple[int, int, int]:
    """(top, left, side) of the `size` HR-pixel window with the most gradient energy, on a grid of the LR scale."""
    h, w = hr.shape[:2]
    s = max(8, min(size, h, w))
    grey = hr.astype(np.float64).mean(axis=2)
    energy = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1, :]
    best, where = -1.0, (0, 0)
    step = max(4, s // 8)
    for top in range(0, h - s + 1, step):
        for left in range(0, w - s + 1, step):
            e = float(energy[top : top + s - 1, left : left + s - 1].sum())
            if e > best:
                best, where = e, (top, left)
    return where[0], where[1], s


def qualitative_grid(plan: Plan, table: Table, records: dict[str, Any], out: Path, path: Path) -> Path | None:
    """HR with the crop marked | LR | each row's SR | HR, the same crop (the most detailed window of the HR image)
    in every column, each SR tile with its image's PSNR-Y; first dataset, first seed. None without samples."""
    cfg = plan.study.report.get("qualitative", {}) or {}
    crop = int(cfg.get("crop", 96))
    max_samples = int(cfg.get("max_samples", 2))
    dataset, seed = plan.study.datasets[0].name, plan.study.seeds[0]
    columns: list[tuple[str, Path, dict[str, Any]]] = []  # (row label, samples folder, record)
    for cell in plan.cells:
        rec = records.get(cell.cell_id)
        if cell.dataset != dataset or cell.seed != seed or not rec or rec.get("status") != "ok":
            continue
        if not rec.get("samples"):  # this cell saved no outputs: the grid skips it
            continue
        folder = out / rec["samples"]
        if any(folder.glob("*_sr.png")):
            columns.append((cell.label, folder, rec))
    if not columns:
        return None
    names = sorted(p.name[: -len("_sr.png")] for p in columns[0][1].glob("*_sr.png"))[:max_samples]
    if not names:
        return None
    ncols = len(columns) + 3
    fig = _figure(1.75 * ncols, 1.95 * len(names) + 0.6)
    axes = fig.subplots(len(names), ncols, squeeze=False)
    for i, name in enumerate(names):
        hr_file = next((f / f"{name}_hr.png" for _, f, _ in columns if (f / f"{name}_hr.png").is_file()), None)
        lr_file = next((f / f"{name}_lr.png" for _, f, _ in columns if (f / f"{name}_lr.png").is_file()), None)
        if hr_file is None:
            continue
        hr = _load(hr_file)
        top, left, s = _detail_crop(hr, crop)
        tiles: list[tuple[str, np.ndarray | None, str]] = [("HR (crop marked)", hr, "")]
        if lr_file is not None:
            lr = _load(lr_file)
            scale = max(1, round(hr.shape[0] / lr.shape[0]))
            part = lr[top // scale : (top + s) // scale, left // scale : (left + s) // scale]
            tiles.append((f"LR (×{scale} nearest)", np.kron(part, np.ones((scale, scale, 1), dtype=lr.dtype)), ""))
        else:
            tiles.append(("LR", None, ""))
        for label, folder, rec in columns:
            f = folder / f"{name}_sr.png"
            img = _load(f)[top : top + s, left : left + s] if f.is_file() else None
            value = ((rec.get("per_image") or {}).get("psnr_y") or {}).get(name)
            tiles.append((label, img, f"{value:.2f} dB" if isinstance(value, float) else ""))
        tiles.append(("HR", hr[top : top + s, left : left + s], ""))
        for j, (title, img, note) in enumerate(tiles):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            if j == 0:
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), s, s, fill=False, ec="#ffeb3b", lw=1.5))
                ax.set_ylabel(textwrap.fill(name, 18), fontsize=7)
            if i == 0:
                ax.set_title(textwrap.fill(title, 20), fontsize=7)
            if note:
                ax.set_xlabel(note, fontsize=7)
    fig.suptitle(f"{plan.study.name}: {dataset}, seed {seed}; the same {crop} px crop in every column "
                 "(PSNR-Y of the whole image under each SR)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


Draw = Callable[[Plan, Table, dict[str, Any], Path, Path], "Path | None"]
# report file suffix -> figure; write_report draws each into <out>/report/<name>_<suffix>.png
FIGURES: dict[str, Draw] = {"means": point_chart, "delta": delta_chart, "perception_distortion": perception_distortion,
                            "qualitative": qualitative_grid}
