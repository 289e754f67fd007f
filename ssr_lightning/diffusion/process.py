"""The diffusion process as a plain object (denoising-diffusion-pytorch's split: network | process | trainer).

:class:`GaussianDiffusion` owns the noise schedule (a diffusers ``DDPMScheduler``), the Eq. 5 training loss and the
sampling loop. It knows nothing about images, VAEs or Lightning: it works on latents with a ``denoise(z_t, t)``
callable, so the same loop serves the tiny UNet, a Stable-Diffusion-sized one and tiled denoisers.

Sampling (docs/DESIGN.md §4) takes a :class:`~ssr_lightning.diffusion.config.SamplingConfig`: DDIM ("trailing"
spacing, η = 0, deterministic for a seed) or DDPM; ``strength`` 1 starts from pure noise (the paper), ``strength`` < 1
starts at ``t ≈ strength·T`` from a noised start latent (img2img) and runs only the last ``round(strength·steps)``
steps. After every step the ``hooks`` may replace the latent: the place for guidance and other per-step corrections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ssr_lightning.diffusion.config import Sampler, SamplingConfig

__all__ = ["Denoiser", "GaussianDiffusion", "PredictionType", "Sampler", "StepHook", "StepState"]

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (z_t, t) -> the network output (ε̂, x̂0 or v̂: prediction_type)
PredictionType = Literal["epsilon", "sample", "v_prediction"]


@dataclass
class StepState:
    """What a step hook sees: step ``index`` of ``num_steps``, its timestep ``t``, the new latent ``latent``
    (``z_{t-1}``), the network output ``eps`` (ε̂ for ``epsilon``, x̂0 or v̂ for ``sample`` or
    ``v_prediction``) and the predicted clean latent ``x0``.

    ``alpha_prev`` is ᾱ of the timestep the step lands on and ``x0_coef`` the factor by which ``latent`` moves with
    ``x0`` at fixed ``eps`` and ``z_t``: ``√ᾱ_prev`` for DDIM (η = 0), ``√ᾱ_prev·β_t / (1 − ᾱ_t)`` for DDPM's
    posterior mean. A hook that corrects ``x0`` to ``x0'`` (guidance) returns ``latent + x0_coef·(x0' − x0)``.
    """

    index: int
    num_steps: int
    t: Tensor
    latent: Tensor
    eps: Tensor
    x0: Tensor | None
    alpha_prev: float = 1.0
    x0_coef: float = 0.0


StepHook = Callable[[StepState], Tensor | None]  # returns a replacement latent, or None to keep it


class GaussianDiffusion:
    """Noise schedule, training loss and sampling loop of latent diffusion (ε-, x0- or v-prediction).

    Args:
        num_train_timesteps: Steps of the training schedule.
        pretrained_path: A local diffusers folder whose ``scheduler/`` config replaces the default schedule.
        prediction_type: What the network predicts: ``epsilon`` (the paper, Eq. 5), ``sample`` (x0) or
            ``v_prediction``; the loss target and the schedulers' steps follow it (diffusers' own formulas).

    The default schedule is Stable Diffusion's (scaled_linear 0.00085–0.012), which suits unit-variance latents.
    """

    def __init__(self, num_train_timesteps: int = 1000, pretrained_path: str | None = None,
                 prediction_type: PredictionType = "epsilon") -> None:
        from diffusers import DDPMScheduler

        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon, sample or v_prediction, got {prediction_type!r}")
        if pretrained_path is not None and (Path(pretrained_path) / "scheduler").is_dir():
            self.scheduler = DDPMScheduler.from_pretrained(pretrained_path, subfolder="scheduler",
                                                           local_files_only=True)
            if self.scheduler.config.prediction_type != prediction_type:
                self.scheduler = DDPMScheduler.from_config(self.scheduler.config, prediction_type=prediction_type)
        else:
            self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="scaled_linear",
                                           beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type,
                                           clip_sample=False)

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.config.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    # --- training -----------------------------------------------------------------------------------------------
    def add_noise(self, z0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``√ᾱ_t z0 + √(1 − ᾱ_t) ε``."""
        return self.scheduler.add_noise(z0, noise, t)

    def noise_and_timesteps(self, z0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """ε ~ N(0, I) and t ~ U{0..T-1} per sample (from ``generator`` on the CPU when given, else the global RNG)."""
        b = z0.shape[0]
        noise = torch.randn(z0.shape, generator=generator).to(z0) if generator is not None else torch.randn_like(z0)
        t = torch.randint(0, self.num_train_timesteps, (b,), generator=generator).to(z0.device)
        return noise, t

    def loss(
        self, denoise: Denoiser, z0: Tensor, features: dict[str, Sequence[Tensor]] | None = None,
        weights: dict[str, float] | None = None, generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Eq. 5: ``‖ε − ε_θ(z_t, t)‖² + Σ_i λ_i ‖f_i‖₁`` → ``{"mse", "l1_<name>", "loss"}`` (the target is z0 for
        ``sample`` and the velocity √ᾱ ε − √(1 − ᾱ) z0 for ``v_prediction``).

        ``features`` are the modality features f_i (a list of maps per modality; ``‖f_i‖₁`` = mean |f| over its
        maps) and ``weights`` their λ_i. ``denoise`` must already close over those features.
        """
        noise, t = self.noise_and_timesteps(z0, generator)
        pred = denoise(self.add_noise(z0, noise, t), t)
        kind = self.prediction_type
        target = noise if kind == "epsilon" else z0 if kind == "sample" else self.scheduler.get_velocity(z0, noise, t)
        out = {"mse": F.mse_loss(pred.float(), target.float())}
        loss = out["mse"]
        for name, maps in (features or {}).items():
            out[f"l1_{name}"] = torch.stack([f.float().abs().mean() for f in maps]).mean()
            loss = loss + (weights or {}).get(name, 0.0) * out[f"l1_{name}"]
        out["loss"] = loss
        return out

    # --- sampling -----------------------------------------------------------------------------------------------
    def sampling_scheduler(self, sampler: Sampler = "ddim") -> Any:
        """A fresh scheduler for sampling (DDIM "trailing": the first step starts at t = T − 1, pure noise)."""
        from diffusers import DDIMScheduler, DDPMScheduler

        if sampler == "ddim":
            return DDIMScheduler.from_config(self.scheduler.config, timestep_spacing="trailing",
                                             set_alpha_to_one=False, clip_sample=False)
        if sampler == "ddpm":
            return DDPMScheduler.from_config(self.scheduler.config)
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")

    def schedule(self, sampling: SamplingConfig, device: torch.device | str = "cpu") -> tuple[Any, Tensor]:
        """A fresh sampling scheduler set to ``sampling.steps`` and the timesteps a call runs: the last
        ``round(strength·steps)`` of them (all at strength 1)."""
        sched = self.sampling_scheduler(sampling.sampler)
        sched.set_timesteps(sampling.steps, device=device)
        timesteps = sched.timesteps
        if sampling.strength < 1.0:
            timesteps = timesteps[sampling.steps - max(1, int(round(sampling.steps * sampling.strength))):]
        return sched, timesteps

    @torch.no_grad()
    def sample(
        self, denoise: Denoiser, noise: Tensor, sampling: SamplingConfig, start_latent: Tensor | None = None,
        generator: torch.Generator | None = None, hooks: Sequence[StepHook] = (),
    ) -> Tensor:
        """Run the reverse process from ``noise`` (latent-shaped) with ``sampling``'s sampler, steps and strength
        (checked by ``SamplingConfig``) and return the final latent.

        ``strength < 1`` needs ``start_latent``: sampling starts from it, noised to the first kept timestep (the
        high-noise steps, where the x0 estimate is least reliable, are skipped).
        """
        sampler = sampling.sampler
        sched, timesteps = self.schedule(sampling, noise.device)
        if sampling.strength < 1.0:
            if start_latent is None:
                raise ValueError("sampling with strength < 1 starts from an image latent: pass start_latent=")
            z = sched.add_noise(start_latent, noise, timesteps[:1].repeat(start_latent.shape[0]))
        else:
            z = noise * sched.init_noise_sigma
        # DDIM with η = 0 is deterministic; DDPM draws fresh noise per step from the same generator.
        kw = {"generator": generator} if sampler == "ddpm" else {}
        for i, t in enumerate(timesteps):
            eps = denoise(sched.scale_model_input(z, t), t)  # the network output (ε̂ unless prediction_type says)
            out = sched.step(eps, t, z, **kw)
            z = out.prev_sample
            if hooks:
                alpha_prev, coef = _x0_coefficient(sched, sampler, int(t))
                for hook in hooks:
                    new = hook(StepState(i, len(timesteps), t, z, eps, getattr(out, "pred_original_sample", None),
                                         alpha_prev, coef))
                    if new is not None:
                        z = new
        return z


def _x0_coefficient(sched: Any, sampler: Sampler, t: int) -> tuple[float, float]:
    """(ᾱ_prev, ∂z_{t−1}/∂x̂0) of one step of ``sched`` at timestep ``t`` (diffusers' own step formulas)."""
    ac = sched.alphas_cumprod
    if sampler == "ddim":
        prev = t - sched.config.num_train_timesteps // sched.num_inference_steps
        alpha_prev = float(ac[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
        return alpha_prev, alpha_prev**0.5
    prev = int(sched.previous_timestep(t))
    alpha_t = float(ac[t])
    alpha_prev = float(ac[prev]) if prev >= 0 else 1.0
    beta_t = 1.0 - alpha_t / alpha_prev
    return alpha_prev, alpha_prev**0.5 * beta_t / (1.0 - alpha_t)
