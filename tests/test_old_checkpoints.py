"""Checkpoints written before issue 22 (format 2, `tests/assets/format2/`) load, evaluate and resume as before, and
`ssr sr` uses a model's own sampling and SVKR settings, a flag replacing only its own field.

The reference outputs were produced by the code that wrote the checkpoints (tests/assets/format2/README.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ssr_lightning.cli.main import main as ssr_main
from ssr_lightning.diffusion import SamplingConfig
from ssr_lightning.inference import load_model, read_checkpoint
from ssr_lightning.inference.legacy import upgrade_options
from ssr_lightning.inference.pipeline import SSRPipeline, model_sampling, model_svkr
from ssr_lightning.inference.svkr import SVKR

REPO = Path(__file__).resolve().parents[1]
OLD = REPO / "tests/assets/format2"
REFERENCE = json.loads((OLD / "reference.json").read_text())
TINY = ["--trainer", str(REPO / "configs/trainer/debug.yaml"), "--data", str(REPO / "configs/data/tiny.yaml"),
        "--data.num_train", "4", "--data.num_val", "2", "--data.num_test", "2", "--data.embedded_scene_size", "64",
        "--data.batch_size", "2", "--data.val_batch_size", "2", "--data.test_batch_size", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _slice(t: torch.Tensor) -> list[float]:
    t = t.flatten()
    return [float(x) for x in t[:: max(1, t.numel() // 12)][:12]]


def _close(got: torch.Tensor, key: str, atol: float = 1e-6) -> None:
    torch.testing.assert_close(torch.tensor(_slice(got)), torch.tensor(REFERENCE[key]), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def svkr_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ssr_svkr.pt with its recorded SVKR checkpoints pointing at the asset files (nothing else changed)."""
    ckpt = torch.load(OLD / "ssr_svkr.pt", weights_only=True)
    ckpt["ssr"]["svkr"].update(dkenet_ckpt=str(OLD / "dkenet.pt"), nbsr_ckpt=str(OLD / "nbsr.pt"),
                               depth_ckpt=str(OLD / "depth.pt"))
    path = tmp_path_factory.mktemp("old") / "ssr_svkr.pt"
    torch.save(ckpt, path)
    return path


def test_every_old_network_loads_and_computes_what_it_did() -> None:
    g = torch.Generator().manual_seed(0)  # the inputs in the order the reference drew them
    lr, depth = torch.rand(1, 3, 12, 20, generator=g), torch.rand(1, 1, 12, 20, generator=g)
    kernel = torch.softmax(torch.randn(1, 441, 12, 20, generator=g), 1)
    with torch.no_grad():
        _close(load_model(OLD / "dkenet.pt", "dkenet")(lr, depth)[:, 200:241], "dkenet")
        _close(load_model(OLD / "nbsr.pt", "nbsr")(lr, kernel), "nbsr")
        _close(load_model(OLD / "depth.pt", "depth")(lr), "depth")
        _close(load_model(OLD / "vae.pt", "vae")(torch.rand(1, 3, 16, 16, generator=g)), "vae")
        lr16, d16 = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 1, 16, 16, generator=g)
        k16 = torch.softmax(torch.randn(1, 441, 16, 16, generator=g), 1)
        front = torch.rand(1, 3, 64, 64, generator=g)
        data = read_checkpoint(OLD / "ssrdiffusion.pt", "ssrdiffusion")
        model = load_model(OLD / "ssrdiffusion.pt", "ssrdiffusion")
        # the sampling its config held (steps 3, start at I_T ("frontend") at 0.3, wavelet colour fix)
        sampling = model_sampling(data)
        assert (sampling.steps, sampling.start, sampling.strength, sampling.color_fix) == (3, "frontend", 0.3,
                                                                                           "wavelet")
        out = model.super_resolve(lr16, d16, k16, torch.Generator().manual_seed(5), sampling=sampling, frontend=front)
        _close(out, "ssrdiffusion")


