"""Reliability catalogue, round two (issue 23), `ssr-ablate` studies and reports: hostile names, YAML bombs,
unreadable or stale cells, results folders that cannot be used, missing SLURM tools, a held report lock.

Each case asserts the message, the exit status and that nothing was lost (digests before and after). Cells are
fake JSONs: nothing trains."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ssr_lightning.ablate.execute import Layout
from ssr_lightning.ablate.plan import expand
from ssr_lightning.ablate.records import report_lock
from ssr_lightning.ablate.report import ReportKept, write_report
from ssr_lightning.ablate.study import StudyError, load_study, parse_study
from ssr_lightning.cli.ablate import main as ablate_main
from ssr_lightning.files import atomic_write_json, check_name


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "report.lock"}


def _study(root: Path, **extra: Any) -> tuple[dict[str, Any], Path]:
    """A two-row study (`fa=true`, `fa=false`) over one stage config, written to `root/toy.yaml`."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "a.yaml").write_text("model: a\n")
    raw = {"name": "toy", "base_configs": {"a": "configs/a.yaml"}, "factors": {"fa": [True, False]},
           "overrides": {"fa": {False: {"a": ["--x", "1"]}}}, "evaluate": {"stage": "a"}, "metrics": ["psnr_y"]}
    raw.update(extra)
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw, path


def _finish(root: Path, raw: dict[str, Any]) -> Path:
    """Fake finished cells of `raw` under `root/out`, then its report; returns the results folder."""
    plan = expand(parse_study(raw), cwd=root)
    for i, cell in enumerate(plan.cells):
        atomic_write_json(root / "out" / "cells" / f"{cell.cell_id}.json",
                          {"cell_id": cell.cell_id, "key": cell.key, "status": "ok", "label": cell.label,
                           "metrics": {"psnr_y": 20.0 + i}})
    write_report(plan, root / "out")
    return root / "out"


def _ablate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = ablate_main([str(a) for a in args])
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- 2: names are slugs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../victim", "a/b", "..", "/tmp/victim", ".hidden"])
def test_a_study_name_that_is_not_one_file_name_is_refused(tmp_path: Path, capsys, name: str) -> None:
    _, study = _study(tmp_path / "w", name=name)
    for folder in (tmp_path, tmp_path / "w"):  # where `../../victim` or `..` would write the report
        for suffix in ("md", "json"):
            (folder / f"victim.{suffix}").write_text("someone's file\n")
    before = _digest(tmp_path)
    for extra in ([], ["--report-only"], ["--dry-run"]):
        code, err = _ablate(capsys, study, "--out", tmp_path / "w" / "x" / "out", "--workdir", tmp_path / "w", *extra)
        line = _one_line(err)
        assert code == 2 and f"name {name!r}" in line and "toy.yaml" in line and "e.g." in line
    assert _digest(tmp_path) == before and not (tmp_path / "w" / "x").exists()


def test_a_stage_name_that_is_not_one_file_name_is_refused(tmp_path: Path) -> None:
    raw, _ = _study(tmp_path, base_configs={"../a": "configs/a.yaml"}, evaluate={"stage": "../a"})
    with pytest.raises(StudyError, match=r"base_configs stage name '\.\./a'"):
        parse_study(raw)


def test_hostile_labels_and_dataset_names_become_distinct_safe_cell_files(tmp_path: Path) -> None:
    rng = random.Random(23)
    alphabet = ["/", "..", ".", "-", " ", "_", "a", "B", "7", "é", "\\", "~"]
    labels = list(dict.fromkeys(["../../x", "..", ".hidden", "-dash", "/abs/path", "x" * 300, "y" * 300, *(
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(60))]))
    raw, _ = _study(tmp_path, factors={}, overrides={}, rows=[], datasets=[{"name": "../../d"}, "/data/BSDS100"])
    kept = []  # labels whose slugs collide are refused (tested below): keep one label per slug
    for label in labels:
        raw["rows"] = [{"label": x} for x in [*kept, label]]
        try:
            parse_study(raw)
        except StudyError as err:
            assert "both become" in str(err) and "in the cell file names" in str(err)
            continue
        kept.append(label)
    raw["rows"] = [{"label": x} for x in kept]
    plan = expand(parse_study(raw), cwd=tmp_path)
    layout = Layout(tmp_path / "out")
    ids = [c.cell_id for c in plan.cells]
    assert len(set(ids)) == len(ids) == 2 * len(kept) and len(kept) > 30
    for cell in plan.cells:
        assert check_name(cell.cell_id, "cell id") == cell.cell_id
        assert layout.cell_json(cell).parent == layout.out / "cells" and layout.cell_dir(cell).parent == layout.out / "cells"


