"""What a study table holds and how its numbers are computed from the cell JSONs (written out by `report.py`).

Rows are the study's rows (✓/✗ factor columns where rows have settings), columns its metrics, one block per
dataset when there are several (Table 1). Every number follows docs/DESIGN.md §5 (`metrics/stats.py`):

- a value is the mean over test images with its 95 % CI `[lo, hi]`: with several finished seeds a two-level
  bootstrap (seeds, then images: `bootstrap_seeds`), with one seed the bootstrap over images; images of one source
  (a photo's kernel draws, recorded by `EvalWriter` or read from `{photo}_v{k}` names) are resampled together;
  with several seeds, ± the sample std of the per-seed means;
- a "Δ vs reference" column (`report.reference`, `report.delta_metrics`) holds the paired per-image difference
  row − reference with the same kind of CI (`paired_difference_seeds`: seeds resampled per row, jointly when seed s
  of both rows used the same stage trainings), `*` where the CI excludes 0 and `n.s.` where it does not, and beside
  a `*` the Holm-corrected mark over every Δ test of the table (`mark_deltas`);
- the caption states the image and seed counts, which CI, the reference, the marks and the correction.

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
from ssr_lightning.metrics.stats import (
    ALPHA,
    N_BOOT,
    Bootstrap,
    bootstrap_seeds,
    ci_phrase,
    correction_note,
    mark_deltas,
    paired_difference_seeds,
    seed_matrix,
    source_clusters,
)

__all__ = ["Column", "Entry", "Table", "build_table", "direction"]

DECIMALS = {"psnr_y": 2, "psnr": 2, "resynth_psnr": 2, "ssim_y": 3, "ssim": 3, "lpips": 3, "musiq": 2,
            "clipiqa": 3, "niqe": 2, "kernel_l1": 4, "fsim": 4, "vif": 3, "gmsd": 4, "ms_ssim": 4, "piqe": 2}
PENDING = "—"
REFERENCE = "reference"
SIGNIFICANT, NOT_SIGNIFICANT = "*", "n.s."
BICUBIC_NAMES = {"matlab": "MATLAB imresize bicubic (A = −0.5)", "torch": "torch bicubic (F.interpolate, A = −0.75)"}


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

    For a value column `mean ± std` is over seeds and `[lo, hi]` the CI of the mean over `images` images (a
    two-level bootstrap over `boot_seeds` seeds when there are several; `units` sources when fewer than the images);
    for a Δ column `mean [lo, hi]` is the paired difference, `significant` whether its CI excludes 0 and `mark` the
    raw mark with the corrected one beside it (`corrected`: significant after the table's correction).
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
    boot_seeds: int = 0  # seeds the bootstrap resampled (for a Δ: the fewer of the two rows')
    units: int = 0  # images, or sources when images of one source were resampled together
    p: float | None = None  # Δ: two-sided bootstrap p, and after the table's correction
    p_adjusted: float | None = None
    corrected: bool | None = None
    mark: str | None = None  # "*", "n.s.", "* (Holm *)", "* (Holm n.s.)"
    paired_seeds: bool | None = None  # Δ: seed s of both rows shared its trainings (seeds resampled jointly)

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
        mark = self.mark or ("" if self.significant is None else SIGNIFICANT if self.significant else NOT_SIGNIFICANT)
        return f.format(self.mean) + self._ci(f) + (f" {mark}" if mark else "")


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
    correction: str | None = None  # the caption's sentence on the corrected marks (None: no Δ test)
    bicubic: dict[str, str] = field(default_factory=dict)  # label of a bicubic row -> "matlab" | "torch"

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

    def ci_text(self) -> str | None:
        """Which CI the values carry: the phrase of most rows, then the rows whose CI is another kind."""
        kinds: dict[str, list[str]] = {}
        for label, row in zip(self.labels, self.entries, strict=True):
            phrases = {ci_phrase(e.boot_seeds, e.images, e.units) for e, c in zip(row, self.columns, strict=True)
                       if c.kind == "value" and e.mean is not None and e.images > 1}
            for phrase in sorted(phrases):
                kinds.setdefault(phrase, []).append(label)
        if not kinds:
            return None
        main = max(kinds, key=lambda k: len(kinds[k]))  # the first of equals: dicts keep table order
        others = [f"{', '.join(rows)}: {phrase}" for phrase, rows in kinds.items() if phrase != main]
        return main + (f" ({'; '.join(others)})" if others else "")

    def caption(self) -> str:
        """What the numbers are: image and seed counts, which CI, the reference of Δ, the marks and the correction."""
        images = sorted({e.images for row in self.entries for e, c in zip(row, self.columns, strict=True)
                         if c.kind == "value" and e.mean is not None and e.images})
        ci = self.ci_text()
        if images and ci:
            img = f"{images[0]}" if len(images) == 1 else f"{images[0]}–{images[-1]}"
            parts = [f"Mean over {img} test images per cell; [lo, hi]: {100 * (1 - ALPHA):.0f} % CI, {ci} "
                     f"({N_BOOT} resamples)"]
        else:
            parts = ["Means as the cells report them (no per-image values recorded, so no CI)"]
        full = [lab for lab, s in self.seeds.items() if len(s) > 1]
        if full:
            n = max(len(s) for s in self.seeds.values())
            parts.append(f"± std over {n} training seeds ({', '.join(map(str, self.study_seeds))})")
        else:
            parts.append(f"one training seed ({self.study_seeds[0] if self.study_seeds else 0})")
        once = [lab for lab, s in self.seeds.items() if len(s) == 1 and len(self.study_seeds) > 1]
        if once:
            parts.append(f"evaluated once (no seed-dependent training): {', '.join(once)}")
        if self.reference is not None and any(c.kind == "delta" for c in self.columns):
            parts.append(f"Δ: paired per-image difference row − {self.reference} with the same kind of CI (a row's "
                         "seeds resampled on their own, together where both rows used the same stage trainings); "
                         f"{SIGNIFICANT} the CI excludes 0, {NOT_SIGNIFICANT} not significant")
            if self.correction:
                parts.append(self.correction)
        for label, method in self.bicubic.items():
            parts.append(f"{label}: {BICUBIC_NAMES.get(method, method)} of the LR input")
        parts.append("bold: best mean of a column")
        return "; ".join(parts) + "."


def _numbers(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


@dataclass
class _Values:
    """Per-image values behind one table value: one ``{image: value}`` map per finished seed, the stage keys each
    seed's cell used, and each image's source (several kernel draws of one photo share one)."""

    maps: list[dict[str, float]] = field(default_factory=list)
    stages: list[tuple[str, ...]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Images every seed scored (a seed that lost an image must not move the mean by leaving it out)."""
        return sorted(set(self.maps[0]).intersection(*self.maps[1:])) if self.maps else []

    def clusters(self, names: list[str]) -> list[str] | None:
        """One source per image, or None when every image is its own source (the plain image bootstrap)."""
        labels = [self.sources.get(n, derived) for n, derived in zip(names, source_clusters(names), strict=True)]
        return labels if len(set(labels)) < len(labels) else None


