"""The `ssr` command end to end: every shipped config parses, a tiny fit runs, a killed run resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssr_lightning.cli.main import explicit_model_keys, find_last_checkpoint, main
from ssr_lightning.inference.checkpoints import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SSR = Path(sys.executable).with_name("ssr")
STAGE_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml"))
TINY = [
    "--trainer", str(REPO / "configs/trainer/debug.yaml"), "--data", str(REPO / "configs/data/tiny.yaml"),
    # smaller than tiny.yaml: 4 `ssr` runs in one test on a shared 2-core machine
    "--data.num_train", "6", "--data.num_val", "2", "--data.num_test", "2", "--data.embedded_scene_size", "96",
    "--data.batch_size", "2", "--data.val_batch_size", "2",
    "--model.init_args.net.init_args.channels", "8", "--model.init_args.fit.ckpt_every_n_steps", "2",
]


def test_explicit_model_keys() -> None:
    args = ["fit", "--model.init_args.net.init_args.use_depth", "false", "--model.fit.learning_rate=0.1",
            "--data.scale", "2", "--model.class_path", "x",
            "--model.init_args.net.init_args.unet_config.use_kernel=false",
            "--model.init_args.fit.num_log_images", "3", "--model.init_args.net.init_args.use_depth", "true"]
    assert explicit_model_keys(args) == ["net.init_args.use_depth", "fit.learning_rate",
                                         "net.init_args.unet_config.use_kernel", "fit.num_log_images"]
    # a --config fragment after the stage config is a test-time choice too (the stage config's options are not)
    frag = ["test", "--config", "configs/ssr.yaml", "--config", "configs/diffusion/start_frontend.yaml",
            "--model.init_args.sampling.guidance", "1"]
    assert explicit_model_keys(frag) == ["sampling.start", "sampling.strength", "sampling.guidance"]


def test_stage_configs_exist() -> None:
    names = {p.stem for p in STAGE_CONFIGS}
    assert {"dkenet", "dkenet_paper"} <= names


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(config), "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("ssr_lightning.modules.")
    assert printed["data"]["scale"] in (2, 3, 4)


def test_bad_config_key_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(REPO / "configs/dkenet.yaml"), "--model.init_args.chanels", "8"])
    assert exc.value.code != 0
    assert "chanels" in capsys.readouterr().err


def test_missing_checkpoint_gives_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(SystemExit) as exc:
        main(["test", "--config", str(REPO / "configs/dkenet.yaml"), "--root", str(tmp_path), "--ckpt_path", str(missing), *TINY])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope.ckpt: no such checkpoint file" in err and "Traceback" not in err


def _ssr(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(SSR), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_tiny_fit_then_resume_then_test(tmp_path: Path) -> None:
    cfg = str(REPO / "configs/dkenet.yaml")
    _ssr("fit", "--config", cfg, "--root", "runs", *TINY, cwd=tmp_path)
    run = tmp_path / "runs/dkenet/version_0"
    assert (run / "config.yaml").is_file(), "the resolved config is saved with the run"
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard logs land in the run folder"
    last = run / "checkpoints/last.ckpt"
    assert last.is_file()
    assert json.loads((run / "fit_timing.json").read_text())["steps"] == 4, "every fit records its wall/CPU time"
    state = read_checkpoint(last)  # weights_only=True, as every consumer reads checkpoints
    assert state["global_step"] == 4
    net = state["hyper_parameters"]["net"]  # the network's own config: its class_path and every argument
    assert net["class_path"] == "ssr_lightning.networks.DKENet" and net["init_args"] == state["ssr"]["model_config"]
    assert net["init_args"]["scale"] == 4, "data.scale is linked into the network"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 4 and saved["model"]["init_args"]["net"]["init_args"]["channels"] == 8
    assert saved["model"]["init_args"]["fit"]["ckpt_every_n_steps"] == 2

    # a killed run continues from last.ckpt, in the same version folder
    _ssr("fit", "--config", cfg, "--root", "runs", *TINY, "--trainer.max_steps", "6", "--ckpt_path", "last", cwd=tmp_path)
    assert not (tmp_path / "runs/dkenet/version_1").exists()
    found = find_last_checkpoint(tmp_path / "runs", "dkenet")
    assert found is not None and found[1] == 0
    assert read_checkpoint(found[0])["global_step"] == 6

    _ssr("test", "--config", cfg, "--root", "runs", *TINY, "--ckpt_path", "last", cwd=tmp_path)
    report = json.loads(next((tmp_path / "runs").glob("dkenet*/version_*/test_metrics.json")).read_text())
    assert report["num_samples"] == 2
    assert 0.0 <= report["summary"]["kernel_l1"] <= 2.0
    assert report["summary"]["resynth_psnr"] > 10.0

    # the architecture comes from the checkpoint (no --model.init_args.net.init_args.channels here), but options typed
    # on the command line beat the checkpoint's hyperparameters
    tiny_data = [a for a in TINY if a not in ("--model.init_args.net.init_args.channels", "8")]
    _ssr("test", "--config", cfg, "--root", "runs", *tiny_data, "--ckpt_path", str(last),
         "--model.init_args.fit.num_log_images", "3", "--name", "override", cwd=tmp_path)
    used = yaml.safe_load(next((tmp_path / "runs/override_test").glob("version_*/config.yaml")).read_text())
    assert used["model"]["init_args"]["fit"]["num_log_images"] == 3
    assert used["model"]["init_args"]["fit"]["learning_rate"] == pytest.approx(3e-3), "the rest of the group kept"
    assert used["model"]["init_args"]["net"]["init_args"]["channels"] == 8


def test_resume_check_ignores_options_an_old_config_predates_unless_given() -> None:
    from ssr_lightning.cli.main import _differences, _leaf_paths

    old = {"model": {"init_args": {"sampling": {"strength": 0.5}}}}
    new = {"model": {"init_args": {"sampling": {"strength": 0.5, "start": "bicubic", "color_fix": "none"}}}}
    everything = _leaf_paths(new)
    assert _differences(old, new, new_ok=everything) == []
    given = everything - {"model.init_args.sampling.start"}  # set on the command line: a real difference
    assert _differences(old, new, new_ok=given) == ["model.init_args.sampling.start: None -> 'bicubic'"]
    changed = {"model": {"init_args": {"sampling": {"strength": 1.0, "start": "bicubic"}}}}
    assert _differences(old, changed, new_ok=everything) == ["model.init_args.sampling.strength: 0.5 -> 1.0"]
