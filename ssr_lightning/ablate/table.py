"""What a study table holds and how its numbers are computed from the cell JSONs (written out by `report.py`).

Rows are the study's rows (✓/✗ factor columns where rows have settings), columns its metrics, one block per
dataset when there are several (Table 1). Every number follows docs/DESIGN.md §5 (`metrics/stats.py`):

- a value is the mean over test images with its 95 % bootstrap CI over images (`[lo, hi]`), the per-image values
  averaged over the training seeds that finished; with several seeds, ± the sample std of the per-seed means;
- a "Δ vs reference" column (`report.reference`, `report.delta_metrics`) holds the paired per-image difference
  row − reference with its CI, `*` where the CI excludes 0 and `n.s.` (not significant) where it does not;
- the caption states the image and seed counts, the reference and what the marks mean.

The best mean of a column (↑/↓ from `HIGHER_IS_BETTER`) is bold. Text values stay text: an unavailable metric
reads "n/a (weights missing: FILE)" and is never bold, a cell whose every seed failed reads "failed", a cell not
run yet "—"; "(k/n)" marks a mean over only k of n seeds. Everything is a pure function of the cell records
(fixed bootstrap seeds), so `--report-only` rewrites the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ssr_lightning.ablate.plan import Plan
from ssr_lightning.ablate.provenance import summarize
from ssr_lightning.metrics.iqa import HIGHER_IS_BETTER, LABELS
from ssr_lightning.metrics.stats import ALPHA, N_BOOT, Estimate, bootstrap_ci, paired_difference

__all__ = ["Column", "Entry", "Table", "build_table", "direction"]

DECIMALS = {"psnr_y": 2, "psnr": 2, "resynth_psnr": 2, "ssim_y": 3, "ssim": 3, "lpips": 3, "musiq": 2,
            "clipiqa": 3, "niqe": 2, "kernel_l1": 4, "fsim": 4, "vif": 3, "gmsd": 4, "ms_ssim": 4, "piqe": 2}
PENDING = "—"
REFERENCE = "reference"
SIGNIFICANT, NOT_SIGNIFICANT = "*", "n.s."


def _base(metric: str) -> str:
    return metric.rsplit("/", 1)[-1]  # SVKR reports per-iteration keys such as "t3/psnr_y"


def direction(metric: str) -> bool | None:
    """True if higher is better, False if lower is, None if unknown (no arrow, no bold)."""
    return HIGHER_IS_BETTER.get(metric, HIGHER_IS_BETTER.get(_base(metric)))


@dataclass
class Column:
    """One column: a metric on a dataset, as its value (`kind="value"`) or its Δ vs the reference (`"delta"`)."""

    metric: str
    dataset: str
    higher_is_better: bool | None
    kind: str = "value"

    def label(self) -> str:
        prefix = self.metric.rsplit("/", 1)[0] + " " if "/" in self.metric else ""
        text = prefix + LABELS.get(_base(self.metric), self.metric)
        return f"Δ {text}" if self.kind == "delta" else text

    def arrow(self, latex: bool = False) -> str:
        if self.higher_is_better is None:
            return ""
        if latex:
            return r" $\uparrow$" if self.higher_is_better else r" $\downarrow$"
        return " ↑" if self.higher_is_better else " ↓"

    def key(self) -> str:
        return f"{self.dataset}/{'delta_' if self.kind == 'delta' else ''}{self.metric}"


@dataclass
class Entry:
    """One table value: numbers over the finished seeds (+ the CI over images), or a text (n/a, failed, pending).

    For a value column `mean ± std` is over seeds and `[lo, hi]` the bootstrap CI of the mean over `images`
    images; for a Δ column `mean [lo, hi]` is the paired difference and `significant` says whether its CI excludes 0.
    """

    mean: float | None = None
    std: float | None = None
    n: int = 0
    total: int = 0
    text: str | None = None
    best: bool = False
    lo: float | None = None
    hi: float | None = None
    images: int = 0
    significant: bool | None = None
    better: bool | None = None  # a significant Δ in the metric's good direction

    def _ci(self, f: str) -> str:
        return f" [{f.format(self.lo)}, {f.format(self.hi)}]" if self.lo is not None and self.images > 1 else ""

    def display(self, decimals: int, pm: str = "±") -> str:
        if self.mean is None:
            return self.text or PENDING
        f = f"{{:.{decimals}f}}"
        out = f.format(self.mean)
        if self.n > 1 and self.std is not None:
            out += f" {pm} {f.format(self.std)}"
        out += self._ci(f)
        if self.n < self.total:
            out += f" ({self.n}/{self.total})"
        return out

    def display_delta(self, decimals: int) -> str:
        if self.mean is None:
            return self.text or PENDING
        f = f"{{:+.{decimals}f}}"
        mark = "" if self.significant is None else f" {SIGNIFICANT if self.significant else NOT_SIGNIFICANT}"
        return f.format(self.mean) + self._ci(f) + mark


@dataclass
class Table:
    """A rendered-to-be table: rows × columns of entries, and what the caption says about them."""

    title: str
    row_header: str
    factor_columns: list[str]
    columns: list[Column]
    labels: list[str] = field(default_factory=list)
    settings: list[dict[str, Any]] = field(default_factory=list)
    entries: list[list[Entry]] = field(default_factory=list)
    decimals: dict[str, int] = field(default_factory=dict)
    factor_labels: dict[str, str] = field(default_factory=dict)
    reference: str | None = None
    reference_lines: list[str] = field(default_factory=list)
    seeds: dict[str, list[int]] = field(default_factory=dict)  # row label -> seeds that finished (any column)
    study_seeds: list[int] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def factor_headers(self) -> list[str]:
        return [self.factor_labels.get(f, f) for f in self.factor_columns]

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(c.dataset for c in self.columns))

    @property
    def value_columns(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "value"]

    def header(self, col: Column, latex: bool = False) -> str:
        multi = len(self.datasets) > 1 and not latex  # LaTeX puts datasets in a header row of their own
        return (f"{col.dataset} " if multi else "") + col.label() + col.arrow(latex)

    def digits(self, col: Column) -> int:
        return self.decimals.get(col.metric, self.decimals.get(_base(col.metric), DECIMALS.get(_base(col.metric), 4)))

    def text(self, e: Entry, col: Column) -> str:
        return e.display_delta(self.digits(col)) if col.kind == "delta" else e.display(self.digits(col))

    def entry(self, label: str, col: Column) -> Entry | None:
        if label not in self.labels or col not in self.columns:
            return None
        return self.entries[self.labels.index(label)][self.columns.index(col)]

    def caption(self) -> str:
        """What the numbers are: image and seed counts, the CI, the reference of Δ and the marks."""
        images = sorted({e.images for row in self.entries for e, c in zip(row, self.columns, strict=True)
                         if c.kind == "value" and e.mean is not None and e.images})
        if images:
            img = f"{images[0]}" if len(images) == 1 else f"{images[0]}–{images[-1]}"
            parts = [f"Mean over {img} test images per cell with its {100 * (1 - ALPHA):.0f} % bootstrap CI over "
                     f"images [lo, hi] ({N_BOOT} resamples)"]
        else:
            parts = ["Means as the cells report them (no per-image values recorded, so no CI)"]
        full = [lab for lab, s in self.seeds.items() if len(s) > 1]
        if full:
            n = max(len(s) for s in self.seeds.values())
            parts.append(f"± std over {n} training seeds ({', '.join(map(str, self.study_seeds))}); per-image values "
                         "averaged over the seeds")
        else:
            parts.append(f"one training seed ({self.study_seeds[0] if self.study_seeds else 0})")
        once = [lab for lab, s in self.seeds.items() if len(s) == 1 and len(self.study_seeds) > 1]
        if once:
            parts.append(f"evaluated once (no seed-dependent training): {', '.join(once)}")
        if self.reference is not None and any(c.kind == "delta" for c in self.columns):
            parts.append(f"Δ: paired per-image difference row − {self.reference} with its CI; {SIGNIFICANT} the CI "
                         f"excludes 0, {NOT_SIGNIFICANT} not significant")
        parts.append("bold: best mean of a column")
        return "; ".join(parts) + "."


def _numbers(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _images(ok: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """Per-image values averaged over the seeds that report them (images every such seed scored)."""
    maps = [r["per_image"][metric] for r in ok if isinstance((r.get("per_image") or {}).get(metric), dict)]
    if not maps:
        return {}
    common = set(maps[0]).intersection(*maps[1:])
    return {name: sum(m[name] for m in maps) / len(maps) for name in sorted(common)}


def _entry(records: list[dict[str, Any] | None], metric: str) -> tuple[Entry, dict[str, float]]:
    total = len(records)
    done = [r for r in records if r is not None]
    ok = [r for r in done if r.get("status") == "ok"]
    if not done:
        return Entry(total=total, text=PENDING), {}
    if not ok:
        return Entry(total=total, text="failed"), {}
    values = [r.get("metrics", {}).get(metric) for r in ok]
    numbers = _numbers(values)
    if not numbers:
        text = next((v for v in values if isinstance(v, str)), None)
        return Entry(total=total, text=text or "n/a"), {}
    mean = sum(numbers) / len(numbers)
    std = math.sqrt(sum((x - mean) ** 2 for x in numbers) / (len(numbers) - 1)) if len(numbers) > 1 else 0.0
    per_image = _images(ok, metric)
    entry = Entry(mean, std, len(numbers), total)
    if per_image:
        ci = bootstrap_ci(list(per_image.values()))
        entry.lo, entry.hi, entry.images = ci.lo, ci.hi, ci.n
    return entry, per_image


def _delta(row: dict[str, float], ref: dict[str, float], higher: bool | None) -> Entry:
    common = sorted(set(row) & set(ref))
    if len(common) < 2:
        return Entry(text="n/a (no paired per-image values)")
    est: Estimate = paired_difference([row[k] for k in common], [ref[k] for k in common])
    better = None if higher is None or not est.significant else (est.mean > 0) == higher
    return Entry(mean=est.mean, lo=est.lo, hi=est.hi, images=est.n, n=1, total=1, significant=est.significant,
                 better=better)


def build_table(plan: Plan, records: dict[str, dict[str, Any]]) -> Table:
    """The table of a plan from its cell records (`cell_id -> JSON`); records of another cell key are ignored."""
    study = plan.study
    cfg = study.report
    seen = [k for r in study.rows for k in r.settings]
    factors = list(cfg.get("factor_columns", list(dict.fromkeys(seen))))
    metrics = list(cfg.get("metrics", study.metrics))
    reference = cfg.get("reference")
    deltas = list(cfg.get("delta_metrics") or (metrics[:1] if reference is not None else []))
    columns = []
    for d in study.datasets:
        columns += [Column(m, d.name, direction(m)) for m in metrics]
        columns += [Column(m, d.name, direction(m), "delta") for m in deltas]
    table = Table(str(cfg.get("title", study.name)), str(cfg.get("row_header", "Method")), factors, columns,
                  decimals=dict(cfg.get("decimals", {})), factor_labels=dict(cfg.get("factor_labels", {})),
                  reference=reference, reference_lines=[str(x) for x in cfg.get("reference_lines") or []],
                  study_seeds=list(study.seeds))
    images: dict[tuple[int, str, str], dict[str, float]] = {}
    for r, row in enumerate(study.rows):
        table.labels.append(row.label)
        table.settings.append(dict(row.settings))
        line = []
        finished: set[int] = set()
        for col in columns:
            if col.kind == "delta":
                line.append(Entry())  # filled once the reference row's values are known
                continue
            cells = [c for c in plan.cells if c.row == r and c.dataset == col.dataset]
            recs = [records.get(c.cell_id) for c in cells]
            recs = [x if x is not None and x.get("key") == c.key else None for x, c in zip(recs, cells, strict=True)]
            finished |= {c.seed for x, c in zip(recs, cells, strict=True) if x is not None and x.get("status") == "ok"}
            entry, per_image = _entry(recs, col.metric)
            images[(r, col.dataset, col.metric)] = per_image
            line.append(entry)
        table.seeds[row.label] = sorted(finished)
        table.entries.append(line)
    ref_row = table.labels.index(reference) if reference is not None else None
    for r, line in enumerate(table.entries):
        for j, col in enumerate(columns):
            if col.kind != "delta":
                continue
            if r == ref_row:
                line[j] = Entry(text=REFERENCE)
                continue
            value = table.entries[r][columns.index(Column(col.metric, col.dataset, col.higher_is_better))]
            ref_value = table.entries[ref_row][columns.index(Column(col.metric, col.dataset, col.higher_is_better))]
            if value.mean is None or ref_value.mean is None:
                line[j] = Entry(text=value.text if value.mean is None else ref_value.text or PENDING)
                continue
            line[j] = _delta(images[(r, col.dataset, col.metric)], images[(ref_row, col.dataset, col.metric)],
                             col.higher_is_better)
    for j, col in enumerate(columns):
        if col.higher_is_better is None or col.kind != "value":
            continue
        values = [row[j].mean for row in table.entries if row[j].mean is not None]
        if len(values) < 2:  # nothing to compare against
            continue
        best = max(values) if col.higher_is_better else min(values)
        for row in table.entries:
            row[j].best = row[j].mean is not None and abs(row[j].mean - best) <= 1e-12 * max(1.0, abs(best))
    table.provenance = summarize([rec for rec in records.values() if rec.get("status") == "ok"])
    return table
