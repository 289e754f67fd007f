"""Blur-kernel families (anisotropic Gaussian, thin-lens defocus, their composition) and kernel-field sampling.

Conventions (docs/ARCHITECTURE.md): a kernel is a flattened ``size x size`` grid, channel ``c = dy*size + dx``;
``dx`` runs along image columns (x) and ``dy`` along rows (y), both centred on ``size // 2``. Covariances are
``(..., 2, 2)`` in (x, y) order and in HR pixels. A kernel field is ``(B, size*size, h, w)``, one kernel per LR pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "KERNEL_SIZE",
    "KernelConfig",
    "anisotropic_covariance",
    "defocus_sigma",
    "gaussian_kernels",
    "gaussian_log_field",
    "lens_targets",
    "sample_kernel_field",
]

KERNEL_SIZE: int = 21

# Added to every covariance: a zero covariance (in-focus pixel, no optics blur) must give a delta kernel rather
# than a division by zero. sigma = 0.03 px puts < 1e-200 of the mass off-centre, i.e. exactly a delta in float32.
_COV_EPS: float = 1e-3

# Number of scalar draws per sample in sample_kernel_field; fixed so that the generator state afterwards does not
# depend on the configuration (the Degrader draws noise and JPEG parameters next).
_N_SCALAR_DRAWS: int = 8


@dataclass
class KernelConfig:
    """Distribution of per-pixel blur kernels (docs/DESIGN.md §2)."""

    size: int = KERNEL_SIZE
    """Kernel side length in HR pixels (odd)."""
    sigma_range: tuple[float, float] = (0.6, 5.0)
    """Range of the anisotropic Gaussian's standard deviations sigma_x, sigma_y (HR pixels, BasicSR convention) for
    the spatially invariant samples: the paper's 21x21 anisotropic setting."""
    optics_sigma_range: tuple[float, float] = (0.3, 1.5)
    """sigma_x, sigma_y range of the camera/optics anisotropy composed with defocus in spatially variant samples.
    Kept milder than sigma_range so that depth, through defocus, drives the blur there (with (0.6, 5) the
    anisotropic part swamps the defocus and the median within-scene spread range falls from ~0.8 px to ~0.15 px)."""
    aniso_prob: float = 1.0
    """Probability that the camera/optics anisotropic Gaussian component is present in a sample."""
    isotropic: bool = False
    """Make that Gaussian component isotropic (σ_y = σ_x), for the "isotropic" row of Table 3; the draws per sample
    are unchanged, so the other parameters of a seed stay the same."""
    multiplicative_noise: float = 0.0
    """Per-tap multiplicative kernel noise U(1-m, 1+m), m <= 0.25, followed by renormalisation; 0 disables it."""
    invariant_prob: float = 0.25
    """Probability that a sample uses one kernel for the whole image (spatially invariant, as in CMOS)."""
    defocus: bool = True
    """Add depth-dependent thin-lens defocus to the kernels."""
    z_range: tuple[float, float] = (1.0, 4.0)
    """Metric depth range: normalised depth 0 (nearest) .. 1 (farthest) maps linearly onto it."""
    focus_range: tuple[float, float] = (0.0, 0.3)
    """Range of the focal plane's normalised depth (sampled uniformly, then mapped through z_range). The default
    focuses on the foreground, as most photographs do, so blur grows with distance behind the subject; with
    (0, 1) the focal plane is as often behind the scene as in it and depth says little about the blur
    (measured in docs/history/EXPERIMENTS_issues_2-13.md, issue 2)."""
    aperture_range: tuple[float, float] = (0.5, 1.5)
    """Range of the (relative) aperture A in the circle-of-confusion formula CoC = m*A*|z - z_f|/z."""
    magnification: float = 12.0
    """Lens magnification m in pixels per unit of A*|z - z_f|/z. With the defaults, on the embedded layered scenes,
    the within-scene range of the kernel spread has quartiles 0.36/0.68/1.24 px and |corr(depth, spread)| ~ 0.88."""
    max_sigma: float = 5.0
    """Cap on the defocus standard deviation (HR pixels) so the kernel still fits in size x size."""

    def __post_init__(self) -> None:
        if self.size % 2 != 1:
            raise ValueError(f"KernelConfig.size must be odd, got {self.size}")
        if not 0.0 <= self.multiplicative_noise <= 0.25:
            raise ValueError(f"KernelConfig.multiplicative_noise must be in [0, 0.25], got {self.multiplicative_noise}")
        if self.z_range[0] <= 0:
            raise ValueError(f"KernelConfig.z_range must be positive (thin lens divides by z), got {self.z_range}")


