"""Catalogue of bad input, wrong options, kills and concurrent runs (issue 10): each case asserts the message a user
gets and that nothing they gave or produced was lost. One test per case; fast, tiny models."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_diffusion import _save_ckpt, tiny_module

from ssr_lightning.ablate.plan import expand
from ssr_lightning.ablate.report import write_report
from ssr_lightning.ablate.study import StudyError, parse_study
from ssr_lightning.cli.ablate import main as ablate_main
from ssr_lightning.cli.main import main as ssr_main
from ssr_lightning.cli.sr import main as sr_main
from ssr_lightning.data import DataError, SRDataModule
from ssr_lightning.files import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
DKENET = str(REPO / "configs/dkenet.yaml")
TINY_FIT = ["--trainer", str(REPO / "configs/trainer/debug.yaml"), "--data", str(REPO / "configs/data/tiny.yaml"),
            "--model.init_args.net.init_args.channels", "4", "--data.num_train", "4", "--data.num_val", "2"]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _png(path: Path, h: int = 12, w: int = 10, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def lr_only_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return _save_ckpt(tiny_module(use_depth=False, use_kernel=False), tmp_path_factory.mktemp("ck") / "lr_only.ckpt")


def _sr(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = sr_main(args)
    return code, capsys.readouterr().err


# --- 1, 2: ssr sr outputs ------------------------------------------------------------------------------------------
def test_output_into_the_input_folder_is_refused(tmp_path: Path, lr_only_ckpt: Path, capsys) -> None:
    photo = _png(tmp_path / "in" / "photo.png")
    before = _digest(tmp_path / "in")
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "in"), "--ckpt", str(lr_only_ckpt)], capsys)
    assert code == 2 and "one of the inputs" in err and str(photo) in err
    assert _digest(tmp_path / "in") == before


def test_inputs_sharing_a_stem_get_distinct_outputs(tmp_path: Path, lr_only_ckpt: Path, capsys) -> None:
    _png(tmp_path / "in" / "a.png", seed=1)
    Image.open(_png(tmp_path / "tmp.png", seed=2)).save(tmp_path / "in" / "a.jpg")
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(lr_only_ckpt),
                     "--steps", "1", "--tile", "0"], capsys)
    assert code == 0 and "2/2 images" in err and "named apart" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_jpg.png", "a_png.png"]


def test_an_earlier_result_is_kept_without_overwrite(tmp_path: Path, lr_only_ckpt: Path, capsys) -> None:
    _png(tmp_path / "in" / "a.png")
    earlier = _png(tmp_path / "out" / "a.png", 40, 48, seed=9)
    before = earlier.read_bytes()
    args = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(lr_only_ckpt), "--steps", "1"]
    code, err = _sr(args, capsys)
    assert code == 2 and "already exist: pass --overwrite" in err and earlier.read_bytes() == before
    code, _ = _sr([*args, "--overwrite"], capsys)
    assert code == 0 and earlier.read_bytes() != before and Image.open(earlier).size == (40, 48)


# --- 3: checkpoints never run code ---------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    ckpt = _save_ckpt(tiny_module(use_depth=False), tmp_path / "ssr.ckpt")  # uses kernels: SVKR is loaded
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    with evil.open("wb") as fh:
        pickle.dump({"state_dict": {}, "x": _Payload(marker)}, fh)
    _png(tmp_path / "in" / "a.png")
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(ckpt),
                     "--dkenet-ckpt", str(evil)], capsys)
    assert code == 2 and "evil.ckpt: refused to load" in err
    assert not marker.exists()


def test_a_non_checkpoint_file_gets_a_message_not_a_traceback(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "notes.ckpt"
    junk.write_text("this is not a checkpoint")
    _png(tmp_path / "in" / "a.png")
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(junk)], capsys)
    assert code == 2 and "notes.ckpt: not a readable checkpoint" in err and "Traceback" not in err


# --- 4, 5: studies and reports ---------------------------------------------------------------------------------------
def test_study_typos_are_caught_with_suggestions(tmp_path: Path, capsys) -> None:
    raw = yaml.safe_load((REPO / "ablations/table2.yaml").read_text())
    first, second = [i for i, r in enumerate(raw["rows"]) if "settings" in r][:2]  # the factor rows
    raw["rows"][first]["setings"] = raw["rows"][first].pop("settings")
    with pytest.raises(StudyError, match=r"'setings' \(did you mean 'settings'\?\)"):
        parse_study(raw)
    raw = yaml.safe_load((REPO / "ablations/table2.yaml").read_text())
    raw["rows"][second]["settings"]["di_kernal"] = raw["rows"][second]["settings"].pop("di_kernel")
    with pytest.raises(StudyError, match=r"'di_kernal' \(did you mean 'di_kernel'\?\)"):
        parse_study(raw)
    raw = yaml.safe_load((REPO / "ablations/table2.yaml").read_text())
    raw["report"]["factor_colums"] = raw["report"].pop("factor_columns")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert ablate_main([str(path), "--dry-run", "--workdir", str(REPO)]) == 2
    assert "did you mean 'factor_columns'" in capsys.readouterr().err


def _finished_study(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    for name in ("a", "b"):
        (tmp_path / "configs").mkdir(exist_ok=True)
        (tmp_path / "configs" / f"{name}.yaml").write_text(f"model: {name}\n")
    raw = {"name": "toy", "base_configs": {"a": "configs/a.yaml"}, "factors": {"fa": [True, False]},
           "overrides": {"fa": {False: {"a": ["--x", "1"]}}}, "evaluate": {"stage": "a"}, "metrics": ["psnr_y"]}
    plan = expand(parse_study(raw), cwd=tmp_path)
    for i, cell in enumerate(plan.cells):
        atomic_write_json(tmp_path / "out" / "cells" / f"{cell.cell_id}.json",
                          {"cell_id": cell.cell_id, "key": cell.key, "status": "ok", "metrics": {"psnr_y": 20.0 + i}})
    return raw, tmp_path / "out"


def test_report_only_after_a_study_edit_keeps_the_old_report(tmp_path: Path, capsys) -> None:
    raw, out = _finished_study(tmp_path)
    write_report(expand(parse_study(raw), cwd=tmp_path), out)
    before = _digest(out / "report")
    raw["metrics"] = ["psnr_y", "ssim_y"]  # every cell key changes
    study = tmp_path / "toy.yaml"
    study.write_text(yaml.safe_dump(raw))
    assert ablate_main([str(study), "--report-only", "--out", str(out), "--workdir", str(tmp_path)]) == 1
    assert "2 hold results of an earlier version" in capsys.readouterr().err
    assert _digest(out / "report") == before


def test_report_only_on_an_empty_folder_says_so(tmp_path: Path, capsys) -> None:
    study = tmp_path / "toy.yaml"
    raw, _ = _finished_study(tmp_path)
    study.write_text(yaml.safe_dump(raw))
    assert ablate_main([str(study), "--report-only", "--out", str(tmp_path / "empty"), "--workdir", str(tmp_path)]) == 1
    assert "nothing to report" in capsys.readouterr().err


def test_concurrent_report_writers_do_not_race(tmp_path: Path) -> None:
    raw, out = _finished_study(tmp_path)
    plan = expand(parse_study(raw), cwd=tmp_path)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(2):
                for rec in sorted((out / "cells").glob("[!.]*.json")):  # a new finish time: every hparams entry rewrites
                    data = json.loads(rec.read_text())
                    data["finished_at"] = f"{threading.get_ident()}-{os.urandom(4).hex()}"
                    atomic_write_json(rec, data)
                write_report(plan, out)
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert json.loads((out / "report" / "toy.json").read_text())["rows"]


# --- 6, 7, 8a, 9: runs and checkpoints -------------------------------------------------------------------------------
def _fit(tmp_path: Path, *extra: str) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ssr_main(["fit", "--config", DKENET, *TINY_FIT, *extra])
    finally:
        os.chdir(cwd)


def _exit(tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        _fit(tmp_path, *args)
    return int(exc.value.code), capsys.readouterr().err


def test_resume_with_other_model_options_is_refused_and_config_kept(tmp_path: Path, capsys) -> None:
    _fit(tmp_path, "--root", "runs", "--model.init_args.fit.ckpt_every_n_steps", "2")
    config = tmp_path / "runs/dkenet/version_0/config.yaml"
    before = config.read_bytes()
    code, err = _exit(tmp_path, capsys, "--root", "runs", "--ckpt_path", "last",
                      "--model.init_args.net.init_args.use_depth", "false")
    assert code == 2 and "cannot resume" in err and "use_depth: True -> False" in err
    assert config.read_bytes() == before and not list(config.parent.glob("config_resume_*.yaml"))


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, caplog) -> None:
    _fit(tmp_path, "--root", "runs", "--model.init_args.fit.ckpt_every_n_steps", "1")
    ckpts = tmp_path / "runs/dkenet/version_0/checkpoints"
    assert (ckpts / "last.prev.ckpt").is_file()
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:300])  # killed mid-write
    _fit(tmp_path, "--root", "runs", "--ckpt_path", "last", "--trainer.max_steps", "6")
    assert "last.ckpt is corrupt; resuming from the previous checkpoint" in caplog.text
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 6


def test_trainer_default_root_dir_is_the_run_root(tmp_path: Path) -> None:
    _fit(tmp_path, "--trainer.default_root_dir", "elsewhere")
    assert (tmp_path / "elsewhere/dkenet/version_0/checkpoints/last.ckpt").is_file()
    assert not (tmp_path / "runs").exists()


def test_wrong_stage_checkpoint_names_both_stages(tmp_path: Path, capsys) -> None:
    _fit(tmp_path, "--root", "runs")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(SystemExit) as exc:
            ssr_main(["test", "--config", str(REPO / "configs/nbsr.yaml"), *TINY_FIT[:4],
                      "--ckpt_path", "runs/dkenet/version_0/checkpoints/last.ckpt"])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "stage 'dkenet'" in err and "'nbsr' (NBSR) checkpoint is expected" in err


# --- 8b, 9: data --------------------------------------------------------------------------------------------------
def test_bad_folder_images_are_all_reported_before_training(tmp_path: Path, capsys) -> None:
    for i in range(3):
        _png(tmp_path / "hr" / f"ok{i}.png", 80, 80, seed=i)
    _png(tmp_path / "hr" / "small.png", 40, 40)
    (tmp_path / "hr" / "broken.png").write_bytes(_png(tmp_path / "x.png", 80, 80).read_bytes()[:200])
    code, err = _exit(tmp_path, capsys, "--root", "runs", "--data.dataset", "folder", "--data.train_root", "hr",
                      "--data.patch_size", "64")
    assert code == 2 and "2 unusable train image file(s)" in err and "small.png" in err and "broken.png" in err
    assert not (tmp_path / "runs").exists()  # no empty version folder left behind


def test_negative_patch_size_names_the_option() -> None:
    with pytest.raises(DataError, match=r"data.patch_size=-96: must be >= 1"):
        SRDataModule(patch_size=-96)


# --- 9: ssr sr option and input checks ---------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "--steps 0: must be >= 1"),
    (["--strength", "1.5"], "--strength 1.5: must be in (0, 1]"),
    (["--tile", "16", "--overlap", "16"], "--overlap 16: must be smaller than tile 16"),
])
def test_bad_sampling_options_are_usage_errors(tmp_path: Path, lr_only_ckpt: Path, capsys, args, message) -> None:
    _png(tmp_path / "in" / "a.png")
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(lr_only_ckpt), *args], capsys)
    assert code == 2 and message in err and not (tmp_path / "out").exists()


def test_unwritable_output_is_found_before_any_work(tmp_path: Path, lr_only_ckpt: Path, capsys) -> None:
    _png(tmp_path / "in" / "a.png")
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where the output folder should go")
    code, err = _sr([str(tmp_path / "in"), "-o", str(blocker / "out"), "--ckpt", str(lr_only_ckpt)], capsys)
    assert code == 2 and "cannot write to the output folder" in err


def test_tiny_input_is_reported_and_others_complete(tmp_path: Path, lr_only_ckpt: Path, capsys) -> None:
    _png(tmp_path / "in" / "dot.png", 1, 1)
    _png(tmp_path / "in" / "ok.png", 8, 8)
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(lr_only_ckpt), "--steps", "1"],
                    capsys)
    assert code == 1 and "dot.png: 1x1 px is too small" in err and "1/2 images" in err
    assert (tmp_path / "out" / "ok.png").is_file() and not (tmp_path / "out" / "dot.png").exists()


# --- 10: large inputs ---------------------------------------------------------------------------------------------
def test_tiles_show_progress_with_an_eta(tmp_path: Path, lr_only_ckpt: Path, capsys) -> None:
    _png(tmp_path / "in" / "wide.png", 16, 40)
    code, err = _sr([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ckpt", str(lr_only_ckpt), "--steps", "1",
                     "--tile", "8", "--overlap", "2"], capsys)
    assert code == 0 and "tiles" in err and "<" in err  # tqdm's "elapsed<remaining"