def test_labels_that_share_a_cell_file_name_are_named(tmp_path: Path) -> None:
    raw, _ = _study(tmp_path, factors={}, overrides={}, rows=[{"label": "No Depth"}, {"label": "no-depth"},
                                                              {"label": "no depth"}])
    with pytest.raises(StudyError, match=r"row labels 'No Depth' and 'no depth' both become 'no_depth'"):
        parse_study(raw)


# --- 8: a report is never replaced by a worse one -------------------------------------------------------------------
def test_an_unreadable_cell_json_is_named_and_the_complete_report_kept(tmp_path: Path, capsys) -> None:
    raw, study = _study(tmp_path)
    out = _finish(tmp_path, raw)
    broken = out / "cells" / "fa_false__embedded__s0.json"
    broken.write_text('{"cell_id": "fa_false__embedded__s0", "key": ')  # a copy cut short
    before = _digest(out / "report")
    code, err = _ablate(capsys, study, "--report-only", "--out", out, "--workdir", tmp_path)
    assert code == 1 and f"{broken} is unreadable" in err and "Traceback" not in err
    assert "kept the existing report" in err and "row 'fa=false': 0 of 1 cells finished (1 unreadable)" in err
    assert "--replace-report" in err and _digest(out / "report") == before
    code, err = _ablate(capsys, study, "--report-only", "--out", out, "--workdir", tmp_path, "--replace-report")
    assert code == 0 and f"{broken} is unreadable" in err  # written on request, still with the warning
    assert "—" in (out / "report" / "toy.md").read_text()


def test_a_cell_json_that_is_no_record_is_warned_about_without_an_old_report(tmp_path: Path, capsys) -> None:
    raw, study = _study(tmp_path)
    out = _finish(tmp_path, raw)
    shutil.rmtree(out / "report")
    (out / "cells" / "fa_true__embedded__s0.json").write_text("[1, 2]")
    code, err = _ablate(capsys, study, "--report-only", "--out", out, "--workdir", tmp_path)
    assert code == 0 and "fa_true__embedded__s0.json is not a cell record" in err
    assert "Traceback" not in err and (out / "report" / "toy.md").is_file()


def test_an_edited_row_is_named_and_the_complete_report_kept(tmp_path: Path, capsys) -> None:
    raw, study = _study(tmp_path)
    out = _finish(tmp_path, raw)
    before = _digest(out / "report")
    raw["overrides"]["fa"][False]["a"] = ["--x", "2"]  # only the fa=false row changes
    study.write_text(yaml.safe_dump(raw))
    code, err = _ablate(capsys, study, "--report-only", "--out", out, "--workdir", tmp_path)
    assert code == 1 and "row 'fa=false': 1 of 1 cells hold results of an earlier version of this row" in err
    assert "fa=true" not in err and "1 from an earlier version of the row" in err
    assert _digest(out / "report") == before


def test_a_run_after_removing_a_row_keeps_the_report_unless_asked(tmp_path: Path, capsys) -> None:
    raw, study = _study(tmp_path)
    out = _finish(tmp_path, raw)
    before = _digest(out)
    raw["factors"]["fa"] = [True]  # every remaining cell is finished: nothing runs
    study.write_text(yaml.safe_dump(raw))
    code, err = _ablate(capsys, study, "--out", out, "--workdir", tmp_path, "--no-progress")
    assert code == 1 and "row 'fa=false': no longer in the study" in err and _digest(out) == before
    assert _ablate(capsys, study, "--out", out, "--workdir", tmp_path, "--no-progress", "--replace-report")[0] == 0
    assert "fa=false" not in (out / "report" / "toy.md").read_text()


