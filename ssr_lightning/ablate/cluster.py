"""`ssr-ablate --executor slurm`: a study as submitit job arrays on a SLURM cluster.

The plan becomes a graph of jobs, submitted at once:

    level 0   one job array: every stage training without an untrained dependency (vae, dkenet, nbsr, ...)
    level k   one job array per dependency level (ssr needs vae), each `--dependency=afterany:<level k-1 jobs>`
    cells     one job array: every cell's evaluation, after all its stage jobs
    report    one CPU job after the cells: writes <out>/report (the same files as a local run)

Each stage is trained exactly once, before the cells that need it; the jobs run the same `Executor` code as a local
run (`ensure_stage` under its file lock, `run_cell` writing the cell JSON), so a job that starts early, a job
started twice, or a requeued job all end in the same results. Jobs are `submitit.helpers.Checkpointable`: on
pre-emption or time-out submitit requeues them (up to `max_requeues` times), and a requeued training resumes from
its `last.ckpt` (`ssr fit --ckpt_path last`). A stage training that fails writes `FAILED.json` into its artifact,
so the cells that need it fail fast with its log instead of training it again. Dependencies are `afterany`, so a
failure is recorded in the cell JSONs instead of leaving jobs pending forever.

Multi-GPU / multi-node stage training: `--slurm.nodes N --slurm.tasks_per_node G` with the study's stage overrides
naming `configs/trainer/ddp.yaml`; submitit starts one task per GPU, every task runs the same `ssr fit`, and
Lightning's SLURMEnvironment reads the ranks from SLURM's variables. Only rank 0 writes the DONE record.

`cluster="local"` runs the same graph through `submitit.LocalExecutor` (real subprocesses, one machine; it has no
job dependencies, so each level is awaited before the next is submitted): the tests use it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssr_lightning.ablate.execute import Executor, Layout
from ssr_lightning.ablate.plan import Cell, Plan
from ssr_lightning.ablate.provenance import stale
from ssr_lightning.ablate.runner import CommandFailed, Runner, StageJob
from ssr_lightning.files import atomic_write_json

__all__ = ["CellTask", "ReportTask", "SlurmOptions", "SlurmUnavailable", "StageTask", "check_slurm", "job_levels",
           "submit_study"]


class SlurmUnavailable(RuntimeError):
    """`sbatch` or `srun` is not on PATH: nothing can be submitted from this machine."""


def check_slurm() -> None:
    """Raise :class:`SlurmUnavailable` unless `sbatch` and `srun` are on PATH (checked before anything is changed)."""
    missing = [name for name in ("sbatch", "srun") if shutil.which(name) is None]
    if missing:
        raise SlurmUnavailable(f"{' and '.join(missing)} not found on PATH: run ssr-ablate on a SLURM login node, or "
                               "use --executor local; nothing was submitted or changed")


@dataclass
class SlurmOptions:
    """Resources of the jobs `ssr-ablate --executor slurm` submits (`--slurm.partition gpu --slurm.time 600 ...`)."""

    partition: str | None = None
    """SLURM partition (`--partition`); None: the cluster's default."""
    time: int = 240
    """Minutes per job (`--time`); a job that runs out is requeued and resumes from its last.ckpt."""
    gpus: int = 1
    """GPUs per node for stage trainings and evaluations (`--gpus-per-node`)."""
    cpus: int = 8
    """CPUs per task (`--cpus-per-task`)."""
    mem_gb: float | None = None
    """Memory per node in GB (`--mem`); None: the partition's default."""
    nodes: int = 1
    """Nodes per stage training (multi-node DDP, with configs/trainer/ddp.yaml in the study's stage overrides)."""
    tasks_per_node: int = 1
    """Processes per node of a stage training (DDP: one per GPU, as `--trainer.devices`)."""
    array_parallelism: int = 64
    """Most tasks of one job array running at once."""
    account: str | None = None
    """SLURM account (`--account`)."""
    qos: str | None = None
    """SLURM quality of service (`--qos`)."""
    constraint: str | None = None
    """Node features (`--constraint`, e.g. a GPU type)."""
    max_requeues: int = 3
    """Requeues after pre-emption or time-out before a job gives up."""
    extra: dict[str, str] = field(default_factory=dict)
    """Further sbatch options, e.g. {"exclude": "node12"}."""
    wait: bool = False
    """Block until every job finished (the report job writes the report either way)."""


def _stage_keys(plan: Plan, cells: list[Cell], layout: Layout, retrain_stale: bool = False) -> list[str]:
    """Stage keys the cells need that are not finished (or, with `retrain_stale`, were trained at other code),
    dependencies first (plan order)."""
    needed = {k for c in cells for k in c.stages}

    def todo(key: str) -> bool:
        done = layout.read_done(plan.stages[key])
        return done is None or (retrain_stale and stale(done.get("provenance")) is not None)

    return [k for k in plan.stages if k in needed and todo(k)]


