"""Paper-style tables from the cell JSONs: Markdown, CSV, LaTeX and JSON (+ the figures of `figures.py`).

Rows are the study's rows (methods/variants, with ✓/✗ factor columns where rows have settings), columns its
metrics, one block per dataset when there are several (Table 1). A value is the mean ± sample std over the seeds
that finished; the best value of a column (↑/↓ from `HIGHER_IS_BETTER`) is bold. Text values stay text: an
unavailable metric reads "n/a (weights missing: FILE)" and is never bold, a cell whose every seed failed reads
"failed", a cell not run yet "—"; "(k/n)" marks a mean over only k of n seeds.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ssr_lightning.ablate.execute import Layout
from ssr_lightning.ablate.plan import Plan
from ssr_lightning.files import atomic_write_json, atomic_write_text, file_lock
from ssr_lightning.metrics.iqa import HIGHER_IS_BETTER, LABELS

__all__ = ["Column", "Entry", "NothingToReport", "Table", "build_table", "to_csv", "to_json", "to_latex", "to_markdown", "write_report"]

DECIMALS = {"psnr_y": 2, "psnr": 2, "resynth_psnr": 2, "ssim_y": 3, "ssim": 3, "lpips": 3, "musiq": 2,
            "clipiqa": 3, "niqe": 2, "kernel_l1": 4}
PENDING = "—"


def _base(metric: str) -> str:
    return metric.rsplit("/", 1)[-1]  # SVKR reports per-iteration keys such as "t3/psnr_y"


def direction(metric: str) -> bool | None:
    """True if higher is better, False if lower is, None if unknown (no arrow, no bold)."""
    return HIGHER_IS_BETTER.get(metric, HIGHER_IS_BETTER.get(_base(metric)))


@dataclass
class Column:
    """One value column: a metric on a dataset."""

    metric: str
    dataset: str
    higher_is_better: bool | None

    def label(self) -> str:
        prefix = self.metric.rsplit("/", 1)[0] + " " if "/" in self.metric else ""
        return prefix + LABELS.get(_base(self.metric), self.metric)

    def arrow(self, latex: bool = False) -> str:
        if self.higher_is_better is None:
            return ""
        if latex:
            return r" $\uparrow$" if self.higher_is_better else r" $\downarrow$"
        return " ↑" if self.higher_is_better else " ↓"


@dataclass
class Entry:
    """One table value: numbers over the finished seeds, or a text (n/a, failed, pending)."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    total: int = 0
    text: str | None = None
    best: bool = False

    def display(self, decimals: int, pm: str = "±") -> str:
        if self.mean is None:
            return self.text or PENDING
        out = f"{self.mean:.{decimals}f}"
        if self.n > 1 and self.std is not None:
            out += f" {pm} {self.std:.{decimals}f}"
        if self.n < self.total:
            out += f" ({self.n}/{self.total})"
        return out


@dataclass
class Table:
    """A rendered-to-be table: rows × columns of entries."""

    title: str
    row_header: str
    factor_columns: list[str]
    columns: list[Column]
    labels: list[str] = field(default_factory=list)
    settings: list[dict[str, Any]] = field(default_factory=list)
    entries: list[list[Entry]] = field(default_factory=list)
    decimals: dict[str, int] = field(default_factory=dict)
    factor_labels: dict[str, str] = field(default_factory=dict)

    def factor_headers(self) -> list[str]:
        return [self.factor_labels.get(f, f) for f in self.factor_columns]

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(c.dataset for c in self.columns))

    def header(self, col: Column, latex: bool = False) -> str:
        multi = len(self.datasets) > 1 and not latex  # LaTeX puts datasets in a header row of their own
        return (f"{col.dataset} " if multi else "") + col.label() + col.arrow(latex)

    def digits(self, col: Column) -> int:
        return self.decimals.get(col.metric, self.decimals.get(_base(col.metric), DECIMALS.get(_base(col.metric), 4)))


