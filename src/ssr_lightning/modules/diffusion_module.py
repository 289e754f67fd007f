"""SSRDiffusionModule: AMF-conditioned latent diffusion, the generative stage of SSR (paper §3.3, DESIGN.md §4).

Training (Eq. 5): ``L = E‖ε − ε_θ(√ᾱ_t z_0 + √(1−ᾱ_t) ε, t, f)‖² + Σ_i λ_i ‖f_i‖₁`` with ``z_0 = VAE(HR)`` and
``f_i`` the kernel (f_1), depth (f_2) and LR (f_3) encoder features (``‖f_i‖₁`` = mean |f_i| over its levels; the
arXiv version: L1 sparsifies the modality features so they learn complementary information).
D_T and K_T come from the batch's ground truth (``condition_source="gt"``) or from a frozen SVKR
(``"svkr"``, T = ``svkr_iterations``; T = 0 is a single DE → KE pass); both are on the LR grid. The LR latent is ``VAE(bicubic↑s(LR))``.

Sampling: diffusers ``DDIMScheduler`` (default, η=0, "trailing" spacing) or ``DDPMScheduler``, noise from a seeded
CPU ``torch.Generator`` (identical on every device), encoder features computed once per image. Validation and
sampling use the EMA weights. Validation samples the first ``num_val_samples`` val images → PSNR/SSIM-Y and a
grid LR | SR | HR | depth | kernel spread; the ε-MSE on the val batch (fixed seed) is logged as ``val/loss``.

Backbone: a tiny ``UNet2DModel`` + the VAE of a ``VAEModule`` checkpoint (``vae_ckpt``), or a local pretrained
diffusers folder (``pretrained_path``: ``unet/``, ``vae/``, optionally ``scheduler/``), frozen when
``freeze_backbone`` so only encoders + AMF (+ the null text token, + conv_in with ``concat_lr``) train; frozen
pretrained weights are then left out of the checkpoints (they are reloaded from ``pretrained_path``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ssr_lightning.metrics import psnr, psnr_y, ssim_y
from ssr_lightning.modules.base import StageModule
from ssr_lightning.modules.vae_module import VAEModule, build_tiny_vae, load_pretrained_vae
from ssr_lightning.networks.amf import AMFMode
from ssr_lightning.networks.ssr_unet import SSRUNet
from ssr_lightning.visualize import heatmap, kernel_spread

__all__ = ["EMA", "SSRDiffusionModule", "lr_multiple", "pad_reflect"]

ConditionSource = Literal["gt", "svkr"]
Sampler = Literal["ddim", "ddpm"]


def pad_reflect(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad bottom/right to a multiple of ``multiple`` (reflect; replicate where the map is too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (ph, pw)


def lr_multiple(scale: int, vae_factor: int, unet_multiple: int) -> int:
    """LR sides must be multiples of this so that ``s·h`` is a multiple of ``vae_factor · unet_multiple``."""
    need = vae_factor * unet_multiple
    return need // math.gcd(need, scale)


class EMA(nn.Module):
    """Exponential moving average of the trainable parameters, kept as buffers (saved, moved, loaded for free).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` (diffusers' EMAModel), so short runs are not
    dominated by the random initialisation.
    """

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], decay: float) -> None:
        super().__init__()
        self.decay, self.names = decay, [n for n, _ in named_params]
        for n, p in named_params:
            self.register_buffer(n.replace(".", "__"), p.detach().clone())
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))

    def _shadow(self, name: str) -> Tensor:
        return getattr(self, name.replace(".", "__"))

    @torch.no_grad()
    def update(self, params: dict[str, nn.Parameter]) -> None:
        n = int(self.num_updates)
        d = min(self.decay, (1 + n) / (10 + n))
        for name in self.names:
            self._shadow(name).lerp_(params[name].detach().to(self._shadow(name).dtype), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def swap(self, params: dict[str, nn.Parameter]) -> None:
        """Exchange live and EMA weights (call twice to restore)."""
        for name in self.names:
            tmp = params[name].detach().clone()
            params[name].copy_(self._shadow(name))
            self._shadow(name).copy_(tmp)


class SSRDiffusionModule(StageModule):
    """AMF-conditioned latent diffusion SR (see the module doc); ``self(lr, depth, kernel)`` super-resolves."""

    monitor = "val/psnr_y"
    monitor_mode = "max"

    def __init__(
        self,
        vae_ckpt: str | None = "runs/vae/version_0/checkpoints/best.ckpt",
        vae_arch: dict[str, Any] | None = None,
        pretrained_path: str | None = None,
        freeze_backbone: bool = True,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block: int = 1,
        use_kernel: bool = True,
        use_depth: bool = True,
        use_lr: bool = True,
        concat_lr: bool = True,
        amf_hidden: int = 128,
        amf_pooled: bool = False,
        amf_mode: AMFMode = "residual",
        amf_on_input: bool = True,
        lr_width_mult: float = 1.0,
        map_width: int = 32,
        lambda_kernel: float = 1e-4,
        lambda_depth: float = 1e-4,
        lambda_lr: float = 1e-4,
        condition_source: ConditionSource = "gt",
        dkenet_ckpt: str | None = None,
        nbsr_ckpt: str | None = None,
        depth: Literal["gt", "learned", "midas", "dpt"] = "learned",
        depth_ckpt: str | None = None,
        svkr_iterations: int = 3,
        svkr_gamma: float = 0.9,
        num_train_timesteps: int = 1000,
        sampler: Sampler = "ddim",
        num_inference_steps: int = 20,
        sample_strength: float = 1.0,
        ema_decay: float = 0.999,
        num_val_samples: int = 4,
        seed: int = 0,
        gradient_checkpointing: bool = False,
        scale: int = 4,
        lr: float = 2e-4,
        min_lr: float = 1e-6,
        warmup_steps: int = 100,
        ckpt_every_n_steps: int = 200,
        num_log_images: int = 4,
    ) -> None:
        """
        Args:
            vae_ckpt: ``VAEModule`` checkpoint (``ssr fit --config configs/vae.yaml``) giving the latent space.
            vae_arch: Filled automatically from ``vae_ckpt`` (so a diffusion checkpoint rebuilds its VAE without
                that file); set by hand only to build an untrained tiny VAE (tests).
            pretrained_path: Local diffusers folder (``unet/``, ``vae/``): replaces the tiny UNet and the VAE.
            freeze_backbone: With ``pretrained_path``: train only encoders + AMF (ignored for a tiny backbone).
            block_out_channels: Tiny UNet widths.
            down_block_types: Tiny UNet down blocks.
            up_block_types: Tiny UNet up blocks.
            layers_per_block: Tiny UNet ResNets per block.
            use_kernel: Kernel modality f_1 (ablation switch).
            use_depth: Depth modality f_2 (ablation switch).
            use_lr: LR-encoder modality f_3 (ablation switch).
            concat_lr: Also concatenate the LR latent to the UNet input.
            amf_hidden: Hidden width of the AMF MLPs (paper: 128).
            amf_pooled: Global (pooled) AMF instead of per-pixel.
            amf_mode: ``"residual"`` (identity at init) or ``"paper"`` (literal Eq. 3).
            amf_on_input: Also modulate the UNet's conv_in output (full latent resolution).
            lr_width_mult: LR encoder width relative to the UNet.
            map_width: Depth / kernel encoder width.
            lambda_kernel: λ_1 of Eq. 5 (L1 on f_1).
            lambda_depth: λ_2 (L1 on f_2).
            lambda_lr: λ_3 (L1 on f_3).
            condition_source: D_T, K_T from the batch's GT (``gt``) or a frozen SVKR (``svkr``).
            dkenet_ckpt: KE checkpoint for ``svkr``.
            nbsr_ckpt: NBSR checkpoint for ``svkr``.
            depth: SVKR's depth estimator for ``svkr`` (``gt``: the batch's depth, an oracle DE).
            depth_ckpt: Its weights (DepthModule checkpoint, MiDaS .pt or DPT folder).
            svkr_iterations: SVKR's T for ``svkr`` (0: one DE → KE pass, the paper's "w/o SVKR").
            svkr_gamma: SVKR's γ for ``svkr``.
            num_train_timesteps: DDPM steps of the training noise schedule.
            sampler: ``ddim`` (default, deterministic for a seed) or ``ddpm``.
            num_inference_steps: Sampling steps.
            sample_strength: 1.0 samples from pure noise (the paper's setting); s < 1 starts at t ≈ s·T from the
                noised LR latent and runs the last ``round(s·steps)`` steps (LR-initialised, img2img-style).
            ema_decay: EMA decay of the trainable weights (0 disables EMA); EMA weights validate and sample.
            num_val_samples: Val images sampled per validation (first val batch).
            seed: Seed of the validation sampling noise.
            gradient_checkpointing: Recompute UNet activations in backward (SD-sized backbones).
            scale: SR factor (linked to data.scale).
            lr: Adam learning rate.
            min_lr: Floor of the cosine schedule.
            warmup_steps: Linear warm-up steps.
            ckpt_every_n_steps: How often `last.ckpt` is refreshed during training.
            num_log_images: Rows of the validation grid.
        """
        super().__init__()
        if condition_source not in ("gt", "svkr"):
            raise ValueError(f"condition_source must be 'gt' or 'svkr', got {condition_source!r}")
        latent_scale = 0.0
        if pretrained_path is not None:
            vae = load_pretrained_vae(pretrained_path)
            latent_scale = float(vae.config.scaling_factor)
        elif vae_arch is not None:
            vae = build_tiny_vae(**vae_arch)  # weights come from this module's checkpoint
        elif vae_ckpt is not None:
            if not Path(vae_ckpt).is_file():
                raise FileNotFoundError(
                    f"VAE checkpoint not found: {vae_ckpt}. Train the VAE first (ssr fit --config configs/vae.yaml) "
                    "or give pretrained_path (a local Stable Diffusion folder)."
                )
            vmod = VAEModule.load_from_checkpoint(vae_ckpt, map_location="cpu")
            vae, latent_scale = vmod.vae, vmod.scaling_factor()
            vc = vae.config  # the diffusers config, not hparams: those differ when loaded inside LightningCLI
            vae_arch = {"block_out_channels": list(vc.block_out_channels), "layers_per_block": vc.layers_per_block,
                        "latent_channels": vc.latent_channels, "mid_attention": vc.mid_block_add_attention}
        else:
            raise ValueError("SSRDiffusionModule needs vae_ckpt (a VAEModule checkpoint) or pretrained_path")
        self.save_hyperparameters()
        self.hparams["vae_arch"] = vae_arch  # recorded so the checkpoint alone rebuilds the VAE
        self.vae = vae.requires_grad_(False).eval()
        # Buffer: travels with the checkpoint (a tiny VAE's measured latent std, or SD's 0.18215).
        self.register_buffer("latent_scale", torch.tensor(latent_scale or 1.0))
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet = SSRUNet(
            latent_channels=int(self.vae.config.latent_channels), block_out_channels=block_out_channels,
            down_block_types=down_block_types, up_block_types=up_block_types, layers_per_block=layers_per_block,
            pretrained_path=pretrained_path, use_kernel=use_kernel, use_depth=use_depth, use_lr=use_lr,
            concat_lr=concat_lr, amf_hidden=amf_hidden, amf_pooled=amf_pooled, amf_mode=amf_mode,
            amf_on_input=amf_on_input, lr_width_mult=lr_width_mult, map_width=map_width, map_out=map_width,
        )
        self.frozen_backbone = freeze_backbone and pretrained_path is not None
        if self.frozen_backbone:
            self.unet.backbone.requires_grad_(False)
            if concat_lr:  # the zero-initialised LR input channels must learn
                self.unet.backbone.conv_in.requires_grad_(True)
            # Frozen pretrained weights are dropped from checkpoints (on_save_checkpoint), so load non-strictly.
            self.strict_loading = False
        if gradient_checkpointing:
            self.unet.backbone.enable_gradient_checkpointing()
        self.noise_scheduler = self._make_scheduler()
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        self.ema = EMA(trainable, ema_decay) if ema_decay > 0 else None
        self._svkr: list[Any] = []  # a list keeps the frozen SVKR out of parameters and state_dict

    # --- construction helpers -----------------------------------------------------------------------------------
    def _make_scheduler(self) -> Any:
        from diffusers import DDPMScheduler

        path = self.hparams.pretrained_path
        if path is not None and (Path(path) / "scheduler").is_dir():
            return DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
        # Stable Diffusion's schedule (scaled_linear 0.00085-0.012), which suits unit-variance latents.
        return DDPMScheduler(num_train_timesteps=self.hparams.num_train_timesteps, beta_schedule="scaled_linear",
                             beta_start=0.00085, beta_end=0.012, prediction_type="epsilon", clip_sample=False)

    def sampling_scheduler(self, sampler: Sampler | None = None) -> Any:
        """A fresh scheduler for sampling (DDIM "trailing": the first step starts at t = T-1, pure noise)."""
        from diffusers import DDIMScheduler, DDPMScheduler

        sampler = sampler or self.hparams.sampler
        if sampler == "ddim":
            return DDIMScheduler.from_config(self.noise_scheduler.config, timestep_spacing="trailing",
                                             set_alpha_to_one=False, clip_sample=False)
        return DDPMScheduler.from_config(self.noise_scheduler.config)

    # --- latent space -------------------------------------------------------------------------------------------
    def encode_image(self, img: Tensor, sample: bool = False) -> Tensor:
        """Image in [0, 1] → scaled latent (posterior mean unless ``sample``)."""
        dist = self.vae.encode(img * 2.0 - 1.0).latent_dist
        return (dist.sample() if sample else dist.mode()) * self.latent_scale

    def decode_latent(self, z: Tensor) -> Tensor:
        """Scaled latent → image in [0, 1] (clamped)."""
        return ((self.vae.decode(z / self.latent_scale).sample + 1.0) / 2.0).clamp(0, 1)

    def lr_latent(self, lr: Tensor) -> Tensor:
        """VAE latent of the bicubic-upsampled LR (the LR encoder's and ``concat_lr``'s input)."""
        up = F.interpolate(lr, scale_factor=self.hparams.scale, mode="bicubic", align_corners=False)
        return self.encode_image(up.clamp(0, 1))

    # --- conditions ---------------------------------------------------------------------------------------------
    def svkr(self) -> Any:
        """The frozen SVKR of ``condition_source="svkr"`` (built on first use)."""
        if not self._svkr:
            from ssr_lightning.svkr import SVKR

            h = self.hparams
            svkr = SVKR.from_checkpoints(h.dkenet_ckpt, h.nbsr_ckpt, depth=h.depth, depth_path=h.depth_ckpt,
                                         iterations=h.svkr_iterations, gamma=h.svkr_gamma)
            self._svkr.append(svkr.eval().requires_grad_(False))
            rank_zero_info(f"diffusion conditions on SVKR estimates (T={svkr.iterations}, γ={svkr.gamma}; "
                           f"{h.dkenet_ckpt}, {h.nbsr_ckpt})")
        return self._svkr[0].to(self.device)

    def conditions(self, batch: dict[str, Any]) -> tuple[Tensor | None, Tensor | None]:
        """(D_T, K_T) on the LR grid for the enabled modalities (None for a modality that is off)."""
        h = self.hparams
        if not (h.use_depth or h.use_kernel):
            return None, None
        if h.condition_source == "svkr":
            with torch.no_grad():
                gt = batch.get("depth") if h.depth == "gt" else None  # "gt": SVKR with oracle depth, learned KE
                depth, kernel, _ = self.svkr()(batch["lr"], gt_depth=gt).final
        else:
            if h.use_kernel and "kernel" not in batch:
                raise ValueError("condition_source='gt' needs GT kernel fields (HR data sets); use 'svkr' for paired data")
            depth, kernel = batch.get("depth_lr"), batch.get("kernel")
        return (depth if h.use_depth else None), (kernel if h.use_kernel else None)

    # --- training -----------------------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Eq. 5 terms: ``mse`` (ε-MSE), ``l1_<modality>`` (mean |f_i|) and ``loss`` (their λ-weighted sum)."""
        with torch.no_grad():
            z0 = self.encode_image(batch["hr"], sample=generator is None)  # posterior mean when seeded (val)
            z_lr = self.lr_latent(batch["lr"])
        depth, kernel = self.conditions(batch)
        b = z0.shape[0]
        noise = torch.randn(z0.shape, generator=generator).to(z0) if generator is not None else torch.randn_like(z0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(z0.device)
        z_t = self.noise_scheduler.add_noise(z0, noise, t)
        feats = self.unet.encode((z0.shape[-2], z0.shape[-1]), z_lr, depth, kernel)
        eps = self.unet.denoise(z_t, t, feats, z_lr)
        out = {"mse": F.mse_loss(eps.float(), noise.float())}
        loss = out["mse"]
        for name, maps in feats.items():
            out[f"l1_{name}"] = torch.stack([f.float().abs().mean() for f in maps]).mean()
            loss = loss + self.hparams[f"lambda_{name}"] * out[f"l1_{name}"]
        out["loss"] = loss
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms = self.diffusion_loss(batch)
        bs = batch["hr"].shape[0]
        for k, v in terms.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", batch_size=bs)
        return terms["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(dict(self.named_parameters()))

    def on_fit_start(self) -> None:
        total = sum(p.numel() for p in self.parameters())
        train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        parts = {"unet.backbone": self.unet.backbone, "encoders": self.unet.encoders, "amf": self.unet.amf,
                 "vae": self.vae}
        detail = ", ".join(f"{k} {sum(p.numel() for p in m.parameters()):,}" for k, m in parts.items())
        rank_zero_info(f"SSRDiffusionModule: {train:,} trainable of {total:,} parameters ({detail}); "
                       f"modalities {self.unet.enabled or 'none'}, concat_lr={self.hparams.concat_lr}")

    # --- sampling -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def super_resolve(
        self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None,
        generator: torch.Generator | None = None, num_inference_steps: int | None = None,
        sampler: Sampler | None = None, noise: Tensor | None = None, strength: float | None = None,
    ) -> Tensor:
        """SR ``(B, 3, s·h, s·w)`` of ``lr (B, 3, h, w)`` given D_T/K_T on the LR grid (any h, w: padded).

        ``strength`` overrides ``sample_strength``. The initial noise is ``noise`` (a latent-shaped tensor, e.g. cut
        from a larger noise map by the tiled pipeline) or drawn from ``generator`` (a CPU generator: same noise on
        every device).
        """
        s, (h, w) = self.hparams.scale, lr.shape[-2:]
        q = lr_multiple(s, self.vae_factor, self.unet.size_multiple)
        lr_p, _ = pad_reflect(lr, q)
        depth = pad_reflect(depth, q)[0] if depth is not None else None
        kernel = pad_reflect(kernel, q)[0] if kernel is not None else None
        z_lr = self.lr_latent(lr_p)
        feats = self.unet.encode((z_lr.shape[-2], z_lr.shape[-1]), z_lr, depth, kernel)
        sched = self.sampling_scheduler(sampler)
        steps = num_inference_steps or self.hparams.num_inference_steps
        sched.set_timesteps(steps, device=lr.device)
        if noise is None:
            noise = torch.randn(z_lr.shape, generator=generator, dtype=torch.float32)
        noise = noise.to(z_lr)
        strength = self.hparams.sample_strength if strength is None else strength
        timesteps = sched.timesteps
        if strength < 1.0:
            # LR-initialised sampling (img2img): start at t ≈ strength·T from the noised LR latent, skipping the
            # high-noise steps where an ε-model's x0 estimate is least reliable (1/√ᾱ_t amplifies its error).
            timesteps = timesteps[steps - max(1, int(round(steps * strength))):]
            z = sched.add_noise(z_lr, noise, timesteps[:1].repeat(z_lr.shape[0]))
        else:
            z = noise * sched.init_noise_sigma
        for t in timesteps:
            eps = self.unet.denoise(sched.scale_model_input(z, t), t, feats, z_lr)
            # DDIM with eta=0 is deterministic; DDPM draws fresh noise per step from the same generator.
            kw = {"generator": generator} if (sampler or self.hparams.sampler) == "ddpm" else {}
            z = sched.step(eps, t, z, **kw).prev_sample
        return self.decode_latent(z)[..., : s * h, : s * w]

    def forward(self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        return self.super_resolve(lr, depth, kernel, generator)

    def use_ema_weights(self) -> None:
        """Copy the EMA weights into the live ones for good (inference from a checkpoint)."""
        if self.ema is not None:
            self.ema.swap(dict(self.named_parameters()))
            self.ema = None

    # --- validation / test --------------------------------------------------------------------------------------
    def _swap_ema(self) -> None:
        if self.ema is not None and int(self.ema.num_updates) > 0:
            self.ema.swap(dict(self.named_parameters()))

    def on_validation_epoch_start(self) -> None:
        self._swap_ema()

    def on_validation_epoch_end(self) -> None:
        self._swap_ema()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        bs = batch["hr"].shape[0]
        gen = torch.Generator().manual_seed(self.hparams.seed + batch_idx)
        self.log("val/loss", self.diffusion_loss(batch, gen)["mse"], batch_size=bs, sync_dist=True)
        if batch_idx != 0 or self.hparams.num_val_samples <= 0:
            return
        n = min(self.hparams.num_val_samples, bs)
        sub = {k: (v[:n] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == bs else v) for k, v in batch.items()}
        depth, kernel = self.conditions(sub)
        sr = self.super_resolve(sub["lr"], depth, kernel, torch.Generator().manual_seed(self.hparams.seed))
        hr, s = sub["hr"], self.hparams.scale
        self.log("val/psnr_y", psnr_y(sr, hr, crop_border=s).mean(), prog_bar=True, batch_size=n)
        self.log("val/ssim_y", ssim_y(sr, hr, crop_border=s).mean(), prog_bar=True, batch_size=n)
        cols = [sub["lr"], sr, hr]
        d = depth if depth is not None else sub.get("depth_lr")
        k = kernel if kernel is not None else sub.get("kernel")
        if d is not None:
            cols.append(heatmap(d, cmap="viridis", vmin=0.0, vmax=1.0))
        if k is not None:
            cols.append(heatmap(kernel_spread(k), cmap="magma"))
        self.log_grid("val/lr|sr|hr|depth|kernel_spread", cols, max_rows=self.hparams.num_log_images)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._swap_ema()

    def on_test_epoch_end(self) -> None:
        self._swap_ema()
        super().on_test_epoch_end()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        depth, kernel = self.conditions(batch)
        sr = self.super_resolve(batch["lr"], depth, kernel, torch.Generator().manual_seed(self.hparams.seed + batch_idx))
        hr, s = batch["hr"], self.hparams.scale
        self.record_test({"psnr_y": psnr_y(sr, hr, crop_border=s), "ssim_y": ssim_y(sr, hr, crop_border=s),
                          "psnr": psnr(sr, hr, crop_border=s)}, batch.get("name"))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        depth, kernel = self.conditions(batch)
        return self.super_resolve(batch["lr"], depth, kernel, torch.Generator().manual_seed(self.hparams.seed + batch_idx))

    def on_predict_start(self) -> None:
        self._swap_ema()

    def on_predict_end(self) -> None:
        self._swap_ema()

    # --- checkpoints --------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.frozen_backbone:
            # Frozen pretrained weights are reloaded from pretrained_path; saving them would cost GBs per file.
            keep = {n for n, p in self.named_parameters() if p.requires_grad}
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(("vae.", "unet.backbone.")) and k not in keep]:
                del state[key]
