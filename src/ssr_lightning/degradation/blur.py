"""Spatially variant blur and x s downsampling in one strided pass, plus the eigen-kernel basis used to speed it up.

For LR pixel (i, j) and tap c = dy*k + dx (correlation, reflect borders, docs/ARCHITECTURE.md):
    LR[b, ch, i, j] = sum_{dy,dx} K[b, c, i, j] * HRpad[b, ch, s*i + dy, s*j + dx],   HRpad = reflect-pad(HR, k//2).
Only the kernels at the LR sample positions are ever evaluated; nothing is blurred at full HR resolution.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KernelBasis", "blur_downsample", "blur_downsample_invariant"]

BlurMethod = Literal["exact", "shift", "basis"]

# Upper bound on the unfold buffer of the "exact" path (elements per row chunk), ~64 MB in float32.
_UNFOLD_CHUNK_ELEMS: int = 1 << 24


def _kernel_size(n_taps: int) -> int:
    k = math.isqrt(n_taps)
    if k * k != n_taps or k % 2 != 1:
        raise ValueError(f"kernel has {n_taps} taps; expected k*k taps with an odd k (e.g. 441 for 21x21)")
    return k


def _check_hr(hr: Tensor, scale: int) -> None:
    if hr.ndim != 4:
        raise ValueError(f"hr must have shape (B, C, H, W), got {tuple(hr.shape)}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(
            f"HR size {h}x{w} is not divisible by the scale s={scale}; crop or pad it to a multiple of s"
        )


def _check_field(hr: Tensor, kernel_field: Tensor, scale: int) -> int:
    _check_hr(hr, scale)
    b, _, h, w = hr.shape
    expected = (b, kernel_field.shape[1] if kernel_field.ndim == 4 else -1, h // scale, w // scale)
    if kernel_field.ndim != 4 or tuple(kernel_field.shape) != expected:
        raise ValueError(
            f"kernel_field shape {tuple(kernel_field.shape)} does not match hr shape {tuple(hr.shape)} at scale "
            f"{scale}: expected (B, k*k, H/s, W/s) = (B={b}, k*k, {h // scale}, {w // scale})"
        )
    return _kernel_size(kernel_field.shape[1])


def _reflect_pad(hr: Tensor, k: int) -> Tensor:
    p = k // 2
    if p >= min(hr.shape[-2:]):
        raise ValueError(f"image {tuple(hr.shape[-2:])} is too small for reflect padding by {p} (kernel {k}x{k})")
    return F.pad(hr, (p, p, p, p), mode="reflect")


def _polyphase(hr: Tensor, k: int, scale: int) -> tuple[Tensor, int]:
    """Reflect-pad and split into s*s phase images: (B, C, s, s, h+q-1, w+q-1), q = ceil(k/s).

    Phase (ry, rx) at (n, m) holds HRpad[s*n + ry, s*m + rx], so tap dy = s*qy + ry of LR row i reads phase row
    i + qy: every tap becomes a unit-stride window instead of a stride-s gather, and a stride-s conv with a k x k
    kernel becomes a stride-1 conv with s*s input channels and a q x q kernel (better vectorised on CPU and GPU).
    """
    b, c, hh, ww = hr.shape
    q = -(-k // scale)
    x = _reflect_pad(hr, k)
    # Taps beyond k (up to q*s) get zero weight; the rows they would read past s*h + k - 1 are never needed since
    # s*(h + q - 1) <= s*h + k - 1.
    rows, cols = hh + scale * (q - 1), ww + scale * (q - 1)
    x = x[..., :rows, :cols]
    x = F.pixel_unshuffle(x, scale)  # (B, C*s*s, rows/s, cols/s), channel = ch*s*s + ry*s + rx
    return x.view(b, c, scale, scale, rows // scale, cols // scale), q


def _blur_exact(hr: Tensor, field: Tensor, k: int, scale: int) -> Tensor:
    b, c, _, _ = hr.shape
    h, w = field.shape[-2:]
    x = _reflect_pad(hr, k)
    out = hr.new_empty(b, c, h, w)
    rows = max(1, _UNFOLD_CHUNK_ELEMS // max(1, b * c * k * k * w))
    for i0 in range(0, h, rows):
        i1 = min(h, i0 + rows)
        xs = x[..., scale * i0 : scale * (i1 - 1) + k, :]
        cols = F.unfold(xs, kernel_size=k, stride=scale).view(b, c, k * k, (i1 - i0) * w)
        kf = field[:, :, i0:i1].reshape(b, 1, k * k, (i1 - i0) * w)
        out[:, :, i0:i1] = (cols * kf).sum(dim=2).view(b, c, i1 - i0, w)
    return out


def _blur_shift(hr: Tensor, field: Tensor, k: int, scale: int) -> Tensor:
    h, w = field.shape[-2:]
    ph, _ = _polyphase(hr, k, scale)
    out = torch.zeros(hr.shape[0], hr.shape[1], h, w, device=hr.device, dtype=torch.result_type(hr, field))
    for dy in range(k):
        qy, ry = divmod(dy, scale)
        for dx in range(k):
            qx, rx = divmod(dx, scale)
            c = dy * k + dx
            out.addcmul_(ph[:, :, ry, rx, qy : qy + h, qx : qx + w], field[:, c : c + 1])
    return out


def _strided_conv(hr: Tensor, weights: Tensor, scale: int) -> Tensor:
    """Correlate every channel of hr with each of the O kernels (O, k*k) at the LR positions: (B, C, O, h, w)."""
    b, c, hh, ww = hr.shape
    k = _kernel_size(weights.shape[1])
    ph, q = _polyphase(hr, k, scale)
    ph = ph.reshape(b * c, scale * scale, hh // scale + q - 1, ww // scale + q - 1)
    wk = weights.view(-1, k, k)
    wk = F.pad(wk, (0, q * scale - k, 0, q * scale - k))  # (O, q*s, q*s), zero taps beyond k
    # (O, qy, ry, qx, rx) -> (O, ry*s + rx, qy, qx) to match the pixel_unshuffle channel order.
    wk = wk.view(-1, q, scale, q, scale).permute(0, 2, 4, 1, 3).reshape(-1, scale * scale, q, q)
    out = F.conv2d(ph, wk.to(ph.dtype))
    return out.view(b, c, -1, hh // scale, ww // scale)


def blur_downsample_invariant(hr: Tensor, kernel: Tensor, scale: int) -> Tensor:
    """Reference invariant path: ordinary correlation with one kernel per sample, then [::s, ::s].

    kernel: (B, k*k) or (k*k,). Reflect borders, as the per-pixel paths.
    """
    _check_hr(hr, scale)
    b, c = hr.shape[:2]
    kern = kernel.expand(b, -1) if kernel.ndim == 1 else kernel
    k = _kernel_size(kern.shape[-1])
    x = _reflect_pad(hr, k).reshape(1, b * c, hr.shape[-2] + k - 1, hr.shape[-1] + k - 1)
    wgt = kern.to(hr.dtype).repeat_interleave(c, dim=0).view(b * c, 1, k, k)
    out = F.conv2d(x, wgt, groups=b * c)
    return out.view(b, c, hr.shape[-2], hr.shape[-1])[..., ::scale, ::scale]


def blur_downsample(
    hr: Tensor,
    kernel_field: Tensor,
    scale: int,
    method: BlurMethod = "exact",
    basis: KernelBasis | None = None,
) -> Tensor:
    """Blur hr (B, C, H, W) with the per-LR-pixel kernels (B, k*k, H/s, W/s) and sample every s-th pixel.

    "exact": unfold reference (chunked over rows). "shift": exact too, one multiply-add per tap on unit-stride
    polyphase windows, no k*k-times buffer. "basis": kernels projected on ``basis`` (mean + M eigen-kernels);
    M + 1 strided convolutions in one conv2d call, then a per-pixel weighted sum (exact only if the basis spans
    the field's kernels).
    """
    k = _check_field(hr, kernel_field, scale)
    field = kernel_field.to(hr.dtype)
    if method == "exact":
        return _blur_exact(hr, field, k, scale)
    if method == "shift":
        return _blur_shift(hr, field, k, scale)
    if method == "basis":
        if basis is None:
            raise ValueError('method="basis" needs a KernelBasis (KernelBasis.fit or KernelBasis.from_distribution)')
        if basis.kernel_size != k:
            raise ValueError(f"basis is for {basis.kernel_size}x{basis.kernel_size} kernels, field has {k}x{k}")
        codes = basis.encode(field)  # (B, M, h, w)
        weights = torch.cat([basis.mean[None], basis.components]).to(device=hr.device, dtype=hr.dtype)
        resp = _strided_conv(hr, weights, scale)  # (B, C, M+1, h, w)
        out = resp[:, :, 0] + (resp[:, :, 1:] * codes[:, None]).sum(dim=2)
        return out
    raise ValueError(f'unknown blur method {method!r}; expected "exact", "shift" or "basis"')


class KernelBasis(nn.Module):
    """PCA basis of a kernel distribution: K ~ mean + sum_m codes_m * components_m.

    Used by the fast "basis" blur path and as NBSR's kernel code (10-15 dims). Buffers: ``mean`` (k*k,),
    ``components`` (M, k*k) with orthonormal rows, ``explained`` (M,) fraction of the variance per component.
    """

    mean: Tensor
    components: Tensor
    explained: Tensor

    def __init__(self, mean: Tensor, components: Tensor, explained: Tensor) -> None:
        super().__init__()
        _kernel_size(mean.numel())
        if components.ndim != 2 or components.shape[1] != mean.numel() or explained.shape != components.shape[:1]:
            raise ValueError(
                f"inconsistent basis: mean {tuple(mean.shape)}, components {tuple(components.shape)}, "
                f"explained {tuple(explained.shape)}"
            )
        self.register_buffer("mean", mean.detach().to(torch.float32).clone())
        self.register_buffer("components", components.detach().to(torch.float32).clone())
        self.register_buffer("explained", explained.detach().to(torch.float32).clone())

    @property
    def kernel_size(self) -> int:
        return _kernel_size(self.mean.numel())

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @classmethod
    def fit(cls, kernels: Tensor, n_components: int) -> KernelBasis:
        """Deterministic PCA of kernels (N, k*k): eigh of the float64 covariance, sign fixed per component."""
        if kernels.ndim != 2:
            raise ValueError(f"kernels must have shape (N, k*k), got {tuple(kernels.shape)}")
        n, d = kernels.shape
        if not 1 <= n_components <= d:
            raise ValueError(f"n_components must be in [1, {d}], got {n_components}")
        x = kernels.detach().to("cpu", torch.float64)
        mean = x.mean(dim=0)
        xc = x - mean
        cov = xc.T @ xc / max(n - 1, 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals = evals.flip(0).clamp_min(0.0)
        evecs = evecs.flip(1).T[:n_components].clone()  # (M, d) rows
        # eigh's sign is arbitrary: make the largest-magnitude entry positive so fits are comparable across runs.
        idx = evecs.abs().argmax(dim=1)
        sign = torch.sign(evecs.gather(1, idx[:, None]))
        evecs = evecs * sign
        total = evals.sum().clamp_min(torch.finfo(torch.float64).tiny)
        return cls(mean, evecs, evals[:n_components] / total)

    @classmethod
    def from_distribution(cls, cfg: object, n_components: int, n_samples: int = 20000, seed: int = 0) -> KernelBasis:
        """Fit on n_samples kernels drawn (deterministically from seed) from the family of a KernelConfig."""
        from .kernels import sample_kernel_field

        per_sample = 40  # pixels per synthetic sample: random depths, so defocus spans the whole depth range
        n_fields = -(-n_samples // per_sample)
        gen = torch.Generator().manual_seed(int(seed))
        depth = torch.rand(n_fields, 1, 1, per_sample, generator=gen)
        gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + i) for i in range(n_fields)]
        field, _ = sample_kernel_field(depth, cfg, gens)  # type: ignore[arg-type]
        kernels = field.permute(0, 2, 3, 1).reshape(-1, field.shape[1])[:n_samples]
        return cls.fit(kernels, n_components)

    def encode(self, field: Tensor) -> Tensor:
        """Kernel field (B, k*k, h, w) -> codes (B, M, h, w)."""
        mean = self.mean.to(device=field.device, dtype=field.dtype)
        comp = self.components.to(device=field.device, dtype=field.dtype)
        return torch.einsum("mc,bchw->bmhw", comp, field - mean.view(1, -1, 1, 1))

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, M, h, w) -> kernel field (B, k*k, h, w) (sums to ~1, may have small negative taps)."""
        mean = self.mean.to(device=codes.device, dtype=codes.dtype)
        comp = self.components.to(device=codes.device, dtype=codes.dtype)
        return torch.einsum("mc,bmhw->bchw", comp, codes) + mean.view(1, -1, 1, 1)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"mean": self.mean.cpu(), "components": self.components.cpu(), "explained": self.explained.cpu(),
             "kernel_size": self.kernel_size, "n_components": self.n_components},
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> KernelBasis:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"kernel basis file not found: {path}. Create it with "
                f"KernelBasis.from_distribution(KernelConfig(), n_components=12).save('{path}')"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(state["mean"], state["components"], state["explained"])

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, n_components={self.n_components}, "
                f"explained={float(self.explained.sum()):.4f}")