def test_old_options_and_values_are_upgraded() -> None:
    data = read_checkpoint(OLD / "ssrdiffusion.pt", "ssrdiffusion")
    hp, meta = data["hyper_parameters"], data["ssr"]
    assert meta["format"] == 3 and meta["upgraded_from_format"] == 2
    # the network: its complete config, the value `svkr` of the image condition renamed
    assert hp["net"] == {"class_path": "ssr_lightning.diffusion.LatentDiffusionSR", "init_args": meta["model_config"]}
    assert meta["model_config"]["image_condition"] == "frontend" and "sample_strength" not in meta["model_config"]
    # `ssr test` samples as before (untiled, the stage's seed); `ssr sr` as before (32/8 tiles, seed 0)
    assert hp["sampling"] == {**vars(SamplingConfig()), "steps": 3, "strength": 0.3, "start": "frontend",
                              "color_fix": "wavelet", "tile": 0}
    assert meta["sampling"] == {**hp["sampling"], "tile": 32, "overlap": 8, "seed": 0}
    assert hp["num_val_samples"] == 2 and "backbone" not in hp and "modalities" not in hp
    svkr = read_checkpoint(OLD / "ssr_svkr.pt", "ssrdiffusion")
    assert svkr["ssr"]["sampling"]["start"] == "bicubic", "start `lr` is `bicubic` now"
    assert svkr["hyper_parameters"]["sampling"]["seed"] == 7 and svkr["ssr"]["sampling"]["guidance"] == 0.5
    assert svkr["hyper_parameters"]["vae_ckpt"].endswith("vae/version_0/checkpoints/last.ckpt")
    # a stage whose module re-declared its network's arguments: they move under `net`
    dke = read_checkpoint(OLD / "dkenet.pt", "dkenet")["hyper_parameters"]
    assert dke["net"]["init_args"]["channels"] == 4 and dke["depth_dropout"] == 0.25 and "channels" not in dke
    # every old module's hyper-parameters build the current module (what `ssr test --ckpt_path OLD` does)
    import ssr_lightning.modules as modules

    for stage, cls in (("dkenet", modules.DKENetModule), ("nbsr", modules.NBSRModule), ("depth", modules.DepthModule),
                       ("vae", modules.VAEModule)):
        hp = read_checkpoint(OLD / f"{stage}.pt", stage)["hyper_parameters"]
        built = cls(**{k: v for k, v in hp.items() if not k.startswith("_")})
        assert dict(built.model.config) == dict(load_model(OLD / f"{stage}.pt", stage).config), stage
    # the same upgrade for a run's config.yaml (compared on resume)
    old = yaml.safe_load((OLD / "dkenet_config.yaml").read_text())["model"]["init_args"]
    new = upgrade_options("dkenet", old)
    assert new["net"]["class_path"] == "ssr_lightning.networks.DKENet" and new["net"]["init_args"]["channels"] == 4
    assert set(new) == {"net", "depth_dropout", "fit"}


def test_ssr_sr_uses_the_models_svkr_settings(svkr_ckpt: Path) -> None:
    data = read_checkpoint(svkr_ckpt, "ssrdiffusion")
    trained = model_svkr(data)
    assert (trained.iterations, trained.gamma, trained.depth) == (2, 0.5, "learned")
    pipe = SSRPipeline.from_checkpoint(svkr_ckpt)
    assert pipe.svkr is not None and (pipe.svkr.iterations, pipe.svkr.gamma) == (2, 0.5)
    g = torch.Generator().manual_seed(0)  # the reference's inputs: drawn after the network checks' inputs
    for shape in ((1, 3, 12, 20), (1, 1, 12, 20), (1, 441, 12, 20), (1, 3, 16, 16)):
        torch.randn(shape, generator=g) if shape[1] == 441 else torch.rand(shape, generator=g)
    lr16 = torch.rand(1, 3, 16, 16, generator=g)
    result = pipe(lr16)
    _close(result.sr, "ssr_svkr_pipeline")  # T = 2, γ = 0.5: what the old `ssr sr` (T = 3, γ = 0.9) did not do
    _close(result.depth, "ssr_svkr_depth", atol=1e-5)  # DE gathers the SR image from tiles (issue 20): round-off
    # a field given replaces that field only
    one = SSRPipeline.from_checkpoint(svkr_ckpt, svkr={"iterations": 1, "gamma": None})
    assert (one.svkr.iterations, one.svkr.gamma) == (1, 0.5)


def _png(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)
    return path


def _sr_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ckpt: Path, *flags: str) -> dict[str, Any]:
    """Run `ssr sr` on one tiny image and record the SVKR config and the sampling the pipeline ran with."""
    from ssr_lightning.cli.sr import main as sr_main

    seen: dict[str, Any] = {}
    build = SVKR.from_config.__func__  # type: ignore[attr-defined]

    def spy_svkr(cls: type, cfg: Any, *a: Any, **k: Any) -> SVKR:
        seen["svkr"] = cfg
        return build(cls, cfg, *a, **k)

    call = SSRPipeline.__call__

    def spy_call(self: SSRPipeline, lr: torch.Tensor, sampling: Any = None, out: Any = None) -> Any:
        seen["sampling"] = sampling or self.sampling
        return call(self, lr, sampling, out)

    monkeypatch.setattr(SVKR, "from_config", classmethod(spy_svkr))
    monkeypatch.setattr(SSRPipeline, "__call__", spy_call)
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    assert sr_main([str(_png(tmp_path / "in.png")), "-o", str(out), "--ckpt", str(ckpt), *flags]) == 0
    assert (out / "in.png").is_file()
    return seen


