"""Reading checkpoints of the first format (written before the layers were split, ``ssr_lightning`` 0.1).

Those hold the stage's flat hyper-parameters and the LightningModule's own attribute names (``net.*``, ``basis.*``,
``vae.*``, ``unet.*``, a hand-written EMA as ``ema.<name>`` buffers). :func:`upgrade` turns such a dict into the
current format in memory: the ``ssr`` metadata block (stage, model class, model config), ``model.*`` weight names
and the EMA as ``{"shadow": {name: tensor}}``. Nothing is written back; a current checkpoint passes unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["legacy_stage", "upgrade", "upgrade_hparams"]

_CLASS_STAGE = {"DKENetModule": "dkenet", "NBSRModule": "nbsr", "DepthModule": "depth", "VAEModule": "vae",
                "SSRDiffusionModule": "ssrdiffusion", "SVKRModule": "svkr"}
_TINY_VAE_SCALING = 0.18215  # AutoencoderKL's default scaling_factor: what an unmeasured tiny VAE used


def legacy_stage(ckpt: dict[str, Any]) -> str | None:
    """The stage of a first-format checkpoint, from its class path or its hyper-parameter names."""
    hp = ckpt.get("hyper_parameters") or {}
    cls = str(hp.get("_class_path", "")).rsplit(".", 1)[-1]
    if cls in _CLASS_STAGE:
        return _CLASS_STAGE[cls]
    keys = set(hp) | ({"blocks_per_level"} if "depthnet_config" in ckpt else set())
    for stage, marker in (("ssrdiffusion", "amf_hidden"), ("nbsr", "code_channels"), ("dkenet", "blocks_per_stage"),
                          ("depth", "blocks_per_level"), ("vae", "kl_weight"), ("svkr", "iterations")):
        if marker in keys:
            return stage
    return None


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


def _dkenet(hp: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    # checkpoints written before DKENet had `global_context` have no such weights
    cfg = _pick(hp, ["channels", "kernel_size", "scale", "use_depth", "blocks_per_stage", "global_context"],
                global_context=False)
    return cfg, _rename(state, [("net.", "model.")])


def _nbsr(hp: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = _pick(hp, ["code_channels", "channels", "num_blocks", "growth", "scale", "kernel_size"])
    return cfg, _rename(state, [("net.", "model.net."), ("basis.", "model.codec.basis."),
                                ("code_std", "model.codec.code_std"), ("basis_ready", "model.codec.ready")])


def _depth(hp: dict[str, Any], state: dict[str, Any], ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = ckpt.get("depthnet_config") or _pick(hp, ["channels", "blocks_per_level", "output", "global_context"])
    return dict(cfg), _rename(state, [("net.", "model.")])


def _vae(hp: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = _pick(hp, ["block_out_channels", "layers_per_block", "latent_channels", "mid_attention", "pretrained_path"])
    out = _rename(state, [("vae.", "model.vae.")])
    std = float(state.get("latent_std", torch.tensor(0.0)))
    if not cfg.get("pretrained_path"):
        out["model.scale"] = torch.tensor(1.0 / std if std > 0 else _TINY_VAE_SCALING)
    return cfg, out


def _diffusion(hp: dict[str, Any], ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    state = ckpt["state_dict"]
    unet = _pick(hp, ["block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "use_kernel",
                      "use_depth", "use_lr", "concat_lr", "amf_hidden", "amf_pooled", "amf_mode", "amf_on_input",
                      "lr_width_mult", "map_width"])
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
_DIFFUSION_GROUPS = {
    "backbone": ["vae_ckpt", "pretrained_path", "freeze_backbone", "block_out_channels", "down_block_types",
                 "up_block_types", "layers_per_block", "num_train_timesteps", "gradient_checkpointing"],
    "modalities": ["use_kernel", "use_depth", "use_lr", "concat_lr", "amf_hidden", "amf_pooled", "amf_mode",
                   "amf_on_input", "lr_width_mult", "map_width"],
    "sampling": ["sampler", "num_inference_steps", "sample_strength", "seed", "num_val_samples"],
    "loss": ["lambda_kernel", "lambda_depth", "lambda_lr", "ema_decay"],
}
_CONDITIONS = {"condition_source": "source", "dkenet_ckpt": "dkenet_ckpt", "nbsr_ckpt": "nbsr_ckpt", "depth": "depth",
               "depth_ckpt": "depth_ckpt", "svkr_iterations": "iterations", "svkr_gamma": "gamma"}
_SVKR = ["dkenet_ckpt", "nbsr_ckpt", "depth", "depth_ckpt", "iterations", "gamma"]


def upgrade_hparams(stage: str | None, hp: dict[str, Any]) -> dict[str, Any]:
    """First-format (flat) stage hyper-parameters in the current argument groups (``fit``, and the diffusion and SVKR
    stages' groups), so ``ssr test --ckpt_path OLD.ckpt`` and resuming still parse them."""
    if not hp or any(isinstance(v, dict) and k in ("fit", "backbone", "svkr") for k, v in hp.items()):
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
        for group, names in _DIFFUSION_GROUPS.items():
            out[group] = {k: hp.pop(k) for k in names if k in hp}
        out["conditions"] = {new: hp.pop(old) for old, new in _CONDITIONS.items() if old in hp}
    return {**hp, **out}


def upgrade(ckpt: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """``ckpt`` in the current format (unchanged when it already is); see the module doc."""
    if isinstance(ckpt.get("ssr"), dict):
        return ckpt
    stage = legacy_stage(ckpt)
    hp = dict(ckpt.get("hyper_parameters") or {})
    state = ckpt["state_dict"]
    ckpt = dict(ckpt)
    ckpt["hyper_parameters"] = upgrade_hparams(stage, hp)
    if stage == "dkenet":
        cfg, new_state, cls = *_dkenet(hp, state), "DKENet"
    elif stage == "nbsr":
        cfg, new_state, cls = *_nbsr(hp, state), "KernelConditionedSR"
    elif stage == "depth":
        cfg, new_state, cls = *_depth(hp, state, ckpt), "DepthNet"
    elif stage == "vae":
        cfg, new_state, cls = *_vae(hp, state), "VAELatents"
    elif stage == "ssrdiffusion":
        cfg, new_state, cls = *_diffusion(hp, ckpt), "LatentDiffusionSR"
        ckpt["ssr_svkr"] = {k: hp.get(k) for k in ("dkenet_ckpt", "nbsr_ckpt", "depth", "depth_ckpt")}
    else:
        ckpt["ssr"] = {"format": 1, "stage": stage, "model_class": None, "model_config": {}}
        return ckpt
    ckpt["state_dict"] = new_state
    ckpt["ssr"] = {"format": 1, "stage": stage, "model_class": cls, "model_config": cfg, "upgraded_from": str(path)}
    if stage == "ssrdiffusion":
        ckpt["ssr"]["svkr"] = ckpt.pop("ssr_svkr")
    return ckpt
