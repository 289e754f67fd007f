"""The full degradation I_LR = JPEG((I_HR (x) k(x)) down_s + n), batched, seeded per sample (docs/DESIGN.md §2)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor

from .blur import KernelBasis, blur_downsample
from .kernels import KernelConfig, lens_targets, sample_kernel_field
from .noise import add_noise, jpeg

__all__ = ["DegradationConfig", "Degrader"]

# Scalar draws per sample after the kernel's (sigma, poisson flag, JPEG quality): fixed so that switching noise or
# JPEG off leaves the other parameters of a seed unchanged (Table 3 compares variants on the same samples).
_N_SCALAR_DRAWS: int = 4


@dataclass
class DegradationConfig:
    """Degradation pipeline: spatially variant blur + x scale downsampling, noise, JPEG."""

    scale: int = 4
    """Downsampling factor s (HR size must be a multiple of it)."""
    kernel: KernelConfig = field(default_factory=KernelConfig)
    """Distribution of the per-pixel blur kernels."""
    noise: bool = True
    """Add sensor noise (switch off for the "w/o noise" variant of Table 3)."""
    noise_sigma: tuple[float, float] = (1.0, 30.0)
    """Range of the Gaussian noise standard deviation, in units of 1/255."""
    poisson_prob: float = 0.0
    """Probability that a sample gets signal-dependent Poisson noise instead of Gaussian noise."""
    jpeg: bool = True
    """Apply JPEG compression (switch off for the "w/o JPEG" variant of Table 3)."""
    jpeg_quality: tuple[int, int] = (30, 95)
    """Range of the JPEG quality (inclusive, integers)."""
    clean_prob: float = 0.0
    """Probability that a sample gets neither noise nor JPEG (a per-sample schedule: a network trained on noisy data
    still sees clean samples, where knowing the kernel pays off most)."""
    jpeg_backend: Literal["kornia", "cv2"] = "kornia"
    """JPEG implementation: "kornia" (batched, on the images' device) or "cv2" (libjpeg per sample on CPU)."""
    blur_method: Literal["exact", "shift", "basis"] = "shift"
    """Blur + downsample implementation: "shift" (exact, light), "exact" (unfold reference), "basis" (PCA, fast)."""
    basis_components: int = 0
    """Eigen-kernels of the basis for blur_method="basis" (fitted once from the kernel distribution, cached)."""

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"scale must be >= 1, got {self.scale}")
        if self.blur_method == "basis" and self.basis_components <= 0:
            raise ValueError('blur_method="basis" needs basis_components > 0 (e.g. 12)')


_BASIS_CACHE: dict[tuple[str, int], KernelBasis] = {}


def _cached_basis(cfg: KernelConfig, n_components: int) -> KernelBasis:
    key = (json.dumps(asdict(cfg), sort_keys=True), n_components)
    if key not in _BASIS_CACHE:
        _BASIS_CACHE[key] = KernelBasis.from_distribution(cfg, n_components)
    return _BASIS_CACHE[key]


