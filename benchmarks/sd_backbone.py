"""A Stable-Diffusion-1.5-sized SSR diffusion stage with random weights, for timing on a GPU (paper Table 4).

The UNet and VAE are built from the published Stable Diffusion v1.5 configs (``unet/config.json`` and
``vae/config.json`` of the v1.5 release, written out below; nothing is downloaded) with random weights: speed does not
depend on weight values. They are saved to a temporary diffusers folder and loaded through ``pretrained_path``
exactly as ``configs/ssr_paper.yaml`` loads a real copy, so the timed model is the paper-size SSR stage: frozen SD UNet
+ its VAE (×8 latents), the condition encoders and AMF of ``ssr_paper.yaml`` (``lr_width_mult`` 0.5, ``map_width``
64, ``concat_lr``), DDIM. ``TINY_SD_*`` keep the same block structure at a few channels, so the code path can be
checked on a CPU in seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

# runwayml/stable-diffusion-v1-5 unet/config.json (diffusers 0.6 release), the keys that shape the network.
SD15_UNET: dict[str, Any] = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# runwayml/stable-diffusion-v1-5 vae/config.json.
SD15_VAE: dict[str, Any] = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
# The same structure at a few channels (CPU smoke runs of this benchmark).
TINY_SD_UNET: dict[str, Any] = {**SD15_UNET, "block_out_channels": [16, 16, 32, 32], "cross_attention_dim": 16,
                                "norm_num_groups": 8, "layers_per_block": 1, "attention_head_dim": 4}
TINY_SD_VAE: dict[str, Any] = {**SD15_VAE, "block_out_channels": [8, 8, 16, 16], "norm_num_groups": 8,
                               "layers_per_block": 1}
# configs/ssr_paper.yaml's unet_config (sampling, the paper's 50 steps from pure noise, is an argument of each call)
PAPER_MODALITIES: dict[str, Any] = {"use_kernel": True, "use_depth": True, "use_lr": True, "concat_lr": True,
                                    "amf_hidden": 128, "amf_mode": "residual", "amf_on_input": True,
                                    "lr_width_mult": 0.5, "map_width": 64, "map_out": 64}


def write_random_sd(folder: Path, size: str = "sd15", seed: int = 0) -> Path:
    """A diffusers folder (``unet/``, ``vae/``) with randomly initialised SD-1.5-shaped networks (fp16 on disk)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg, vae_cfg = (SD15_UNET, SD15_VAE) if size == "sd15" else (TINY_SD_UNET, TINY_SD_VAE)
    torch.manual_seed(seed)
    UNet2DConditionModel(**unet_cfg).half().save_pretrained(folder / "unet")
    AutoencoderKL(**vae_cfg).half().save_pretrained(folder / "vae")
    return folder


def build_sd_model(size: str = "sd15", folder: Path | None = None) -> Any:
    """The paper-size ``LatentDiffusionSR`` on random SD-1.5-shaped weights (float32, CPU; cast it yourself)."""
    from ssr_lightning.diffusion.model import LatentDiffusionSR

    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="ssr_sd15_")
        folder = write_random_sd(Path(tmp.name), size)
    try:
        model = LatentDiffusionSR(pretrained_path=str(folder), unet_config=dict(PAPER_MODALITIES))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return model.eval().requires_grad_(False)


def count_parameters(model: Any) -> dict[str, int]:
    return {"unet_backbone": sum(p.numel() for p in model.unet.backbone.parameters()),
            "vae": sum(p.numel() for p in model.latents.parameters()),
            "encoders_amf": sum(p.numel() for p in model.unet.conditioning_parameters())}
