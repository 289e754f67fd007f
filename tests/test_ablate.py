"""`ssr-ablate`: plan expansion, hashing and reuse, resume, shards, failure isolation, reports, one real run.

All but the last test use `FakeRunner`, whose `execute` interprets the exact `ssr` argument lists the real
runner would run and writes the files a real run writes (checkpoints, test/predict metrics), in milliseconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from ssr_lightning.ablate.execute import Executor, Layout
from ssr_lightning.ablate.plan import expand, shard_cells
from ssr_lightning.ablate.runner import CommandFailed, Runner, log_tail
from ssr_lightning.ablate.study import load_study, parse_study
from ssr_lightning.cli.ablate import main as ablate_main

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "ablations").glob("*.yaml"))


def _opt(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


class FakeRunner(Runner):
    """Writes what `ssr fit/test/predict` would write; can crash a stage mid-way or fail a config."""

    def __init__(self, cwd: Path, steps: int = 4, crash_at: dict[str, int] | None = None,
                 fail_config: str | None = None, delay: float = 0.0) -> None:
        super().__init__(cwd)
        self.steps, self.crash_at, self.fail_config, self.delay = steps, dict(crash_at or {}), fail_config, delay
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def execute(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        with self.lock:
            self.calls.append(list(args))
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write("$ ssr " + " ".join(args) + "\n")
        time.sleep(self.delay)
        config, root, name = _opt(args, "--config"), Path(_opt(args, "--root") or "."), _opt(args, "--name") or "run"
        if self.fail_config and config and config.endswith(self.fail_config):
            log.open("a").write("RuntimeError: this stage is broken on purpose\n")
            raise CommandFailed(args, 1, log_tail(log))
        if args[0] == "fit":
            ckpts = root / name / "version_0" / "checkpoints"
            ckpts.mkdir(parents=True, exist_ok=True)
            start = 0
            if _opt(args, "--ckpt_path") == "last" and (ckpts / "last.ckpt").is_file():
                start = json.loads((ckpts / "last.ckpt").read_text())["step"]
            for step in range(start + 1, self.steps + 1):
                (ckpts / "last.ckpt").write_text(json.dumps({"step": step, "resumed_from": start}))
                if self.crash_at.get(name.split("__")[0]) == step:
                    del self.crash_at[name.split("__")[0]]  # killed once, at this step
                    raise CommandFailed(args, -9, "Killed")
            (ckpts / "best.ckpt").write_text(json.dumps({"step": self.steps, "args": args}))
        elif args[0] == "test":
            out = root / f"{name}_test" / "version_0"
            out.mkdir(parents=True, exist_ok=True)
            score = 20.0 + 2.0 * ("true" in args) + 0.5 * len(args) % 3
            (out / "test_metrics.json").write_text(json.dumps({"summary": {"psnr_y": score, "kernel_l1": 1 / score},
                                                               "num_samples": 2}))
        elif args[0] == "predict":
            cb = json.loads(next(a for a in args if a.startswith("--trainer.callbacks+=")).split("=", 1)[1])
            out = Path(cb["init_args"]["out_dir"])
            summary = {"lpips": "n/a (weights missing: pyiqa/LPIPS_v0.1_alex-df73285e.pth)", "niqe": 5.0}
            out.mkdir(parents=True, exist_ok=True)
            (out / "predict_metrics.json").write_text(json.dumps({"summary": summary, "num_samples": 2}))

    def fits(self, stage: str | None = None) -> list[list[str]]:
        # stage runs are named <stage>__<rows>__seed<N> (plan.run_name)
        return [c for c in self.calls if c[0] == "fit" and (stage is None or _opt(c, "--name").split("__")[0] == stage)]


def _write_configs(root: Path) -> None:
    (root / "configs").mkdir(exist_ok=True)
    for name in ("a", "b", "c"):
        (root / "configs" / f"{name}.yaml").write_text(f"model: {name}\n")


def _study(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "toy",
        "base_configs": {"a": "configs/a.yaml", "b": "configs/b.yaml"},
        "stage_overrides": {"b": ["--model.init_args.a_ckpt", "{stage:a}"]},
        "factors": {"fa": [True, False], "fb": [1, 2]},
        "overrides": {"fa": {False: {"a": ["--model.init_args.use_depth", False]}},
                      "fb": {2: {"b": ["--model.init_args.width", 2]}}},
        "metrics": ["psnr_y", "lpips", "niqe"],
        "evaluate": {"stage": "b"},
    }
    raw.update(extra)
    return raw


def test_shipped_studies_parse_and_expand() -> None:
    assert {p.stem for p in STUDIES} >= {"table1", "table2", "table3"}
    for path in STUDIES:
        profiles = [None, *(yaml.safe_load(path.read_text()).get("profiles") or {})]
        if path.stem.startswith("table"):
            assert "paper" in profiles, f"{path.name} has a paper profile"
        declared = yaml.safe_load(path.read_text()).get("variables") or {}
        given = {k: "data/user_hr" for k, v in declared.items() if v is None}  # required variables need a value
        for profile in profiles:
            study = load_study(path, profile, given)
            plan = expand(study, cwd=REPO)
            per_row = sum(len(r.seeds or study.seeds) for r in study.rows)  # a row may name a subset of the seeds
            assert len(plan.cells) == per_row * len(study.datasets) > 0
            for cell in plan.cells:
                seen: set[str] = set()
                for key in cell.stages:  # dependencies come first
                    assert all(dep in seen for _, dep in plan.stages[key].deps)
                    seen.add(key)


def test_grid_expansion_and_stage_sharing(tmp_path: Path) -> None:
    _write_configs(tmp_path)
    plan = expand(parse_study(_study(seeds=[0, 1])), cwd=tmp_path)
    assert len(plan.cells) == 2 * 2 * 2
    names = Counter(run.stage for run in plan.stages.values())
    assert names == {"a": 2 * 2, "b": 2 * 2 * 2}, "a depends on fa and the seed only; b on fa (via a), fb, seed"
    b_args = next(r for r in plan.stages.values() if r.stage == "b").args
    assert "{stage:a}" in b_args and "--seed_everything" in b_args
    assert plan.cells[0].cell_id == "fa_true_fb_1__embedded__s0"


def test_keys_follow_content_not_location(tmp_path: Path) -> None:
    for where in ("one", "two"):
        (tmp_path / where).mkdir()
        _write_configs(tmp_path / where)
    one = expand(parse_study(_study()), cwd=tmp_path / "one")
    two = expand(parse_study(_study()), cwd=tmp_path / "two")
    assert set(one.stages) == set(two.stages), "same content in another folder: same keys (shards agree)"
    (tmp_path / "two/configs/a.yaml").write_text("model: a\nchanged: true\n")
    three = expand(parse_study(_study()), cwd=tmp_path / "two")
    changed = {r.stage for k, r in three.stages.items() if k not in one.stages}
    assert changed == {"a", "b"}, "a's config changed: a and everything depending on it get new keys"


def test_shared_stage_trains_once_and_finished_cells_are_skipped(tmp_path: Path) -> None:
    _write_configs(tmp_path)
    plan = expand(parse_study(_study()), cwd=tmp_path)
    runner = FakeRunner(tmp_path)
    records = Executor(plan, tmp_path / "out", runner, progress=False).run(plan.cells)
    assert [r["status"] for r in records] == ["ok"] * 4
    assert len(runner.fits("a")) == 2 and len(runner.fits("b")) == 4, "2 distinct a-trainings shared by 4 cells"
    layout = Layout(tmp_path / "out")
    for run in plan.stages.values():
        stored = json.loads(layout.done(run).read_text())["ckpt"]
        assert stored.startswith("runs/") and stored.endswith("best.ckpt"), "relative: valid on every mount point"
        assert Path(layout.read_done(run)["ckpt"]).is_file()
    rec = records[0]
    assert rec["metrics"]["lpips"].startswith("n/a (weights missing") and rec["metrics"]["niqe"] == 5.0
    assert rec["stages"]["a"]["reused"] is False and records[1]["stages"]["a"]["reused"] is True
    b_fit = runner.fits("b")[0]
    assert _opt(b_fit, "--model.init_args.a_ckpt").endswith("best.ckpt"), "{stage:a} became a's checkpoint path"
    runner.calls.clear()
    assert Executor(plan, tmp_path / "out", runner, progress=False).run(plan.cells) == []
    assert runner.calls == [], "a finished study reruns nothing"


def test_killed_stage_resumes_with_ckpt_path_last(tmp_path: Path) -> None:
    _write_configs(tmp_path)
    plan = expand(parse_study(_study(factors={"fa": [True], "fb": [1]})), cwd=tmp_path)
    runner = FakeRunner(tmp_path, steps=6, crash_at={"a": 3})
    first = Executor(plan, tmp_path / "out", runner, progress=False).run(plan.cells)
    assert first[0]["status"] == "failed" and first[0]["error"]["stage"] == "a"
    run_a = next(r for r in plan.stages.values() if r.stage == "a")
    assert Layout(tmp_path / "out").stage_status(run_a) == "partial"
    second = Executor(plan, tmp_path / "out", runner, progress=False).run(plan.cells)
    assert second[0]["status"] == "ok"
    assert all(_opt(c, "--ckpt_path") == "last" for c in runner.fits())
    last = json.loads(next((tmp_path / "out/artifacts").glob("a-*/runs/a__*/version_0/checkpoints/last.ckpt")).read_text())
    assert last == {"step": 6, "resumed_from": 3}, "the second run continued from the killed run's step"


def test_failing_cell_is_recorded_and_others_finish(tmp_path: Path) -> None:
    _write_configs(tmp_path)
    raw = _study(factors={"fa": [True, False]},
                 overrides={"fa": {False: {"evaluate": {"stage": "c"}}}})
    raw["base_configs"]["c"] = "configs/c.yaml"
    plan = expand(parse_study(raw), cwd=tmp_path)
    runner = FakeRunner(tmp_path, fail_config="c.yaml")
    records = Executor(plan, tmp_path / "out", runner, progress=False).run(plan.cells)
    status = {r["cell_id"]: r for r in records}
    assert status["fa_true__embedded__s0"]["status"] == "ok"
    bad = status["fa_false__embedded__s0"]
    assert bad["status"] == "failed" and "broken on purpose" in bad["error"]["tail"]
    assert json.loads(Layout(tmp_path / "out").cell_json(bad["cell_id"]).read_text())["status"] == "failed"


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shard_partition(tmp_path: Path, n: int) -> None:
    _write_configs(tmp_path)
    plan = expand(parse_study(_study(seeds=[0, 1, 2])), cwd=tmp_path)
    parts = [shard_cells(plan.cells, (i, n)) for i in range(n)]
    ids = [c.cell_id for p in parts for c in p]
    assert sorted(ids) == sorted(c.cell_id for c in plan.cells), "every cell in exactly one shard"


def test_concurrent_shards_run_every_cell_once_and_share_stages(tmp_path: Path) -> None:
    _write_configs(tmp_path)
    plan = expand(parse_study(_study(factors={"fa": [True], "fb": [1, 2]}, seeds=[0])), cwd=tmp_path)
    runner = FakeRunner(tmp_path, delay=0.05)
    n = 2
    threads = [threading.Thread(target=lambda i=i: Executor(plan, tmp_path / "out", runner, progress=False)
                                .run(shard_cells(plan.cells, (i, n)))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    evals = Counter(Path(_opt(c, "--root")).parent.name for c in runner.calls if c[0] == "test")
    assert evals == {c.cell_id: 1 for c in plan.cells}, "each cell evaluated once over all shards"
    assert len(runner.fits("a")) == 1, "the shared stage was trained by one shard; the other waited and reused it"


def test_dry_run_prints_plan_and_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _write_configs(tmp_path)
    study_file = tmp_path / "toy.yaml"
    study_file.write_text(yaml.safe_dump(_study(factors={"fa": [True, False]})))
    assert ablate_main([str(study_file), "--workdir", str(tmp_path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    plan = expand(load_study(study_file), cwd=tmp_path)
    assert "2 cells" in text and text.count("[todo  ]") == 2
    assert all(run.artifact in text for run in plan.stages.values())
    Executor(plan, tmp_path / "out", FakeRunner(tmp_path), progress=False).run(plan.cells[:1])
    ablate_main([str(study_file), "--workdir", str(tmp_path), "--out", str(tmp_path / "out"), "--dry-run"])
    text = capsys.readouterr().out
    assert "[ok    ]" in text and "[todo  ]" in text and " done " in text


def test_profile_merges_onto_study(tmp_path: Path) -> None:
    _write_configs(tmp_path)
    raw = _study(profiles={"paper": {"seeds": [0, 1, 2], "evaluate": {"commands": ["test"]}}})
    study = parse_study(raw, profile="paper")
    assert study.seeds == [0, 1, 2] and study.evaluate.stage == "b" and study.evaluate.commands == ("test",)
    with pytest.raises(ValueError, match="profile 'gpu' not in this study"):
        parse_study(raw, profile="gpu")


# --- reports --------------------------------------------------------------------------------------------------------
def _records(plan: Any) -> dict[str, dict[str, Any]]:
    """Hand-made results: row fb=1 best PSNR, row fb=2 best NIQE, LPIPS n/a everywhere, row fa=false failed."""
    out = {}
    for cell in plan.cells:
        rec = {"cell_id": cell.cell_id, "key": cell.key, "status": "ok", "settings": cell.settings,
               "finished_at": "t", "samples": None,
               "metrics": {"psnr_y": 20.0 + cell.settings["fb"] + 0.1 * cell.seed,
                           "lpips": "n/a (weights missing: pyiqa/LPIPS_v0.1_alex-df73285e.pth)",
                           "niqe": 6.0 - cell.settings["fb"]}}
        if not cell.settings["fa"]:
            rec.update(status="failed", metrics={})
        out[cell.cell_id] = rec
    return out


def test_report_tables_bold_arrows_pm_and_text_cells(tmp_path: Path) -> None:
    from ssr_lightning.ablate.report import to_csv, to_json, to_latex, to_markdown
    from ssr_lightning.ablate.table import build_table

    _write_configs(tmp_path)
    plan = expand(parse_study(_study(seeds=[0, 1])), cwd=tmp_path)
    table = build_table(plan, _records(plan))
    md = to_markdown(table)
    assert "| Method | fa | fb | PSNR ↑ | LPIPS ↓ | NIQE ↓ |" in md
    best_row = next(line for line in md.splitlines() if line.startswith("| fa=true, fb=2 "))
    assert "**22.05 ± 0.07**" in best_row and "**4.00 ± 0.00**" in best_row, "higher PSNR and lower NIQE are bold"
    assert "| 21.05 ± 0.07 |" in md and "| 5.00 ± 0.00 |" in md, "the other row is not"
    assert "n/a (weights missing: pyiqa/LPIPS_v0.1_alex-df73285e.pth)" in md
    assert "**n/a" not in md, "text is never bold"
    assert md.count(" failed ") == 6, "every column of the two failed rows"
    tex = to_latex(table)
    assert r"\textbf{22.05 $\pm$ 0.07}" in tex and r"PSNR $\uparrow$" in tex and r"NIQE $\downarrow$" in tex
    assert r"LPIPS\_v0.1\_alex" in tex and r"\checkmark" in tex
    csv_text = to_csv(table)
    assert csv_text.splitlines()[0].startswith("label,fa,fb,embedded/psnr_y,embedded/psnr_y_std")
    js = to_json(table)
    assert js["columns"][0]["higher_is_better"] is True and js["rows"][1]["entries"][0]["best"] is True


def test_write_report_makes_every_output(tmp_path: Path) -> None:
    from PIL import Image

    from ssr_lightning.ablate.report import write_report

    _write_configs(tmp_path)
    plan = expand(parse_study(_study()), cwd=tmp_path)
    layout = Layout(tmp_path / "out")
    for cell_id, rec in _records(plan).items():
        if rec["status"] == "ok":
            samples = layout.out / "cells" / cell_id / "samples"
            samples.mkdir(parents=True)
            for kind, size in (("lr", 16), ("sr", 64), ("hr", 64)):
                Image.new("RGB", (size, size), (40 * len(cell_id) % 255, 90, 160)).save(samples / f"img0_{kind}.png")
            rec["samples"] = str(samples.relative_to(layout.out))
        (layout.out / "cells").mkdir(parents=True, exist_ok=True)
        layout.cell_json(cell_id).write_text(json.dumps(rec))
    paths = {p.name for p in write_report(plan, layout.out)}
    assert paths == {"toy.md", "toy.csv", "toy.tex", "toy.json", "toy_means.png", "toy_qualitative.png"}
    runs = [p for p in (layout.out / "tensorboard").glob("*/events.out.tfevents.*") if p.parent.name != "_report"]
    assert len({p.parent for p in runs}) == 2, "one hparams session per finished cell"
    assert list((layout.out / "tensorboard" / "_report").glob("events.out.tfevents.*")), "the report run"


def test_eval_writer_scores_predictions_and_saves_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from ssr_lightning.ablate.writer import EvalWriter

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    module = type("M", (), {"hparams": {"net": {"init_args": {"scale": 4}}}, "device": torch.device("cpu")})()
    hr = torch.rand(2, 3, 32, 32)
    batch = {"hr": hr, "lr": hr[..., ::4, ::4], "name": ["a/one", "two"]}
    writer = EvalWriter(str(tmp_path / "cell"), metrics=["psnr_y", "lpips"], num_samples=1)
    writer.on_predict_start(None, module)  # type: ignore[arg-type]
    writer.on_predict_batch_end(None, module, {"sr": hr.flip(-1), "kernel": None}, batch, 0)  # type: ignore[arg-type]
    writer.on_predict_batch_end(None, module, {"kernel": torch.rand(2, 441, 8, 8)}, batch, 1)  # type: ignore[arg-type]
    writer.on_predict_end(None, module)  # type: ignore[arg-type]
    report = json.loads((tmp_path / "cell/predict_metrics.json").read_text())
    assert report["num_samples"] == 2 and report["summary"]["psnr_y"] > 0
    assert report["summary"]["lpips"].startswith("n/a (weights missing")
    saved = sorted(p.name for p in (tmp_path / "cell/samples").iterdir())
    assert saved == ["a_one_hr.png", "a_one_lr.png", "a_one_sr.png"], "one sample kept, its name made file-safe"


# --- the real path --------------------------------------------------------------------------------------------------
TINY = ["--trainer", "configs/trainer/debug.yaml", "--data", "configs/data/tiny.yaml",
        "--data.num_train", "4", "--data.num_val", "2", "--data.num_test", "2", "--data.embedded_scene_size", "96",
        "--data.batch_size", "2", "--data.val_batch_size", "2", "--data.test_batch_size", "2"]


@pytest.mark.slow
def test_shipped_study_commands_parse_with_the_ssr_cli(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every distinct fit/test command of the shipped studies (all profiles) is accepted by `ssr` (~2.5 min)."""
    from ssr_lightning.cli.main import main as ssr_main

    monkeypatch.chdir(REPO)  # study paths are relative to the working folder, as for `ssr`

    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    for path in STUDIES:
        declared = yaml.safe_load(path.read_text()).get("variables") or {}
        given = {k: "data/user_hr" for k, v in declared.items() if v is None}
        for profile in [None, *(yaml.safe_load(path.read_text()).get("profiles") or {})]:
            plan = expand(load_study(path, profile, given), cwd=REPO)
            seen |= {("fit", r.config, r.args) for r in plan.stages.values()}
            seen |= {("test", c.eval_config, c.eval_args) for c in plan.cells}
    for sub, config, args in sorted(seen):
        with pytest.raises(SystemExit) as exc:
            ssr_main([sub, "--config", config, *args, "--print_config"])
        assert exc.value.code == 0, (sub, config, args, capsys.readouterr().err[-2000:])
        capsys.readouterr()


