"""Running a plan: shared stage artifacts (trained once, locked, resumable), one JSON result per cell.

Output folder layout::

    <out>/artifacts/<stage>-<key12>/runs/<stage>/version_N/...   the stage's `ssr fit` run (last.ckpt, best.ckpt)
    <out>/artifacts/<stage>-<key12>/DONE.json                     written (atomically) once the training finished
    <out>/artifacts/<stage>-<key12>/train.log                     the stage's console output
    <out>/cells/<cell_id>.json                                    the cell's result (status ok|failed)
    <out>/cells/<cell_id>/{eval/,samples/,predict_metrics.json,eval.log}
    <out>/cells.prev/                                             finished cells set aside by `--redo` (set_aside)

Reliability: a cell whose JSON says ok with the same key is skipped; a stage with DONE.json is reused; a stage
without it is (re)run with `--ckpt_path last`, so a killed training resumes; an exception in one cell is recorded
in its JSON and the next cell runs. Stage trainings are guarded by an exclusive file lock, so shards on several
machines sharing `<out>` train a shared stage once (the others wait and then reuse it).

Keys leave the code version out. A DONE record from other code (`provenance.stale`) is reused with a warning that
names the stage and both commits, or, with `retrain_stale`, moved aside (`<artifact>.stale-<commit>`) and trained
again; finished cells evaluated at other code or over such stages are then redone too.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ssr_lightning.ablate.plan import STAGE_REF, Cell, Plan, StageRun, run_name
from ssr_lightning.ablate.provenance import config_digests, cpu_children, environment, stale, training
from ssr_lightning.ablate.runner import CommandFailed, EvalJob, Runner, StageJob
from ssr_lightning.files import atomic_write_json, file_lock

__all__ = ["Executor", "Layout"]


_CKPT_KINDS = ("ckpt", "best", "last")


def _warn(message: str) -> None:
    print(f"ssr-ablate: warning: {message}", file=sys.stderr, flush=True)


class Layout:
    """Paths inside one results folder."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out).resolve()

    def artifact(self, run: StageRun) -> Path:
        return self.out / "artifacts" / run.artifact

    def done(self, run: StageRun) -> Path:
        return self.artifact(run) / "DONE.json"

    def cell_json(self, cell: Cell | str) -> Path:
        return self.out / "cells" / f"{cell if isinstance(cell, str) else cell.cell_id}.json"

    def cell_dir(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.cell_id

    def read_done(self, run: StageRun) -> dict[str, Any] | None:
        """The DONE record of a finished stage with absolute checkpoint paths; None if unfinished or its files are gone.

        Checkpoint paths are stored relative to the artifact folder, so machines that mount the shared results
        folder at different places all resolve them.
        """
        marker = self.done(run)
        try:
            record = json.loads(marker.read_text()) if marker.is_file() else None
        except (OSError, ValueError):
            record = None  # a damaged marker: the stage is resumed from its last.ckpt and the marker rewritten
        if not isinstance(record, dict):
            return None
        for kind in _CKPT_KINDS:
            if record.get(kind):
                record[kind] = str(self.artifact(run) / record[kind])
        return record if record.get("ckpt") and Path(record["ckpt"]).is_file() else None

    def trained_stages(self, cell_id: str | None = None) -> dict[str, Path]:
        """``{stage name: best checkpoint}`` of a finished cell (the only ``ok`` cell when ``cell_id`` is None), from
        the DONE records of its artifacts, so the paths resolve wherever this folder is mounted (``ssr sr --from``).

        Raises ``FileNotFoundError`` naming the folder when there is no such cell or a checkpoint is gone, and
        ``ValueError`` listing the cells when several finished cells make the choice ambiguous."""
        cells_dir = self.out / "cells"
        records = []
        for path in sorted(cells_dir.glob("*.json")) if cells_dir.is_dir() else []:
            record = self.load_cell(path.stem)[0] or {}  # an unreadable cell JSON is no finished cell
            if record.get("status") == "ok" and (cell_id is None or record.get("cell_id") == cell_id):
                records.append(record)
        if not records:
            what = f"cell {cell_id!r}" if cell_id else "finished cell"
            raise FileNotFoundError(f"{self.out}: no {what} in {cells_dir}; run the study first (ssr-ablate STUDY "
                                    f"--out {self.out})")
        if len(records) > 1:
            raise ValueError(f"{self.out} holds {len(records)} finished cells "
                             f"({', '.join(r['cell_id'] for r in records)}): name the diffusion checkpoint with --ckpt")
        out: dict[str, Path] = {}
        for name, info in records[0].get("stages", {}).items():
            marker = self.out / "artifacts" / info["artifact"] / "DONE.json"
            done = json.loads(marker.read_text()) if marker.is_file() else {}
            rel = done.get("best") or done.get("ckpt")
            ckpt = self.out / "artifacts" / info["artifact"] / rel if rel else None
            if ckpt is None or not ckpt.is_file():
                raise FileNotFoundError(f"{self.out}: the {name} checkpoint of cell {records[0]['cell_id']} is "
                                        f"missing ({ckpt or marker}); rerun the study to retrain it")
            out[name] = ckpt
        return out

    def stage_status(self, run: StageRun) -> str:
        """"done" (DONE.json), "partial" (a last.ckpt to resume from) or "todo"."""
        if self.read_done(run) is not None:
            return "done"
        if any((self.artifact(run) / "runs").glob("*/version_*/checkpoints/last*.ckpt")):
            return "partial"
        return "todo"

    def load_cell(self, cell: Cell | str) -> tuple[dict[str, Any] | None, str | None]:
        """``(record, None)``; ``(None, None)`` when the cell has no JSON; ``(None, why)`` when its JSON cannot be read
        (truncated, not JSON, not an object): ``why`` names the file."""
        path = self.cell_json(cell)
        if not path.is_file():
            return None, None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:  # ValueError: JSON and UTF-8 decoding errors
            return None, f"{path} is unreadable ({getattr(err, 'strerror', None) or err})"
        if not isinstance(record, dict):
            return None, f"{path} is not a cell record (a JSON object)"
        return record, None

    def read_cell(self, cell: Cell | str) -> dict[str, Any] | None:
        return self.load_cell(cell)[0]

    def failed_marker(self, run: StageRun) -> Path:
        """`FAILED.json` of a stage whose training failed in a cluster job (cell jobs then fail fast)."""
        return self.artifact(run) / "FAILED.json"

    def set_aside(self, cells: list[Cell]) -> list[str]:
        """Move the JSON and folder of every given cell into ``<out>/cells.prev/`` (replacing what an earlier
        ``--redo`` left there), so that each is evaluated again; returns the cell ids moved."""
        prev, moved = self.out / "cells.prev", []
        for cell in cells:
            for path in (self.cell_json(cell), self.cell_dir(cell)):
                if not path.exists():
                    continue
                target = prev / path.name
                if target.is_dir():
                    shutil.rmtree(target)
                prev.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                if path.suffix == ".json":
                    moved.append(cell.cell_id)
        return moved

    def cell_status(self, cell: Cell) -> str:
        """"ok", "failed", "stale" (a result of an older version of the cell), "unreadable" or "todo"."""
        record, problem = self.load_cell(cell)
        if record is None:
            return "unreadable" if problem else "todo"
        if record.get("key") != cell.key:
            return "stale"
        return str(record.get("status", "todo"))


class Executor:
    """Runs the cells of a plan with one `Runner`, sharing stage trainings between cells and processes."""

    def __init__(self, plan: Plan, out: str | Path, runner: Runner, progress: bool = True,
                 trust_failures: bool = False, retrain_stale: bool = False,
                 warn: Callable[[str], None] = _warn) -> None:
        self.plan, self.layout, self.runner, self.progress = plan, Layout(out), runner, progress
        self._failed: dict[str, str] = {}  # stage key -> error, so a broken stage is not retrained per cell
        # cluster cell jobs: a FAILED.json that this submission's stage job wrote means "do not train it again"
        self.trust_failures = trust_failures
        self.retrain_stale, self.warn = retrain_stale, warn
        self._warned: set[str] = set()

    # --- code versions --------------------------------------------------------------------------------------
    def _reuse(self, run: StageRun, finished: dict[str, Any] | None) -> dict[str, Any] | None:
        """The finished record to reuse (warning once when it comes from other code), or None: train the stage."""
        if finished is None:
            return None
        why = stale(finished.get("provenance"))
        if why is not None and self.retrain_stale:
            return None
        if why is not None and run.key not in self._warned:
            self._warned.add(run.key)
            self.warn(f"stage {run.stage} ({run.artifact}) was trained at {why}: reusing it (stage keys leave the "
                      "code out); pass --retrain-stale to train it again")
        return {**finished, "reused": True}

    def _retire(self, run: StageRun, finished: dict[str, Any]) -> None:
        """Move a stale training aside (`<artifact>.stale-<commit>[-N]`), so the stage trains from scratch."""
        code = (finished.get("provenance") or {}).get("code") or {}
        base = self.layout.artifact(run)
        target = base.with_name(f"{base.name}.stale-{(code.get('commit') or 'unknown')[:12]}")
        n = 1
        while target.exists():
            n += 1
            target = base.with_name(f"{base.name}.stale-{(code.get('commit') or 'unknown')[:12]}-{n}")
        self.warn(f"stage {run.stage} ({run.artifact}) was trained at {stale(finished.get('provenance'))}: "
                  f"training it again (--retrain-stale); the old training is kept in {target}")
        base.rename(target)

    def stale_cells(self, cells: list[Cell]) -> dict[str, str]:
        """Finished cells from other code: evaluated at it, over a stage trained at it, or over a stage retrained
        since they were evaluated; ``{cell id: why}``."""
        out: dict[str, str] = {}
        for cell in cells:
            record = self.layout.read_cell(cell)
            if not record or record.get("key") != cell.key or record.get("status") != "ok":
                continue
            why = stale(record.get("provenance"))
            if why is not None:
                out[cell.cell_id] = f"evaluated at {why}"
                continue
            for key in cell.stages:
                run = self.plan.stages[key]
                done = self.layout.read_done(run)
                why = stale(done.get("provenance")) if done is not None else None
                then = ((record.get("stages") or {}).get(run.stage) or {}).get("finished_at")
                if why is not None:
                    out[cell.cell_id] = f"its stage {run.stage} was trained at {why}"
                elif done is not None and then and done.get("finished_at") != then:
                    out[cell.cell_id] = f"its stage {run.stage} was trained again after it was evaluated"
                else:
                    continue
                break
        return out

    # --- stages ---------------------------------------------------------------------------------------------
    def _resolve(self, args: tuple[str, ...] | list[str], names: dict[str, str], done: dict[str, dict[str, Any]],
                 cell_dir: Path | None = None) -> list[str]:
        """Replace `{stage:X[:kind]}` by X's checkpoint path (or folder), `{out}` and `{cell_dir}` by paths."""

        def sub(match: Any) -> str:
            record = done[names[match.group(1)]]
            kind = match.group(2) or "ckpt"
            if kind == "dir":
                return str(self.layout.out / "artifacts" / record["artifact"])
            return record.get(kind) or record["ckpt"]

        out = []
        for a in args:
            a = STAGE_REF.sub(sub, a).replace("{out}", str(self.layout.out))
            out.append(a.replace("{cell_dir}", str(cell_dir)) if cell_dir is not None else a)
        return out

    def run_name(self, run: StageRun) -> str:
        """The run folder of a stage under `<artifact>/runs`: the one a killed attempt left, else `plan.run_name`."""
        started = sorted((self.layout.artifact(run) / "runs").glob("*/version_*/checkpoints/last*.ckpt"),
                         key=lambda p: p.stat().st_mtime)
        # an edited study may give the stage other users (another name): resume where the training started
        return started[-1].parents[2].name if started else run_name(self.plan, run.key)

    def ensure_stage(self, run: StageRun, done: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The DONE record of a stage, training (or resuming) it first unless this or another process did."""
        reused = self._reuse(run, self.layout.read_done(run))
        if reused is not None:
            return reused
        if run.key in self._failed:
            raise CommandFailed(["fit", "--config", run.config], 1, self._failed[run.key])
        marker = self.layout.failed_marker(run)
        if self.trust_failures and marker.is_file():
            raise CommandFailed(["fit", "--config", run.config], 1, json.loads(marker.read_text()).get("tail", ""))
        with file_lock(self.layout.out / "artifacts" / f"{run.artifact}.lock"):
            finished = self.layout.read_done(run)
            reused = self._reuse(run, finished)  # another shard may have finished it while we waited for the lock
            if reused is not None:
                return reused
            if finished is not None:  # from other code, and --retrain-stale
                self._retire(run, finished)
            names = dict(run.deps)
            args = self._resolve(run.args, names, done)
            root = self.layout.artifact(run) / "runs"
            job = StageJob(run, root, args, self.layout.artifact(run) / "train.log", self.run_name(run))
            start, cpu = time.time(), cpu_children()
            try:
                ckpts = self.runner.run_stage(job)
            except CommandFailed as err:
                self._failed[run.key] = err.tail
                atomic_write_json(marker, {"key": run.key, "message": str(err), "tail": err.tail,
                                           "finished_at": _dt.datetime.now().isoformat(timespec="seconds")})
                raise
            marker.unlink(missing_ok=True)
            record = {"stage": run.stage, "key": run.key, "artifact": run.artifact, "run_name": job.run_name, **ckpts,
                      "config": run.config, "args": args, "seed": run.seed, "seconds": round(time.time() - start, 2),
                      "finished_at": _dt.datetime.now().isoformat(timespec="seconds"), "host": socket.gethostname(),
                      "config_digests": config_digests(root),
                      # code, libraries, machine and time of the attempt that finished it (a resume: the last one)
                      "provenance": training(time.time() - start, cpu_children() - cpu)}
            stored = {k: (os.path.relpath(v, self.layout.artifact(run)) if k in _CKPT_KINDS else v)
                      for k, v in record.items()}
            atomic_write_json(self.layout.done(run), stored)
            return {**record, "reused": False}

    # --- cells ----------------------------------------------------------------------------------------------
    def run_cell(self, cell: Cell) -> dict[str, Any]:
        """Train what the cell needs, evaluate it and write `<out>/cells/<id>.json`; never raises for a failure."""
        start = time.time()
        record: dict[str, Any] = {
            "cell_id": cell.cell_id, "study": self.plan.study.name, "key": cell.key, "row": cell.row,
            "label": cell.label, "settings": cell.settings, "dataset": cell.dataset, "seed": cell.seed,
            "stages": {}, "metrics": {}, "error": None,
        }
        done: dict[str, dict[str, Any]] = {}
        current = "evaluate"
        try:
            for key in cell.stages:
                run = self.plan.stages[key]
                current = run.stage
                info = self.ensure_stage(run, done)
                done[key] = info
                # with the code, libraries, machine and time of its training (which may be another commit's)
                record["stages"][run.stage] = {k: info.get(k) for k in (
                    "key", "artifact", "run_name", "ckpt", "seconds", "reused", "config_digests", "finished_at",
                    "provenance")}
                record["stages"][run.stage]["ckpt"] = self._inside(info.get("ckpt"))
            current = "evaluate"
            cell_dir = self.layout.cell_dir(cell)
            ckpt = self._resolve([cell.evaluate.ckpt], cell.stage_names, done)[0] if cell.evaluate.ckpt else None
            job = EvalJob(cell, cell_dir, cell.eval_config,
                          self._resolve(cell.eval_args, cell.stage_names, done, cell_dir), ckpt, cell_dir / "eval.log")
            eval_start = time.time()
            result = self.runner.evaluate(job)
            record.update(status="ok", metrics=result["metrics"], available=result.get("available", {}),
                          num_samples=result.get("num_samples"), per_image=result.get("per_image", {}),
                          eval_seconds=round(time.time() - eval_start, 2))
            if result.get("sources"):
                record["sources"] = result["sources"]
        except CommandFailed as err:
            record.update(status="failed", error={"stage": current, "message": str(err), "tail": err.tail})
        except Exception as err:  # noqa: BLE001 - one broken cell must not stop the study
            record.update(status="failed", error={"stage": current, "message": f"{type(err).__name__}: {err}",
                                                  "tail": traceback.format_exc()[-4000:]})
        record["seconds"] = round(time.time() - start, 2)
        record["finished_at"] = _dt.datetime.now().isoformat(timespec="seconds")
        record["host"] = socket.gethostname()
        # the code, libraries and machine that produced the numbers, and the exact resolved configs they ran with
        record["provenance"] = {**environment(), "configs": {
            **{f"stage:{name}": info.get("config_digests") or {} for name, info in record["stages"].items()},
            "evaluate": config_digests(self.layout.cell_dir(cell) / "eval")}}
        samples = self.layout.cell_dir(cell) / "samples"
        record["samples"] = str(samples.relative_to(self.layout.out)) if samples.is_dir() else None
        atomic_write_json(self.layout.cell_json(cell), record)
        return record

    def _inside(self, path: str | None) -> str | None:
        """``path`` relative to the results folder when it lies inside it (a cell JSON is a committed record:
        results/README.md), else as it is."""
        if not path:
            return path
        try:
            return Path(path).resolve().relative_to(self.layout.out).as_posix()
        except ValueError:
            return path

    def run(self, cells: list[Cell], retry_failed: bool = True) -> list[dict[str, Any]]:
        """Run every cell that is not already finished (ok with the same key); returns the records it wrote."""
        old = self.stale_cells([c for c in cells if self.layout.cell_status(c) == "ok"])
        if old and not self.retrain_stale:
            first = next(iter(old.items()))
            self.warn(f"{len(old)} finished cell(s) come from other code ({first[0]}: {first[1]}); they are kept "
                      "as they are; pass --retrain-stale to redo them")
        redo = set(old) if self.retrain_stale else set()
        todo = [c for c in cells if (self.layout.cell_status(c) != "ok" or c.cell_id in redo)
                and (retry_failed or self.layout.cell_status(c) != "failed")]
        records = []
        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=f"ssr-ablate {self.plan.study.name}",
                   unit="cell", disable=not self.progress)
        for cell in todo:
            bar.set_postfix_str(cell.cell_id[:40])
            # a second process working on the same shard skips the cell instead of evaluating it twice
            with file_lock(self.layout.out / "cells" / f".{cell.cell_id}.lock", blocking=False) as mine:
                if mine and (self.layout.cell_status(cell) != "ok" or cell.cell_id in redo):
                    records.append(self.run_cell(cell))
            bar.update(1)
        bar.close()
        return records