def job_levels(plan: Plan, cells: list[Cell], layout: Layout, retrain_stale: bool = False) -> list[list[str]]:
    """Stage keys to train, grouped by dependency level (a stage's untrained dependencies sit in earlier levels)."""
    todo = _stage_keys(plan, cells, layout, retrain_stale)
    level: dict[str, int] = {}

    def depth(key: str) -> int:
        if key not in level:
            deps = [d for _, d in plan.stages[key].deps if d in todo]
            level[key] = 1 + max((depth(d) for d in deps), default=-1)
        return level[key]

    groups: dict[int, list[str]] = {}
    for key in todo:
        groups.setdefault(depth(key), []).append(key)
    return [groups[k] for k in sorted(groups)]


def _rank() -> int:
    import submitit

    try:
        return int(submitit.JobEnvironment().global_rank)
    except RuntimeError:  # not inside a submitit job (called directly)
        return 0


class _Task:
    def __init__(self, plan: Plan, out: str, runner: Runner, retrain_stale: bool = False) -> None:
        self.plan, self.out, self.runner, self.retrain_stale = plan, out, runner, retrain_stale

    def executor(self) -> Executor:
        return Executor(self.plan, self.out, self.runner, progress=False, trust_failures=True,
                        retrain_stale=self.retrain_stale)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue the same task: a killed training resumes from its last.ckpt, a finished one is reused."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


class StageTask(_Task):
    """Train one stage (its dependencies are finished: earlier levels); returns its status."""

    def __init__(self, plan: Plan, out: str, runner: Runner, key: str, retrain_stale: bool = False) -> None:
        super().__init__(plan, out, runner, retrain_stale)
        self.key = key

    def __call__(self) -> dict[str, Any]:
        ex = self.executor()
        run = self.plan.stages[self.key]
        done = {}
        for _, dep in run.deps:
            record = ex.layout.read_done(self.plan.stages[dep])
            if record is None:
                return {"key": self.key, "status": "failed", "error": f"dependency {dep[:12]} is not trained"}
            done[dep] = record
        if _rank() != 0:
            # a DDP worker task: the same `ssr fit`, without the lock and the DONE record that rank 0 keeps
            args = ex._resolve(run.args, dict(run.deps), done)
            job = StageJob(run, ex.layout.artifact(run) / "runs", args,
                           ex.layout.artifact(run) / f"train.rank{_rank()}.log", ex.run_name(run))
            self.runner.execute(self.runner.stage_command(job), job.log, {})
            return {"key": self.key, "status": "worker"}
        try:
            info = ex.ensure_stage(run, done)
        except CommandFailed as err:
            return {"key": self.key, "status": "failed", "error": str(err)}
        return {"key": self.key, "status": "ok", "reused": info.get("reused"), "seconds": info.get("seconds")}


class CellTask(_Task):
    """Evaluate one cell (training what is missing, which the stage jobs should have done); returns its status."""

    def __init__(self, plan: Plan, out: str, runner: Runner, cell_id: str, retrain_stale: bool = False) -> None:
        super().__init__(plan, out, runner, retrain_stale)
        self.cell_id = cell_id

    def __call__(self) -> dict[str, Any]:
        ex = self.executor()
        cell = next(c for c in self.plan.cells if c.cell_id == self.cell_id)
        if ex.layout.cell_status(cell) == "ok" and not (self.retrain_stale and ex.stale_cells([cell])):
            return {"cell_id": self.cell_id, "status": "ok", "skipped": True}
        record = ex.run_cell(cell)
        return {"cell_id": self.cell_id, "status": record["status"]}


class ReportTask(_Task):
    """Write the study's report from the cell JSONs."""

    def __call__(self) -> list[str]:
        from ssr_lightning.ablate.report import NothingToReport, write_report

        try:
            return [str(p) for p in write_report(self.plan, self.out)]
        except NothingToReport as err:
            return [f"report not written: {err}"]


def _parameters(opts: SlurmOptions, cluster: str, name: str, training: bool, cpu_only: bool = False
                ) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "timeout_min": int(opts.time), "cpus_per_task": int(opts.cpus),
                              "nodes": int(opts.nodes) if training else 1,
                              "tasks_per_node": int(opts.tasks_per_node) if training else 1}
    if opts.gpus > 0 and not cpu_only:  # some SLURM versions refuse --gpus-per-node=0
        params["gpus_per_node"] = int(opts.gpus)
    if cluster == "slurm":
        if opts.mem_gb is not None:
            params["mem_gb"] = opts.mem_gb
        params["slurm_array_parallelism"] = int(opts.array_parallelism)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(opts, key):
                params[f"slurm_{key}"] = getattr(opts, key)
    return params