def _entry(records: list[dict[str, Any] | None], metric: str) -> Entry:
    total = len(records)
    done = [r for r in records if r is not None]
    ok = [r for r in done if r.get("status") == "ok"]
    if not done:
        return Entry(total=total, text=PENDING)
    if not ok:
        return Entry(total=total, text="failed")
    values = [r.get("metrics", {}).get(metric) for r in ok]
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not numbers:
        text = next((v for v in values if isinstance(v, str)), None)
        return Entry(total=total, text=text or "n/a")
    mean = sum(numbers) / len(numbers)
    std = math.sqrt(sum((x - mean) ** 2 for x in numbers) / (len(numbers) - 1)) if len(numbers) > 1 else 0.0
    return Entry(mean, std, len(numbers), total)


def build_table(plan: Plan, records: dict[str, dict[str, Any]]) -> Table:
    """The table of a plan from its cell records (`cell_id -> JSON`); records of another cell key are ignored."""
    study = plan.study
    cfg = study.report
    seen = [k for r in study.rows for k in r.settings]
    factors = list(cfg.get("factor_columns", list(dict.fromkeys(seen))))
    columns = [Column(m, d.name, direction(m)) for d in study.datasets for m in cfg.get("metrics", study.metrics)]
    table = Table(str(cfg.get("title", study.name)), str(cfg.get("row_header", "Method")), factors, columns,
                  decimals=dict(cfg.get("decimals", {})), factor_labels=dict(cfg.get("factor_labels", {})))
    for r, row in enumerate(study.rows):
        table.labels.append(row.label)
        table.settings.append(dict(row.settings))
        line = []
        for col in columns:
            cells = [c for c in plan.cells if c.row == r and c.dataset == col.dataset]
            recs = [records.get(c.cell_id) for c in cells]
            recs = [x if x is not None and x.get("key") == c.key else None for x, c in zip(recs, cells, strict=True)]
            line.append(_entry(recs, col.metric))
        table.entries.append(line)
    for j, col in enumerate(columns):
        if col.higher_is_better is None:
            continue
        values = [row[j].mean for row in table.entries if row[j].mean is not None]
        if len(values) < 2:  # nothing to compare against
            continue
        best = max(values) if col.higher_is_better else min(values)
        for row in table.entries:
            row[j].best = row[j].mean is not None and abs(row[j].mean - best) <= 1e-12 * max(1.0, abs(best))
    return table


def _factor(value: Any, latex: bool = False) -> str:
    if isinstance(value, bool):
        return (r"\checkmark" if value else r"$\times$") if latex else ("✓" if value else "✗")
    return "" if value is None else str(value)


