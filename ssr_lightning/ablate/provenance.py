"""Where a cell's numbers came from: the code (git commit, dirty flag), library versions, resolved configs, machine.

Every cell record carries `provenance` (ablations/README.md "Cell result"), so a table can be traced to the exact
code and settings that produced each of its numbers, and the report lists the commits and machines it mixes. Every
stage training records the same in its DONE record, with the sha256 of the package's source files and its wall and
CPU time; :func:`stale` says when a record comes from other code than the running one (stage keys leave the code
out, so `ssr-ablate` warns before it reuses such a training, or retrains it with `--retrain-stale`).
A results folder under `results/` is a record (results/README.md): :func:`write_manifest` writes its `RECORD.json`,
the one command that regenerates it (:func:`relative_command`: paths relative to the repository root) and the code.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import os
import platform
import resource
import shlex
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from ssr_lightning.files import atomic_write_json

__all__ = ["MANIFEST", "add_overwrite_flag", "code_version", "config_digests", "cpu_children", "environment", "machine",
           "refuse_overwrite", "relative_command", "short", "source_digest", "stale", "summarize", "training",
           "versions", "write_manifest", "write_record"]

MANIFEST = "RECORD.json"  # a record folder's manifest (results/README.md)

_PACKAGES = ("ssr_lightning", "torch", "lightning", "diffusers", "pyiqa", "torchvision", "numpy", "submitit")
_PACKAGE = Path(__file__).resolve().parents[1]  # ssr_lightning/
_REPO = _PACKAGE.parent  # the checkout the running code comes from


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=20,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.cache
def source_digest() -> str:
    """sha256 over the package's Python files (relative path and content): the code that trains and scores, whether
    or not it sits in a git checkout, and unchanged by commits that touch only docs, tests or tools."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


RECORDS_DIR = "results"  # the committed records (results/README.md): outputs, not code


