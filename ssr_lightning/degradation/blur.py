"""Spatially variant blur and x s downsampling in one strided pass, plus the eigen-kernel basis used to speed it up.

For LR pixel (i, j) and tap c = dy*k + dx (correlation, reflect borders, docs/ARCHITECTURE.md):
    LR[b, ch, i, j] = sum_{dy,dx} K[b, c, i, j] * HRpad[b, ch, s*i + dy, s*j + dx],   HRpad = reflect-pad(HR, k//2).
Only the kernels at the LR sample positions are ever evaluated; nothing is blurred at full HR resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import KernelConfig, sample_kernel_field

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
        raise ValueError(f"HR size {h}x{w} is not divisible by the scale s={scale}; crop or pad it to a multiple of s")


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


def _reflect_index(n: int, pad: int, length: int) -> Tensor:
    """Source indices of positions -pad .. length-pad-1 of a reflect-101 padded axis of size n."""
    r = (torch.arange(length) - pad).abs()
    return torch.where(r > n - 1, 2 * (n - 1) - r, r)


def _usable(idx: Tensor) -> Tensor:
    """A cached index made under ``torch.inference_mode`` (e.g. by the Degrader in a test loop) cannot be saved for
    backward outside it (guidance differentiates the blur): a copy can."""
    return idx.clone() if torch.is_inference(idx) and not torch.is_inference_mode_enabled() else idx


@lru_cache(maxsize=32)
def _phase_index(hh: int, ww: int, k: int, scale: int, device: torch.device) -> tuple[Tensor, int, int]:
    """Flat gather index (s*s*hq*wq,) from an (hh*ww) image to its reflect-padded polyphase components."""
    q = -(-k // scale)
    hq, wq = hh // scale + q - 1, ww // scale + q - 1
    rows = _reflect_index(hh, k // 2, scale * hq).view(hq, scale).T  # [ry, n] -> padded row s*n + ry
    cols = _reflect_index(ww, k // 2, scale * wq).view(wq, scale).T
    idx = rows[:, None, :, None] * ww + cols[None, :, None, :]  # (ry, rx, n, m)
    return idx.reshape(-1).to(device), hq, wq


def _polyphase(hr: Tensor, k: int, scale: int) -> Tensor:
    """Reflect-pad and split into s*s phase images: (B, C, s, s, h+q-1, w+q-1), q = ceil(k/s).

    Phase (ry, rx) at (n, m) holds HRpad[s*n + ry, s*m + rx], so tap dy = s*qy + ry of LR row i reads phase row
    i + qy: every tap of the "shift" path becomes a unit-stride window instead of a stride-s gather. Padding and
    the phase split are one index_select (2-3x faster than F.pad + pixel_unshuffle on CPU).
    """
    b, c, hh, ww = hr.shape
    if k // 2 >= min(hh, ww):
        raise ValueError(f"image {hh}x{ww} is too small for reflect padding by {k // 2} (kernel {k}x{k})")
    idx, hq, wq = _phase_index(hh, ww, k, scale, hr.device)
    x = hr.reshape(b * c, hh * ww).index_select(1, _usable(idx))
    return x.view(b, c, scale, scale, hq, wq)


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


@contextmanager
def _single_threaded_on_cpu(device: torch.device) -> Iterator[None]:
    """Run a burst of small CPU ops on one intra-op thread, restoring the thread count afterwards.

    The shift path issues k*k (441) multiply-adds of ~1e5 elements each. With several OpenMP threads every op ends
    in a barrier, and when the cores are shared with other processes a descheduled thread stalls each barrier for
    a scheduler slice: measured 1.4-1.7 s instead of 0.07-0.18 s per 16 x 192^2 batch on 2 busy cores. One thread
    costs ~1.5x when the machine is idle and is robust when it is not. GPUs are unaffected.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _blur_shift(hr: Tensor, field: Tensor, k: int, scale: int) -> Tensor:
    h, w = field.shape[-2:]
    ph = _polyphase(hr, k, scale)
    out = torch.zeros(hr.shape[0], hr.shape[1], h, w, device=hr.device, dtype=torch.result_type(hr, field))
    with _single_threaded_on_cpu(hr.device):
        for dy in range(k):
            qy, ry = divmod(dy, scale)
            for dx in range(k):
                qx, rx = divmod(dx, scale)
                c = dy * k + dx
                out.addcmul_(ph[:, :, ry, rx, qy : qy + h, qx : qx + w], field[:, c : c + 1])
    return out