@pytest.mark.slow
def test_real_tiny_study_over_the_ssr_cli(tmp_path: Path) -> None:
    study = {
        "name": "dkenet_depth",
        "base_configs": {"dkenet": "configs/dkenet.yaml"},
        "common_overrides": TINY,
        "stage_overrides": {"dkenet": ["--model.init_args.net.init_args.channels", "8"]},
        "factors": {"use_depth": [True, False]},
        "overrides": {"use_depth": {False: {"dkenet": ["--model.init_args.net.init_args.use_depth", "false"]}}},
        "metrics": ["kernel_l1", "resynth_psnr"],
        "evaluate": {"stage": "dkenet", "commands": ["test"]},
        "report": {"title": "DKENet with / without the depth branch (tiny)"},
    }
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    args = [str(study_file), "--workdir", str(REPO), "--out", str(out), "--no-progress"]
    assert ablate_main(args) == 0
    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert sorted(cells) == ["use_depth_false__embedded__s0", "use_depth_true__embedded__s0"]
    for rec in cells.values():
        assert rec["status"] == "ok", rec["error"]
        assert 0.0 <= rec["metrics"]["kernel_l1"] <= 2.0 and rec["metrics"]["resynth_psnr"] > 0
        assert (out / rec["stages"]["dkenet"]["ckpt"]).is_file(), "relative to the results folder"
    md = (out / "report/dkenet_depth.md").read_text()
    body = md.split("| Method", 1)[1]
    assert "Kernel L1 ↓" in body and body.count("**") == 4, "one bold best per column"
    assert list((out / "tensorboard").glob("*/events.out.tfevents.*"))
    (tmp_path / "report.md").write_text(md)  # kept for the reader of the test output
    print(md)
    before = sorted(p.stat().st_mtime for p in (out / "cells").glob("*.json"))
    assert ablate_main(args) == 0
    assert sorted(p.stat().st_mtime for p in (out / "cells").glob("*.json")) == before, "rerun skips finished cells"


def test_run_names_are_valid_fit_names(tmp_path: Path) -> None:
    """A training shared by several rows with long labels gets a name `ssr fit --name` accepts."""
    from ssr_lightning.ablate.plan import expand, run_name
    from ssr_lightning.ablate.study import parse_study
    from ssr_lightning.files import check_name

    _write_configs(tmp_path)
    long = "a rather long row label that says what the row is, at strength 0."
    raw = _study()
    raw.pop("factors", None)
    raw["rows"] = ([{"label": f"{long}{i}", "overrides": {"b": ["--x", "1"]}} for i in range(4)]
                   + [{"label": "other row", "overrides": {"b": ["--x", "2"]}}])
    plan = expand(parse_study(raw), tmp_path)
    names = [run_name(plan, key) for key in plan.stages]
    assert all(check_name(n, "--name") == n for n in names)
    shared = next(n for n in names if n.startswith("b__a_rather"))
    assert shared.endswith("-more__seed0") and len(shared) <= 100
