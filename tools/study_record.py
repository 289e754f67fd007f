"""A committed record of an ``ssr-ablate`` study: its report, every per-image value and the provenance of every cell.

    python tools/study_record.py STUDY.yaml --results ablations/results/NAME --out results/NAME \\
        [--command "TORCH_HOME=... ssr-ablate STUDY.yaml"]

Writes into ``--out`` (small files, no checkpoints, no machine paths):

- ``report.{md,csv,json}``: the study's report (``<results>/report/<name>.*``) as ``ssr-ablate`` wrote it;
- ``per_image.csv``: one line per cell and image: row, dataset, seed, image, its source (photos: the photo), and the
  value of every metric of the study;
- ``cells.json``: per cell its label, dataset, seed, status, means, the commit and source digest of the code that
  evaluated it, and per stage the artifact key, the commit that trained it and its CPU time;
- ``RECORD.json``: the command that regenerates the results folder, the command that wrote this record, the study
  file's sha256 and the counts.

The cells are read from ``<results>/cells/*.json`` whose ``study`` is the study's name (several studies may share a
results folder), whatever the current plan says: a record is a snapshot of what was scored.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssr_lightning.ablate.provenance import add_overwrite_flag, environment, refuse_overwrite  # noqa: E402
from ssr_lightning.ablate.study import load_study  # noqa: E402
from ssr_lightning.files import atomic_write, atomic_write_text  # noqa: E402


def cells_of(results: Path, study_name: str) -> list[dict[str, Any]]:
    """The cell records of one study in a results folder, in file-name order."""
    out = []
    for path in sorted((results / "cells").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("study") == study_name:
            out.append(record)
    return out


def _stage_summary(info: dict[str, Any]) -> dict[str, Any]:
    prov = info.get("provenance") or {}
    code, time = prov.get("code") or {}, prov.get("time") or {}
    return {"artifact": info.get("artifact"), "run_name": info.get("run_name"), "commit": code.get("commit"),
            "dirty": code.get("dirty"), "source_digest": code.get("source_digest"),
            "cpu_seconds": time.get("cpu_seconds"), "wall_seconds": time.get("wall_seconds")}


def summarize_cell(record: dict[str, Any]) -> dict[str, Any]:
    code = (record.get("provenance") or {}).get("code") or {}
    versions = (record.get("provenance") or {}).get("versions") or {}
    return {"cell_id": record.get("cell_id"), "label": record.get("label"), "dataset": record.get("dataset"),
            "seed": record.get("seed"), "status": record.get("status"), "metrics": record.get("metrics"),
            "eval_seconds": record.get("eval_seconds"), "finished_at": record.get("finished_at"),
            "evaluated_at": {"commit": code.get("commit"), "dirty": code.get("dirty"),
                             "source_digest": code.get("source_digest")},
            "versions": {k: versions.get(k) for k in ("torch", "lightning", "diffusers", "pyiqa") if k in versions},
            "stages": {name: _stage_summary(info) for name, info in sorted((record.get("stages") or {}).items())}}


def per_image_rows(records: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        per = r.get("per_image") or {}
        names = sorted({n for m in metrics for n in (per.get(m) or {})})
        for name in names:
            row = {"label": r["label"], "dataset": r["dataset"], "seed": r["seed"], "image": name,
                   "source": (r.get("sources") or {}).get(name, name)}
            row.update({m: (per.get(m) or {}).get(name, "") for m in metrics})
            rows.append(row)
    return rows


def write_record(study_path: Path, results: Path, out: Path, command: str | None, argv: list[str]) -> dict[str, Any]:
    study = load_study(study_path)
    records = cells_of(results, study.name)
    if not records:
        raise SystemExit(f"{results}: no cells of study {study.name!r}")
    out.mkdir(parents=True, exist_ok=True)
    for ext in ("md", "csv", "json"):
        src = results / "report" / f"{study.name}.{ext}"
        if src.is_file():
            atomic_write(out / f"report.{ext}", lambda tmp, src=src: shutil.copyfile(src, tmp))
    rows = per_image_rows(records, study.metrics)

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["label", "dataset", "seed", "image", "source", *study.metrics])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(out / "per_image.csv", write_csv)
    atomic_write_text(out / "cells.json", json.dumps([summarize_cell(r) for r in records], indent=1) + "\n")
    regenerate = command or f"OMP_NUM_THREADS=1 ssr-ablate {study_path}"
    meta = {"command": regenerate, "what": f"the record of study {study.name} (report, per-image values, provenance)",
            "provenance": environment(),
            "study": str(study_path), "study_sha256": hashlib.sha256(study_path.read_bytes()).hexdigest(),
            "record_command": "python tools/study_record.py " + " ".join(argv),
            "cells": len(records), "cells_ok": sum(r.get("status") == "ok" for r in records),
            "images": len(rows), "metrics": study.metrics,
            "note": "per_image.csv holds every number of report.*; cells.json the provenance of each cell and stage"}
    atomic_write_text(out / "RECORD.json", json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", type=Path)
    p.add_argument("--results", type=Path, required=True, help="the study's results folder (ssr-ablate --out)")
    p.add_argument("--out", type=Path, required=True, help="record folder (under results/)")
    p.add_argument("--command", default=None, help="the command that regenerates the results folder")
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    refuse_overwrite(p, args.overwrite, args.out if args.out.is_dir() and any(args.out.iterdir()) else None)
    meta = write_record(args.study, args.results, args.out, args.command, argv)
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