def to_markdown(table: Table) -> str:
    """GitHub Markdown table; best values as `**x**`."""
    head = [table.row_header, *table.factor_headers(), *(table.header(c) for c in table.columns)]
    lines = [f"**{table.title}**", "", "| " + " | ".join(head) + " |",
             "|" + "|".join([" --- "] + [" :---: "] * (len(head) - 1)) + "|"]
    for label, settings, row in zip(table.labels, table.settings, table.entries, strict=True):
        cells = [e.display(table.digits(c)) for e, c in zip(row, table.columns, strict=True)]
        cells = [f"**{t}**" if e.best else t for t, e in zip(cells, row, strict=True)]
        factors = [_factor(settings.get(f)) for f in table.factor_columns]
        lines.append("| " + " | ".join([label, *factors, *cells]) + " |")
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "--", "✓": r"\checkmark", "✗": r"$\times$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs `table` with one header block per dataset; best values as `\\textbf{x}`."""
    n_lead = 1 + len(table.factor_columns)
    spec = "l" + "c" * (len(table.factor_columns) + len(table.columns))
    lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{tex_escape(table.title)}}}",
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
        cells = []
        for e, c in zip(row, table.columns, strict=True):
            text = tex_escape(e.display(table.digits(c), pm="PLUSMINUS")).replace("PLUSMINUS", r"$\pm$")
            cells.append(f"\\textbf{{{text}}}" if e.best else text)
        factors = [_factor(settings.get(f), latex=True) for f in table.factor_columns]
        lines.append(" & ".join([tex_escape(label), *factors, *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """One line per row: label, factors, then mean/std/n per column (text values in the mean column)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = [f"{c.dataset}/{c.metric}" for c in table.columns]
    w.writerow(["label", *table.factor_columns, *(f"{k}{s}" for k in keys for s in ("", "_std", "_n", "_best"))])
    for label, settings, row in zip(table.labels, table.settings, table.entries, strict=True):
        vals: list[Any] = []
        for e in row:
            vals += [e.mean if e.mean is not None else e.text, e.std if e.mean is not None else "", e.n, int(e.best)]
        w.writerow([label, *(settings.get(f, "") for f in table.factor_columns), *vals])
    return buf.getvalue()


def to_json(table: Table) -> dict[str, Any]:
    """Structured table: columns with direction, rows with factor settings and entries (+ their display text)."""
    return {
        "title": table.title, "row_header": table.row_header, "factor_columns": table.factor_columns,
        "columns": [{**asdict(c), "header": table.header(c)} for c in table.columns],
        "rows": [{"label": label, "settings": settings,
                  "entries": [{**asdict(e), "display": e.display(table.digits(c))}
                              for e, c in zip(row, table.columns, strict=True)]}
                 for label, settings, row in zip(table.labels, table.settings, table.entries, strict=True)],
    }


class NothingToReport(RuntimeError):
    """No cell of the current study has a finished result: the existing report is left as it is."""


def read_records(plan: Plan, out: str | Path) -> dict[str, dict[str, Any]]:
    """The cell JSONs of the *current* plan under `<out>/cells` (records of an older version of a cell are left out)."""
    layout = Layout(out)
    return {c.cell_id: rec for c in plan.cells if (rec := layout.read_cell(c)) is not None and rec.get("key") == c.key}


def write_report(plan: Plan, out: str | Path) -> list[Path]:
    """Write `<out>/report/<name>.{md,csv,tex,json}`, the figures and TensorBoard hparams, atomically and under a lock.

    Raises :class:`NothingToReport` (writing nothing) when no cell of this version of the study has finished, so an
    edited study never replaces a report with empty cells. A figure that cannot be drawn removes its old file.
    """
    from ssr_lightning.ablate.figures import (
        bar_chart,
        qualitative_grid,
        tensorboard_hparams,
    )

    out = Path(out)
    with file_lock(out / "report.lock"):
        records = read_records(plan, out)
        if not any(r.get("status") == "ok" for r in records.values()):
            stale = sum(1 for c in plan.cells if Layout(out).cell_status(c) == "stale")
            raise NothingToReport(
                f"nothing to report in {out}: none of the {len(plan.cells)} cells of study {plan.study.name!r} has "
                f"finished{f' ({stale} hold results of an earlier version of the study)' if stale else ''}; the "
                "existing report was left unchanged. Run the study (without --report-only) first")
        table = build_table(plan, records)
        folder = out / "report"
        name = plan.study.name
        paths = [folder / f"{name}.md", folder / f"{name}.csv", folder / f"{name}.tex"]
        for path, text in zip(paths, (to_markdown(table), to_csv(table), to_latex(table)), strict=True):
            atomic_write_text(path, text)
        atomic_write_json(folder / f"{name}.json", to_json(table))
        paths.append(folder / f"{name}.json")
        figures = {folder / f"{name}_bars.png": lambda target: bar_chart(table, target),
                   folder / f"{name}_qualitative.png": lambda target: qualitative_grid(plan, records, out, target)}
        for target, draw in figures.items():
            if draw(target) is not None:
                paths.append(target)
            else:
                target.unlink(missing_ok=True)  # a figure of the previous results must not stay beside new tables
        tensorboard_hparams(plan, records, out / "tensorboard")
    return paths
