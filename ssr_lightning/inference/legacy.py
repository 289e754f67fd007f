"""Reading checkpoints (and run configs) of earlier formats: every old file loads, is tested and resumed as before.

- **Format 1** (``ssr_lightning`` 0.1): flat hyper-parameters, the LightningModule's own weight names (``net.*``,
  ``basis.*``, ``vae.*``, ``unet.*``) and a hand-written EMA (``ema.<name>`` buffers); no ``ssr`` block.
- **Format 2** (0.2, 0.3): an ``ssr`` block (stage, model class, model config); the stage modules re-declared their
  networks' arguments (``channels: 16`` beside ``fit``; the diffusion stage's ``backbone``/``modalities``/``sampling``
  groups), and ``LatentDiffusionSR``'s config held sampling defaults. Option values: ``image_condition: svkr``,
  ``start: lr``.
- **Format 3** (now): the network is injected: ``net: {class_path, init_args}``, whose ``init_args`` are the
  ``ssr.model_config``; sampling is a call argument (``SamplingConfig``) recorded as ``ssr.sampling``, the SVKR
  settings the stage named as ``ssr.svkr``; ``image_condition: frontend``, ``start: bicubic``.

:func:`upgrade` turns a checkpoint dict of any format into the current one in memory (nothing is written back; a
current checkpoint passes unchanged). :func:`upgrade_options` does it for a stage's module options alone (a run's
``config.yaml``, compared on resume). :data:`DIFFUSION_MOVES` and :data:`VALUE_RENAMES` are the old → new map of
the diffusion stage's options; every other stage moved its network's arguments under ``net.init_args`` unchanged.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from ssr_lightning.diffusion.config import SamplingConfig, renamed
from ssr_lightning.registry import STAGES, class_path, stage_of_module

__all__ = ["DIFFUSION_MOVES", "FORMAT", "VALUE_RENAMES", "legacy_stage", "upgrade", "upgrade_options"]

FORMAT = 3  # the current checkpoint format (see the module doc)
_TINY_VAE_SCALING = 0.18215  # AutoencoderKL's default scaling_factor: what an unmeasured tiny VAE used

# The diffusion stage's format-2 options (module option groups) -> where they live now ("net." = the network's
# init_args, "net.unet_config." = its UNet group, "sampling." = the module's SamplingConfig).
_UNET = ["block_out_channels", "down_block_types", "up_block_types", "layers_per_block"]
_MODALITIES = ["use_kernel", "use_depth", "use_lr", "concat_lr", "amf_hidden", "amf_pooled", "amf_mode", "amf_on_input",
               "lr_width_mult", "map_width"]
DIFFUSION_MOVES: dict[str, str] = {
    "backbone.autoencoder": "net.autoencoder",
    "backbone.space_to_depth_factor": "net.autoencoder_config.factor",
    "backbone.vae_ckpt": "vae_ckpt",
    "backbone.pretrained_path": "net.pretrained_path",
    "backbone.freeze_backbone": "freeze_backbone",
    **{f"backbone.{k}": f"net.unet_config.{k}" for k in _UNET},
    "backbone.num_train_timesteps": "net.num_train_timesteps",
    "backbone.prediction_type": "net.prediction_type",
    "backbone.residual": "net.residual",
    "backbone.residual_scale": "net.residual_scale",
    "backbone.gradient_checkpointing": "gradient_checkpointing",
    **{f"modalities.{k}": f"net.unet_config.{k}" for k in _MODALITIES},
    "modalities.image_condition": "net.image_condition",
    "sampling.sampler": "sampling.sampler",
    "sampling.num_inference_steps": "sampling.steps",
    "sampling.sample_strength": "sampling.strength",
    "sampling.start": "sampling.start",
    "sampling.guidance_step": "sampling.guidance",
    "sampling.color_fix": "sampling.color_fix",
    "sampling.seed": "sampling.seed",
    "sampling.num_val_samples": "num_val_samples",
    "vae_arch": "net.autoencoder_config",
    "scale": "net.scale",
}
# Option values renamed with them (one name for the front end's image I_T, one for the bicubic-upsampled LR).
VALUE_RENAMES: dict[str, dict[Any, Any]] = {"net.image_condition": {"svkr": "frontend"},
                                            "sampling.start": {"lr": "bicubic"}}
# Format-2 module options that no longer exist (DepthModule's `scale` was never read: LR targets are the data's depth_lr).
_DROPPED = {"depth": ("scale",)}
# What `ssr sr` used for a format-2 model besides its config's sampling defaults (its own flag defaults).
_SR_DEFAULTS = {"seed": 0, "tile": 32, "overlap": 8}


def legacy_stage(ckpt: dict[str, Any]) -> str | None:
    """The stage of a first-format checkpoint, from its class path or its hyper-parameter names."""
    hp = ckpt.get("hyper_parameters") or {}
    found = stage_of_module(str(hp.get("_class_path", "")).rsplit(".", 1)[-1])
    if found is not None:
        return found.name
    keys = set(hp) | ({"blocks_per_level"} if "depthnet_config" in ckpt else set())
    for stage, marker in (("ssrdiffusion", "amf_hidden"), ("nbsr", "code_channels"), ("dkenet", "blocks_per_stage"),
                          ("depth", "blocks_per_level"), ("vae", "kl_weight"), ("svkr", "iterations")):
        if marker in keys:
            return stage
    return None


# --- format 1 -> 2 ------------------------------------------------------------------------------------------------
def _rename(state: dict[str, Any], mapping: list[tuple[str, str]]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        for old, new in mapping:
            if key == old or (old.endswith(".") and key.startswith(old)):
                out[new + key[len(old):] if old.endswith(".") else new] = value
                break
    return out


def _pick(hp: dict[str, Any], names: list[str], **defaults: Any) -> dict[str, Any]:
    out = {k: hp[k] for k in names if k in hp}
    return {**defaults, **out}


def _first_format_model(stage: str, hp: dict[str, Any], ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, ``model.*`` state dict) of a first-format checkpoint of ``stage``."""
    state = ckpt["state_dict"]
    if stage == "dkenet":  # checkpoints written before DKENet had `global_context` have no such weights
        cfg = _pick(hp, ["channels", "kernel_size", "scale", "use_depth", "blocks_per_stage", "global_context"],
                    global_context=False)
        return cfg, _rename(state, [("net.", "model.")])
    if stage == "nbsr":
        cfg = _pick(hp, ["code_channels", "channels", "num_blocks", "growth", "scale", "kernel_size"])
        return cfg, _rename(state, [("net.", "model.net."), ("basis.", "model.codec.basis."),
                                    ("code_std", "model.codec.code_std"), ("basis_ready", "model.codec.ready")])
    if stage == "depth":
        cfg = ckpt.get("depthnet_config") or _pick(hp, ["channels", "blocks_per_level", "output", "global_context"])
        return dict(cfg), _rename(state, [("net.", "model.")])
    if stage == "vae":
        cfg = _pick(hp, ["block_out_channels", "layers_per_block", "latent_channels", "mid_attention",
                         "pretrained_path"])
        out = _rename(state, [("vae.", "model.vae.")])
        std = float(state.get("latent_std", torch.tensor(0.0)))
        if not cfg.get("pretrained_path"):
            out["model.scale"] = torch.tensor(1.0 / std if std > 0 else _TINY_VAE_SCALING)
        return cfg, out
    unet = _pick(hp, _UNET + _MODALITIES)
    unet["map_out"] = unet.get("map_width", 32)
    cfg = {"autoencoder_config": dict(hp.get("vae_arch") or {}), "unet_config": unet,
           **_pick(hp, ["pretrained_path", "num_train_timesteps", "scale", "sampler", "num_inference_steps",
                        "sample_strength"])}
    new_state = _rename(state, [("vae.", "model.latents.vae."), ("latent_scale", "model.latents.scale"),
                                ("unet.", "model.unet.")])
    ema_buffers = {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")}
    if ema_buffers:
        steps = int(ema_buffers.pop("num_updates", torch.tensor(0)))
        # the old EMA named its buffers after the LightningModule's parameters with "." -> "__"
        shadow = {k.replace("__", "."): v for k, v in ema_buffers.items()}
        ckpt["ema"] = {"decay": float(hp.get("ema_decay", 0.999)), "optimization_step": steps, "shadow": shadow}
    return cfg, new_state


_FIT = {"lr": "learning_rate", "min_lr": "min_learning_rate", "warmup_steps": "warmup_steps",
        "ckpt_every_n_steps": "ckpt_every_n_steps", "num_log_images": "num_log_images"}
_FIRST_GROUPS = {
    "backbone": ["vae_ckpt", "pretrained_path", "freeze_backbone", *_UNET, "num_train_timesteps",
                 "gradient_checkpointing"],
    "modalities": _MODALITIES,
    "sampling": ["sampler", "num_inference_steps", "sample_strength", "seed", "num_val_samples"],
    "loss": ["lambda_kernel", "lambda_depth", "lambda_lr", "ema_decay"],
}
_CONDITIONS = {"condition_source": "source", "dkenet_ckpt": "dkenet_ckpt", "nbsr_ckpt": "nbsr_ckpt", "depth": "depth",
               "depth_ckpt": "depth_ckpt", "svkr_iterations": "iterations", "svkr_gamma": "gamma"}
_SVKR = ["dkenet_ckpt", "nbsr_ckpt", "depth", "depth_ckpt", "iterations", "gamma"]


def _group_first_format(stage: str | None, hp: dict[str, Any]) -> dict[str, Any]:
    """First-format (flat) stage hyper-parameters in the format-2 argument groups (``fit``, the diffusion and SVKR
    stages' groups)."""
    if not hp or any(isinstance(v, dict) and k in ("fit", "backbone", "svkr", "net") for k, v in hp.items()):
        return hp
    hp = dict(hp)
    out: dict[str, Any] = {}
    if stage == "svkr":
        out["svkr"] = {k: hp.pop(k) for k in _SVKR if k in hp}
        for k in _FIT:
            hp.pop(k, None)
    else:
        fit = {new: hp.pop(old) for old, new in _FIT.items() if old in hp}
        if fit:
            out["fit"] = fit
    if stage == "ssrdiffusion":
        for group, names in _FIRST_GROUPS.items():
            out[group] = {k: hp.pop(k) for k in names if k in hp}
        out["conditions"] = {new: hp.pop(old) for old, new in _CONDITIONS.items() if old in hp}
    return {**hp, **out}


def _from_first_format(ckpt: dict[str, Any], path: str | Path | None) -> dict[str, Any]:
    stage = legacy_stage(ckpt)
    hp = dict(ckpt.get("hyper_parameters") or {})
    ckpt = dict(ckpt)
    ckpt["hyper_parameters"] = _group_first_format(stage, hp)
    if stage not in ("dkenet", "nbsr", "depth", "vae", "ssrdiffusion"):
        ckpt["ssr"] = {"format": 1, "stage": stage, "model_class": None, "model_config": {}}
        return ckpt
    cfg, ckpt["state_dict"] = _first_format_model(stage, hp, ckpt)
    ckpt["ssr"] = {"format": 1, "stage": stage, "model_class": STAGES[stage].model_class, "model_config": cfg,
                   "upgraded_from": str(path)}
    if stage == "ssrdiffusion":
        ckpt["ssr"]["svkr"] = {k: hp.get(k) for k in ("dkenet_ckpt", "nbsr_ckpt", "depth", "depth_ckpt")}
    return ckpt


# --- format 2 -> 3 ------------------------------------------------------------------------------------------------
def _get(tree: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def _model_config(stage: str | None, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A format-2 model config in format 3, and (diffusion) the sampling defaults it held, under their new names."""
    if stage != "ssrdiffusion":
        return cfg, {}
    cfg = dict(cfg)
    old = {k: cfg.pop(k) for k in ("sampler", "num_inference_steps", "sample_strength", "sample_start",
                                   "guidance_step", "color_fix") if k in cfg}
    if "image_condition" in cfg:
        cfg["image_condition"] = VALUE_RENAMES["net.image_condition"].get(cfg["image_condition"],
                                                                         cfg["image_condition"])
    # a config without concat_lr was built with SSRUNet's default (off); UNetConfig's default is the stage's (on)
    cfg["unet_config"] = {"concat_lr": False, **dict(cfg.get("unet_config") or {})}
    return cfg, renamed(old)


def _network_options(stage: str, options: dict[str, Any]) -> dict[str, Any]:
    """Format-2 options of a stage whose module re-declared its network's arguments: those move under ``net``."""
    cls = STAGES[stage].network
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    moved = {k: options.pop(k) for k in list(options) if k in params}
    for key in _DROPPED.get(stage, ()):
        options.pop(key, None)
    options["net"] = {"class_path": class_path(cls), "init_args": moved}
    return options


def _diffusion_options(options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in options.items()
                           if k not in ("backbone", "modalities", "sampling", "vae_arch", "scale")}
    autoencoder = _get(options, "backbone.autoencoder")[1] or "vae"
    for old, new in DIFFUSION_MOVES.items():
        present, value = _get(options, old)
        if not present or (old == "vae_arch" and (value is None or autoencoder != "vae")) or (
                old == "backbone.space_to_depth_factor" and autoencoder != "space_to_depth"):
            continue
        value = VALUE_RENAMES.get(new, {}).get(value, value) if isinstance(value, str) else value
        _set(out, new, value)
        if old == "modalities.map_width":  # the format-2 module gave the features the encoders' width
            _set(out, "net.unet_config.map_out", value)
    if "net" in out:
        out["net"] = {"class_path": class_path(STAGES["ssrdiffusion"].network), "init_args": out["net"]}
    return out


def upgrade_options(stage: str | None, options: dict[str, Any] | None,
                    model_config: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A stage module's options (checkpoint hyper-parameters, or a run config's ``init_args``) of any format in the
    current one: the network's arguments under ``net: {class_path, init_args}`` (``model_config``, when given, is
    its complete config), renamed options and values (:data:`DIFFUSION_MOVES`, :data:`VALUE_RENAMES`)."""
    if not options or stage not in STAGES or "net" in options or not STAGES[stage].weights:
        return options
    options = _group_first_format(stage, dict(options))
    options = _diffusion_options(options) if stage == "ssrdiffusion" else _network_options(stage, options)
    if model_config is not None:
        options.setdefault("net", {"class_path": class_path(STAGES[stage].network)})["init_args"] = model_config
    return options


def upgrade(ckpt: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """``ckpt`` in the current format (unchanged when it already is); see the module doc."""
    if not isinstance(ckpt.get("ssr"), dict):
        ckpt = _from_first_format(ckpt, path)
    meta = ckpt["ssr"]
    if int(meta.get("format") or 0) >= FORMAT:
        return ckpt
    ckpt, meta = dict(ckpt), dict(meta)
    stage = meta.get("stage")
    config, sampling = _model_config(stage, dict(meta.get("model_config") or {}))
    if meta.get("model_class"):
        meta["model_config"] = config
    hp = upgrade_options(stage, dict(ckpt.get("hyper_parameters") or {}),
                         model_config=config if meta.get("model_class") else None)
    if stage == "ssrdiffusion":
        # `ssr test` sampled with the config's defaults and the stage's seed, untiled; `ssr sr` with the config's
        # defaults, its own seed 0 and 32/8 tiles: each keeps doing so
        test = SamplingConfig().replace(**{**sampling, **(hp.get("sampling") or {}), "tile": 0})
        hp["sampling"] = {k: v for k, v in vars(test).items()}
        meta["sampling"] = vars(SamplingConfig().replace(**{**sampling, **_SR_DEFAULTS}))
        meta["svkr"] = dict(meta.get("svkr") or {})
    ckpt["hyper_parameters"] = hp
    meta["format"], meta["upgraded_from_format"] = FORMAT, int(meta.get("format") or 0)
    ckpt["ssr"] = meta
    return ckpt
