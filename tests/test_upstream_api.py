"""The upstream API the code overrides or reads below the public surface, one test per use.

An upgrade that moves one of them fails here, naming the package, its installed version and the project file that
depends on it, instead of in the middle of a run. The upper bounds in pyproject.toml are the versions tested; raise
one only after this module passes with the new version. Nothing is downloaded; no test trains anything.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.requirements import Requirement
from torch import nn


def _params(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _require(ok: bool, package: str, what: str, user: str) -> None:
    assert ok, (f"{package} {version(package)}: {what} changed; {user} depends on it. Adapt that file, or pin "
                f"{package} below this version in pyproject.toml")


# --- lightning --------------------------------------------------------------------------------------------------
def test_lightning_cli_parse_ckpt_path() -> None:
    from lightning.pytorch.cli import LightningCLI

    user = "ssr_lightning/cli/main.py (SSRCLI._parse_ckpt_path, _load_ckpt_hparams)"
    _require(_params(LightningCLI._parse_ckpt_path) == ["self"], "lightning", "LightningCLI._parse_ckpt_path()", user)
    _require("self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__), "lightning",
             "LightningCLI.__init__ calling self._parse_ckpt_path()", user)
    stock = inspect.getsource(LightningCLI._parse_ckpt_path)  # _load_ckpt_hparams repeats these steps
    for step in ('"hyper_parameters"', '"_instantiator"', '"_class_path"', '"dict_kwargs"', "parse_object"):
        _require(step in stock, "lightning", f"the stock _parse_ckpt_path step {step}", user)


def test_lightning_cli_run_subcommand() -> None:
    from lightning.pytorch.cli import LightningCLI

    user = "ssr_lightning/cli/main.py (SSRCLI._run_subcommand removes a run that failed before its first step)"
    _require(_params(LightningCLI._run_subcommand) == ["self", "subcommand"], "lightning",
             "LightningCLI._run_subcommand(subcommand)", user)
    _require("self._run_subcommand(self.subcommand)" in inspect.getsource(LightningCLI.__init__), "lightning",
             "LightningCLI.__init__ calling self._run_subcommand", user)


def test_save_config_callback_fields() -> None:
    from jsonargparse import ArgumentParser, Namespace
    from lightning.pytorch.cli import SaveConfigCallback

    user = "ssr_lightning/cli/main.py (RunConfigCallback.setup replaces the stock setup)"
    _require(_params(SaveConfigCallback.setup) == ["self", "trainer", "pl_module", "stage"], "lightning",
             "SaveConfigCallback.setup(trainer, pl_module, stage)", user)
    cb = SaveConfigCallback(ArgumentParser(), Namespace(), multifile=True)
    for name in ("already_saved", "config_filename", "multifile", "parser", "config"):
        _require(hasattr(cb, name), "lightning", f"SaveConfigCallback.{name}", user)
    _require(cb.already_saved is False and cb.multifile is True, "lightning", "SaveConfigCallback's fields", user)


def test_model_checkpoint_save_checkpoint() -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    user = "ssr_lightning/modules/base.py (KeepPreviousCheckpoint keeps last.prev.ckpt)"
    _require(_params(ModelCheckpoint._save_checkpoint) == ["self", "trainer", "filepath"], "lightning",
             "ModelCheckpoint._save_checkpoint(trainer, filepath)", user)
    _require("self._save_checkpoint(trainer, filepath)" in inspect.getsource(ModelCheckpoint._save_last_checkpoint),
             "lightning", "last.ckpt written through _save_checkpoint", user)
    _require(ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION == "last.ckpt", "lightning",
             "the name last.ckpt", user)


def test_lightning_module_trainer_field() -> None:
    from lightning.pytorch import LightningModule

    module = LightningModule()
    _require(hasattr(module, "_trainer") and module._trainer is None, "lightning", "LightningModule._trainer",
             "ssr_lightning/modules/nbsr_module.py (reads the datamodule before a trainer is attached)")


# --- tensorboard and torch's SummaryWriter ----------------------------------------------------------------------
def test_tensorboard_hparams_summary_pb(tmp_path: Path) -> None:
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

    user = "ssr_lightning/ablate/dashboard.py (HPARAMS experiment and session end, written without TensorFlow)"
    _require(_params(summary_v2._summary_pb) == ["tag", "hparams_plugin_data"], "tensorboard",
             "hparams.summary_v2._summary_pb(tag, hparams_plugin_data)", user)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=0)
    pb = summary_v2._summary_pb(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))
    _require(pb.value[0].tag == metadata.SESSION_END_INFO_TAG, "tensorboard", "the summary _summary_pb returns", user)
    _require(_params(summary_v2.hparams_pb)[:3] == ["hparams", "trial_id", "start_time_secs"], "tensorboard",
             "hparams_pb(hparams, trial_id, start_time_secs)", user)


def test_summary_writer_file_writer(tmp_path: Path) -> None:
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2, summary_v2
    from torch.utils.tensorboard import SummaryWriter

    user = "ssr_lightning/ablate/dashboard.py (hparams protos go to the writer's file writer)"
    _require(_params(SummaryWriter._get_file_writer) == ["self"], "torch", "SummaryWriter._get_file_writer()", user)
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        fw = writer._get_file_writer()
        _require(callable(getattr(fw, "add_summary", None)), "torch", "FileWriter.add_summary", user)
        fw.add_summary(summary_v2._summary_pb(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData()))
    assert list(tmp_path.glob("events.out.tfevents.*"))


# --- diffusers --------------------------------------------------------------------------------------------------
def test_diffusers_unet_block_layout() -> None:
    from diffusers import UNet2DModel

    user = "ssr_lightning/networks/ssr_unet.py (AMF hooks on conv_in, down_blocks[i], mid_block)"
    unet = UNet2DModel(in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    for name in ("conv_in", "down_blocks", "mid_block"):
        _require(isinstance(getattr(unet, name, None), nn.Module), "diffusers", f"UNet2DModel.{name}", user)
    _require([b.downsamplers is not None for b in unet.down_blocks] == [True, False], "diffusers",
             "down blocks' downsamplers (None on the last block)", user)
    seen: list[Any] = []
    unet.down_blocks[0].register_forward_hook(lambda _m, _i, out: seen.append(out))
    unet(torch.zeros(1, 4, 8, 8), 0)
    out = seen[0]
    _require(isinstance(out, tuple) and len(out) == 2 and out[1][-1] is out[0], "diffusers",
             "a down block's output (hidden, skip residuals) whose last skip is the hidden state", user)
    _require(list(unet.config.block_out_channels) == [8, 16], "diffusers", "UNet2DModel.config.block_out_channels",
             user)


def test_diffusers_ema_model_state() -> None:
    from diffusers.training_utils import EMAModel

    user = "ssr_lightning/modules/diffusion_module.py (EMA in checkpoints as 'ema': {..., 'shadow': {name: tensor}})"
    _require(_params(EMAModel.__init__)[:3] == ["self", "parameters", "decay"], "diffusers",
             "EMAModel(parameters, decay)", user)
    p = nn.Parameter(torch.ones(3))
    ema = EMAModel([p], decay=0.5)
    ema.step([p])
    state = ema.state_dict()
    _require({"shadow_params", "optimization_step", "decay"} <= set(state), "diffusers", "EMAModel.state_dict keys",
             user)
    _require(ema.temp_stored_params is None, "diffusers", "EMAModel.temp_stored_params", user)
    ema.store([p])
    _require(ema.temp_stored_params is not None, "diffusers", "EMAModel.store filling temp_stored_params", user)
    ema.restore([p])
    again = EMAModel([nn.Parameter(torch.zeros(3))], decay=0.9)
    again.load_state_dict({**again.state_dict(), **state})
    _require(again.optimization_step == ema.optimization_step and torch.equal(again.shadow_params[0],
             ema.shadow_params[0]), "diffusers", "EMAModel.load_state_dict of a saved state", user)


def test_diffusers_scheduler_fields() -> None:
    from diffusers import DDIMScheduler, DDPMScheduler

    user = "ssr_lightning/diffusion/process.py (_x0_coefficient, step hooks)"
    ddim, ddpm = DDIMScheduler(num_train_timesteps=100), DDPMScheduler(num_train_timesteps=100)
    ddim.set_timesteps(4)
    ddpm.set_timesteps(4)
    _require(hasattr(ddim, "final_alpha_cumprod") and ddim.num_inference_steps == 4, "diffusers",
             "DDIMScheduler.final_alpha_cumprod / num_inference_steps", user)
    _require(callable(getattr(ddpm, "previous_timestep", None)), "diffusers", "DDPMScheduler.previous_timestep",
             user)
    z = torch.zeros(1, 2, 4, 4)
    t = ddim.timesteps[0]
    out = ddim.step(z, t, z)
    _require(hasattr(out, "prev_sample") and hasattr(out, "pred_original_sample"), "diffusers",
             "the scheduler step output fields", user)


# --- torch (pinned exactly; these still say what an upgrade must keep) ------------------------------------------
def test_torch_hub_dir_global(tmp_path: Path) -> None:
    user = "ssr_lightning/metrics/iqa.py (_offline restores torch.hub's folder)"
    _require(hasattr(torch.hub, "_hub_dir"), "torch", "torch.hub._hub_dir", user)
    previous = torch.hub._hub_dir
    try:
        torch.hub.set_dir(str(tmp_path))
        _require(torch.hub._hub_dir == str(tmp_path), "torch", "torch.hub.set_dir storing _hub_dir", user)
    finally:
        torch.hub._hub_dir = previous


def test_torch_load_state_dict_pre_hook() -> None:
    user = "ssr_lightning/networks/depthnet.py (old DepthNet key names renamed on load)"
    _require(_params(nn.Module._register_load_state_dict_pre_hook)[:2] == ["self", "hook"], "torch",
             "nn.Module._register_load_state_dict_pre_hook(hook)", user)
    seen: list[str] = []
    outer = nn.Sequential(nn.Linear(1, 1))
    outer[0]._register_load_state_dict_pre_hook(lambda state, prefix, *_: seen.append(prefix))
    outer.load_state_dict(outer.state_dict())
    _require(seen == ["0."], "torch", "the pre-hook's (state_dict, prefix, ...) arguments", user)


# --- pyiqa and OpenAI CLIP --------------------------------------------------------------------------------------
def test_pyiqa_downloaders() -> None:
    from pyiqa.archs import clip_model
    from pyiqa.utils import download_util

    user = "ssr_lightning/metrics/iqa.py (_offline: every downloader pyiqa reaches raises instead)"
    _require(_params(clip_model._download) == ["url", "root"], "pyiqa", "archs.clip_model._download(url, root)", user)
    _require("_download(" in inspect.getsource(clip_model.load), "pyiqa", "clip_model.load calling _download", user)
    _require(callable(getattr(download_util, "download_url_to_file", None)), "pyiqa",
             "utils.download_util.download_url_to_file", user)


def test_pyiqa_metrics_take_weight_paths() -> None:
    import pyiqa
    from pyiqa.archs import lpips_arch, musiq_arch, niqe_arch

    user = "ssr_lightning/metrics/iqa.py (_create_pyiqa passes pretrained_model_path)"
    _require(_params(pyiqa.create_metric)[:3] == ["metric_name", "as_loss", "device"], "pyiqa",
             "create_metric(metric_name, as_loss, device, **kwargs)", user)
    for cls in (lpips_arch.LPIPS, musiq_arch.MUSIQ, niqe_arch.NIQE):
        _require("pretrained_model_path" in _params(cls.__init__), "pyiqa", f"{cls.__name__}(pretrained_model_path)",
                 user)


def test_openai_clip_imports_with_the_packaging_shim() -> None:
    from ssr_lightning.metrics.iqa import clip_importable

    with clip_importable():
        import clip
    _require(callable(getattr(clip, "load", None)), "openai-clip", "clip.load after import through clip_importable",
             "ssr_lightning/metrics/iqa.py (clip_importable)")


# --- jsonargparse, timm -----------------------------------------------------------------------------------------
def test_jsonargparse_calls(tmp_path: Path) -> None:
    from jsonargparse import ArgumentParser, Namespace, set_parsing_settings

    user = "ssr_lightning/cli/main.py (RunConfigCallback, SSRCLI) and the other commands"
    _require("docstring_parse_attribute_docstrings" in _params(set_parsing_settings), "jsonargparse",
             "set_parsing_settings(docstring_parse_attribute_docstrings=)", user)
    parser = ArgumentParser()
    parser.add_argument("--a", type=int | None, default=None)
    cfg = parser.parse_args([])
    _require(parser.parse_object({"a": 3}, cfg).a == 3, "jsonargparse", "ArgumentParser.parse_object(obj, base)",
             user)
    _require("a: null" in parser.dump(cfg, skip_none=False), "jsonargparse", "ArgumentParser.dump(skip_none=False)",
             user)
    parser.save(cfg, str(tmp_path / "c.yaml"), skip_none=False, overwrite=True, multifile=False)
    _require((tmp_path / "c.yaml").is_file(), "jsonargparse", "ArgumentParser.save(skip_none, overwrite, multifile)",
             user)
    ns = Namespace(a=Namespace(b=1))
    _require(ns.clone() == ns and ns.as_dict() == {"a": {"b": 1}} and ns.get("a.b") == 1, "jsonargparse",
             "Namespace.clone / as_dict / get", user)


def test_timm_forward_intermediates() -> None:
    from timm.models.beit import Beit
    from timm.models.vision_transformer import VisionTransformer

    user = "ssr_lightning/networks/midas.py (MiDaS DPT reads the ViT/BEiT blocks through forward_intermediates)"
    wanted = {"indices", "return_prefix_tokens", "norm", "output_fmt", "intermediates_only"}
    for cls in (VisionTransformer, Beit):
        _require(wanted <= set(_params(cls.forward_intermediates)), "timm",
                 f"{cls.__name__}.forward_intermediates({', '.join(sorted(wanted))})", user)


@pytest.mark.parametrize("package", ["lightning", "tensorboard", "diffusers", "pyiqa", "jsonargparse", "timm"])
def test_installed_version_is_within_the_pin(package: str) -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert block is not None, "pyproject.toml: no dependencies list"
    reqs = [Requirement(d) for d in re.findall(r'"([^"]+)"', block.group(1))]
    req = next((r for r in reqs if r.name == package), None)
    assert req is not None and any(s.operator == "<" for s in req.specifier), f"{package} has no upper bound"
    assert version(package) in req.specifier, (f"{package} {version(package)} is outside its pin {req.specifier}: "
                                               "run this module with it, then move the bound")