def test_a_report_that_would_lose_seeds_is_kept(tmp_path: Path) -> None:
    raw, _ = _study(tmp_path, seeds=[0, 1])
    out = _finish(tmp_path, raw)
    before = _digest(out / "report")
    (out / "cells" / "fa_true__embedded__s1.json").unlink()
    with pytest.raises(ReportKept, match=r"row 'fa=true': 1 of 2 cells finished \(1 not run\)"):
        write_report(expand(parse_study(raw), cwd=tmp_path), out, warn=lambda _: None)
    raw["seeds"] = [0]  # the study itself asks for fewer seeds: every cell it has is finished
    with pytest.raises(ReportKept, match=r"row 'fa=false': all 1 cells finished, but the study now gives it fewer"):
        write_report(expand(parse_study(raw), cwd=tmp_path), out, warn=lambda _: None)
    assert _digest(out / "report") == before


# --- 11: YAML alias bombs -------------------------------------------------------------------------------------------
def _bomb(head: str, levels: int = 6) -> str:
    """`levels` nested lists of nine aliases: 9**levels strings from a few hundred bytes."""
    text = head + 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        text += f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]\n"
    return text + f"variables: {{x: *l{levels - 1}}}\n"


def test_an_alias_bomb_study_is_refused_before_it_expands(tmp_path: Path, capsys) -> None:
    _study(tmp_path)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb("name: bomb\nbase_configs: {a: configs/a.yaml}\nevaluate: {stage: a}\n", levels=9))
    assert bomb.stat().st_size < 700  # the 605-byte file expands to 9**9 strings
    code, err = _ablate(capsys, bomb, "--dry-run", "--workdir", tmp_path)
    line = _one_line(err)
    assert code == 2 and "bomb.yaml" in line and "aliases" in line and "refused" in line


def test_an_alias_bomb_config_is_refused_naming_stage_and_file(tmp_path: Path, capsys) -> None:
    _, study = _study(tmp_path)
    (tmp_path / "configs" / "a.yaml").write_text(_bomb("model: a\n"))
    code, err = _ablate(capsys, study, "--dry-run", "--workdir", tmp_path)
    line = _one_line(err)
    assert code == 2 and "toy.yaml: stage a: config" in line and "configs/a.yaml" in line and "aliases" in line


def test_an_alias_bomb_options_file_is_refused(tmp_path: Path, capsys) -> None:
    _, study = _study(tmp_path)
    (tmp_path / "opts.yaml").write_text(_bomb("dry_run: true\n"))
    code, err = _ablate(capsys, study, "--workdir", tmp_path, "--config", tmp_path / "opts.yaml")
    line = _one_line(err)
    assert code == 2 and f"--config {tmp_path / 'opts.yaml'}: more than" in line and "aliases" in line


# --- 12: one line instead of a traceback -----------------------------------------------------------------------------
@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """`folder` made unwritable: chmod for a user, `chattr +i` for root (whom chmod does not stop)."""
    folder.mkdir(parents=True, exist_ok=True)
    root = os.geteuid() == 0
    if root:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], check=False).returncode:
            pytest.skip("cannot make a folder read-only for root here (chattr +i)")
    else:
        folder.chmod(0o555)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False) if root else folder.chmod(0o755)


def test_out_that_is_a_file_is_a_usage_error(tmp_path: Path, capsys) -> None:
    _, study = _study(tmp_path)
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    for extra in ([], ["--report-only"]):
        code, err = _ablate(capsys, study, "--out", blocker, "--workdir", tmp_path, "--no-progress", *extra)
        assert code == 2 and f"--out {blocker} is a file, not a folder" in _one_line(err)
    assert blocker.read_text() == "not a folder\n"


