"""The records under results/ (results/README.md): what each must contain, and how the tools write them.

- every committed record names one command that is in this repository, holds relative paths only and nothing big;
- a folder record (``RECORD.json``) has per-image values and provenance; a script's JSON record has its command and
  provenance; results/README.md lists every record folder;
- ``ssr-ablate --redo`` sets the finished cells aside and evaluates them again, and writes ``RECORD.json`` with the
  command that regenerates the folder; cell JSONs name their checkpoints relative to the results folder;
- ``tools/timed.py`` writes a timing record with its own command.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ssr_lightning.ablate.provenance import relative_command
from ssr_lightning.cli import ablate as ablate_cli

sys.path.insert(0, str(Path(__file__).parent))
from test_ablate import FakeRunner, _study, _write_configs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
MAX_BYTES = 2_000_000  # a record is tables and per-image values; a figure of a report fits easily
SUFFIXES = {".json", ".md", ".csv", ".tex", ".png", ".txt", ".yaml"}
PROGRAMS = {"ssr", "ssr-ablate", "ssr-frontend", "ssr-kernel-basis", "make", "python"}


def _files() -> list[Path]:
    """The files of results/ that git would commit (untracked ones included, ignored ones left out)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "results"],
                             capture_output=True, text=True, check=True).stdout
        return [REPO / line for line in out.splitlines() if line and (REPO / line).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file counts
        return [p for p in RESULTS.rglob("*") if p.is_file()]


def _absolute_paths(value: Any, where: str = "") -> list[str]:
    """Strings in a JSON value that look like absolute paths (``/x/y``, ``~/x``, ``C:\\``)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _absolute_paths(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _absolute_paths(v, f"{where}[{i}]")]
    if isinstance(value, str):
        words = shlex.split(value) if " " in value and value.count('"') % 2 == 0 and value.count("'") % 2 == 0 \
            else [value]
        bad = [w for w in words if (w.startswith("/") and w.count("/") > 1) or w.startswith("~/") or w[1:3] == ":\\"]
        return [f"{where}: {w}" for w in bad]
    return []


def command_problems(command: Any) -> list[str]:
    """Why ``command`` is not a command that regenerates a record from this repository (empty: it is)."""
    if not isinstance(command, str) or not command.strip():
        return ["no command"]
    words = [w for w in shlex.split(command) if "=" not in w or w.startswith("-")]  # VAR=value prefixes left out
    if not words or words[0] not in PROGRAMS:
        return [f"{command!r}: starts with {words[:1]}, not one of {sorted(PROGRAMS)}"]
    problems = [f"{command!r}: absolute path {w}" for w in words if w.startswith("/")]
    for w in words[1:]:
        if w.endswith((".py", ".yaml", ".yml")) and not w.startswith("-") and not (REPO / w).is_file():
            problems.append(f"{command!r}: {w} is not in the repository")
    return problems


def _records() -> dict[Path, list[Path]]:
    """Record folder (or JSON file) -> its committed files."""
    groups: dict[Path, list[Path]] = {}
    for f in _files():
        if f.parent == RESULTS:
            continue  # results/README.md
        top = RESULTS / f.relative_to(RESULTS).parts[0]
        # a folder record may sit inside a top folder (results/diffusion_default/val/RECORD.json)
        nested = next((a for a in f.parents if a != top and top in a.parents and (a / "RECORD.json").is_file()), None)
        groups.setdefault(nested or top, []).append(f)
    return groups


def test_committed_records_name_a_command_of_the_repository_and_hold_no_absolute_path() -> None:
    problems: list[str] = []
    for folder, files in _records().items():
        rel = folder.relative_to(REPO).as_posix()
        for f in files:
            name = f.relative_to(REPO).as_posix()
            if f.suffix not in SUFFIXES:
                problems.append(f"{name}: a {f.suffix or 'suffix-less'} file (records hold tables, JSON and figures)")
            if f.stat().st_size > MAX_BYTES:
                problems.append(f"{name}: {f.stat().st_size} bytes (a record is small; keep big outputs ignored)")
            if f.suffix == ".json":
                problems += [f"{name}{p}" for p in _absolute_paths(json.loads(f.read_text()))]
        manifest = folder / "RECORD.json"
        if manifest.is_file():
            record = json.loads(manifest.read_text())
            problems += [f"{rel}/RECORD.json: {p}" for p in command_problems(record.get("command"))]
            if "provenance" not in record:
                problems.append(f"{rel}/RECORD.json: no provenance")
            per_image = (folder / "per_image.json").is_file() or (folder / "per_image.csv").is_file() or any(
                "per_image" in json.loads(c.read_text()) for c in files if c.parent.name == "cells")
            if not per_image:
                problems.append(f"{rel}: no per-image values (cells/*.json with per_image, per_image.json or "
                                "per_image.csv)")
        else:  # a folder of script records: each JSON describes itself
            for f in (f for f in files if f.suffix == ".json"):
                record = json.loads(f.read_text())
                name = f.relative_to(REPO).as_posix()
                problems += [f"{name}: {p}" for p in command_problems(record.get("command"))]
                problems += [f"{name}: no {k}" for k in ("what", "provenance") if k not in record]
    assert not problems, "records (results/README.md, 'What every record must contain'):\n" + "\n".join(problems)


def test_results_readme_lists_every_record_folder() -> None:
    text = (RESULTS / "README.md").read_text()
    missing = [f.relative_to(REPO).as_posix() for f in _records() if f"`{f.relative_to(REPO).as_posix()}/`" not in text]
    assert not missing, f"add a row for {missing} to results/README.md's layout table (command, what, where rendered)"


def test_the_command_check_rejects_scratch_paths_and_foreign_scripts() -> None:
    assert command_problems("OMP_NUM_THREADS=1 python tools/bicubic_rows.py") == []
    assert command_problems("ssr-ablate ablations/table2.yaml --out results/table2 --redo") == []
    assert command_problems("ssr-ablate /work/results12/res2.yaml --out /work/results12/q12")
    assert command_problems("python scratch/profile.py")
    assert command_problems("bash run.sh") and command_problems("")
    assert _absolute_paths({"a": ["x", {"ckpt": "/tmp/run/best.ckpt"}]}) == [".a[1].ckpt: /tmp/run/best.ckpt"]
    assert relative_command("ssr-ablate", [str(REPO / "ablations/table2.yaml"), "--out", str(REPO / "results/t")],
                            REPO) == "ssr-ablate ablations/table2.yaml --out results/t"


def test_redo_sets_finished_cells_aside_and_the_folder_records_its_command(tmp_path: Path, monkeypatch, capsys) -> None:
    _write_configs(tmp_path)
    study = tmp_path / "toy.yaml"
    study.write_text(yaml.safe_dump(_study(factors={"fa": [True, False]})))
    runner = FakeRunner(tmp_path)
    monkeypatch.setattr(ablate_cli, "CLIRunner", lambda *a, **k: runner)
    monkeypatch.chdir(tmp_path)
    args = ["toy.yaml", "--out", "res/toy", "--no-progress"]
    assert ablate_cli.main(args) == 0
    out = tmp_path / "res" / "toy"
    record = json.loads((out / "RECORD.json").read_text())
    assert record["command"] == "ssr-ablate toy.yaml --out res/toy --redo" and record["provenance"]["code"]
    cells = {p.name: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    for cell in cells.values():
        ckpt = cell["stages"]["a"]["ckpt"]
        assert not Path(ckpt).is_absolute() and (out / ckpt).is_file(), "checkpoints relative to the results folder"
    evaluations = len([c for c in runner.calls if c[0] != "fit"])
    assert ablate_cli.main(args) == 0 and len([c for c in runner.calls if c[0] != "fit"]) == evaluations, \
        "without --redo a finished cell is skipped"
    assert ablate_cli.main([*args, "--redo"]) == 0
    assert len([c for c in runner.calls if c[0] != "fit"]) == 2 * evaluations, "--redo evaluates every cell again"
    assert sorted(p.name for p in (out / "cells.prev").glob("*.json")) == sorted(cells)
    assert ablate_cli.main([*args, "--redo", "--report-only"]) == 2
    assert "--redo" in capsys.readouterr().err


def test_timed_writes_a_record_with_its_own_command(tmp_path: Path, monkeypatch) -> None:
    sys.path.insert(0, str(REPO / "tools"))
    import timed

    monkeypatch.setattr(timed, "REPO", tmp_path)
    assert timed.main(["results/timing/t.json", "--", sys.executable, "-c", "pass"]) == 0
    record = json.loads((tmp_path / "results/timing/t.json").read_text())
    assert record["command"].startswith("python tools/timed.py results/timing/t.json -- ")
    assert record["summary"]["exit_status"] == 0 and record["summary"]["wall_seconds"] >= 0
    with pytest.raises(SystemExit):
        timed.main([str(tmp_path / "abs.json"), "--", "true"])
    with pytest.raises(SystemExit):  # an earlier record is a result: refused, before the command runs
        timed.main(["results/timing/t.json", "--", sys.executable, "-c", "raise SystemExit(3)"])
    assert json.loads((tmp_path / "results/timing/t.json").read_text()) == record
    assert timed.main(["--overwrite", "results/timing/t.json", "--", sys.executable, "-c", "pass"]) == 0
    again = json.loads((tmp_path / "results/timing/t.json").read_text())
    assert again["command"].startswith("python tools/timed.py --overwrite results/timing/t.json -- ")


def test_the_frontend_record_keeps_every_rows_per_image_values_and_the_trainings(tmp_path: Path) -> None:
    import ssr_lightning.cli.frontend as cli
    from ssr_lightning.frontend.ladder import Ladder, merge_seeds

    def ladder(shift: float) -> Ladder:
        return Ladder(names=["a", "b", "c"], invariant=[False, True, False], sources=["a", "b", "c"],
                      rows={"NBSR, kernel zeroed": {"psnr_y": [20 + shift, 21.0, 22.0]},
                            "NBSR + GT kernel": {"psnr_y": [21.0, 22.0 + shift, 23.0]}},
                      premise={"HR": [0.3, 0.4, 0.5]})

    merged, _ = merge_seeds([ladder(0.0), ladder(1.0)])
    merged.rows.setdefault("blind RRDB", {"psnr_y": [20.5, 21.5, 22.5]})  # a single-seed row, as run() adds them
    values = json.loads(json.dumps(cli.per_image(merged, [0, 1])))
    assert values["names"] == ["a", "b", "c"] and values["seeds"] == [0, 1]
    assert values["rows"]["NBSR, kernel zeroed"]["psnr_y"] == [[20.0, 21.0, 22.0], [21.0, 21.0, 22.0]]
    assert values["rows"]["blind RRDB"]["psnr_y"] == [[20.5, 21.5, 22.5]], "(seeds, images), one seed"
    assert values["premise"]["HR"] == [[0.3, 0.4, 0.5], [0.3, 0.4, 0.5]]
    done = tmp_path / "runs" / "seed_1" / "nbsr" / "DONE"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"stage": "nbsr", "seed": 1, "provenance": {"code": {"commit": "abc"}}}))
    (tmp_path / "runs" / "seed_0" / "depth").mkdir(parents=True)
    (tmp_path / "runs" / "seed_0" / "depth" / "DONE").write_text("312.0 s\n")  # an old DONE: no provenance
    stages = cli._stage_provenance(tmp_path / "runs", [0, 1])
    assert stages["1"]["nbsr"]["provenance"]["code"]["commit"] == "abc" and "note" in stages["0"]["depth"]
