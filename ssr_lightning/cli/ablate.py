"""`ssr-ablate`: expand an ablation study into cells, train/evaluate what is missing, write the report.

    ssr-ablate ablations/table2.yaml --dry-run            # the plan: cells, stage trainings + hashes, what is done
    ssr-ablate ablations/table2.yaml                      # run it (tiny CPU defaults), then write the report
    ssr-ablate ablations/table2.yaml --profile paper      # paper-size settings (GPU, DIV2K)
    ssr-ablate ablations/table1.yaml --shard 0/3          # this machine's third of the cells (0-based)
    ssr-ablate ablations/table2.yaml --report-only        # tables/figures from the cell JSONs written so far
    ssr-ablate ablations/table2.yaml --out results/table2 --redo   # regenerate a committed record (results/README.md)
    ssr-ablate ablations/table1.yaml --profile paper --executor slurm --slurm.partition gpu --slurm.time 600
                                                          # job arrays on a SLURM cluster (submitit)
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from ssr_lightning.ablate.cluster import (
    SlurmOptions,
    SlurmUnavailable,
    check_slurm,
    format_jobs,
    submit_study,
    wait_all,
)
from ssr_lightning.ablate.execute import Executor, Layout
from ssr_lightning.ablate.plan import Plan, expand, shard_cells
from ssr_lightning.ablate.provenance import relative_command, stale, write_manifest
from ssr_lightning.ablate.runner import CLIRunner
from ssr_lightning.ablate.study import StudyError, load_study
from ssr_lightning.files import YAMLFileError, load_yaml

__all__ = ["check_out", "format_plan", "main", "parse_shard", "parse_vars"]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`"i/n"` → (i, n), 0-based; None for no sharding."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard wants i/n (0-based, e.g. 0/2 and 1/2), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def parse_vars(items: list[str]) -> dict[str, str]:
    """`["NAME=VALUE", ...]` → `{NAME: VALUE}` (a malformed item is a ValueError naming it)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--var {item!r}: expected NAME=VALUE (e.g. --var images=photos/)")
        out[name] = value
    return out


def check_out(out: Path, what: str) -> str | None:
    """Why the results folder ``out`` cannot be used (a file, not writable), or None; creates it if missing."""
    if out.exists() and not out.is_dir():
        return f"{what} {out} is a file, not a folder: give a folder for the results (new or existing)"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".ssr-ablate-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(out) else ""
        return f"{what} {out}: cannot write there{where}: {err.strerror or err}; give a folder you can write to"
    return None


def _short_args(args: tuple[str, ...], common: tuple[str, ...]) -> str:
    """Arguments with the study's common overrides (identical for every stage) folded into one token."""
    n = len(common)
    if n and args[:n] == common:
        return " ".join(["[common_overrides]", shlex.join(args[n:])]).strip()
    return shlex.join(args)


