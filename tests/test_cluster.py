"""`ssr-ablate --executor slurm`: the submitit job graph, run for real through submitit's local executor
(subprocesses), and the sbatch scripts it would submit to SLURM (fake `sbatch`/`srun` on PATH, nothing runs)."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import yaml

from ssr_lightning.ablate.cluster import SlurmOptions, job_levels, submit_study, wait_all
from ssr_lightning.ablate.execute import Layout
from ssr_lightning.ablate.plan import expand
from ssr_lightning.ablate.runner import CLIRunner
from ssr_lightning.ablate.study import load_study, parse_study
from ssr_lightning.cli.ablate import main as ablate_main

sys.path.insert(0, str(Path(__file__).parent))
from test_ablate import TINY, FakeRunner, _opt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# the jobs unpickle the runner in fresh interpreters that cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[FakeRunner.__module__])
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class JobRunner(FakeRunner):
    """FakeRunner that survives pickling into a job and appends every command it runs to `calls.jsonl`."""

    def __init__(self, cwd: Path, calls: Path) -> None:
        super().__init__(cwd)
        self.calls_file = str(calls)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def execute(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        with open(self.calls_file, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "args": args}) + "\n")
        super().execute(args, log, env)


def _two_cells(root: Path) -> dict[str, Any]:
    """Two rows that differ only in stage b's arguments: stage a is shared by both cells."""
    (root / "configs").mkdir(exist_ok=True)
    for name in ("a", "b"):
        (root / "configs" / f"{name}.yaml").write_text(f"model: {name}\n")
    return {
        "name": "pair", "base_configs": {"a": "configs/a.yaml", "b": "configs/b.yaml"},
        "stage_overrides": {"b": ["--model.init_args.a_ckpt", "{stage:a}"]},
        "rows": [{"label": "narrow", "overrides": {"b": ["--width", "1"]}},
                 {"label": "wide", "overrides": {"b": ["--width", "2"]}}],
        "metrics": ["psnr_y", "niqe"], "evaluate": {"stage": "b"},
    }


def test_job_levels_put_dependencies_first(tmp_path: Path) -> None:
    plan = expand(parse_study(_two_cells(tmp_path)), cwd=tmp_path)
    levels = job_levels(plan, plan.cells, Layout(tmp_path / "out"))
    assert [[plan.stages[k].stage for k in level] for level in levels] == [["a"], ["b", "b"]]


def test_local_submitit_runs_two_cells_in_subprocesses_sharing_one_training(tmp_path: Path) -> None:
    plan = expand(parse_study(_two_cells(tmp_path)), cwd=tmp_path)
    calls = tmp_path / "calls.jsonl"
    out = tmp_path / "out"
    submitted = submit_study(plan, plan.cells, out, JobRunner(tmp_path, calls), SlurmOptions(gpus=0, cpus=1, time=10),
                             cluster="local")
    results = wait_all(submitted)
    assert [len(level) for level in submitted.stages] == [1, 2] and len(submitted.cells) == 2
    assert [r["status"] for r in results[:3]] == ["ok"] * 3, results
    assert [r["status"] for r in results[3:5]] == ["ok", "ok"], results
    commands = [json.loads(line) for line in calls.read_text().splitlines()]
    assert os.getpid() not in {c["pid"] for c in commands}, "every command ran in a job subprocess"
    fits_a = [c for c in commands if c["args"][0] == "fit" and _opt(c["args"], "--name").startswith("a__")]
    assert len(fits_a) == 1, "the shared stage was trained once"
    layout = Layout(out)
    records = [layout.read_cell(c) for c in plan.cells]
    assert [r["status"] for r in records] == ["ok", "ok"]
    a_runs = {r["stages"]["a"]["artifact"] for r in records}
    assert len(a_runs) == 1 and all(r["stages"]["a"]["reused"] for r in records), \
        "both cells used the one a-training that the stage job finished before them"
    assert {r["stages"]["b"]["artifact"] for r in records}.__len__() == 2
    assert (out / "report" / "pair.md").is_file(), "the report job wrote the report"
    jobs = json.loads((out / "submitit" / "jobs.json").read_text())
    assert sorted(j["kind"] for j in jobs.values()) == ["cell", "cell", "report", "stage", "stage", "stage"]


def test_a_failed_stage_job_fails_its_cells_fast(tmp_path: Path) -> None:
    raw = _two_cells(tmp_path)
    plan = expand(parse_study(raw), cwd=tmp_path)
    calls = tmp_path / "calls.jsonl"
    runner = JobRunner(tmp_path, calls)
    runner.fail_config = "a.yaml"
    submitted = submit_study(plan, plan.cells, tmp_path / "out", runner, SlurmOptions(gpus=0, cpus=1, time=10),
                             cluster="local")
    wait_all(submitted)
    records = [Layout(tmp_path / "out").read_cell(c) for c in plan.cells]
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all("broken on purpose" in r["error"]["tail"] for r in records), "the stage job's log reaches the cells"
    fits = [json.loads(line) for line in calls.read_text().splitlines() if '"fit"' in line]
    assert len(fits) == 1, "the cells did not train the broken stage again (FAILED.json)"