class Degrader:
    """Callable turning (HR, depth, seeds) into a degraded LR batch and its ground-truth kernel field."""

    def __init__(self, cfg: DegradationConfig, basis: KernelBasis | None = None) -> None:
        self.cfg = cfg
        self.basis = basis
        if cfg.blur_method == "basis" and basis is None:
            self.basis = _cached_basis(cfg.kernel, cfg.basis_components)

    def _generators(self, seeds: Tensor | list[int], batch: int) -> list[torch.Generator]:
        seq = seeds.detach().cpu().reshape(-1).tolist() if isinstance(seeds, Tensor) else list(seeds)
        if len(seq) != batch:
            raise ValueError(f"need one seed per sample: got {len(seq)} seeds for batch size {batch}")
        return [torch.Generator().manual_seed(int(s)) for s in seq]

    def _check_inputs(self, hr: Tensor, depth: Tensor) -> None:
        s = self.cfg.scale
        if hr.ndim != 4 or depth.ndim != 4 or depth.shape[1] != 1:
            raise ValueError(
                f"expected hr (B, C, H, W) and depth (B, 1, H, W), got {tuple(hr.shape)} and {tuple(depth.shape)}"
            )
        if hr.shape[0] != depth.shape[0] or hr.shape[-2:] != depth.shape[-2:]:
            raise ValueError(f"hr {tuple(hr.shape)} and depth {tuple(depth.shape)} must share batch and size")
        h, w = hr.shape[-2:]
        if h % s or w % s:
            raise ValueError(f"HR size {h}x{w} is not divisible by the scale s={s}; crop or pad it to a multiple of s")

    @torch.no_grad()
    def __call__(self, hr: Tensor, depth: Tensor, seeds: Tensor | list[int]) -> dict[str, Tensor]:
        """Degrade hr (B, 3, H, W) with the depth-driven kernel field of depth (B, 1, H, W), one seed per sample.

        Per sample, draws come from its own generator in a fixed order: kernel parameters (and kernel noise),
        noise sigma and Poisson flag, JPEG quality, then the noise realisation. Returns lr, kernel, depth_lr,
        noise_sigma (B,) in [0, 1] units (0 where noise is off), jpeg_quality (B,) (0 where JPEG is off), invariant (B,)
        and lens (B, 6): the thin-lens parameters of the kernel (:func:`lens_targets`).
        """
        cfg = self.cfg
        self._check_inputs(hr, depth)
        b = hr.shape[0]
        gens = self._generators(seeds, b)
        depth_lr = depth[..., :: cfg.scale, :: cfg.scale]
        kernel, params = sample_kernel_field(depth_lr.to(hr.dtype), cfg.kernel, gens)

        u = torch.stack([torch.rand(_N_SCALAR_DRAWS, generator=g, dtype=torch.float64) for g in gens])
        lo, hi = cfg.noise_sigma
        sigma = (lo + u[:, 0] * (hi - lo)) / 255.0
        poisson = u[:, 1] < cfg.poisson_prob
        qlo, qhi = cfg.jpeg_quality
        quality = torch.floor(qlo + u[:, 2] * (qhi - qlo + 1)).clamp(max=qhi)  # uniform over the integers
        clean = u[:, 3] < cfg.clean_prob

        lr = blur_downsample(hr, kernel, cfg.scale, method=cfg.blur_method, basis=self.basis)
        sigma = torch.where(clean, torch.zeros_like(sigma), sigma) if cfg.noise else torch.zeros_like(sigma)
        if cfg.noise:
            # zero sigma adds zero noise, but the realisation is still drawn: the generators stay aligned
            lr = add_noise(lr, sigma.to(torch.float32), gens, poisson & ~clean)
        quality = torch.where(clean, torch.zeros_like(quality), quality) if cfg.jpeg else torch.zeros_like(quality)
        if cfg.jpeg and bool((quality > 0).any()):
            keep = quality > 0
            lr = lr.clone()
            lr[keep] = jpeg(lr[keep], quality[keep].to(torch.float32), backend=cfg.jpeg_backend)
        dev = hr.device
        return {
            "lr": lr.contiguous(),
            "kernel": kernel,
            "depth_lr": depth_lr.contiguous(),
            "noise_sigma": sigma.to(device=dev, dtype=torch.float32),
            "jpeg_quality": quality.to(device=dev, dtype=torch.float32),
            "invariant": params["invariant"].to(dev),
            "lens": lens_targets(params, cfg.kernel).to(dev),
        }

    @torch.no_grad()
    def resynthesize(self, hr: Tensor, kernel_field: Tensor) -> Tensor:
        """Blur + downsample only (no noise, no JPEG), exact ("shift"): the LR re-synthesis metric's forward model."""
        return blur_downsample(hr, kernel_field, self.cfg.scale, method="shift")

    def __repr__(self) -> str:
        return f"Degrader({self.cfg!r})"
