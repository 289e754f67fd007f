"""SSRDiffusionModule: trains the AMF-conditioned latent diffusion stage of SSR (paper §3.3, docs/DESIGN.md §4).

A thin LightningModule around the :class:`~ssr_lightning.diffusion.LatentDiffusionSR` it is given (``net``: latent
space + AMF UNet + the diffusion process, configured under ``model.init_args.net``): it loads the trained VAE
(``vae_ckpt``) into the net's latent space, picks the conditions (the batch's GT maps, or a frozen SVKR), runs Eq. 5
(``model.loss``), keeps an EMA of the trainable weights (diffusers' ``EMAModel``), and samples with the EMA weights
for validation, test and predict (``model.super_resolve`` with its ``sampling`` settings, which its checkpoints
record for ``ssr sr``).

Backbone: the net's tiny ``UNet2DModel`` + the VAE of a ``VAEModule`` checkpoint (``vae_ckpt``), or a local
pretrained diffusers folder (the net's ``pretrained_path``), frozen when ``freeze_backbone`` so only encoders + AMF
(+ the null text token, + conv_in with ``concat_lr``) train; frozen pretrained weights are then left out of the
checkpoints (they are reloaded from ``pretrained_path``). ``autoencoder: space_to_depth`` needs no VAE.

Test metrics are reported with the configured colour fix (``psnr_y``, ``ssim_y``, ``psnr``, ``color_shift``) and
without it (``*_raw``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.training_utils import EMAModel
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ssr_lightning.diffusion.config import LossConfig, SamplingConfig
from ssr_lightning.diffusion.model import LatentDiffusionSR
from ssr_lightning.inference.checkpoints import (
    load_model,
    read_checkpoint,
    resolve_checkpoint,
)
from ssr_lightning.inference.svkr import SVKR, SVKRConfig
from ssr_lightning.metrics import color_shift, psnr, psnr_y, ssim_y
from ssr_lightning.modules.base import FitConfig, StageModule, as_config, as_network, network_config
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
    frontend: Tensor | None = None


class SSRDiffusionModule(StageModule):
    """AMF-conditioned latent diffusion SR (see the module doc); ``self(lr, depth, kernel)`` super-resolves."""

    monitor = "val/psnr_y"
    monitor_mode = "max"

    def __init__(
        self,
        net: LatentDiffusionSR,
        vae_ckpt: str | None = None,
        freeze_backbone: bool = True,
        gradient_checkpointing: bool = False,
        conditions: ConditionConfig = ConditionConfig(),  # noqa: B008 (argument groups are never mutated)
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008
        loss: LossConfig = LossConfig(),  # noqa: B008
        num_val_samples: int = 4,
        fit: FitConfig = FitConfig(warmup_steps=100, ckpt_every_n_steps=200),  # noqa: B008
    ) -> None:
        """
        Args:
            net: The diffusion model (``LatentDiffusionSR``: autoencoder, UNet and modalities, process options).
            vae_ckpt: VAEModule checkpoint (`ssr fit --config configs/vae.yaml`) whose weights fill the net's tiny VAE
                (autoencoder vae without pretrained_path; None: the newest runs/vae run's best.ckpt). Read when a fit
                starts; its weights then travel in this stage's checkpoints.
            freeze_backbone: With the net's pretrained_path: train only the condition encoders + AMF (ignored for a
                tiny backbone).
            gradient_checkpointing: Recompute UNet activations in backward (Stable-Diffusion-sized backbones).
            conditions: Where D_T, K_T come from (GT maps or SVKR over trained stages).
            sampling: How validation, test and predict samples are drawn; recorded in the checkpoints, so ``ssr sr``
                samples the same way unless a flag overrides a setting.
            loss: Eq. 5's λ weights and the EMA decay.
            num_val_samples: Val images sampled per validation (first val batch; 0: none, no val/psnr_y).
            fit: Optimiser, schedule, checkpoint interval and logged images.
        """
        super().__init__()
        net = as_network(net, LatentDiffusionSR)  # a class_path/init_args block (load_from_checkpoint) is built
        self.save_stage_hparams()
        self.conditions_cfg = as_config(ConditionConfig, conditions)
        self.sampling, self.loss_cfg = SamplingConfig.from_dict(sampling), as_config(LossConfig, loss)
        if self.conditions_cfg.source not in ("gt", "svkr"):
            raise ValueError(f"model.init_args.conditions.source must be 'gt' or 'svkr', got "
                             f"{self.conditions_cfg.source!r}")
        self.model = net
        cfg = net.config
        self.model.latents.requires_grad_(False).eval()
        self.frozen_backbone = freeze_backbone and cfg.pretrained_path is not None
        if self.frozen_backbone:
            self.model.unet.backbone.requires_grad_(False)
            if cfg.unet_config["concat_lr"]:  # the zero-initialised LR input channels must learn
                self.model.unet.backbone.conv_in.requires_grad_(True)
            # Frozen pretrained weights are dropped from checkpoints (on_save_checkpoint), so load non-strictly.
            self.strict_loading = False
        if gradient_checkpointing:
            self.model.unet.backbone.enable_gradient_checkpointing()
        self._ema_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.ema = (EMAModel([p for _, p in self._trainable()], decay=self.loss_cfg.ema_decay)
                    if self.loss_cfg.ema_decay > 0 else None)
        self._svkr: list[SVKR] = []  # a list keeps the frozen SVKR out of parameters and state_dict
        self._nbsr: list[torch.nn.Module] = []

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # setup runs before Lightning restores --ckpt_path: a resumed fit keeps the VAE weights of its checkpoint
        cfg = self.model.config
        if stage == "fit" and cfg.autoencoder == "vae" and cfg.pretrained_path is None:
            self.load_vae(self.hparams.vae_ckpt)

    def load_vae(self, path: str | None) -> None:
        """Fill the net's tiny VAE (weights and latent scale) from a VAE stage checkpoint (None: the newest runs/vae);
        its architecture must be the net's ``autoencoder_config``."""
        found = resolve_checkpoint(path, "vae")
        ckpt = read_checkpoint(found, "vae")
        want, have = network_config(self.model.latents), dict(ckpt["ssr"]["model_config"])
        differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if differ:
            raise ValueError(f"the VAE of {found} is {{{', '.join(f'{k}: {have.get(k)!r}' for k in differ)}}} but "
                             f"model.init_args.net.init_args.autoencoder_config has "
                             f"{{{', '.join(f'{k}: {want.get(k)!r}' for k in differ)}}}: make them agree")
        self.model.latents.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items()
                                            if k.startswith("model.")})
        rank_zero_info(f"diffusion latent space: the VAE of {found}")

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

    def oracle_frontend(self, lr: Tensor, kernel: Tensor) -> Tensor:
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
        needs = self.model.needs(self.sampling)
        need_frontend = self.model.config.image_condition == "frontend" if training else needs["frontend"]
        need_guide = needs["guidance_kernel"] and not training
        if not (uses["depth"] or uses["kernel"] or need_frontend or need_guide):
            return Conditions()
        if self.conditions_cfg.source == "svkr":
            with torch.no_grad():
                gt = batch.get("depth") if self.conditions_cfg.depth == "gt" else None  # oracle DE, learned KE
                depth, kernel, frontend = self.svkr()(batch["lr"], gt_depth=gt).final
        else:
            depth, kernel, frontend = batch.get("depth_lr"), batch.get("kernel"), None
            if (uses["kernel"] or need_frontend or need_guide) and kernel is None:
                raise ValueError("conditions.source='gt' needs GT kernel fields (HR data sets); use 'svkr' for "
                                 "paired data")
            if need_frontend:
                with torch.no_grad():
                    frontend = self.oracle_frontend(batch["lr"], kernel)
        return Conditions(depth if uses["depth"] else None, kernel if uses["kernel"] else None,
                          kernel if need_guide else None, frontend if need_frontend else None)

    # --- training -----------------------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Eq. 5 terms of a batch: ``mse``, ``l1_<modality>``, ``loss``."""
        c = self.conditions(batch, training=True)
        return self.model.loss(batch["hr"], batch["lr"], c.depth, c.kernel, self.loss_cfg.weights(), generator,
                               frontend=c.frontend)

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
                       f"modalities {m.unet.enabled or 'none'}, concat_lr={m.config.unet_config['concat_lr']}")

    # --- sampling -----------------------------------------------------------------------------------------------
    def sample(self, lr: Tensor, cond: Conditions, seed: int) -> tuple[Tensor, Tensor]:
        """(colour-corrected, raw) SR of ``model.super_resolve`` with this stage's sampling settings, seeded."""
        raw = self.model.super_resolve(lr, cond.depth, cond.kernel, torch.Generator().manual_seed(seed),
                                       sampling=self.sampling, frontend=cond.frontend,
                                       guidance_kernel=cond.guidance_kernel, color_fix="none")
        return self.model.color_corrected(raw, lr, cond.frontend, self.sampling.color_fix), raw

    def forward(self, lr: Tensor, depth: Tensor | None = None, kernel: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        return self.model.super_resolve(lr, depth, kernel, generator, sampling=self.sampling)

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
        seed = self.sampling.seed
        self.log("val/loss", self.diffusion_loss(batch, torch.Generator().manual_seed(seed + batch_idx))["mse"],
                 batch_size=bs, sync_dist=True)
        if batch_idx != 0 or self.hparams.num_val_samples <= 0:
            return
        n = min(self.hparams.num_val_samples, bs)
        sub = {k: (v[:n] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == bs else v) for k, v in batch.items()}
        cond = self.conditions(sub)
        sr, _ = self.sample(sub["lr"], cond, seed)
        hr, s = sub["hr"], self.model.scale
        self.log("val/psnr_y", psnr_y(sr, hr, crop_border=s).mean(), prog_bar=True, batch_size=n)
        self.log("val/ssim_y", ssim_y(sr, hr, crop_border=s).mean(), prog_bar=True, batch_size=n)
        # only what this row really read: no GT maps for a row that uses none
        cols = [Panel("LR", sub["lr"]), Panel("SR", sr), Panel("HR", hr)]
        names = ["lr", "sr", "hr"]
        if cond.frontend is not None:
            cols.append(Panel("front end I_T", cond.frontend))
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
        sr, raw = self.sample(batch["lr"], self.conditions(batch), self.sampling.seed + batch_idx)
        hr, s = batch["hr"], self.model.scale
        metrics = {}
        for suffix, img in (("", sr), ("_raw", raw)):
            metrics.update({f"psnr_y{suffix}": psnr_y(img, hr, crop_border=s),
                            f"ssim_y{suffix}": ssim_y(img, hr, crop_border=s),
                            f"psnr{suffix}": psnr(img, hr, crop_border=s), f"color_shift{suffix}": color_shift(img, hr)})
        self.record_test(metrics, batch.get("name"))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self.sample(batch["lr"], self.conditions(batch), self.sampling.seed + batch_idx)[0]

    def on_predict_start(self) -> None:
        self._use_ema()

    def on_predict_end(self) -> None:
        self._restore()

    # --- checkpoints --------------------------------------------------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, Any]:
        meta = super().checkpoint_metadata()
        # what `ssr sr` uses unless a flag overrides a field: the sampling this stage validated with, and the SVKR
        # settings its conditions name (T, γ, depth kind, checkpoints)
        meta["sampling"] = dataclasses.asdict(self.sampling)
        meta["svkr"] = dataclasses.asdict(self._svkr_config())
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
