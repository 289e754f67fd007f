"""How a stage training and a cell evaluation are executed: the `ssr` command lines and a pluggable `Runner`.

`Runner` builds the exact `ssr fit` / `ssr test` / `ssr predict` argument lists and reads their outputs;
`execute(args, log, env)` is the one thing a subclass provides. `CLIRunner` runs
`python -m ssr_lightning.cli.main ARGS` in a subprocess (the same LightningCLI as the `ssr` command), so a crash, an
out-of-memory kill or a Ctrl-C in one training never takes the ablation process down; tests substitute a runner
whose `execute` writes the files a real run would.

Every training is `ssr fit ... --root <artifact>/runs --name <stage> --ckpt_path last`: a stage that was killed
resumes from its `last.ckpt` in the same version folder, a fresh one starts from scratch.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssr_lightning.ablate.plan import Cell, StageRun

__all__ = ["SAMPLES_ENV", "CLIRunner", "CommandFailed", "EvalJob", "Runner", "StageJob", "log_tail", "stage_checkpoints"]

WRITER = "ssr_lightning.ablate.writer.EvalWriter"
# Environment variable set for evaluation subprocesses: a stage's own test step may save `{name}_{lr,sr,hr}.png`
# there too, and the qualitative grid picks them up. (Here, not in writer.py: this module must import without
# Lightning, so that cluster jobs start fast.)
SAMPLES_ENV = "SSR_SAMPLES_DIR"


class CommandFailed(RuntimeError):
    """An `ssr` command exited non-zero; carries the tail of its log."""

    def __init__(self, args: list[str], returncode: int, tail: str) -> None:
        super().__init__(f"`ssr {' '.join(args[:3])} ...` exited with {returncode}")
        self.returncode = returncode
        self.tail = tail


def log_tail(path: Path, lines: int = 40, chars: int = 6000) -> str:
    """Last lines of a log file (what a failed cell records)."""
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(text)[-chars:]


def stage_checkpoints(root: Path, stage: str) -> dict[str, str]:
    """`{"best": ..., "last": ..., "ckpt": best-or-last}` of the newest version of run `stage` under `root`."""
    found: dict[str, str] = {}
    for kind in ("best", "last"):
        files = sorted((root / stage).glob(f"version_*/checkpoints/{kind}*.ckpt"), key=lambda p: p.stat().st_mtime)
        if files:
            found[kind] = str(files[-1].resolve())
    if not found:
        raise FileNotFoundError(f"training finished but no best*/last*.ckpt under {root / stage}/version_*/checkpoints")
    found["ckpt"] = found.get("best", found.get("last", ""))
    return found


@dataclass
class StageJob:
    """One stage training to run: `args` are its overrides with every `{stage:X}` already resolved to a path.

    `name` is the run folder under `root` (`plan.run_name`: the stage and the cells that use it), which is what
    TensorBoard lists.
    """

    run: StageRun
    root: Path
    args: list[str]
    log: Path
    name: str = ""

    @property
    def run_name(self) -> str:
        return self.name or self.run.stage


@dataclass
class EvalJob:
    """One cell evaluation: `ssr test`/`ssr predict` of `config` + `args` from `ckpt` (None: no --ckpt_path)."""

    cell: Cell
    cell_dir: Path
    config: str
    args: list[str]
    ckpt: str | None
    log: Path


class Runner:
    """Builds and reads `ssr` runs; subclasses implement `execute`. `cwd` is where configs' relative paths resolve."""

    def __init__(self, cwd: str | Path | None = None) -> None:
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()

    # --- commands ------------------------------------------------------------------------------------------------
    def stage_command(self, job: StageJob) -> list[str]:
        """`fit` arguments of a stage training (always `--ckpt_path last`: resume whatever was killed)."""
        return ["fit", "--config", job.run.config, *job.args, "--root", str(job.root), "--name", job.run_name,
                "--ckpt_path", "last"]

    def eval_commands(self, job: EvalJob) -> list[list[str]]:
        """`test` and/or `predict` arguments of a cell's evaluation, as `job.cell.evaluate.commands` asks."""
        spec = job.cell.evaluate
        common = ["--config", job.config, *job.args, "--root", str(job.cell_dir / "eval"), "--name", spec.stage]
        if job.ckpt:
            common += ["--ckpt_path", job.ckpt]
        writer = {"class_path": WRITER, "init_args": {
            "out_dir": str(job.cell_dir), "metrics": job.cell.metrics, "source": spec.source,
            "num_samples": spec.num_samples, **({"bicubic": spec.bicubic} if spec.source == "bicubic" else {})}}
        commands = []
        if "test" in spec.commands and spec.source == "model":  # a bicubic row has no model to test
            commands.append(["test", *common])
        if "predict" in spec.commands:
            commands.append(["predict", *common, "--return_predictions", "false",
                             "--trainer.callbacks+=" + json.dumps(writer)])
        return commands

    # --- running ------------------------------------------------------------------------------------------------
    def run_stage(self, job: StageJob) -> dict[str, str]:
        """Train (or resume) one stage; returns its checkpoint paths (`stage_checkpoints`)."""
        job.root.mkdir(parents=True, exist_ok=True)
        self.execute(self.stage_command(job), job.log, {})
        return stage_checkpoints(job.root, job.run_name)

    def evaluate(self, job: EvalJob) -> dict[str, Any]:
        """Run the evaluation commands of a cell; returns `{"metrics", "available", "num_samples"}`."""
        # outputs of an earlier (failed or stale) attempt must not leak into this cell's numbers
        for stale in (job.cell_dir / "eval", job.cell_dir / "samples"):
            shutil.rmtree(stale, ignore_errors=True)
        (job.cell_dir / "predict_metrics.json").unlink(missing_ok=True)
        job.cell_dir.mkdir(parents=True, exist_ok=True)
        env = {SAMPLES_ENV: str(job.cell_dir / "samples")}
        for args in self.eval_commands(job):
            self.execute(args, job.log, env)
        return collect_metrics(job.cell_dir, job.cell.evaluate.stage, job.cell.metrics)

    def execute(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        """Run `ssr ARGS`, appending its output to `log`; raise `CommandFailed` on a non-zero exit."""
        raise NotImplementedError


def _per_image(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """`{metric: {image name: value}}` of the finite numbers in per-sample rows (texts and inf are left out)."""
    out: dict[str, dict[str, float]] = {}
    for i, row in enumerate(rows):
        name = str(row.get("name", f"#{i}"))
        for key, value in row.items():
            if key != "name" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                out.setdefault(key, {})[name] = float(value)
    return out


def collect_metrics(cell_dir: Path, stage: str, names: list[str]) -> dict[str, Any]:
    """Cell metrics from `predict_metrics.json` (EvalWriter) and the newest `test_metrics.json` (`ssr test`).

    A metric both report is taken from the predict pass, whose suite applies the paper's conventions to every
    stage alike; one that neither reports reads "n/a (not reported by STAGE)". `per_image` holds the per-image
    values behind each mean (`{metric: {image name: value}}`), from the same pass as the mean, for the reports'
    bootstrap CIs and paired differences.
    """
    predict: dict[str, Any] = {}
    available: dict[str, Any] = {}
    pred_rows: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}
    num = 0
    pred_file = cell_dir / "predict_metrics.json"
    if pred_file.is_file():
        data = json.loads(pred_file.read_text())
        predict, available, num = data.get("summary", {}), data.get("available", {}), data.get("num_samples", 0)
        pred_rows = _per_image(data.get("per_sample", []))
        # each image's source where the data set names one (kernel draws of one photo): the report's clusters
        sources = {str(r["name"]): str(r["source"]) for r in data.get("per_sample", []) if "source" in r}
    test: dict[str, Any] = {}
    test_rows: dict[str, dict[str, float]] = {}
    tests = sorted((cell_dir / "eval" / f"{stage}_test").glob("version_*/test_metrics.json"),
                   key=lambda p: p.stat().st_mtime)
    if tests:
        data = json.loads(tests[-1].read_text())
        test, num = data.get("summary", {}), max(num, int(data.get("num_samples", 0)))
        test_rows = _per_image(data.get("per_sample", []))
    metrics, per_image = {}, {}
    for name in names:
        if name in predict:
            metrics[name] = predict[name]
            rows = pred_rows.get(name)
        else:
            metrics[name] = test.get(name, f"n/a (not reported by {stage})")
            rows = test_rows.get(name)
        if rows and not isinstance(metrics[name], str):
            per_image[name] = rows
    return {"metrics": metrics, "available": available, "num_samples": num, "test_summary": test,
            "per_image": per_image, **({"sources": sources} if sources else {})}


class CLIRunner(Runner):
    """Runs `ssr` as `python -m ssr_lightning.cli` subprocesses (optionally with a per-command timeout)."""

    def __init__(self, cwd: str | Path | None = None, timeout: float | None = None,
                 python: str = sys.executable) -> None:
        super().__init__(cwd)
        self.timeout = timeout
        self.python = python

    def execute(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        cmd = [self.python, "-m", "ssr_lightning.cli.main", *args]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write(f"\n$ (cd {self.cwd} && {shlex.join(cmd)})\n")
            fh.flush()
            try:
                proc = subprocess.run(cmd, cwd=self.cwd, stdout=fh, stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, **env}, timeout=self.timeout, check=False)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                fh.write(f"\n[ssr-ablate] timed out after {self.timeout} s\n")
                code = -9
        if code != 0:
            raise CommandFailed(args, code, log_tail(log))
