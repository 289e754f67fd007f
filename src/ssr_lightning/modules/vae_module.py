"""VAEModule: the latent space of SSR's diffusion stage (paper §3.3, DESIGN.md §4).

Either trains a tiny diffusers ``AutoencoderKL`` on HR patches (``ssr fit --config configs/vae.yaml``; loss
L1 + a small KL, the Stable Diffusion recipe without the perceptual/GAN terms), or wraps a pretrained one from a
local folder (``AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)``).

The latent scale: latent diffusion wants unit-variance latents (SD multiplies by 0.18215). A trained VAE
measures it on the validation split: ``latent_std`` (a buffer, so it travels in the checkpoint) is the std of the
posterior means; :meth:`VAEModule.scaling_factor` is ``1 / latent_std``. A pretrained VAE uses its config's
``scaling_factor``.

Images are ``[0, 1]`` outside and ``[-1, 1]`` inside the VAE; :meth:`encode` / :meth:`decode` do the mapping
and the scaling, and the diffusion stage and the pipeline only ever call those two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssr_lightning.metrics import psnr, psnr_y, ssim_y
from ssr_lightning.modules.base import StageModule

__all__ = ["VAEModule", "build_tiny_vae", "load_pretrained_vae"]


def build_tiny_vae(
    block_out_channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1, latent_channels: int = 4,
    mid_attention: bool = False,
) -> Any:
    """A small diffusers ``AutoencoderKL``: downsampling factor ``2**(len(block_out_channels) - 1)``."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        norm_num_groups=min(32, min(block_out_channels)),
        # No attention: a pure-conv VAE is translation-equivariant, so tiled decoding has no tile-size dependence.
        mid_block_add_attention=mid_attention,
    )


def load_pretrained_vae(path: str) -> Any:
    """The VAE of a local diffusers folder (``<path>/vae``); a missing folder is a FileNotFoundError naming it."""
    cfg = Path(path) / "vae" / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(
            f"pretrained VAE not found: {cfg} does not exist. Give a local diffusers folder with a vae/ subfolder "
            "(e.g. a Stable Diffusion checkpoint); nothing is downloaded."
        )
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(path), subfolder="vae", local_files_only=True)


class VAEModule(StageModule):
    """Train (or wrap) the AutoencoderKL whose latents the SSR diffusion stage denoises.

    Validation/test: reconstruction (posterior mean → decode) PSNR on RGB and Y, SSIM-Y, on HR val/test crops.
    """

    monitor = "val/psnr"
    monitor_mode = "max"

    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        latent_channels: int = 4,
        mid_attention: bool = False,
        pretrained_path: str | None = None,
        kl_weight: float = 1e-6,
        scale: int = 4,
        lr: float = 1e-3,
        min_lr: float = 1e-5,
        warmup_steps: int = 50,
        ckpt_every_n_steps: int = 100,
        num_log_images: int = 4,
    ) -> None:
        """
        Args:
            block_out_channels: Encoder/decoder widths; the latent is ``2**(len-1)`` times smaller than the image.
            layers_per_block: ResNets per VAE block.
            latent_channels: Latent channels (4 as in SD).
            mid_attention: Self-attention in the VAE mid blocks (off: pure conv, cheaper, tile-invariant).
            pretrained_path: Local diffusers folder with ``vae/``; replaces the tiny VAE (then ``fit`` fine-tunes).
            kl_weight: Weight of the KL term, per image pixel (SD: 1e-6).
            scale: SR factor (linked to data.scale; unused by the VAE, recorded for the diffusion stage).
            lr: Adam learning rate.
            min_lr: Floor of the cosine schedule.
            warmup_steps: Linear warm-up steps.
            ckpt_every_n_steps: How often `last.ckpt` is refreshed during training.
            num_log_images: Samples shown in the TensorBoard grids at each validation.
        """
        super().__init__()
        self.save_hyperparameters()
        if pretrained_path is not None:
            self.vae = load_pretrained_vae(pretrained_path)
        else:
            self.vae = build_tiny_vae(tuple(block_out_channels), layers_per_block, latent_channels, mid_attention)
        # 0 = not measured yet (a pretrained VAE then uses its config's scaling_factor).
        self.register_buffer("latent_std", torch.tensor(0.0))
        self._std_sum: list[Tensor] = []

    # --- the interface the diffusion stage uses -----------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def scaling_factor(self) -> float:
        """Multiplier that gives the diffusion stage unit-variance latents."""
        std = float(self.latent_std)
        if std > 0:
            return 1.0 / std
        return float(self.vae.config.scaling_factor)

    def encode(self, img: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """``img (B, 3, H, W)`` in [0, 1] → scaled latent ``(B, C, H/f, W/f)`` (posterior mean unless ``sample``)."""
        dist = self.vae.encode(img * 2.0 - 1.0).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.scaling_factor()

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latent → image in [0, 1] (not clamped; callers clamp for display/metrics)."""
        return (self.vae.decode(z / self.scaling_factor()).sample + 1.0) / 2.0

    def forward(self, img: Tensor) -> Tensor:
        """Reconstruction of ``img`` through the posterior mean."""
        return self.decode(self.encode(img))

    # --- steps --------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x = batch["hr"] * 2.0 - 1.0
        dist = self.vae.encode(x).latent_dist
        rec = self.vae.decode(dist.sample()).sample
        l1 = F.l1_loss(rec, x)
        # diffusers' kl() sums over the latent; per image pixel it weighs like SD's (summed rec loss, 1e-6 KL).
        kl = dist.kl().mean() / x[0].numel()
        loss = l1 + self.hparams.kl_weight * kl
        bs = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/l1", l1, batch_size=bs)
        self.log("train/kl", kl, batch_size=bs)
        return loss

    def _evaluate(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        hr = batch["hr"]
        dist = self.vae.encode(hr * 2.0 - 1.0).latent_dist
        z = dist.mode()
        rec = ((self.vae.decode(z).sample + 1.0) / 2.0).clamp(0, 1)
        s = self.hparams.scale
        metrics = {"psnr": psnr(rec, hr, crop_border=s), "psnr_y": psnr_y(rec, hr, crop_border=s),
                   "ssim_y": ssim_y(rec, hr, crop_border=s)}
        return rec, z, metrics

    def on_validation_epoch_start(self) -> None:
        self._std_sum = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        rec, z, metrics = self._evaluate(batch)
        bs = rec.shape[0]
        for key, val in metrics.items():
            self.log(f"val/{key}", val.mean(), prog_bar=key == "psnr", batch_size=bs, sync_dist=True)
        self.log("val/loss", F.l1_loss(rec, batch["hr"]), batch_size=bs, sync_dist=True)
        self._std_sum.append(torch.stack([z.float().pow(2).sum(), z.float().sum(), torch.tensor(z.numel())]))
        if batch_idx == 0:
            n = self.hparams.num_log_images
            self.log_grid("val/hr|rec", [batch["hr"][:n], rec[:n]], max_rows=n)

    def on_validation_epoch_end(self) -> None:
        # The latent std over the whole val split; only a trained (not pretrained) VAE records its own scale.
        if self._std_sum and self.hparams.pretrained_path is None and not self.trainer.sanity_checking:
            sq, s, n = torch.stack([t.cpu() for t in self._std_sum]).sum(0)
            self.latent_std.fill_(float((sq / n - (s / n) ** 2).clamp_min(1e-12).sqrt()))
            self.log("val/latent_std", self.latent_std)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, _, metrics = self._evaluate(batch)
        self.record_test(metrics, batch.get("name"))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self(batch["hr"]).clamp(0, 1)
