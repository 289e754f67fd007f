"""Paper-style tables from the cell JSONs, with their statistics: Markdown, CSV, LaTeX and JSON (+ `figures.py`).

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

import csv
import io
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssr_lightning.ablate.plan import Plan
from ssr_lightning.ablate.provenance import summarize
from ssr_lightning.ablate.records import lost_entries, read_old_report, report_lock, scan_cells
from ssr_lightning.files import atomic_write_json, atomic_write_text
from ssr_lightning.metrics.iqa import HIGHER_IS_BETTER, LABELS
from ssr_lightning.metrics.stats import ALPHA, N_BOOT, Estimate, bootstrap_ci, paired_difference

__all__ = ["Column", "Entry", "NothingToReport", "ReportKept", "Table", "build_table", "to_csv", "to_json", "to_latex", "to_markdown",
           "write_report"]

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


def _factor(value: Any, latex: bool = False) -> str:
    if isinstance(value, bool):
        return (r"\checkmark" if value else r"$\times$") if latex else ("✓" if value else "✗")
    return "" if value is None else str(value)


def to_markdown(table: Table) -> str:
    """GitHub Markdown table with its caption; best values as `**x**`."""
    head = [table.row_header, *table.factor_headers(), *(table.header(c) for c in table.columns)]
    lines = [f"**{table.title}**", "", table.caption(), "", "| " + " | ".join(head) + " |",
             "|" + "|".join([" --- "] + [" :---: "] * (len(head) - 1)) + "|"]
    for label, settings, row in zip(table.labels, table.settings, table.entries, strict=True):
        cells = [table.text(e, c) for e, c in zip(row, table.columns, strict=True)]
        cells = [f"**{t}**" if e.best else t for t, e in zip(cells, row, strict=True)]
        factors = [_factor(settings.get(f)) for f in table.factor_columns]
        lines.append("| " + " | ".join([label, *factors, *cells]) + " |")
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "--", "–": "--", "✓": r"\checkmark",
        "✗": r"$\times$", "Δ": r"$\Delta$", "±": r"$\pm$", "−": "-"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def _tex_cell(table: Table, e: Entry, c: Column) -> str:
    """A LaTeX cell: the value, its CI in small type, the significance mark as a superscript."""
    if e.mean is None:
        return tex_escape(e.text or PENDING)
    d = table.digits(c)
    if c.kind == "delta":
        f = f"{{:+.{d}f}}"
        text = f"${f.format(e.mean)}$"
        mark = "" if e.significant is None else ("$^{*}$" if e.significant else r"\,{\scriptsize n.s.}")
    else:
        f = f"{{:.{d}f}}"
        text = f.format(e.mean) + (f" $\\pm$ {f.format(e.std)}" if e.n > 1 and e.std is not None else "")
        mark = f" ({e.n}/{e.total})" if e.n < e.total else ""
    ci = f" {{\\scriptsize[{f.format(e.lo)}, {f.format(e.hi)}]}}" if e.lo is not None and e.images > 1 else ""
    body = text + ci + mark
    return f"\\textbf{{{body}}}" if e.best else body


def to_latex(table: Table) -> str:
    """A booktabs `table` with one header block per dataset and the statistics caption; best as `\\textbf{x}`."""
    n_lead = 1 + len(table.factor_columns)
    spec = "l" + "c" * (len(table.factor_columns) + len(table.columns))
    lines = [r"\begin{table}[t]", r"\centering",
             f"\\caption{{{tex_escape(table.title)}. {tex_escape(table.caption())}}}",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if len(table.datasets) > 1:
        groups, rules, start = [], [], n_lead + 1
        for ds in table.datasets:
            width = sum(c.dataset == ds for c in table.columns)
            groups.append(f"\\multicolumn{{{width}}}{{c}}{{{tex_escape(ds)}}}")
            rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines.append(" & " * n_lead + " & ".join(groups) + r" \\")
        lines.append("".join(rules))
    head = [table.row_header, *table.factor_headers()]
    lines.append(" & ".join([*(tex_escape(h) for h in head),
                             *(tex_escape(c.label()) + c.arrow(latex=True) for c in table.columns)]) + r" \\")
    lines.append(r"\midrule")
    for label, settings, row in zip(table.labels, table.settings, table.entries, strict=True):
        cells = [_tex_cell(table, e, c) for e, c in zip(row, table.columns, strict=True)]
        factors = [_factor(settings.get(f), latex=True) for f in table.factor_columns]
        lines.append(" & ".join([tex_escape(label), *factors, *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> Any:
    return "" if x is None else x


def to_csv(table: Table) -> str:
    """One line per row: label, factors, then per value column mean/std/n/best/CI/images and per Δ column the
    difference, its CI, image count and significance (text values in the mean column)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["label", *table.factor_columns]
    for c in table.columns:
        k = c.key()
        head += ([k, f"{k}_lo", f"{k}_hi", f"{k}_images", f"{k}_significant"] if c.kind == "delta" else
                 [k, f"{k}_std", f"{k}_n", f"{k}_best", f"{k}_lo", f"{k}_hi", f"{k}_images"])
    w.writerow(head)
    for label, settings, row in zip(table.labels, table.settings, table.entries, strict=True):
        vals: list[Any] = []
        for e, c in zip(row, table.columns, strict=True):
            first = e.mean if e.mean is not None else e.text
            if c.kind == "delta":
                sig = "" if e.significant is None else int(e.significant)
                vals += [first, _num(e.lo), _num(e.hi), e.images or "", sig]
            else:
                vals += [first, e.std if e.mean is not None else "", e.n, int(e.best), _num(e.lo), _num(e.hi),
                         e.images or ""]
        w.writerow([label, *(settings.get(f, "") for f in table.factor_columns), *vals])
    return buf.getvalue()


