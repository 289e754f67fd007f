"""Run one command and record how long it took: the record behind every time the README quotes.

    python tools/timed.py results/timing/make_run.json -- make run
    python tools/timed.py results/timing/make_test.json -- make test
    python tools/timed.py --overwrite results/timing/make_test.json -- make test   # replace an earlier record

Writes a record (results/README.md) with the command that regenerates it (this script with the same arguments),
the command's exit status, wall time, CPU time (user + system of every process it waited for, as `/usr/bin/time`
counts it), the peak RSS of its largest child, the machine's load average before and after (a time measured on a
busy machine is a time under load: the record says so), the environment variables that set thread counts, and the
code, library versions and machine. Run it from the repository root; the command runs there.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssr_lightning.ablate.provenance import (  # noqa: E402
    add_overwrite_flag,
    code_version,
    machine,
    refuse_overwrite,
    versions,
)
from ssr_lightning.files import atomic_write_json  # noqa: E402

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every platform
        return None


def timed(command: list[str], cwd: Path = REPO) -> dict[str, object]:
    """Run ``command`` in ``cwd`` and measure it; the children's CPU time is the difference of RUSAGE_CHILDREN."""
    before, load0 = resource.getrusage(resource.RUSAGE_CHILDREN), _load()
    t0 = time.perf_counter()
    code = subprocess.call(command, cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"exit_status": code, "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "peak_rss_mb": round(after.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
            "load_average_before": load0, "load_average_after": _load(),
            "threads": {k: os.environ.get(k) for k in THREAD_VARS}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_overwrite_flag(p)
    p.add_argument("record", help="JSON to write, relative to the repository root (results/timing/NAME.json)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...: what to time")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to time after --, e.g. -- make run")
    record_path = Path(args.record)
    if record_path.is_absolute():
        p.error(f"{args.record}: give the record's path relative to the repository root (records hold no absolute "
                "paths)")
    refuse_overwrite(p, args.overwrite, REPO / record_path)
    result = timed(command)
    again = ["--overwrite"] if args.overwrite else []  # the command that regenerates this record over itself
    record = {"command": shlex.join(["python", "tools/timed.py", *again, args.record, "--", *command]),
              "what": f"time of `{shlex.join(command)}` from the repository root", "timed": shlex.join(command),
              "summary": result, "provenance": {"code": code_version(), "versions": versions(),
                                                "machine": machine()}}
    atomic_write_json(REPO / record_path, record)
    print(f"{shlex.join(command)}: exit {result['exit_status']}, {result['wall_seconds']} s wall, "
          f"{result['cpu_seconds']} s CPU -> {record_path}")
    return int(result["exit_status"] != 0)


if __name__ == "__main__":
    sys.exit(main())