def test_out_that_cannot_be_written_is_a_usage_error(tmp_path: Path, capsys) -> None:
    _, study = _study(tmp_path)
    with _read_only(tmp_path / "ro"):
        for extra in ([], ["--report-only"]):
            code, err = _ablate(capsys, study, "--out", tmp_path / "ro" / "out", "--workdir", tmp_path,
                                "--no-progress", *extra)
            line = _one_line(err)
            assert code == 2 and f"--out {tmp_path / 'ro' / 'out'}: cannot write there" in line
            assert "give a folder you can write to" in line
        assert not list((tmp_path / "ro").iterdir())


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.mkdir(), "is a folder, not a YAML file"),
    (lambda p: p.write_bytes(bytes(range(256)) * 8), "a binary file, not YAML text"),
    (lambda p: p.write_text("name: x\nrows: [a\n  b: c\n"), "not valid YAML (line 3, column 4)"),
    (lambda p: p.write_text("- just\n- a list\n"), "a study file must hold a mapping"),
])
def test_a_study_that_is_no_study_file_is_one_line(tmp_path: Path, capsys, make, message: str) -> None:
    study = tmp_path / "study.yaml"
    make(study)
    code, err = _ablate(capsys, study, "--dry-run", "--workdir", tmp_path)
    line = _one_line(err)
    assert code == 2 and str(study) in line and message in line


# --- 13: the right words ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "message"), [
    ({"seeds": [0, 0]}, "duplicate seed 0 in seeds ([0, 0])"),
    ({"factors": {}, "overrides": {}, "seeds": [0, 1], "rows": [{"label": "x", "seeds": [1, 1]}]},
     "duplicate seed 1 in rows[0] ('x').seeds"),
    ({"seeds": ["a"]}, "seeds: 'a' is not an integer seed"),
    ({"datasets": [{"name": "DIV2K"}, {"name": "div2k"}]}, "dataset names 'DIV2K' and 'div2k' both become 'div2k'"),
    ({"stage_overrides": {"a": ["--ckpt", "{stage:zz}"]}}, "{stage:zz} is referenced but 'zz' is not in base_configs"),
])
def test_study_mistakes_are_named_with_the_file(tmp_path: Path, capsys, extra: dict[str, Any], message: str) -> None:
    _, study = _study(tmp_path, **extra)
    code, err = _ablate(capsys, study, "--dry-run", "--workdir", tmp_path)
    line = _one_line(err)
    assert code == 2 and line.startswith(f"ssr-ablate: {study}: ") and message in line


def test_an_invalid_config_is_named_with_its_stage(tmp_path: Path, capsys) -> None:
    _, study = _study(tmp_path)
    (tmp_path / "configs" / "a.yaml").write_text("model: [a\n  b: c\n")
    code, err = _ablate(capsys, study, "--dry-run", "--workdir", tmp_path)
    line = _one_line(err)
    assert code == 2 and "stage a: config" in line and "configs/a.yaml: not valid YAML (line 2" in line


def test_slurm_without_sbatch_changes_nothing(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, study = _study(tmp_path)
    out = _finish(tmp_path, raw)
    plan = expand(load_study(study), cwd=tmp_path)
    (out / "cells" / f"{plan.cells[1].cell_id}.json").unlink()  # a cell to submit, whose stage failed before
    marker = Layout(out).failed_marker(plan.stages[plan.cells[1].stages[0]])
    atomic_write_json(marker, {"key": plan.cells[1].stages[0], "tail": "RuntimeError: earlier failure"})
    before = _digest(out)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbatch, no srun
    code, err = _ablate(capsys, study, "--out", out, "--workdir", tmp_path, "--executor", "slurm")
    line = _one_line(err)
    assert code == 2 and "--executor slurm: sbatch and srun not found on PATH" in line and "nothing was" in line
    assert _digest(out) == before and marker.is_file()


def test_a_held_report_lock_is_announced_with_its_holder(tmp_path: Path) -> None:
    raw, _ = _study(tmp_path)
    out = _finish(tmp_path, raw)
    plan = expand(parse_study(raw), cwd=tmp_path)
    said: list[str] = []
    waiting = threading.Event()
    result: list[Any] = []

    def warn(message: str) -> None:
        said.append(message)
        waiting.set()

    with report_lock(out, warn):  # another ssr-ablate holds it
        writer = threading.Thread(target=lambda: result.append(write_report(plan, out, warn=warn)))
        writer.start()
        assert waiting.wait(60), "the second writer never said it was waiting"
    writer.join()
    assert said and said[0].startswith(f"waiting for the report lock {out / 'report.lock'} held by pid {os.getpid()}")
    assert "(another ssr-ablate" in said[0] and result and (out / "report" / "toy.md").is_file()