def test_ssr_sr_flags_replace_only_their_own_field(svkr_ckpt: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    own = model_sampling(read_checkpoint(svkr_ckpt, "ssrdiffusion"))
    trained = model_svkr(read_checkpoint(svkr_ckpt, "ssrdiffusion"))
    plain = _sr_settings(monkeypatch, tmp_path, svkr_ckpt)
    assert plain["sampling"] == own and plain["svkr"] == trained
    # --iterations 1 is T alone: γ and the depth estimator stay the model's (the old flag reset depth to learned)
    t1 = _sr_settings(monkeypatch, tmp_path, svkr_ckpt, "--iterations", "1", "--steps", "2")
    assert t1["svkr"] == type(trained)(**{**vars(trained), "iterations": 1})
    assert t1["sampling"] == own.replace(steps=2)
    both = _sr_settings(monkeypatch, tmp_path, svkr_ckpt, "--gamma", "1.0", "--strength", "0.25", "--seed", "3")
    assert both["svkr"] == type(trained)(**{**vars(trained), "gamma": 1.0})
    assert both["sampling"] == own.replace(strength=0.25, seed=3)


def test_ssr_sr_sampling_flags_are_generated_from_the_dataclass() -> None:
    from ssr_lightning.cli.sr import build_parser

    helps = {o: a.help for a in build_parser()._actions for o in a.option_strings}
    for field in ("sampler", "steps", "strength", "start", "guidance", "color-fix", "seed", "tile", "overlap",
                  "dkenet-ckpt", "nbsr-ckpt", "depth", "depth-ckpt", "iterations", "gamma"):
        assert f"--{field}" in helps, field
    # the help is the field's docstring
    assert "img2img-style" in helps["--strength"] and helps["--strength"].endswith("(left out: the model's sampling)")
    assert helps["--gamma"].startswith("γ, weight of the new kernel estimate")
    args = build_parser().parse_args(["x.png", "-o", "out"])
    assert args.strength is None and args.tile is None and args.iterations is None  # None: the model's


def test_ssr_test_of_an_old_checkpoint_with_one_sampling_override(tmp_path: Path) -> None:
    cfg = ["--config", str(REPO / "configs/ssr.yaml"), *TINY, "--root", str(tmp_path / "runs"),
           "--model.init_args.conditions.nbsr_ckpt", str(OLD / "nbsr.pt")]
    ssr_main(["test", *cfg, "--ckpt_path", str(OLD / "ssrdiffusion.pt"), "--model.init_args.sampling.steps", "2"])
    run = next((tmp_path / "runs" / "ssrdiffusion_test").glob("version_*"))
    used = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
    old = read_checkpoint(OLD / "ssrdiffusion.pt", "ssrdiffusion")["hyper_parameters"]
    assert used["sampling"] == {**old["sampling"], "steps": 2}, "the override replaces steps only"
    assert used["net"]["init_args"]["unet_config"]["block_out_channels"] == [8, 16], "the checkpoint's network"
    report = json.loads((run / "test_metrics.json").read_text())
    assert report["num_samples"] == 2 and report["summary"]["psnr_y"] > 5


def test_an_old_run_resumes_with_its_options_and_refuses_others(tmp_path: Path, capsys) -> None:
    version = tmp_path / "runs/dkenet/version_0"
    (version / "checkpoints").mkdir(parents=True)
    shutil.copy(OLD / "dkenet_config.yaml", version / "config.yaml")
    shutil.copy(OLD / "dkenet.pt", version / "checkpoints/last.ckpt")
    args = ["fit", "--config", str(REPO / "configs/dkenet.yaml"), *TINY, "--root", str(tmp_path / "runs"),
            "--ckpt_path", "last", "--model.init_args.net.init_args.channels", "4"]
    with pytest.raises(SystemExit) as exc:
        ssr_main([*args, "--model.init_args.depth_dropout", "0.5", "--trainer.max_steps", "3"])
    assert exc.value.code == 2 and "depth_dropout: 0.25 -> 0.5" in capsys.readouterr().err
    ssr_main([*args, "--model.init_args.depth_dropout", "0.25", "--model.init_args.net.init_args.normalize_depth",
              "true", "--model.init_args.net.init_args.global_kernel", "true", "--trainer.max_steps", "3"])
    resumed = read_checkpoint(version / "checkpoints/last.ckpt", "dkenet")
    assert resumed["global_step"] == 3 and resumed["ssr"]["format"] == 3
    assert not (tmp_path / "runs/dkenet/version_1").exists()


def test_a_flag_that_clashes_with_the_models_sampling_names_both(svkr_ckpt: Path, tmp_path: Path, capsys) -> None:
    from ssr_lightning.cli.sr import main as sr_main

    own = model_sampling(read_checkpoint(svkr_ckpt, "ssrdiffusion"))  # tile 32, overlap 8 (the old ssr sr's)
    img = str(_png(tmp_path / "in.png"))
    # valid with the model's tile 32, though not with a default overlap: the flags alone do not decide
    assert sr_main([img, "-o", str(tmp_path / "a"), "--ckpt", str(svkr_ckpt), "--overlap", "16", "--steps", "1"]) == 0
    assert sr_main([img, "-o", str(tmp_path / "b"), "--ckpt", str(svkr_ckpt), "--overlap", "40"]) == 2
    assert f"--overlap 40: must be smaller than tile {own.tile} (the model's tile {own.tile})" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
