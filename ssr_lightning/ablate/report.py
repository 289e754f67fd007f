"""The report of a study: `<out>/report/<name>.{md,csv,tex,json}`, its figures and TensorBoard sessions.

The numbers and their statistics are computed in `table.py`, written as text by `formats.py`, drawn by
`figures.py` and `dashboard.py`; this module reads the cell JSONs under the report lock and refuses to replace a
report with a worse one. The imports go one way: report → figures, dashboard → formats → table.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssr_lightning.ablate.dashboard import tensorboard_report
from ssr_lightning.ablate.figures import FIGURES
from ssr_lightning.ablate.formats import to_csv, to_json, to_latex, to_markdown
from ssr_lightning.ablate.plan import Plan
from ssr_lightning.ablate.records import lost_entries, read_old_report, report_lock, scan_cells
from ssr_lightning.ablate.table import build_table
from ssr_lightning.files import atomic_write_json, atomic_write_text

__all__ = ["NothingToReport", "ReportKept", "read_records", "write_report"]


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