def format_plan(plan: Plan, layout: Layout, shard: tuple[int, int] | None = None) -> str:
    """Human-readable plan: the stage trainings (hash, status, users) and the cells (status, stages, evaluation)."""
    study = plan.study
    cells = shard_cells(plan.cells, shard)
    needed = {k for c in cells for k in c.stages}
    fewer = [r.label for r in study.rows if r.seeds is not None and len(r.seeds) < len(study.seeds)]
    head = (f"study {study.name}: {len(plan.cells)} cells = {len(study.rows)} rows x {len(study.datasets)} datasets x "
            f"{len(study.seeds)} seeds" + (f" (fewer seeds: {', '.join(fewer)})" if fewer else "")
            + f"; {len(plan.stages)} distinct stage trainings"
            + (f" (shared by every seed: {', '.join(study.shared_stages)})" if study.shared_stages else ""))
    lines = [head, f"out: {layout.out}" + (f"   shard {shard[0]}/{shard[1]}: {len(cells)} cells" if shard else "")]
    lines += [f"WARNING: {p}" for p in plan.problems]
    lines.append("")
    lines.append(f"stages ({len(needed)} needed by these cells):")
    users = {k: sum(k in c.stages for c in plan.cells) for k in plan.stages}
    for key, run in plan.stages.items():
        if key not in needed:
            continue
        deps = ", ".join(f"{n}-{k[:12]}" for n, k in run.deps) or "-"
        done = layout.read_done(run)
        why = stale(done.get("provenance")) if done is not None else None
        lines.append(f"  {run.artifact:<28} {'stale' if why else layout.stage_status(run):<8} cells={users[key]:<3} "
                     f"deps={deps}")
        if why:
            lines.append(f"      trained at {why} (reused with a warning; --retrain-stale trains it again)")
        lines.append(f"      fit --config {run.config} {_short_args(run.args, study.common_overrides)}")
    lines.append("")
    lines.append("cells:")
    for cell in cells:
        stages = " ".join(plan.stages[k].artifact for k in cell.stages) or "(no training)"
        spec = cell.evaluate
        how = "+".join(c for c in spec.commands if spec.source == "model" or c == "predict")
        src = "" if spec.source == "model" else f" source={spec.source} ({spec.bicubic})"
        lines.append(f"  [{layout.cell_status(cell):<6}] {cell.cell_id:<44} stages: {stages}")
        extra = _short_args(cell.eval_args, study.common_overrides)
        lines.append(f"      eval: {how} --config {cell.eval_config}{src} ckpt={spec.ckpt or '-'} {extra}")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # --slurm.* document themselves
    p = ArgumentParser(prog="ssr-ablate", description=__doc__, default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
    p.add_argument("study", type=str, help="study YAML file (schema: ablations/README.md)")
    p.add_argument("--profile", type=str | None, default=None, help="merge profiles.<NAME> of the study on top (e.g. paper)")
    p.add_argument("--var", default=[], action="append",
                   help="NAME=VALUE for a {var:NAME} placeholder the study declares under `variables` (repeatable)")
    p.add_argument("--out", type=str | None, default=None,
                   help="results folder (default: the study's `out`, ablations/results/<name>)")
    p.add_argument("--shard", type=str | None, default=None, help="run only cells k with k %% n == i (0-based i/n)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is already done; run nothing")
    p.add_argument("--report-only", action="store_true", help="write the report from existing cell JSONs; run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report after running")
    p.add_argument("--replace-report", action="store_true",
                   help="write the report even when it has fewer numbers than the one it replaces (default: keep the "
                        "old report and say which rows would lose them)")
    p.add_argument("--skip-failed", action="store_true", help="leave cells recorded as failed alone (default: retry)")
    p.add_argument("--retrain-stale", action="store_true",
                   help="train again every stage trained at other code (another source digest or commit) instead of "
                        "reusing it with a warning, and redo the finished cells evaluated at other code or over such "
                        "stages (the old trainings are kept beside, as <artifact>.stale-<commit>)")
    p.add_argument("--redo", action="store_true",
                   help="evaluate every cell again: the finished cell records are moved to <out>/cells.prev/ first "
                        "(stage trainings with a DONE record are reused); regenerates a committed record, whose "
                        "RECORD.json names this command (a killed --redo run resumes without --redo)")
    p.add_argument("--timeout", type=float | None, default=None, help="seconds allowed per ssr command (default: none)")
    p.add_argument("--workdir", type=str, default=".", help="folder where config paths resolve and ssr runs (default: .)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--executor", type=Literal["local", "slurm"], default="local",
                   help="local: run the cells here, one after the other (default); slurm: submit stage trainings, "
                        "evaluations and the report as submitit job arrays with dependencies (--slurm.*)")
    p.add_argument("--slurm", type=SlurmOptions, default=SlurmOptions(), help="resources of --executor slurm jobs")
    return p


def _check_config_options(argv: list[str]) -> str | None:
    """Why a `--config FILE` option cannot be read (bounded, as every YAML: ``files.load_yaml``), or None."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else arg[len("--config="):] \
            if arg.startswith("--config=") else None
        if value is None:
            continue
        try:  # a file, or the YAML text itself (jsonargparse takes both)
            load_yaml(value) if Path(value).exists() else load_yaml("--config", text=value)
        except YAMLFileError as err:
            return f"--config {err}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ssr-ablate` console script; returns 0, 1 when a cell failed, 2 for a usage error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    problem = _check_config_options(argv)
    if problem:
        print(f"ssr-ablate: {problem}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.shard = parse_shard(args.shard)
    except ValueError as err:
        print(f"ssr-ablate: {err}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir).resolve()
    if not workdir.is_dir():
        print(f"ssr-ablate: --workdir {args.workdir}: not a folder; give the folder where config paths resolve",
              file=sys.stderr)
        return 2
    try:
        variables = parse_vars(args.var)
        study = load_study(args.study, profile=args.profile, variables=variables)
        plan = expand(study, cwd=workdir)
    except (StudyError, ValueError) as err:
        print(f"ssr-ablate: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else workdir / study.out
    layout = Layout(out)
    if args.dry_run:
        try:
            print(format_plan(plan, layout, args.shard))
            if args.executor == "slurm":
                print("\n" + format_jobs(plan, shard_cells(plan.cells, args.shard), layout))
        except BrokenPipeError:  # `ssr-ablate ... --dry-run | head`: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    # usage problems before anything in the results folder is touched
    problem = None
    if args.executor == "slurm" and not args.report_only:
        try:
            check_slurm()
        except SlurmUnavailable as err:
            problem = f"--executor slurm: {err}"
    if args.redo and args.report_only:
        problem = "--redo evaluates every cell again and --report-only evaluates none: give one of them"
    problem = problem or check_out(layout.out, "--out" if args.out else f"the results folder (`out` of {args.study})")
    if problem:
        print(f"ssr-ablate: {problem}", file=sys.stderr)
        return 2
    args.record = {"command": canonical_command(args, out), "what": study.description or study.name,
                   "study": study.name, "report": f"report/{study.name}.md"}
    if args.redo:
        moved = layout.set_aside(plan.cells)
        print(f"ssr-ablate: --redo: {len(moved)} finished cell record(s) moved to {layout.out / 'cells.prev'}; "
              "every cell is evaluated again", file=sys.stderr)
    try:
        return _work(plan, layout, workdir, args)
    except OSError as err:  # e.g. a read-only or full results folder found mid-way: one line, not a traceback
        print(f"ssr-ablate: cannot write {err.filename or layout.out}: {err.strerror or err}; results written so far "
              f"are kept in {layout.out}", file=sys.stderr)
        return 1


def canonical_command(args: Any, out: Path) -> str:
    """The one command that regenerates the results folder ``out`` (its RECORD.json): the study, profile, variables
    and folder of this run, with ``--redo``; paths relative to the working folder (the repository root)."""
    argv = [args.study, *(["--profile", args.profile] if args.profile else []),
            *[x for v in args.var for x in ("--var", v)], *([] if args.workdir == "." else ["--workdir", args.workdir]),
            "--out", str(out.resolve()) if out.is_absolute() else str(out), "--redo"]
    return relative_command("ssr-ablate", argv)


def _manifest(layout: Layout, args: Any, evaluated: bool) -> None:
    """RECORD.json of the results folder, (re)written when cells were evaluated (a run that evaluates nothing leaves
    the folder as it was)."""
    if evaluated:
        write_manifest(layout.out, **args.record)


def _work(plan: Plan, layout: Layout, workdir: Path, args: Any) -> int:
    """Report, submit or run, once the study and the results folder passed their checks."""
    from ssr_lightning.ablate.report import (  # matplotlib/tensorboard only here
        NothingToReport,
        ReportKept,
        write_report,
    )

    if args.report_only:
        try:
            paths = write_report(plan, layout.out, replace=args.replace_report)
        except NothingToReport as err:
            print(f"ssr-ablate: {err}", file=sys.stderr)
            return 1
        print("\n".join(f"report: {p}" for p in paths))
        return 0
    if args.executor == "slurm":
        _manifest(layout, args, True)
        return _submit(plan, layout, workdir, args)
    executor = Executor(plan, layout.out, CLIRunner(cwd=workdir, timeout=args.timeout), progress=not args.no_progress,
                        retrain_stale=args.retrain_stale)
    records = executor.run(shard_cells(plan.cells, args.shard), retry_failed=not args.skip_failed)
    _manifest(layout, args, bool(records))
    failed = [r for r in records if r["status"] != "ok"]
    for r in failed:
        print(f"FAILED {r['cell_id']} at {r['error']['stage']}: {r['error']['message']}\n{r['error']['tail'][-1500:]}",
              file=sys.stderr)
    kept = False
    if not args.no_report:
        try:
            paths = write_report(plan, layout.out, replace=args.replace_report)
        except NothingToReport as err:
            print(f"ssr-ablate: {err}", file=sys.stderr)
            paths, kept = [], isinstance(err, ReportKept)
        table = next((Path(p) for p in paths if str(p).endswith(".md")), None)
        if table is not None and table.is_file():
            print("\n" + table.read_text())
        for path in paths:
            print(f"report: {path}")
    print(f"{len(records) - len(failed)} cells ok, {len(failed)} failed, "
          f"{len(shard_cells(plan.cells, args.shard)) - len(records)} already done -> {layout.out / 'cells'}")
    return 1 if failed or kept else 0


def _submit(plan: Plan, layout: Layout, workdir: Path, args: object) -> int:
    """`--executor slurm`: submit the job graph; with --slurm.wait, wait and print the report."""
    opts = args.slurm if isinstance(args.slurm, SlurmOptions) else SlurmOptions(**vars(args.slurm))  # type: ignore
    runner = CLIRunner(cwd=workdir, timeout=args.timeout)  # type: ignore[attr-defined]
    try:
        submitted = submit_study(plan, shard_cells(plan.cells, args.shard), layout.out, runner, opts,  # type: ignore
                                 retry_failed=not args.skip_failed,  # type: ignore[attr-defined]
                                 retrain_stale=args.retrain_stale)  # type: ignore[attr-defined]
    except RuntimeError as err:  # submitit: no sbatch/srun here
        print(f"ssr-ablate: --executor slurm: {err}", file=sys.stderr)
        return 2
    for i, level in enumerate(submitted.stages):
        print(f"stages{i}: {len(level)} jobs {', '.join(str(j.job_id) for j in level)}")
    print(f"cells: {len(submitted.cells)} jobs; report: {submitted.report.job_id if submitted.report else '-'}")
    print(f"job list: {submitted.folder / 'jobs.json'}; logs: {submitted.folder}/<job id>/; "
          f"the report job writes {layout.out / 'report'}")
    if not opts.wait:
        return 0
    results = wait_all(submitted)
    failed = [r for r in results if isinstance(r, dict) and r.get("status") == "failed"]
    table = layout.out / "report" / f"{plan.study.name}.md"
    if table.is_file():
        print("\n" + table.read_text())
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
