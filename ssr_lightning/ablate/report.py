"""The report of a study: the table as Markdown, CSV, LaTeX (booktabs) and JSON, its figures and TensorBoard sessions.

`table.py` computes the numbers and their statistics (module doc there); this module writes them as text, best values
bold and Δ marks with the caption, and `write_report` reads the cell JSONs under the report lock, refuses to replace
a report with a worse one and has `figures.py` and `dashboard.py` draw the rest. Imports go one way: report →
figures, dashboard → table.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssr_lightning.ablate.dashboard import tensorboard_report
from ssr_lightning.ablate.figures import FIGURES
from ssr_lightning.ablate.plan import Plan
from ssr_lightning.ablate.records import lost_entries, read_old_report, report_lock, scan_cells
from ssr_lightning.ablate.table import PENDING, Column, Entry, Table, build_table
from ssr_lightning.files import atomic_write_json, atomic_write_text
from ssr_lightning.metrics.stats import ALPHA, N_BOOT

__all__ = ["NothingToReport", "ReportKept", "read_records", "tex_escape", "to_csv", "to_json", "to_latex",
           "to_markdown", "write_report"]


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
        if e.significant and e.mark and e.mark != "*":  # the corrected mark beside the raw one: "(Holm n.s.)"
            mark += f"\\,{{\\scriptsize {tex_escape(e.mark[1:].strip())}}}"
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


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None  # a p of nothing to resample is NaN: not JSON


def to_csv(table: Table) -> str:
    """One line per row: label, factors, then per value column mean/std/n/best/CI/images and per Δ column the
    difference, its CI, image count and significance (text values in the mean column)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["label", *table.factor_columns]
    for c in table.columns:
        k = c.key()
        head += ([k, f"{k}_lo", f"{k}_hi", f"{k}_images", f"{k}_significant", f"{k}_p", f"{k}_p_adjusted",
                  f"{k}_significant_corrected"] if c.kind == "delta" else
                 [k, f"{k}_std", f"{k}_n", f"{k}_best", f"{k}_lo", f"{k}_hi", f"{k}_images", f"{k}_ci_seeds",
                  f"{k}_ci_units"])
    w.writerow(head)
    for label, settings, row in zip(table.labels, table.settings, table.entries, strict=True):
        vals: list[Any] = []
        for e, c in zip(row, table.columns, strict=True):
            first = e.mean if e.mean is not None else e.text
            if c.kind == "delta":
                sig = "" if e.significant is None else int(e.significant)
                cor = "" if e.corrected is None else int(e.corrected)
                vals += [first, _num(e.lo), _num(e.hi), e.images or "", sig, _num(_finite(e.p)),
                         _num(_finite(e.p_adjusted)), cor]
            else:
                vals += [first, e.std if e.mean is not None else "", e.n, int(e.best), _num(e.lo), _num(e.hi),
                         e.images or "", e.boot_seeds or "", e.units or ""]
        w.writerow([label, *(settings.get(f, "") for f in table.factor_columns), *vals])
    return buf.getvalue()


def _entry_json(table: Table, e: Entry, c: Column) -> dict[str, Any]:
    out: dict[str, Any] = {"mean": e.mean, "text": e.text, "display": table.text(e, c), "lo": e.lo, "hi": e.hi,
                           "images": e.images}
    if c.kind == "delta":
        out.update(significant=e.significant, better=e.better, p=_finite(e.p), p_adjusted=_finite(e.p_adjusted),
                   significant_corrected=e.corrected, mark=e.mark, ci_seeds=e.boot_seeds or None,
                   ci_units=e.units or None, paired_seeds=e.paired_seeds)
    else:
        out.update(std=e.std, seeds=e.n, seeds_planned=e.total, best=e.best, ci_seeds=e.boot_seeds or None,
                   ci_units=e.units or None)
    return out


def to_json(table: Table) -> dict[str, Any]:
    """Structured table: caption, columns with direction, rows with settings and entries, and the cells' provenance."""
    return {
        "title": table.title, "caption": table.caption(), "row_header": table.row_header,
        "factor_columns": table.factor_columns, "reference": table.reference, "reference_lines": table.reference_lines,
        "statistics": {"ci": 1 - ALPHA, "bootstrap_resamples": N_BOOT, "seeds": table.study_seeds,
                       "method": "two-level bootstrap (seeds, then images or their sources); one seed: images",
                       "ci_text": table.ci_text(), "correction": "holm" if table.correction else None,
                       "correction_note": table.correction},
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
        markdown = to_markdown(table)
        paths = [folder / f"{name}.md", folder / f"{name}.csv", folder / f"{name}.tex"]
        for path, text in zip(paths, (markdown, to_csv(table), to_latex(table)), strict=True):
            atomic_write_text(path, text)
        atomic_write_json(folder / f"{name}.json", doc)
        paths.append(folder / f"{name}.json")
        for suffix, draw in FIGURES.items():
            target = folder / f"{name}_{suffix}.png"
            if draw(plan, table, records, out, target) is not None:
                paths.append(target)
            else:
                target.unlink(missing_ok=True)  # a figure of the previous results must not stay beside new tables
        tensorboard_report(plan, table, records, out / "tensorboard", [p for p in paths if p.suffix == ".png"],
                           markdown)
    return paths