def _entry_json(table: Table, e: Entry, c: Column) -> dict[str, Any]:
    out: dict[str, Any] = {"mean": e.mean, "text": e.text, "display": table.text(e, c), "lo": e.lo, "hi": e.hi,
                           "images": e.images}
    if c.kind == "delta":
        out.update(significant=e.significant, better=e.better)
    else:
        out.update(std=e.std, seeds=e.n, seeds_planned=e.total, best=e.best)
    return out


def to_json(table: Table) -> dict[str, Any]:
    """Structured table: caption, columns with direction, rows with settings and entries, and the cells' provenance."""
    return {
        "title": table.title, "caption": table.caption(), "row_header": table.row_header,
        "factor_columns": table.factor_columns, "reference": table.reference, "reference_lines": table.reference_lines,
        "statistics": {"ci": 1 - ALPHA, "bootstrap_resamples": N_BOOT, "seeds": table.study_seeds},
        "columns": [{"metric": c.metric, "dataset": c.dataset, "kind": c.kind, "higher_is_better": c.higher_is_better,
                     "header": table.header(c)} for c in table.columns],
        "rows": [{"label": label, "settings": settings, "seeds": table.seeds.get(label, []),
                  "entries": [_entry_json(table, e, c) for e, c in zip(row, table.columns, strict=True)]}
                 for label, settings, row in zip(table.labels, table.settings, table.entries, strict=True)],
        "provenance": table.provenance,
    }


class NothingToReport(RuntimeError):
    """No cell of the current study has a finished result: the existing report is left as it is."""


class ReportKept(NothingToReport):
    """The new report would lose numbers the report on disk has (rows edited, cell JSONs unreadable or gone): the
    existing report is left as it is unless `write_report(replace=True)`."""


def _stderr(message: str) -> None:
    print(f"ssr-ablate: warning: {message}", file=sys.stderr, flush=True)


def read_records(plan: Plan, out: str | Path) -> dict[str, dict[str, Any]]:
    """The cell JSONs of the *current* plan under `<out>/cells` (records of an older version of a cell are left out)."""
    return scan_cells(plan, out).records


def write_report(plan: Plan, out: str | Path, replace: bool = False,
                 warn: Callable[[str], None] = _stderr) -> list[Path]:
    """Write `<out>/report/<name>.{md,csv,tex,json}`, the figures and TensorBoard hparams, atomically and under a lock.

    Nothing is replaced by a worse report: :class:`NothingToReport` (writing nothing) when no cell of this version of
    the study has finished, :class:`ReportKept` when the report on disk has numbers the new one would not (or means
    over more seeds), naming the rows and why, unless ``replace``. ``warn`` gets one line per unreadable cell JSON,
    per row whose cells hold results of an earlier version of it, and when the report lock is held by another
    process. A figure that cannot be drawn removes its old file.
    """
    from ssr_lightning.ablate.dashboard import tensorboard_report
    from ssr_lightning.ablate.figures import FIGURES

    out = Path(out)
    with report_lock(out, warn):
        scan = scan_cells(plan, out)
        for line in scan.warnings():
            warn(line)
        records = scan.records
        if not any(r.get("status") == "ok" for r in records.values()):
            stale = scan.count("stale")
            raise NothingToReport(
                f"nothing to report in {out}: none of the {len(plan.cells)} cells of study {plan.study.name!r} has "
                f"finished{f' ({stale} hold results of an earlier version of the study)' if stale else ''}; the "
                "existing report was left unchanged. Run the study (without --report-only) first")
        table = build_table(plan, records)
        folder = out / "report"
        name = plan.study.name
        doc = to_json(table)
        lost = lost_entries(read_old_report(folder / f"{name}.json"), doc, scan)
        if lost and not replace:
            raise ReportKept(f"kept the existing report {folder / name}.md: the new one would lose numbers it has "
                             f"({'; '.join(lost)}). Run the study to redo those cells, or pass --replace-report to "
                             "write the report with fewer numbers")
        paths = [folder / f"{name}.md", folder / f"{name}.csv", folder / f"{name}.tex"]
        for path, text in zip(paths, (to_markdown(table), to_csv(table), to_latex(table)), strict=True):
            atomic_write_text(path, text)
        atomic_write_json(folder / f"{name}.json", doc)
        paths.append(folder / f"{name}.json")
        for suffix, draw in FIGURES.items():
            target = folder / f"{name}_{suffix}.png"
            if draw(plan, table, records, out, target) is not None:
                paths.append(target)
            else:
                target.unlink(missing_ok=True)  # a figure of the previous results must not stay beside new tables
        tensorboard_report(plan, table, records, out / "tensorboard", [p for p in paths if p.suffix == ".png"])
    return paths
