"""SSRDiffusionModule: trains the AMF-conditioned latent diffusion stage of SSR (paper §3.3, docs/DESIGN.md §4).

A thin LightningModule around :class:`~ssr_lightning.diffusion.LatentDiffusionSR` (latent space + AMF UNet + the
diffusion process): it builds the model from its argument groups, picks the conditions (the batch's GT maps, or a
frozen SVKR), runs Eq. 5 (``model.loss``), keeps an EMA of the trainable weights (diffusers' ``EMAModel``), and
samples with the EMA weights for validation, test and predict (``model.super_resolve``).

Backbone: a tiny ``UNet2DModel`` + the VAE of a ``VAEModule`` checkpoint (``backbone.vae_ckpt``), or a local
pretrained diffusers folder (``backbone.pretrained_path``), frozen when ``backbone.freeze_backbone`` so only encoders +
AMF (+ the null text token, + conv_in with ``concat_lr``) train; frozen pretrained weights are then left out of the
checkpoints (they are reloaded from ``pretrained_path``). ``backbone.autoencoder=space_to_depth`` needs no VAE.

Process options (``modalities.image_condition``, ``sampling.start``/``guidance_step``/``color_fix``): see
``diffusion/model.py``. Test metrics are reported with the configured colour fix (``psnr_y``, ``ssim_y``, ``psnr``,
``color_shift``) and without it (``*_raw``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.training_utils import EMAModel
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ssr_lightning.diffusion.config import (
    BackboneConfig,
    LossConfig,
    ModalityConfig,
    SamplingConfig,
)
from ssr_lightning.diffusion.model import LatentDiffusionSR
from ssr_lightning.diffusion.space_to_depth import (
    SPACE_TO_DEPTH_MEAN,
    SPACE_TO_DEPTH_STD,
)
from ssr_lightning.inference.checkpoints import (
    load_model,
    read_checkpoint,
    resolve_checkpoint,
)
from ssr_lightning.inference.svkr import SVKR, SVKRConfig
from ssr_lightning.metrics import color_shift, psnr, psnr_y, ssim_y
from ssr_lightning.modules.base import FitConfig, StageModule, as_config
from ssr_lightning.visualize import Panel, kernel_spread

__all__ = ["ConditionConfig", "Conditions", "SSRDiffusionModule"]


@dataclass
class ConditionConfig(SVKRConfig):
    """Where D_T and K_T come from: the batch's ground truth, or a frozen SVKR over trained stages."""

    source: Literal["gt", "svkr"] = "gt"
    """gt: the batch's GT depth and kernel field (and, where I_T is needed, NBSR(LR, GT kernel) from nbsr_ckpt);
    svkr: SVKR's estimates D_T, K_T, I_T (its checkpoints, T and γ below)."""


@dataclass
class Conditions:
    """What one batch is conditioned on: the UNet's maps (None where a modality is off), the guidance kernel field
    (None without guidance) and the front end's SR image I_T (None where nothing reads it)."""

    depth: Tensor | None = None
    kernel: Tensor | None = None
    guidance_kernel: Tensor | None = None
    reference: Tensor | None = None


