"""VAEModule: trains the latent space of SSR's diffusion stage (paper §3.3, docs/DESIGN.md §4).

Trains a tiny diffusers ``AutoencoderKL`` on HR patches (``ssr fit --config configs/vae.yaml``; loss L1 + a small KL,
the Stable Diffusion recipe without the perceptual/GAN terms), or wraps/fine-tunes a pretrained one from a local
folder.

Colour (issue 12): trained on the embedded scenes alone, the tiny VAE shifts the colours of photos it never saw. Two
cheap options act on that: ``color_augment`` (each training patch gets a random channel permutation and saturation,
so the decoder sees every hue) and ``lowfreq_weight`` (an extra L1 term on 8×8-average-pooled images, i.e. on
colour and low frequencies, which the pixel L1 weighs no more than any single texture pixel). ``self.model`` is a :class:`~ssr_lightning.diffusion.VAELatents`; after each validation its ``scale`` is set
to ``1 / std`` of the posterior means over the validation split, so the diffusion stage sees unit-variance latents
(a pretrained VAE keeps its config's ``scaling_factor``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssr_lightning.diffusion.autoencoder import VAELatents
from ssr_lightning.metrics import color_shift, psnr, psnr_y, ssim_y
from ssr_lightning.modules.base import FitConfig, StageModule, as_network
from ssr_lightning.visualize import Panel

__all__ = ["VAEModule"]


class VAEModule(StageModule):
    """Train (or wrap) the AutoencoderKL whose latents the SSR diffusion stage denoises.

    Validation/test: reconstruction (posterior mean → decode) PSNR on RGB and Y, SSIM-Y, on HR val/test crops.
    """

    monitor = "val/psnr"
    monitor_mode = "max"

    def __init__(
        self,
        net: VAELatents,
        kl_weight: float = 1e-6,
        color_augment: bool = False,
        lowfreq_weight: float = 0.0,
        scale: int = 4,
        fit: FitConfig = FitConfig(learning_rate=1e-3, min_learning_rate=1e-5, warmup_steps=50),  # noqa: B008
    ) -> None:
        """
        Args:
            net: The latent space (``VAELatents``: a tiny ``AutoencoderKL``'s sizes, or a local pretrained VAE's
                folder, which ``fit`` then fine-tunes).
            kl_weight: Weight of the KL term, per image pixel (SD: 1e-6).
            color_augment: Random channel permutation + saturation (0.5-1.5) of each training patch.
            lowfreq_weight: Weight of the L1 term between 8×8 average-pooled reconstruction and input (0 = off).
            scale: SR factor (linked to data.scale; unused by the VAE, recorded for the diffusion stage).
            fit: Optimiser, schedule, checkpoint interval and logged images.
        """
        super().__init__()
        net = as_network(net, VAELatents)  # a class_path/init_args block (load_from_checkpoint) is built
        self.save_stage_hparams()
        self.model = net
        self._std_sum: list[Tensor] = []

    @property
    def vae(self) -> Any:
        """The diffusers ``AutoencoderKL``."""
        return self.model.vae

    def forward(self, img: Tensor) -> Tensor:
        """Reconstruction of ``img`` through the posterior mean."""
        return self.model(img)

    # --- steps --------------------------------------------------------------------------------------------------
    @staticmethod
    def augment_color(img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per sample: a random permutation of the RGB channels and a random saturation in [0.5, 1.5]."""
        b = img.shape[0]
        perm = torch.stack([torch.randperm(3, generator=generator) for _ in range(b)]).to(img.device)
        out = torch.gather(img, 1, perm[:, :, None, None].expand(-1, -1, *img.shape[-2:]))
        sat = (0.5 + torch.rand(b, 1, 1, 1, generator=generator)).to(img)
        grey = out.mean(1, keepdim=True)
        return (grey + sat * (out - grey)).clamp(0, 1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        hr = self.augment_color(batch["hr"]) if self.hparams.get("color_augment") else batch["hr"]
        x = hr * 2.0 - 1.0
        dist = self.vae.encode(x).latent_dist
        rec = self.vae.decode(dist.sample()).sample
        l1 = F.l1_loss(rec, x)
        # diffusers' kl() sums over the latent; per image pixel it weighs like SD's (summed rec loss, 1e-6 KL).
        kl = dist.kl().mean() / x[0].numel()
        loss = l1 + self.hparams.kl_weight * kl
        bs = x.shape[0]
        lowfreq_weight = float(self.hparams.get("lowfreq_weight") or 0.0)
        if lowfreq_weight > 0:
            low = F.l1_loss(F.avg_pool2d(rec, 8), F.avg_pool2d(x, 8))
            loss = loss + lowfreq_weight * low
            self.log("train/lowfreq_l1", low, batch_size=bs)
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
                   "ssim_y": ssim_y(rec, hr, crop_border=s), "color_shift": color_shift(rec, hr)}
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
            n = self.fit_args.num_log_images
            self.log_grid("val/hr|rec", [Panel("HR", batch["hr"][:n]), Panel("reconstruction", rec[:n])], max_rows=n,
                          names=batch.get("name"))

    def on_validation_epoch_end(self) -> None:
        # The latent std over the whole val split; only a trained (not pretrained) VAE records its own scale.
        if self._std_sum and self.model.config.pretrained_path is None and not self.trainer.sanity_checking:
            sq, s, n = torch.stack([t.cpu() for t in self._std_sum]).sum(0)
            std = float((sq / n - (s / n) ** 2).clamp_min(1e-12).sqrt())
            # float32 first: the scale is 1 / (the std as stored), as the previous format computed it
            self.model.scale.fill_(1.0 / float(torch.tensor(std, dtype=torch.float32)))
            self.log("val/latent_std", std)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, _, metrics = self._evaluate(batch)
        self.record_test(metrics, batch.get("name"))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self(batch["hr"]).clamp(0, 1)