def _quad_basis(size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(size*size, 3) monomials (x^2, xy, y^2) of the tap offsets, layout c = dy*size + dx (x along columns)."""
    r = torch.arange(size, device=device, dtype=dtype) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    x, y = xx.reshape(-1), yy.reshape(-1)
    return torch.stack([x * x, x * y, y * y], dim=-1)


def _exponent_coefs(cov: Tensor) -> Tensor:
    """Coefficients (..., 3) such that log k(x, y) = c0 x^2 + c1 xy + c2 y^2 (+ const) for covariance cov."""
    sxx = cov[..., 0, 0] + _COV_EPS
    syy = cov[..., 1, 1] + _COV_EPS
    sxy = cov[..., 0, 1]
    # Closed-form 2x2 inverse: cheaper than linalg.inv on millions of per-pixel matrices, and never singular here
    # because the covariance is PSD plus eps*I.
    det = (sxx * syy - sxy * sxy).clamp_min(_COV_EPS * _COV_EPS)
    return torch.stack([-0.5 * syy / det, sxy / det, -0.5 * sxx / det], dim=-1)


def gaussian_kernels(cov: Tensor, size: int = KERNEL_SIZE) -> Tensor:
    """Sampled, truncated, normalised Gaussian kernels: cov (..., 2, 2) -> (..., size*size), each summing to 1."""
    if cov.shape[-2:] != (2, 2):
        raise ValueError(f"cov must have shape (..., 2, 2), got {tuple(cov.shape)}")
    k = (_exponent_coefs(cov) @ _quad_basis(size, cov.device, cov.dtype).T).exp_()
    # The centre tap is exp(0) = 1, so the sum is >= 1 and the division is always safe.
    return k.div_(k.sum(dim=-1, keepdim=True))


def gaussian_log_field(cov: Tensor, size: int = KERNEL_SIZE) -> Tensor:
    """cov (B, h, w, 2, 2) -> unnormalised log-kernels (B, size*size, h, w) (0 at the centre tap), channel-first.

    The quadratic form is a (k*k, 3) @ (3, h*w) product that lands directly in the field layout. Differentiable in
    ``cov``: DKENet's thin-lens head adds it to its logits.
    """
    b, h, w = cov.shape[:3]
    coefs = _exponent_coefs(cov).reshape(b, h * w, 3).transpose(1, 2)  # (B, 3, h*w)
    return torch.matmul(_quad_basis(size, cov.device, cov.dtype), coefs).view(b, size * size, h, w)


def _gaussian_field(cov: Tensor, size: int) -> Tensor:
    """cov (B, h, w, 2, 2) -> kernel field (B, size*size, h, w): gaussian_kernels in the field layout, where the only
    full-size passes are the matmul, exp_ and the normalisation."""
    k = gaussian_log_field(cov, size).exp_()
    return k.div_(k.sum(dim=1, keepdim=True))


def anisotropic_covariance(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor) -> Tensor:
    """Covariance R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T, shape (..., 2, 2)."""
    c, s = torch.cos(theta), torch.sin(theta)
    vx, vy = sigma_x * sigma_x, sigma_y * sigma_y
    sxx = c * c * vx + s * s * vy
    syy = s * s * vx + c * c * vy
    sxy = c * s * (vx - vy)
    row0 = torch.stack([sxx, sxy], dim=-1)
    row1 = torch.stack([sxy, syy], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def defocus_sigma(z: Tensor, focus_z: Tensor, aperture: Tensor, magnification: float, max_sigma: float) -> Tensor:
    """Thin-lens defocus: CoC = m*A*|z - z_f|/z (pixels), sigma = clamp(max(CoC - 1, 0)/4, max=max_sigma)."""
    coc = magnification * aperture * (z - focus_z).abs() / z
    # CoC below one pixel is indistinguishable from sharp; the /4 maps the disc diameter to a Gaussian std
    # (the CMOS/SYNDOF convention).
    return ((coc - 1.0).clamp_min(0.0) / 4.0).clamp(max=max_sigma)


def lens_targets(params: dict[str, Tensor], cfg: KernelConfig) -> Tensor:
    """The per-sample lens in the terms of a depth-reading KE's thin-lens head, ``(B, 6)``: focal depth d_f on the
    normalised depth scale, gain g = m·A/4 and threshold t = 1/4 (so that σ_def = max(g·|d − d_f|/(d + c) − t, 0)
    with c = z_near/(z_far − z_near): exactly :func:`defocus_sigma` below its cap), and the optics σx, σy, θ. A KE
    may be supervised with them (``DKENetModule.lens_loss``); g is 0 without defocus."""
    z0, z1 = cfg.z_range
    focus = (params["focus_z"].float() - z0) / (z1 - z0)
    gain = params["aperture"].float() * cfg.magnification / 4.0 * float(cfg.defocus)
    return torch.stack([focus, gain, torch.full_like(focus, 0.25), params["sigma_x"].float(),
                        params["sigma_y"].float(), params["theta"].float()], dim=1)


def _depth_to_z(depth: Tensor, cfg: KernelConfig) -> Tensor:
    z0, z1 = cfg.z_range
    return z0 + depth.clamp(0.0, 1.0) * (z1 - z0)


def _uniform(u: Tensor, lo_hi: tuple[float, float]) -> Tensor:
    return lo_hi[0] + u * (lo_hi[1] - lo_hi[0])


def _sample_params(cfg: KernelConfig, generator: torch.Generator) -> dict[str, Tensor]:
    """All scalar draws of one sample, in a fixed order (always the same count, whatever the config)."""
    u = torch.rand(_N_SCALAR_DRAWS, generator=generator, dtype=torch.float64)
    has_aniso = bool(u[1] < cfg.aniso_prob)
    invariant = u[0] < cfg.invariant_prob
    # invariant samples are the plain anisotropic family; variant ones compose defocus with milder optics blur
    sig_range = cfg.sigma_range if (invariant or not cfg.defocus) else cfg.optics_sigma_range
    sx, sy = _uniform(u[2], sig_range), _uniform(u[3], sig_range)
    if cfg.isotropic:
        sy = sx
    if not has_aniso:
        sx, sy = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    focus_norm = _uniform(u[5], cfg.focus_range)
    return {
        "invariant": invariant,
        "sigma_x": sx,
        "sigma_y": sy,
        "theta": (2.0 * u[4] - 1.0) * math.pi,
        "focus_z": cfg.z_range[0] + focus_norm * (cfg.z_range[1] - cfg.z_range[0]),
        "aperture": _uniform(u[6], cfg.aperture_range),
        # Depth at which an invariant sample's single defocus sigma is evaluated.
        "global_depth": u[7],
    }


def sample_kernel_field(
    depth_lr: Tensor, cfg: KernelConfig, generators: list[torch.Generator]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sample one kernel field per sample from the family of ``cfg``.

    depth_lr: (B, 1, h, w) normalised depth at the LR sample positions (0 nearest). Every random draw of sample b
    comes from ``generators[b]`` (CPU), so a sample does not depend on its batch neighbours or on the device; the
    kernels are built on ``depth_lr.device``. Returns the field (B, size*size, h, w) and per-sample parameters
    ('invariant' bool, 'focus_z', 'aperture', 'sigma_x', 'sigma_y', 'theta', each (B,)).
    """
    if depth_lr.ndim != 4 or depth_lr.shape[1] != 1:
        raise ValueError(f"depth_lr must have shape (B, 1, h, w), got {tuple(depth_lr.shape)}")
    b, _, h, w = depth_lr.shape
    if len(generators) != b:
        raise ValueError(f"need one generator per sample: got {len(generators)} for batch size {b}")
    device = depth_lr.device
    dtype = depth_lr.dtype if depth_lr.dtype.is_floating_point else torch.float32
    per_sample = [_sample_params(cfg, g) for g in generators]
    params = {key: torch.stack([p[key] for p in per_sample]) for key in per_sample[0]}

    def on_dev(key: str) -> Tensor:
        return params[key].to(device=device, dtype=dtype).view(b, 1, 1)

    cov = anisotropic_covariance(on_dev("sigma_x"), on_dev("sigma_y"), on_dev("theta"))  # (B, 1, 1, 2, 2)
    if cfg.defocus:
        invariant = params["invariant"].to(device).view(b, 1, 1)
        depth = torch.where(invariant, on_dev("global_depth"), depth_lr[:, 0].to(dtype))  # (B, h, w)
        sig = defocus_sigma(
            _depth_to_z(depth, cfg), on_dev("focus_z"), on_dev("aperture"), cfg.magnification, cfg.max_sigma
        )
        # Defocus after the optics: convolving two Gaussians adds their covariances.
        eye = torch.eye(2, device=device, dtype=dtype)
        cov = cov + (sig * sig)[..., None, None] * eye
    else:
        cov = cov.expand(b, h, w, 2, 2)
    field = _gaussian_field(cov, cfg.size)  # (B, k*k, h, w)
    invariant = [bool(v) for v in params["invariant"]]
    m = cfg.multiplicative_noise
    if m > 0 or any(invariant):
        out = []
        for f, g, inv in zip(field.split(1), generators, invariant):
            if inv:
                # Keep one pixel's kernel and broadcast it, so the field is exactly constant over pixels
                # (per-pixel arithmetic can differ in the last ulp between vectorised and tail lanes).
                f = f[..., :1, :1]
            if m > 0:
                noise = torch.rand(f.shape[1:], generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
                f = f * (1.0 - m + 2.0 * m * noise)
                f = f / f.sum(dim=1, keepdim=True)
            out.append(f.expand(1, -1, h, w))
        field = torch.cat(out)

    keys = ("focus_z", "aperture", "sigma_x", "sigma_y", "theta")
    out_params = {k: params[k].to(device=device, dtype=torch.float32) for k in keys}
    out_params["invariant"] = params["invariant"].to(device)
    return field, out_params