def _fake_slurm(bin_dir: Path, log: Path) -> None:
    """`sbatch` that records each script and answers with a job id; `srun` that exists."""
    bin_dir.mkdir()
    counter = bin_dir / "n"
    counter.write_text("100")
    script = f"""#!/bin/bash
n=$(cat {counter}); echo $((n+1)) > {counter}
echo "=== $@" >> {log}; cat "${{@: -1}}" >> {log}
echo "Submitted batch job $n"
"""
    for name, body in (("sbatch", script), ("srun", "#!/bin/bash\nexit 0\n")):
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_scripts_have_arrays_dependencies_resources_and_requeue(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "sbatch.log"
    _fake_slurm(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    study = tmp_path / "pair.yaml"
    study.write_text(yaml.safe_dump(_two_cells(tmp_path)))
    code = ablate_main([str(study), "--workdir", str(tmp_path), "--out", str(tmp_path / "out"), "--executor", "slurm",
                        "--slurm.partition", "gpu", "--slurm.time", "90", "--slurm.gpus", "2", "--slurm.cpus", "6",
                        "--slurm.mem_gb", "32", "--slurm.qos", "high"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "stages0: 1 jobs 100\n" in printed and "stages1: 2 jobs 101_0, 101_1" in printed
    scripts = log.read_text().split("=== ")[1:]
    assert len(scripts) == 4, "stages of level 0, level 1, the cells, the report"
    level0, level1, cells, report = scripts
    assert "--array" not in level0 and "dependency" not in level0, "one stage at level 0: a plain job"
    assert "#SBATCH --dependency=afterany:100\n" in level1 and "#SBATCH --array=0-1%2" in level1
    assert "#SBATCH --dependency=afterany:100:101_0:101_1" in cells
    assert "#SBATCH --dependency=afterany:102_0:102_1" in report and "--gpus-per-node" not in report
    for text in (level0, level1, cells):
        for flag in ("--partition=gpu", "--time=90", "--gpus-per-node=2", "--cpus-per-task=6", "--mem=32GB",
                     "--qos=high", "--requeue", "--signal=USR2@"):
            assert f"#SBATCH {flag}" in text, (flag, text)
    assert "--job-name=pair-stages0" in level0 and "--job-name=pair-cells" in cells


def test_dry_run_prints_the_job_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "pair.yaml"
    study.write_text(yaml.safe_dump(_two_cells(tmp_path)))
    assert ablate_main([str(study), "--workdir", str(tmp_path), "--out", str(tmp_path / "o"), "--dry-run",
                        "--executor", "slurm"]) == 0
    text = capsys.readouterr().out
    assert "stages0: array of 1" in text and "stages1: array of 2" in text and "cells:   array of 2" in text


@pytest.mark.slow
def test_local_submitit_real_ssr_two_cells_share_one_dkenet(tmp_path: Path) -> None:
    """The same graph over the real `ssr` CLI: one DKENet training, two evaluations that reuse it (~2 min)."""
    raw = {
        "name": "pair_real", "base_configs": {"dkenet": "configs/dkenet.yaml"}, "common_overrides": TINY,
        "stage_overrides": {"dkenet": ["--model.init_args.net.init_args.channels", "8"]},
        "rows": [{"label": "test 64", "evaluate": {"overrides": ["--data.test_size", "64"]}},
                 {"label": "test 96", "evaluate": {"overrides": ["--data.test_size", "96"]}}],
        "metrics": ["kernel_l1"], "evaluate": {"stage": "dkenet", "commands": ["test"]},
    }
    study = tmp_path / "pair_real.yaml"
    study.write_text(yaml.safe_dump(raw))
    plan = expand(load_study(study), cwd=REPO)
    out = tmp_path / "out"
    submitted = submit_study(plan, plan.cells, out, CLIRunner(cwd=REPO), SlurmOptions(gpus=0, cpus=1, time=20),
                             cluster="local")
    results = wait_all(submitted)
    assert all(isinstance(r, (dict, list)) for r in results) and results[0]["status"] == "ok", results
    records = [Layout(out).read_cell(c) for c in plan.cells]
    assert [r["status"] for r in records] == ["ok", "ok"], [r.get("error") for r in records]
    assert len({r["stages"]["dkenet"]["artifact"] for r in records}) == 1
    train_log = next((out / "artifacts").glob("dkenet-*/train.log")).read_text()
    assert train_log.count("cli.main fit") == 1, "one training, in the stage job"
    assert all(0 <= r["metrics"]["kernel_l1"] <= 2 for r in records)
    assert records[0]["provenance"]["machine"]["hostname"] and records[0]["provenance"]["versions"]["torch"]