class SSRDiffusionModule(StageModule):
    """AMF-conditioned latent diffusion SR (see the module doc); ``self(lr, depth, kernel)`` super-resolves."""

    stage = "ssrdiffusion"
    monitor = "val/psnr_y"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),  # noqa: B008 (argument groups are never mutated)
        modalities: ModalityConfig = ModalityConfig(),  # noqa: B008
        conditions: ConditionConfig = ConditionConfig(),  # noqa: B008
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008
        loss: LossConfig = LossConfig(),  # noqa: B008
        vae_arch: dict[str, Any] | None = None,
        scale: int = 4,
        fit: FitConfig = FitConfig(warmup_steps=100, ckpt_every_n_steps=200),  # noqa: B008
    ) -> None:
        """
        Args:
            backbone: The UNet, the autoencoder and the noise schedule.
            modalities: Which conditions reach the UNet and how AMF fuses them (Table 2's switches).
            conditions: Where D_T, K_T come from (GT maps or SVKR over trained stages).
            sampling: Sampler, steps, start strength and seed of validation/test/predict samples.
            loss: Eq. 5's λ weights and the EMA decay.
            vae_arch: Filled automatically from backbone.vae_ckpt (so a diffusion checkpoint rebuilds its VAE without
                that file); set by hand only to build an untrained tiny VAE (tests).
            scale: SR factor (linked to data.scale).
            fit: Optimiser, schedule, checkpoint interval and logged images.
        """
        super().__init__()
        self.save_stage_hparams()
        bb, mod = as_config(BackboneConfig, backbone), as_config(ModalityConfig, modalities)
        self.conditions_cfg = as_config(ConditionConfig, conditions)
        self.sampling_cfg, self.loss_cfg = as_config(SamplingConfig, sampling), as_config(LossConfig, loss)
        if self.conditions_cfg.source not in ("gt", "svkr"):
            raise ValueError(f"model.init_args.conditions.source must be 'gt' or 'svkr', got "
                             f"{self.conditions_cfg.source!r}")
        vae_state = None
        if bb.autoencoder == "space_to_depth":
            if bb.pretrained_path is not None:
                raise ValueError("model.init_args.backbone.autoencoder=space_to_depth replaces the VAE: leave "
                                 "backbone.pretrained_path empty (a pretrained UNet expects its own VAE's latents)")
            # the constants go into the model config, so the checkpoint keeps the normalisation it was trained with
            ae_config: dict[str, Any] | None = {"factor": bb.space_to_depth_factor, "mean": list(SPACE_TO_DEPTH_MEAN),
                                                "std": list(SPACE_TO_DEPTH_STD)}
            vae_arch = None
        else:
            if bb.pretrained_path is None and vae_arch is None:
                vae_ckpt = read_checkpoint(resolve_checkpoint(bb.vae_ckpt, "vae"), "vae")
                vae_arch = dict(vae_ckpt["ssr"]["model_config"])
                vae_state = {k[len("model."):]: v for k, v in vae_ckpt["state_dict"].items()
                             if k.startswith("model.")}
            ae_config = vae_arch
        self.hparams["vae_arch"] = vae_arch  # recorded so the checkpoint alone rebuilds the VAE
        unet = {"block_out_channels": list(bb.block_out_channels), "down_block_types": list(bb.down_block_types),
                "up_block_types": list(bb.up_block_types), "layers_per_block": bb.layers_per_block,
                **{k: v for k, v in dataclasses.asdict(mod).items() if k != "image_condition"},
                "map_out": mod.map_width}
        sc = self.sampling_cfg
        self.model = LatentDiffusionSR(
            autoencoder_config=ae_config, unet_config=unet, pretrained_path=bb.pretrained_path,
            num_train_timesteps=bb.num_train_timesteps, scale=scale, sampler=sc.sampler,
            num_inference_steps=sc.num_inference_steps, sample_strength=sc.sample_strength,
            autoencoder=bb.autoencoder, image_condition=mod.image_condition, sample_start=sc.start,
            guidance_step=sc.guidance_step, color_fix=sc.color_fix, prediction_type=bb.prediction_type,
            residual=bb.residual, residual_scale=bb.residual_scale,
        )
        if vae_state is not None:
            self.model.latents.load_state_dict(vae_state)
        self.model.latents.requires_grad_(False).eval()
        self.frozen_backbone = bb.freeze_backbone and bb.pretrained_path is not None
        if self.frozen_backbone:
            self.model.unet.backbone.requires_grad_(False)
            if mod.concat_lr:  # the zero-initialised LR input channels must learn
                self.model.unet.backbone.conv_in.requires_grad_(True)
            # Frozen pretrained weights are dropped from checkpoints (on_save_checkpoint), so load non-strictly.
            self.strict_loading = False
        if bb.gradient_checkpointing:
            self.model.unet.backbone.enable_gradient_checkpointing()
        self._ema_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.ema = (EMAModel([p for _, p in self._trainable()], decay=self.loss_cfg.ema_decay)
                    if self.loss_cfg.ema_decay > 0 else None)
        self._svkr: list[SVKR] = []  # a list keeps the frozen SVKR out of parameters and state_dict
        self._nbsr: list[torch.nn.Module] = []

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        params = dict(self.model.named_parameters())
        return [(n, params[n]) for n in self._ema_names]

    # --- conditions ---------------------------------------------------------------------------------------------
    def _svkr_config(self) -> SVKRConfig:
        c = self.conditions_cfg
        return SVKRConfig(**{f.name: getattr(c, f.name) for f in dataclasses.fields(SVKRConfig)})

    def svkr(self) -> SVKR:
        """The frozen SVKR of ``conditions.source="svkr"`` (built on first use)."""
        if not self._svkr:
            c = self.conditions_cfg
            svkr = SVKR.from_config(self._svkr_config())
            self._svkr.append(svkr.eval().requires_grad_(False))
            rank_zero_info(f"diffusion conditions on SVKR estimates (T={svkr.iterations}, γ={svkr.gamma}; "
                           f"{c.dkenet_ckpt}, {c.nbsr_ckpt})")
        return self._svkr[0].to(self.device)

    def oracle_reference(self, lr: Tensor, kernel: Tensor) -> Tensor:
        """NBSR(LR, GT kernel): I_T's counterpart under GT conditions (SVKR's last step with the true kernel)."""
        if self._svkr:
            return self._svkr[0].super_resolve(lr, kernel)
        if not self._nbsr:
            path = resolve_checkpoint(self.conditions_cfg.nbsr_ckpt, "nbsr")
            self._nbsr.append(load_model(path, "nbsr"))
            rank_zero_info(f"I_T under GT conditions: NBSR(LR, GT kernel) from {path}")
        return self._nbsr[0].to(self.device)(lr, kernel).clamp(0.0, 1.0)

    def conditions(self, batch: dict[str, Any], training: bool = False) -> Conditions:
        """The batch's conditions for this stage's settings: D_T, K_T for the enabled modalities, the guidance
        kernel field and I_T where the image condition, the start or (not in ``training``) sampling need them."""
        uses = self.model.uses
        needs = self.model.needs()
        need_ref = self.model.config.image_condition == "svkr" if training else needs["reference"]
        need_guide = needs["guidance_kernel"] and not training
        if not (uses["depth"] or uses["kernel"] or need_ref or need_guide):
            return Conditions()
        if self.conditions_cfg.source == "svkr":
            with torch.no_grad():
                gt = batch.get("depth") if self.conditions_cfg.depth == "gt" else None  # oracle DE, learned KE
                depth, kernel, image = self.svkr()(batch["lr"], gt_depth=gt).final
        else:
            depth, kernel, image = batch.get("depth_lr"), batch.get("kernel"), None
            if (uses["kernel"] or need_ref or need_guide) and kernel is None:
                raise ValueError("conditions.source='gt' needs GT kernel fields (HR data sets); use 'svkr' for "
                                 "paired data")
            if need_ref:
                with torch.no_grad():
                    image = self.oracle_reference(batch["lr"], kernel)
        return Conditions(depth if uses["depth"] else None, kernel if uses["kernel"] else None,
                          kernel if need_guide else None, image if need_ref else None)

    # --- training -----------------------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Eq. 5 terms of a batch: ``mse``, ``l1_<modality>``, ``loss``."""
        c = self.conditions(batch, training=True)
        return self.model.loss(batch["hr"], batch["lr"], c.depth, c.kernel, self.loss_cfg.weights(), generator,
                               reference=c.reference)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms = self.diffusion_loss(batch)
        bs = batch["hr"].shape[0]
        for k, v in terms.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", batch_size=bs)
        return terms["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.step([p for _, p in self._trainable()])

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)
        m = self.model
        total = sum(p.numel() for p in self.parameters())
        train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        parts = {"unet.backbone": m.unet.backbone, "encoders": m.unet.encoders, "amf": m.unet.amf, "vae": m.latents}
        detail = ", ".join(f"{k} {sum(p.numel() for p in mod.parameters()):,}" for k, mod in parts.items())
        rank_zero_info(f"SSRDiffusionModule: {train:,} trainable of {total:,} parameters ({detail}); "
                       f"modalities {m.unet.enabled or 'none'}, concat_lr={self.hparams.modalities['concat_lr']}")

    # --- sampling -----------------------------------------------------------------------------------------------
    def sample(self, lr: Tensor, cond: Conditions, seed: int) -> tuple[Tensor, Tensor]:
        """(colour-corrected, raw) SR of ``model.super_resolve`` with this stage's sampling settings, seeded."""
        raw = self.model.super_resolve(lr, cond.depth, cond.kernel, torch.Generator().manual_seed(seed),
                                       reference=cond.reference, guidance_kernel=cond.guidance_kernel,
                                       color_fix="none")
        return self.model.color_corrected(raw, lr, cond.reference), raw

    def forward(self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        return self.model.super_resolve(lr, depth, kernel, generator)

    # --- EMA weights for evaluation -----------------------------------------------------------------------------
    def _use_ema(self) -> None:
        if self.ema is not None and self.ema.optimization_step > 0:
            params = [p for _, p in self._trainable()]
            self.ema.store(params)
            self.ema.copy_to(params)

    def _restore(self) -> None:
        if self.ema is not None and self.ema.temp_stored_params is not None:
            self.ema.restore([p for _, p in self._trainable()])
            self.ema.temp_stored_params = None

    def on_validation_epoch_start(self) -> None:
        self._use_ema()

    def on_validation_epoch_end(self) -> None:
        self._restore()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        bs = batch["hr"].shape[0]
        seed = self.sampling_cfg.seed
        self.log("val/loss", self.diffusion_loss(batch, torch.Generator().manual_seed(seed + batch_idx))["mse"],
                 batch_size=bs, sync_dist=True)
        if batch_idx != 0 or self.sampling_cfg.num_val_samples <= 0:
            return
        n = min(self.sampling_cfg.num_val_samples, bs)
        sub = {k: (v[:n] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == bs else v) for k, v in batch.items()}
        cond = self.conditions(sub)
        sr, _ = self.sample(sub["lr"], cond, seed)
        hr, s = sub["hr"], self.hparams.scale
        self.log("val/psnr_y", psnr_y(sr, hr, crop_border=s).mean(), prog_bar=True, batch_size=n)
        self.log("val/ssim_y", ssim_y(sr, hr, crop_border=s).mean(), prog_bar=True, batch_size=n)
        # only what this row really read: no GT maps for a row that uses none
        cols = [Panel("LR", sub["lr"]), Panel("SR", sr), Panel("HR", hr)]
        names = ["lr", "sr", "hr"]
        if cond.reference is not None:
            cols.append(Panel("reference I_T", cond.reference))
            names.append("I_T")
        if cond.depth is not None:
            cols.append(Panel.map("depth D_T", cond.depth, "viridis", 0.0, 1.0, "0 = near, 1 = far"))
            names.append("depth")
        kernel = cond.kernel if cond.kernel is not None else cond.guidance_kernel
        if kernel is not None:
            title = "kernel spread σ(K_T)" if cond.kernel is not None else "guidance kernel σ(K_T)"
            cols.append(Panel.map(title, kernel_spread(kernel), "magma", 0.0, None, "σ (HR px)"))
            names.append("kernel_spread" if cond.kernel is not None else "guidance_kernel_spread")
        self.log_grid(f"val/{'|'.join(names)}", cols, max_rows=self.fit_args.num_log_images, names=sub.get("name"))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._use_ema()

    def on_test_epoch_end(self) -> None:
        self._restore()
        super().on_test_epoch_end()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        sr, raw = self.sample(batch["lr"], self.conditions(batch), self.sampling_cfg.seed + batch_idx)
        hr, s = batch["hr"], self.hparams.scale
        metrics = {}
        for suffix, img in (("", sr), ("_raw", raw)):
            metrics.update({f"psnr_y{suffix}": psnr_y(img, hr, crop_border=s),
                            f"ssim_y{suffix}": ssim_y(img, hr, crop_border=s),
                            f"psnr{suffix}": psnr(img, hr, crop_border=s), f"color_shift{suffix}": color_shift(img, hr)})
        self.record_test(metrics, batch.get("name"))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self.sample(batch["lr"], self.conditions(batch), self.sampling_cfg.seed + batch_idx)[0]

    def on_predict_start(self) -> None:
        self._use_ema()

    def on_predict_end(self) -> None:
        self._restore()

    # --- checkpoints --------------------------------------------------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, Any]:
        meta = super().checkpoint_metadata()
        meta["svkr"] = dataclasses.asdict(self._svkr_config()) if self.conditions_cfg.source == "svkr" else {}
        return meta

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.ema is not None:
            state = self.ema.state_dict()
            shadow = state.pop("shadow_params")
            # Keyed by parameter name (not position), so inference applies them without rebuilding the optimiser.
            checkpoint["ema"] = {**state, "shadow": {n: t.detach().cpu() for n, t in zip(self._ema_names, shadow,
                                                                                         strict=True)}}
        if self.frozen_backbone:
            # Frozen pretrained weights are reloaded from pretrained_path; saving them would cost GBs per file.
            keep = {f"model.{n}" for n in self._ema_names}
            state_dict = checkpoint["state_dict"]
            for key in [k for k in state_dict if k.startswith(("model.latents.", "model.unet.backbone."))
                        and k not in keep]:
                del state_dict[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("ema")
        if self.ema is not None and saved and saved.get("shadow"):
            state = {k: v for k, v in saved.items() if k != "shadow"}
            state["shadow_params"] = [saved["shadow"][n].to(self.device) for n in self._ema_names]
            self.ema.load_state_dict({**self.ema.state_dict(), **state})