@lru_cache(maxsize=32)
def _pad_index(hh: int, ww: int, pad: int, device: torch.device) -> Tensor:
    """Flat gather index ((hh+2p)*(ww+2p),) from an (hh*ww) image to its reflect-101 padded version."""
    rows = _reflect_index(hh, pad, hh + 2 * pad)
    cols = _reflect_index(ww, pad, ww + 2 * pad)
    return (rows[:, None] * ww + cols[None, :]).reshape(-1).to(device)


def _strided_conv(hr: Tensor, weights: Tensor, scale: int) -> Tensor:
    """Correlate every channel of hr with each of the O kernels (O, k*k) at the LR positions: (B, C, O, h, w).

    One F.conv2d with O output channels and stride s on the (B*C, 1, H+2p, W+2p) reflect-padded image. (A
    polyphase stride-1 version with s*s input channels was measured ~20 % slower on CPU: its q*s = 24 > 21 taps
    waste a quarter of the MACs.)
    """
    b, c, hh, ww = hr.shape
    k = _kernel_size(weights.shape[1])
    p = k // 2
    if p >= min(hh, ww):
        raise ValueError(f"image {hh}x{ww} is too small for reflect padding by {p} (kernel {k}x{k})")
    # Gathering the padded image is one op (F.pad's reflect mode is ~2x slower on CPU).
    x = hr.reshape(b * c, hh * ww).index_select(1, _usable(_pad_index(hh, ww, p, hr.device)))
    x = x.view(b * c, 1, hh + 2 * p, ww + 2 * p)
    out = F.conv2d(x, weights.to(hr.dtype).view(-1, 1, k, k), stride=scale)
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
    the field's kernels). All three are differentiable w.r.t. hr and the field.
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
        return (resp[:, :, 1:] * codes[:, None]).sum(dim=2).add_(resp[:, :, 0])
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
    def from_distribution(
        cls, cfg: KernelConfig, n_components: int, n_samples: int = 20000, seed: int = 0
    ) -> KernelBasis:
        """Fit on n_samples kernels drawn (deterministically from seed) from the family of a KernelConfig."""
        per_sample = 40  # pixels per synthetic sample: random depths, so defocus spans the whole depth range
        n_fields = -(-n_samples // per_sample)
        gen = torch.Generator().manual_seed(int(seed))
        depth = torch.rand(n_fields, 1, 1, per_sample, generator=gen)
        gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + i) for i in range(n_fields)]
        field, _ = sample_kernel_field(depth, cfg, gens)
        kernels = field.permute(0, 2, 3, 1).reshape(-1, field.shape[1])[:n_samples]
        return cls.fit(kernels, n_components)

    def encode(self, field: Tensor) -> Tensor:
        """Kernel field (B, k*k, h, w) -> codes (B, M, h, w)."""
        mean = self.mean.to(device=field.device, dtype=field.dtype)
        comp = self.components.to(device=field.device, dtype=field.dtype)
        b, c, h, w = field.shape
        # comp @ (K - mean) = comp @ K - comp @ mean: avoids a field-sized temporary.
        codes = torch.matmul(comp, field.reshape(b, c, h * w)) - (comp @ mean)[:, None]
        return codes.view(b, -1, h, w)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, M, h, w) -> kernel field (B, k*k, h, w) (sums to ~1, may have small negative taps)."""
        mean = self.mean.to(device=codes.device, dtype=codes.dtype)
        comp = self.components.to(device=codes.device, dtype=codes.dtype)
        b, m, h, w = codes.shape
        field = torch.matmul(comp.T, codes.reshape(b, m, h * w)) + mean[:, None]
        return field.view(b, -1, h, w)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "mean": self.mean.cpu(),
                "components": self.components.cpu(),
                "explained": self.explained.cpu(),
                "kernel_size": self.kernel_size,
                "n_components": self.n_components,
            },
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
        return (
            f"kernel_size={self.kernel_size}, n_components={self.n_components}, "
            f"explained={float(self.explained.sum()):.4f}"
        )
