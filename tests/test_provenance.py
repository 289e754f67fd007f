"""Provenance of reuse: DONE records carry the training's code, libraries, machine and time; a stage trained at other
code is reused with a warning naming both commits, or trained again with `--retrain-stale`; cells carry the training
provenance of every stage they used."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ssr_lightning.ablate.execute import Executor, Layout
from ssr_lightning.ablate.plan import expand
from ssr_lightning.ablate.provenance import code_version, source_digest, stale, summarize
from ssr_lightning.ablate.study import parse_study
from ssr_lightning.cli.ablate import main as ablate_main

sys.path.insert(0, str(Path(__file__).parent))
from test_ablate import FakeRunner, _study, _write_configs  # noqa: E402

OLD = {"commit": "0123456789ab" + "0" * 28, "dirty": False, "branch": "main", "source_digest": "f" * 64}


def _run(tmp_path: Path, **kwargs: Any) -> tuple[Any, FakeRunner, list[str], list[dict[str, Any]]]:
    _write_configs(tmp_path)
    plan = expand(parse_study(_study(factors={"fa": [True], "fb": [1, 2]})), cwd=tmp_path)
    runner, warnings = FakeRunner(tmp_path), []
    records = Executor(plan, tmp_path / "out", runner, progress=False, warn=warnings.append, **kwargs).run(plan.cells)
    return plan, runner, warnings, records


def _age(tmp_path: Path, stage: str) -> Path:
    """Make the DONE record of `stage` look trained by other code (another commit and source digest)."""
    marker = next((tmp_path / "out" / "artifacts").glob(f"{stage}-*/DONE.json"))
    done = json.loads(marker.read_text())
    done["provenance"]["code"] = dict(OLD)
    marker.write_text(json.dumps(done))
    return marker


def test_done_records_hold_the_training_provenance_and_cells_carry_it(tmp_path: Path) -> None:
    plan, _, warnings, records = _run(tmp_path)
    assert not warnings
    done = json.loads(next((tmp_path / "out" / "artifacts").glob("a-*/DONE.json")).read_text())
    prov = done["provenance"]
    assert prov["code"]["commit"] == code_version()["commit"] and isinstance(prov["code"]["dirty"], bool)
    assert prov["code"]["source_digest"] == source_digest() and len(source_digest()) == 64
    assert {"torch", "lightning"} <= set(prov["versions"]) and prov["machine"]["hostname"]
    assert set(prov["time"]) == {"wall_seconds", "cpu_seconds"} and prov["time"]["wall_seconds"] >= 0
    for rec in records:
        assert rec["stages"]["a"]["provenance"] == prov, "each cell: the provenance of the training it used"
        assert rec["stages"]["a"]["finished_at"] == done["finished_at"]
    summary = summarize(records)
    assert summary["training_commits"] == [f"{prov['code']['commit']}{' (dirty)' if prov['code']['dirty'] else ''}"]


def test_a_stage_from_other_code_is_reused_with_a_warning_naming_both_commits(tmp_path: Path) -> None:
    plan, _, _, _ = _run(tmp_path)
    _age(tmp_path, "a")
    for cell in plan.cells:  # new cells over the old training
        Layout(tmp_path / "out").cell_json(cell).unlink()
    runner, warnings = FakeRunner(tmp_path), []
    records = Executor(plan, tmp_path / "out", runner, progress=False, warn=warnings.append).run(plan.cells)
    assert not runner.fits(), "reused, not retrained"
    stage_lines = [w for w in warnings if w.startswith("stage a ")]
    assert len(stage_lines) == 1, "one warning per stage, not per cell"
    now = code_version()["commit"][:12]
    assert "0123456789ab" in stage_lines[0] and now in stage_lines[0] and "--retrain-stale" in stage_lines[0]
    assert all(r["stages"]["a"]["provenance"]["code"]["commit"] == OLD["commit"] for r in records)
    assert all(r["stages"]["a"]["reused"] for r in records)


def test_retrain_stale_trains_again_keeps_the_old_training_and_redoes_its_cells(tmp_path: Path) -> None:
    plan, _, _, first = _run(tmp_path)
    _age(tmp_path, "a")
    runner, warnings = FakeRunner(tmp_path), []
    kept = Executor(plan, tmp_path / "out", runner, progress=False, warn=warnings.append).run(plan.cells)
    assert kept == [] and not runner.calls, "without the option: finished cells are kept"
    assert any("2 finished cell(s) come from other code" in w and "--retrain-stale" in w for w in warnings)
    runner, warnings = FakeRunner(tmp_path), []
    records = Executor(plan, tmp_path / "out", runner, progress=False, retrain_stale=True,
                       warn=warnings.append).run(plan.cells)
    assert len(runner.fits("a")) == 1 and not runner.fits("b"), "only the stale stage is trained again"
    assert len(records) == 2 and all(r["status"] == "ok" for r in records), "both cells used it: both redone"
    assert all(r["stages"]["a"]["provenance"]["code"]["commit"] == code_version()["commit"] for r in records)
    old = list((tmp_path / "out" / "artifacts").glob("a-*.stale-0123456789ab"))
    assert len(old) == 1 and (old[0] / "DONE.json").is_file(), "the old training is moved aside, not deleted"
    assert any("training it again" in w and "0123456789ab" in w for w in warnings)
    again = FakeRunner(tmp_path)
    assert Executor(plan, tmp_path / "out", again, progress=False, retrain_stale=True).run(plan.cells) == []
    assert not again.calls, "nothing is stale any more"


def test_stale_compares_source_digests_else_commits() -> None:
    now = {"commit": "a" * 40, "dirty": False, "source_digest": "d1"}
    same_code = {"code": {"commit": "b" * 40, "dirty": False, "source_digest": "d1"}}
    assert stale(same_code, now) is None, "a commit that touched only docs or tests: the same code"
    other = stale({"code": {"commit": "b" * 40, "dirty": True, "source_digest": "d2"}}, now)
    assert other == f"commit {'b' * 12} (dirty), the code now at {'a' * 12}"
    assert stale({"code": {"commit": "a" * 40, "dirty": False}}, now) is None, "an older record: by commit"
    assert stale({"code": {"commit": "c" * 40}}, now) is not None
    assert stale(None, now) == f"commit an unknown commit, the code now at {'a' * 12}"


def test_dry_run_marks_stale_stages(tmp_path: Path, capsys: Any) -> None:
    _run(tmp_path)
    _age(tmp_path, "a")
    study = tmp_path / "toy.yaml"
    study.write_text(yaml.safe_dump(_study(factors={"fa": [True], "fb": [1, 2]})))
    assert ablate_main([str(study), "--workdir", str(tmp_path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("a-"))
    assert " stale " in line and "trained at commit 0123456789ab" in out


def test_slurm_path_retrains_stale_stages_in_stage_jobs(tmp_path: Path) -> None:
    """--executor slurm --retrain-stale: the stale stage is a stage job again and its cells are resubmitted
    (through submitit's local executor: real subprocesses, FakeRunner inside)."""
    from test_cluster import JobRunner

    from ssr_lightning.ablate.cluster import SlurmOptions, job_levels, submit_study, wait_all

    plan, _, _, _ = _run(tmp_path)
    layout = Layout(tmp_path / "out")
    assert job_levels(plan, plan.cells, layout, retrain_stale=True) == [], "nothing stale yet"
    _age(tmp_path, "a")
    assert job_levels(plan, plan.cells, layout) == [], "without the option: reused"
    assert [[plan.stages[k].stage for k in lv] for lv in job_levels(plan, plan.cells, layout, True)] == [["a"]]
    calls = tmp_path / "calls.jsonl"
    submitted = submit_study(plan, plan.cells, tmp_path / "out", JobRunner(tmp_path, calls),
                             SlurmOptions(gpus=0, cpus=1, time=10), cluster="local", retrain_stale=True)
    results = wait_all(submitted)
    assert [r["status"] for r in results[:1]] == ["ok"] and len(submitted.cells) == 2
    jobs = [json.loads(line) for line in calls.read_text().splitlines()]
    fits = [j for j in jobs if j["args"][0] == "fit"]
    assert len(fits) == 1 and "a__" in fits[0]["args"][fits[0]["args"].index("--name") + 1]
    assert all(layout.read_cell(c)["stages"]["a"]["provenance"]["code"]["commit"] == code_version()["commit"]
               for c in plan.cells)


def test_frontend_done_records_provenance_and_old_ones_are_named(tmp_path: Path, monkeypatch, capsys) -> None:
    import ssr_lightning.cli.frontend as cli

    monkeypatch.setattr(cli.CLIRunner, "execute", lambda self, cmd, log, env: None)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    args = cli.build_parser().parse_args(["--train", "--stages", "[dkenet, nbsr]", "--out", str(tmp_path)])
    cli._train(args, tmp_path)
    done = json.loads((tmp_path / "runs/seed_0/dkenet/DONE").read_text())
    assert done["provenance"]["code"]["source_digest"] == code_version()["source_digest"]
    assert done["provenance"]["time"]["cpu_seconds"] is not None
    (tmp_path / "runs/seed_0/nbsr/DONE").write_text("312.0 s\n")  # written before DONE held provenance
    capsys.readouterr()
    cli._train(args, tmp_path)
    err = capsys.readouterr().err
    assert "warning: reusing nbsr (seed 0" in err and "an unknown commit" in err and "dkenet" not in err


def test_dirty_counts_code_but_not_records(tmp_path: Path, monkeypatch) -> None:
    """A record written under results/ while another study runs does not mark the code dirty; any other change,
    untracked files included, does."""
    import subprocess

    import ssr_lightning.ablate.provenance as prov

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "mod.py").write_text("x = 1\n")
    git("add", "mod.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.setattr(prov, "_REPO", tmp_path)
    assert prov.code_version.__wrapped__()["dirty"] is False
    (tmp_path / "results" / "study").mkdir(parents=True)
    (tmp_path / "results" / "study" / "RECORD.json").write_text("{}")
    assert prov.code_version.__wrapped__()["dirty"] is False, "a record is an output"
    (tmp_path / "new.py").write_text("y = 2\n")
    assert prov.code_version.__wrapped__()["dirty"] is True, "an untracked module changes what runs"
