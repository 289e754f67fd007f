"""Where a cell's numbers came from: the code (git commit, dirty flag), library versions, resolved configs, machine.

Every cell record carries `provenance` (ablations/README.md "Cell result"), so a table can be traced to the exact
code and settings that produced each of its numbers, and the report lists the commits and machines it mixes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["code_version", "config_digests", "environment", "machine", "summarize", "versions"]

_PACKAGES = ("ssr_lightning", "torch", "lightning", "diffusers", "pyiqa", "torchvision", "numpy", "submitit")
_REPO = Path(__file__).resolve().parents[2]  # the checkout the running code comes from


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=20,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.cache
def code_version() -> dict[str, Any]:
    """`{"commit", "dirty", "branch"}` of the checkout holding this code (None outside a git checkout)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None}
    # untracked files count too: a new module changes what runs as much as an edited one
    status = _git("status", "--porcelain")
    return {"commit": commit, "dirty": bool(status), "branch": _git("rev-parse", "--abbrev-ref", "HEAD")}


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


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config_digests(folder: Path, pattern: str = "*/version_*/config.yaml") -> dict[str, str]:
    """sha256 of every resolved `config.yaml` (written by `ssr` into each run folder) under `folder`, by relative path."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.glob(pattern))}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What a report's cells mix: the distinct commits (with dirty flags), library versions and machines."""
    commits, libs, hosts = set(), set(), set()
    for rec in records:
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
            "cells_without_provenance": sum(1 for r in records if not r.get("provenance"))}