def _submit(folder: Path, opts: SlurmOptions, params: dict[str, Any], tasks: list[Any], after: list[Any],
            cluster: str) -> list[Any]:
    """One job array of `tasks`, starting after the jobs `after` (SLURM dependency; locally: awaited first)."""
    import submitit

    if not tasks:
        return []
    # a fresh executor per array: update_parameters accumulates, and one array's dependency must not leak
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster, slurm_max_num_timeout=int(opts.max_requeues))
    additional = dict(opts.extra)
    if cluster == "slurm":
        additional["requeue"] = True  # let SLURM put a pre-empted job back in the queue
        if after:
            additional["dependency"] = "afterany:" + ":".join(str(j.job_id) for j in after)
        executor.update_parameters(**params, slurm_additional_parameters=additional)
    else:
        for job in after:  # the local executor knows no dependencies
            job.wait()
        executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(task) for task in tasks]
    return jobs


@dataclass
class Submitted:
    """The jobs of one submission: `stages[level]`, `cells`, `report` (submitit Job objects)."""

    stages: list[list[Any]]
    cells: list[Any]
    report: Any | None
    folder: Path

    def all(self) -> list[Any]:
        return [j for level in self.stages for j in level] + self.cells + ([self.report] if self.report else [])


def submit_study(plan: Plan, cells: list[Cell], out: str | Path, runner: Runner, opts: SlurmOptions,
                 cluster: str = "slurm", retry_failed: bool = True, retrain_stale: bool = False) -> Submitted:
    """Submit the stage trainings, evaluations and the report of `cells` (those not finished, and with
    `retrain_stale` those from other code) as job arrays."""
    if cluster == "slurm":
        check_slurm()  # before the FAILED.json markers below are removed
    layout = Layout(out)
    redo = set(Executor(plan, out, runner, progress=False).stale_cells(cells)) if retrain_stale else set()
    todo = [c for c in cells if (layout.cell_status(c) != "ok" or c.cell_id in redo)
            and (retry_failed or layout.cell_status(c) != "failed")]
    levels = job_levels(plan, todo, layout, retrain_stale)
    for key in (k for level in levels for k in level):
        layout.failed_marker(plan.stages[key]).unlink(missing_ok=True)  # this submission trains it again
    folder = layout.out / "submitit"
    name = plan.study.name
    out_s = str(layout.out)
    stage_jobs: list[list[Any]] = []
    previous: list[Any] = []
    for i, keys in enumerate(levels):
        tasks = [StageTask(plan, out_s, runner, k, retrain_stale) for k in keys]
        jobs = _submit(folder, opts, _parameters(opts, cluster, f"{name}-stages{i}", True), tasks, previous, cluster)
        stage_jobs.append(jobs)
        previous = previous + jobs
    cell_jobs = _submit(folder, opts, _parameters(opts, cluster, f"{name}-cells", False),
                        [CellTask(plan, out_s, runner, c.cell_id, retrain_stale) for c in todo], previous, cluster)
    report = _submit(folder, opts, _parameters(opts, cluster, f"{name}-report", False, cpu_only=True),
                     [ReportTask(plan, out_s, runner)], cell_jobs or previous, cluster)
    submitted = Submitted(stage_jobs, cell_jobs, report[0] if report else None, folder)
    jobs = {str(j.job_id): {"kind": "stage", "artifact": plan.stages[k].artifact}
            for level, keys in zip(stage_jobs, levels, strict=True) for j, k in zip(level, keys, strict=True)}
    jobs |= {str(j.job_id): {"kind": "cell", "cell_id": c.cell_id} for j, c in zip(cell_jobs, todo, strict=True)}
    if submitted.report is not None:
        jobs[str(submitted.report.job_id)] = {"kind": "report"}
    atomic_write_json(folder / "jobs.json", jobs)
    return submitted


def format_jobs(plan: Plan, cells: list[Cell], layout: Layout) -> str:
    """The job graph `--executor slurm` would submit (for `--dry-run`)."""
    levels = job_levels(plan, cells, layout)
    todo = [c for c in cells if layout.cell_status(c) != "ok"]
    lines = ["slurm jobs (submitit arrays, each after the previous ones):"]
    for i, keys in enumerate(levels):
        lines.append(f"  stages{i}: array of {len(keys)}: " + ", ".join(plan.stages[k].artifact for k in keys))
    lines.append(f"  cells:   array of {len(todo)} evaluations")
    lines.append("  report:  1 CPU job")
    return "\n".join(lines)


def wait_all(submitted: Submitted) -> list[Any]:
    """Results of every job (in submission order), waiting for the unfinished ones."""
    out = []
    for job in submitted.all():
        try:
            out.append(job.result())
        except Exception as err:  # noqa: BLE001 - a crashed job is reported, the others are still collected
            out.append({"status": "failed", "error": f"{type(err).__name__}: {err}", "job_id": str(job.job_id)})
    return out
