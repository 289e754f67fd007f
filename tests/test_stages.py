"""The one registry of stages and the injected networks (issue 22): a config's `net:` block, the module, its checkpoint
and `load_model` share one schema; only registered classes of the package are ever resolved from a checkpoint."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
import yaml
from lightning.pytorch import LightningModule

import ssr_lightning.modules as modules
from ssr_lightning.cli.main import SSRCLI
from ssr_lightning.data import SRDataModule
from ssr_lightning.diffusion import LatentDiffusionSR, SamplingConfig
from ssr_lightning.inference.checkpoints import CheckpointError, load_model, read_checkpoint
from ssr_lightning.networks import DKENet, KernelConditionedSR
from ssr_lightning.registry import STAGES, class_path, network_class, registered_path

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


# --- the registry ---------------------------------------------------------------------------------------------------
def test_every_stage_is_registered_once_with_its_module_config_and_network() -> None:
    assert set(STAGES) == {"dkenet", "nbsr", "depth", "vae", "ssrdiffusion", "cmos", "svkr"}
    for name, stage in STAGES.items():
        module = getattr(modules, stage.module)
        assert module.stage == name, f"{stage.module} reads its stage from the registry"
        assert (REPO / stage.config).is_file()
        raw = yaml.safe_load((REPO / stage.config).read_text())["model"]
        assert raw["class_path"] == f"ssr_lightning.modules.{stage.module}"
        if stage.weights:  # the config's net block names the registered network, by its public path
            assert raw["init_args"]["net"]["class_path"] == class_path(stage.network)
            assert network_class(stage.model_class) is stage.network
            assert "net" in inspect.signature(module.__init__).parameters
    assert not STAGES["svkr"].weights


def test_only_registered_classes_resolve() -> None:
    assert network_class("ssr_lightning.networks.DKENet") is DKENet
    assert network_class("ssr_lightning.networks.nbsr.KernelConditionedSR") is KernelConditionedSR
    for name in ("evilmod.Model", "ssr_lightning.files.FileLock", "SVKR", "ssr_lightning.networks.nbsr.NBSR",
                 "os.system"):
        with pytest.raises(LookupError, match="not a registered network"):
            network_class(name)
    assert registered_path("ssr_lightning.modules.DKENetModule")
    assert registered_path("ssr_lightning.diffusion.model.LatentDiffusionSR")
    for path in ("ssr_lightning.files.atomic_write", "ssr_lightning.evil.DKENet", "evil.networks.DKENet",
                 "ssr_lightning.modules.DKENet", "ssr_lightning.DKENet;rm", None):
        assert not registered_path(path), path


def _dkenet_ckpt(path: Path, **hp: Any) -> Path:
    module = modules.DKENetModule(DKENet(channels=4))
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": {**dict(module.hparams), **hp}}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("crafted", [
    {"net": {"class_path": "ssr_lightning.files.FileLock", "init_args": {}}},  # of the package, not a network
    {"net": {"class_path": "evilmod.Model", "init_args": {}}},
    {"_class_path": "ssr_lightning.data.SRDataModule"},  # a class of the package that is no stage module
])
def test_a_checkpoint_naming_an_unregistered_class_is_refused(tmp_path: Path, crafted: dict[str, Any]) -> None:
    path = _dkenet_ckpt(tmp_path / "crafted.ckpt", **crafted)
    with pytest.raises(CheckpointError, match="crafted.ckpt: refused"):
        read_checkpoint(path)


def test_a_checkpoint_naming_an_unregistered_model_class_is_refused(tmp_path: Path) -> None:
    path = _dkenet_ckpt(tmp_path / "m.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["ssr"]["model_class"] = "FileLock"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="unknown model class.*not a registered network"):
        load_model(path, "dkenet")
    with pytest.raises(LookupError):
        modules.DKENetModule({"class_path": "ssr_lightning.files.FileLock", "init_args": {}})


# --- injection: YAML -> module -> checkpoint -> load_model --------------------------------------------------------
def _cli_module(*args: str) -> Any:
    cli = SSRCLI(LightningModule, SRDataModule, subclass_mode_model=True, run=False, auto_configure_optimizers=False,
                 args=list(args), parser_kwargs={"default_env": False})
    return cli


@pytest.mark.parametrize("config", ["dkenet", "nbsr", "depth", "cmos", "ssr"])
def test_the_yaml_net_block_is_the_networks_config_end_to_end(config: str, tmp_path: Path) -> None:
    cli = _cli_module("--config", str(REPO / f"configs/{config}.yaml"), "--data.scale", "4")
    module = cli.model
    block = yaml.safe_load((REPO / f"configs/{config}.yaml").read_text())["model"]["init_args"]["net"]
    config_of = dict(module.model.config)
    for key, value in block["init_args"].items():  # every option the YAML sets reaches the network as given
        got = config_of[key]
        if isinstance(value, dict):
            assert {k: got[k] for k in value} == {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
        else:
            assert got == value or list(got) == value, key
    ckpt: dict[str, Any] = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                            "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(ckpt)
    assert ckpt["hyper_parameters"]["net"] == {"class_path": block["class_path"],
                                               "init_args": ckpt["ssr"]["model_config"]}
    torch.save(ckpt, tmp_path / "stage.ckpt")
    stage = module.stage
    back = load_model(tmp_path / "stage.ckpt", stage)
    assert type(back) is type(module.model)
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == ckpt["ssr"]["model_config"]
    # and a module rebuilt from the checkpoint's hyper-parameters (load_from_checkpoint) holds the same network
    again = type(module)(**{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")})
    assert dict(again.model.config) == dict(module.model.config)


def test_data_scale_reaches_the_network_and_a_python_mismatch_names_both_options() -> None:
    cli = _cli_module("--config", str(REPO / "configs/nbsr.yaml"), "--data.scale", "2")
    assert cli.model.model.config.scale == 2 and cli.model.model.net.scale == 2
    vae = _cli_module("--config", str(REPO / "configs/vae.yaml"), "--data.scale", "2")
    assert vae.model.hparams.scale == 2  # a stage whose network has no scale keeps its own (VAE: metric crops)
    module = modules.DKENetModule(DKENet(channels=4, scale=4))
    module.trainer = lightning.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer.datamodule = SRDataModule(scale=2)  # type: ignore[misc]
    with pytest.raises(ValueError, match="data.scale is 2 but model.init_args.net.init_args.scale is 4"):
        module.setup("fit")


def test_networks_own_their_arguments_and_the_modules_declare_none_of_them() -> None:
    for stage in STAGES.values():
        if not stage.weights:
            continue
        module_args = set(inspect.signature(getattr(modules, stage.module).__init__).parameters)
        net_args = set(inspect.signature(stage.network.__init__).parameters) - {"self", "legacy_sampling"}
        # VAE: a module `scale` for its metrics' crop, the network has none
        assert not (module_args & net_args) - {"self"}, f"{stage.module} re-declares {module_args & net_args}"
    # NBSR `channels`: one declaration with a default (KernelConditionedSR), none in the trunk or the module
    from ssr_lightning.networks.nbsr import NBSR

    assert inspect.signature(KernelConditionedSR.__init__).parameters["channels"].default == 16
    assert inspect.signature(NBSR.__init__).parameters["channels"].default is inspect.Parameter.empty
    with pytest.raises(ValueError, match="NBSR: channels 0: must be >= 1"):
        KernelConditionedSR(channels=0)


def test_the_diffusion_model_holds_no_sampling_setting() -> None:
    model = LatentDiffusionSR(autoencoder="space_to_depth", unet_config={
        "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D"] * 2, "up_block_types": ["UpBlock2D"] * 2,
        "amf_hidden": 8, "map_width": 8, "map_out": 8, "use_kernel": False, "use_depth": False})
    keys = {k for k in model.config if not k.startswith("_")}
    assert not keys & {"sampler", "num_inference_steps", "sample_strength", "sample_start", "guidance_step",
                       "color_fix", "steps", "strength", "start", "guidance"}
    lr = torch.rand(1, 3, 8, 8)
    a = model.super_resolve(lr, sampling=SamplingConfig(steps=2, strength=0.5, seed=4))
    b = model.super_resolve(lr, steps=2, strength=0.5, seed=4)  # keyword overrides of the default SamplingConfig
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(TypeError, match="not a sampling option: num_inference_steps"):
        model.super_resolve(lr, num_inference_steps=2)


def test_a_bad_sampling_option_is_one_line_from_its_one_check(capsys: pytest.CaptureFixture[str]) -> None:
    from ssr_lightning.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(REPO / "configs/ssr.yaml"), "--model.init_args.sampling.strength", "2.0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err[-1] == (
        "ssr fit: model.init_args.sampling.strength 2.0: must be in (0, 1] (1 = from pure noise)")
    assert not any("Traceback" in line for line in err)


def test_unet_config_is_ssrunets_arguments() -> None:
    """The `unet_config` group mirrors SSRUNet (its latent channels and pretrained folder come from the model);
    only concat_lr's default differs: the stage's (on), SSRUNet's own (off) stays for direct users."""
    import dataclasses

    from ssr_lightning.diffusion import UNetConfig
    from ssr_lightning.networks import SSRUNet

    params = {k: p.default for k, p in inspect.signature(SSRUNet.__init__).parameters.items()
              if k not in ("self", "latent_channels", "pretrained_path")}
    fields = {f.name: f.default for f in dataclasses.fields(UNetConfig)}
    assert set(fields) == set(params)
    assert {k for k in fields if fields[k] != params[k]} == {"concat_lr"}
