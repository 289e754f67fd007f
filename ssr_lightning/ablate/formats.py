"""A study table as text: Markdown, LaTeX (booktabs), CSV and JSON; best values bold, Δ marks, the caption."""

from __future__ import annotations

import csv
import io
from typing import Any

from ssr_lightning.ablate.table import PENDING, Column, Entry, Table
from ssr_lightning.metrics.stats import ALPHA, N_BOOT

__all__ = ["tex_escape", "to_csv", "to_json", "to_latex", "to_markdown"]


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