def _values(ok: list[dict[str, Any]], stages: list[tuple[str, ...]], metric: str) -> _Values:
    out = _Values()
    for rec, keys in zip(ok, stages, strict=True):
        per_image = (rec.get("per_image") or {}).get(metric)
        if isinstance(per_image, dict) and per_image:
            out.maps.append(per_image)
            out.stages.append(keys)
            out.sources.update({str(k): str(v) for k, v in (rec.get("sources") or {}).items()})
    return out


def _entry(records: list[dict[str, Any] | None], stages: list[tuple[str, ...]], metric: str
           ) -> tuple[Entry, _Values]:
    total = len(records)
    done = [r for r in records if r is not None]
    ok_pairs = [(r, k) for r, k in zip(records, stages, strict=True) if r is not None and r.get("status") == "ok"]
    ok = [r for r, _ in ok_pairs]
    if not done:
        return Entry(total=total, text=PENDING), _Values()
    if not ok:
        return Entry(total=total, text="failed"), _Values()
    values = [r.get("metrics", {}).get(metric) for r in ok]
    numbers = _numbers(values)
    if not numbers:
        text = next((v for v in values if isinstance(v, str)), None)
        return Entry(total=total, text=text or "n/a"), _Values()
    mean = sum(numbers) / len(numbers)
    std = math.sqrt(sum((x - mean) ** 2 for x in numbers) / (len(numbers) - 1)) if len(numbers) > 1 else 0.0
    per_image = _values(ok, [k for _, k in ok_pairs], metric)
    entry = Entry(mean, std, len(numbers), total)
    names = per_image.names()
    if names:
        ci = bootstrap_seeds(seed_matrix(per_image.maps, names)[1], clusters=per_image.clusters(names))
        entry.lo, entry.hi, entry.images, entry.boot_seeds, entry.units = ci.lo, ci.hi, ci.n, ci.seeds, ci.units
    return entry, per_image


def _delta(row: _Values, ref: _Values, higher: bool | None) -> tuple[Entry, Bootstrap | None]:
    common = sorted(set(row.names()) & set(ref.names()))
    if len(common) < 2:
        return Entry(text="n/a (no paired per-image values)"), None
    # seed s of both rows is one replicate only when both used the very same stage trainings
    joint = len(row.maps) == len(ref.maps) > 1 and row.stages == ref.stages
    sources = _Values(sources={**ref.sources, **row.sources})
    est = paired_difference_seeds(seed_matrix(row.maps, common)[1], seed_matrix(ref.maps, common)[1],
                                  clusters=sources.clusters(common), paired_seeds=joint)
    better = None if higher is None or not est.significant else (est.mean > 0) == higher
    return Entry(mean=est.mean, lo=est.lo, hi=est.hi, images=est.n, n=1, total=1, significant=est.significant,
                 better=better, boot_seeds=est.seeds, units=est.units, p=est.p, paired_seeds=joint), est


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
    images: dict[tuple[int, str, str], _Values] = {}
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
            entry, per_image = _entry(recs, [tuple(c.stages) for c in cells], col.metric)
            images[(r, col.dataset, col.metric)] = per_image
            line.append(entry)
        table.seeds[row.label] = sorted(finished)
        spec = next((c.evaluate for c in plan.cells if c.row == r), None)
        if spec is not None and spec.source == "bicubic":
            table.bicubic[row.label] = spec.bicubic
        table.entries.append(line)
    ref_row = table.labels.index(reference) if reference is not None else None
    tests: list[tuple[Entry, Bootstrap | None]] = []  # the table's Δ column(s): one family for the correction
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
            line[j], est = _delta(images[(r, col.dataset, col.metric)], images[(ref_row, col.dataset, col.metric)],
                                  col.higher_is_better)
            tests.append((line[j], est))
    if tests:
        marks = mark_deltas([est for _, est in tests])
        for (entry, _), mark in zip(tests, marks, strict=True):
            if mark is not None:
                entry.mark, entry.corrected, entry.p_adjusted = mark.text, mark.corrected == SIGNIFICANT, mark.p_adjusted
        table.correction = correction_note(marks)
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
