"""What a report is built from, and when it must not replace the one on disk.

- :func:`scan_cells` reads every cell JSON of the current plan and says, per row label, which cells finished, failed,
  hold a result of an earlier version of the row (stale), cannot be read, or have not run;
- :func:`lost_entries` compares a new report with the one on disk: every value that had a number (over some seeds)
  and would lose it, or lose seeds, is listed with its row label, so `write_report` keeps the old report and says why;
- :func:`report_lock` takes the report lock, saying who holds it when it must wait.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssr_lightning.ablate.execute import Layout
from ssr_lightning.ablate.plan import Plan
from ssr_lightning.files import file_lock

__all__ = ["CellScan", "lost_entries", "read_old_report", "report_lock", "scan_cells"]

_STATES = ("ok", "failed", "stale", "unreadable", "todo")


@dataclass
class CellScan:
    """The cell records of the current plan (``records``: only those with the current cell key), each row's cell
    states (``states[label][state]`` = count) and the files that could not be read (``unreadable``: messages)."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, dict[str, int]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(s.get(state, 0) for s in self.states.values())

    def why(self, label: str) -> str:
        """The cells of a row that are not finished, in words (``"1 stale, 1 unreadable"``)."""
        states = self.states.get(label)
        if states is None:
            return "no longer in the study"
        words = {"failed": "failed", "stale": "from an earlier version of the row", "unreadable": "unreadable",
                 "todo": "not run"}
        parts = [f"{states[s]} {words[s]}" for s in _STATES[1:] if states.get(s)]
        return f"{states.get('ok', 0)} of {sum(states.values())} cells finished" + (f" ({', '.join(parts)})"
                                                                                 if parts else "")

    def warnings(self) -> list[str]:
        """One line per unreadable cell JSON and per row whose cells hold results of an earlier version of it."""
        out = [f"{why}: the cell counts as not run (rerun the study to redo it)" for why in self.unreadable]
        for label, states in self.states.items():
            if states.get("stale"):
                n = sum(states.values())
                out.append(f"row {label!r}: {states['stale']} of {n} cells hold results of an earlier version of this "
                           "row (the study changed); run the study to refresh them")
        return out


def scan_cells(plan: Plan, out: str | Path) -> CellScan:
    """Read every cell JSON of ``plan`` under ``<out>/cells`` once."""
    layout, scan = Layout(out), CellScan()
    for cell in plan.cells:
        record, problem = layout.load_cell(cell)
        if problem:
            scan.unreadable.append(problem)
            state = "unreadable"
        elif record is None:
            state = "todo"
        elif record.get("key") != cell.key:
            state = "stale"
        else:
            scan.records[cell.cell_id] = record
            state = "ok" if record.get("status") == "ok" else "failed"
        counts = scan.states.setdefault(cell.label, dict.fromkeys(_STATES, 0))
        counts[state] += 1
    return scan


def read_old_report(path: Path) -> dict[str, Any] | None:
    """The JSON of the report on disk, or None (none yet, or unreadable: then nothing of it can be compared)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _filled(doc: dict[str, Any]) -> dict[tuple[str, str], int]:
    """``(row label, dataset/metric) -> seeds`` of every value entry of a report JSON that holds a number."""
    out: dict[tuple[str, str], int] = {}
    columns = doc.get("columns") or []
    for row in doc.get("rows") or []:
        if not isinstance(row, dict):
            continue
        for col, entry in zip(columns, row.get("entries") or [], strict=False):
            if isinstance(col, dict) and col.get("kind") == "value" and isinstance(entry, dict) \
                    and entry.get("mean") is not None:
                key = (str(row.get("label")), f"{col.get('dataset')}/{col.get('metric')}")
                out[key] = int(entry.get("seeds") or 1)
    return out


def lost_entries(old: dict[str, Any] | None, new: dict[str, Any], scan: CellScan) -> list[str]:
    """Per row label, what the new report (a ``to_json`` dict) would lose against the old one: values that had a
    number and would not, or would be a mean over fewer seeds. Empty when nothing is lost."""
    if old is None:
        return []
    before, after = _filled(old), _filled(new)
    columns = {f"{c.get('dataset')}/{c.get('metric')}" for c in new.get("columns") or [] if c.get("kind") == "value"}
    lost = [(label, column) for (label, column), seeds in before.items() if after.get((label, column), 0) < seeds]
    gone = sorted({column for _, column in lost if column not in columns})
    lines = [f"column(s) {', '.join(gone)} no longer in the study"] if gone else []
    for label in dict.fromkeys(label for label, column in lost if column in columns):
        states = scan.states.get(label)
        if states is None:
            why = "no longer in the study"
        elif states["ok"] == sum(states.values()):  # every cell finished: the study itself asks for less
            why = f"all {states['ok']} cells finished, but the study now gives it fewer seeds or numbers"
        else:
            why = scan.why(label)
        lines.append(f"row {label!r}: {why}")
    return lines


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def report_lock(out: Path, warn: Callable[[str], None]) -> Iterator[None]:
    """The exclusive report lock of ``out``; when another process holds it, ``warn`` says so (and by whom) before
    waiting. The holder writes its host, pid and start time into the lock file."""
    path = out / "report.lock"
    stamp = f"pid {os.getpid()} on {socket.gethostname()} since {_dt.datetime.now().isoformat(timespec='seconds')}"
    with file_lock(path, blocking=False) as mine:
        if mine:
            path.write_text(stamp + "\n")
            yield
            return
    warn(f"waiting for the report lock {path} held by {_holder(path)} (another ssr-ablate writing this report); "
         "this continues when it finishes")
    with file_lock(path):
        path.write_text(stamp + "\n")
        yield