@functools.cache
def code_version() -> dict[str, Any]:
    """`{"commit", "dirty", "branch", "source_digest"}` of the code (commit etc. None outside a git checkout)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None, "source_digest": source_digest()}
    # untracked files count too: a new module changes what runs as much as an edited one. Records under results/ do
    # not: they are outputs, and a study writing its record beside another one still running is common
    status = _git("status", "--porcelain", "--", ".", f":(exclude){RECORDS_DIR}")
    return {"commit": commit, "dirty": bool(status), "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
            "source_digest": source_digest()}


@functools.cache
def versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide the numbers (read from metadata: nothing is imported)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def machine() -> dict[str, Any]:
    """Host name, OS, CPU model and count, GPUs (names from torch when CUDA is usable), SLURM job if any."""
    gpus: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken CUDA setup must not fail the record
        gpus = []
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "gpus": gpus, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def environment() -> dict[str, Any]:
    """Code, versions and machine of this process (the parts of a cell's provenance that are not per cell)."""
    return {"code": code_version(), "versions": versions(), "machine": machine()}


def cpu_children() -> float:
    """CPU seconds (user + system) of this process's finished child processes (the `ssr fit` subprocesses)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def training(wall_seconds: float, cpu_seconds: float) -> dict[str, Any]:
    """A stage training's provenance: :func:`environment` and its time (wall, and CPU of its processes)."""
    return {**environment(), "time": {"wall_seconds": round(wall_seconds, 2), "cpu_seconds": round(cpu_seconds, 2)}}


def short(code: dict[str, Any] | None) -> str:
    """`3e72569f0a1b (dirty)`, or `an unknown commit` for a record without one."""
    code = code or {}
    commit = code.get("commit")
    return (f"{commit[:12]}" if commit else "an unknown commit") + (" (dirty)" if code.get("dirty") else "")


def stale(provenance: dict[str, Any] | None, now: dict[str, Any] | None = None) -> str | None:
    """Why a record's code differs from the running code (``now``, default :func:`code_version`), or None.

    The source digests decide where both records have one (a commit that changed only docs or tests is the same
    code); else the commits do. A record without any code version counts as other code."""
    now = code_version() if now is None else now
    then = (provenance or {}).get("code") or {}
    if then.get("source_digest") and now.get("source_digest"):
        differs = then["source_digest"] != now["source_digest"]
    else:
        differs = not then.get("commit") or then.get("commit") != now.get("commit")
    return f"commit {short(then)}, the code now at {short(now)}" if differs else None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config_digests(folder: Path, pattern: str = "*/version_*/config.yaml") -> dict[str, str]:
    """sha256 of every resolved `config.yaml` (written by `ssr` into each run folder) under `folder`, by relative path."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.glob(pattern))}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What a report's cells mix: the distinct commits (with dirty flags) that evaluated them and that trained their
    stages, library versions and machines."""
    commits, libs, hosts, trained = set(), set(), set(), set()
    for rec in records:
        for stage in (rec.get("stages") or {}).values():
            code = ((stage or {}).get("provenance") or {}).get("code")
            if code:
                trained.add(f"{code.get('commit') or 'unknown'}{' (dirty)' if code.get('dirty') else ''}")
        prov = rec.get("provenance") or {}
        code = prov.get("code") or {}
        if code:
            commits.add(f"{code.get('commit') or 'unknown'}{' (dirty)' if code.get('dirty') else ''}")
        vers = prov.get("versions") or {}
        if vers:
            libs.add(", ".join(f"{k} {vers.get(k)}" for k in ("torch", "lightning", "diffusers", "pyiqa")))
        mach = prov.get("machine") or {}
        if mach:
            gpus = ", ".join(mach.get("gpus") or []) or "no GPU"
            hosts.add(f"{mach.get('hostname')} ({mach.get('cpu')}, {mach.get('cpu_count')} CPUs, {gpus})")
    return {"commits": sorted(commits), "versions": sorted(libs), "machines": sorted(hosts),
            "training_commits": sorted(trained),
            "cells_without_provenance": sum(1 for r in records if not r.get("provenance"))}


def _relative(arg: str, root: Path) -> str:
    """``arg`` with an absolute path inside ``root`` (alone or after ``--option=``) made relative to it."""
    head, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    if not value.startswith(os.sep):
        return arg
    try:
        rel = Path(value).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return arg  # outside the checkout: kept, and a record's test names it
    return f"{head}{sep}{rel or '.'}"


def relative_command(prog: str, argv: list[str], root: Path | None = None) -> str:
    """``prog argv...`` as one shell line, absolute paths inside ``root`` (default: the working folder) relative."""
    root = Path.cwd() if root is None else root
    return shlex.join([prog, *(_relative(str(a), root) for a in argv)])


def add_overwrite_flag(parser: Any) -> None:
    """``--overwrite`` on a record-writing script's parser (see :func:`refuse_overwrite`)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing record (an earlier result: without this flag the script stops first)")


def refuse_overwrite(parser: Any, overwrite: bool, *paths: Any) -> None:
    """Stop (``parser.error``, exit status 2) before any work when one of ``paths`` exists and ``--overwrite`` was not
    given: a record is an earlier result, replaced only on request."""
    existing = [str(p) for p in paths if p is not None and Path(p).exists()]
    if existing and not overwrite:
        parser.error(f"{', '.join(existing)} {'exists' if len(existing) == 1 else 'exist'} (an earlier result): pass "
                     "--overwrite to replace it, or choose another --out")


def write_record(path: Path, record: dict[str, Any], script: str, argv: list[str], what: str,
                 root: Path | None = None) -> Path:
    """Write a script's JSON record (results/README.md): ``record`` with the command that regenerates it (``python
    script argv...``, paths relative to ``root``), what it holds and the provenance of this process; atomic."""
    full = {"command": relative_command("python", [script, *argv], root), "what": what, **record,
            "provenance": environment()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, full)


def write_manifest(folder: Path, command: str, what: str, **extra: Any) -> Path:
    """Write ``folder/RECORD.json``: the command that regenerates the folder, what it holds, when, and the code,
    library versions and machine that ran it (``extra`` keys are added as they are)."""
    record = {"command": command, "what": what, **extra,
              "written_at": _dt.datetime.now().isoformat(timespec="seconds"), "provenance": environment()}
    return atomic_write_json(folder / MANIFEST, record)
