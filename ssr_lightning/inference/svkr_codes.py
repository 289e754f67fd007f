"""SVKR in kernel-code space, stage by stage in tiles: Algorithm 1 without a 441-channel field of the whole image.

NBSR reads the kernel only through its PCA code, an affine map of the field (``KernelCodec``: ``(C·K − C·μ) / σ``),
and Algorithm 1's update ``K^t = γ·KE(LR, D^t) + (1 − γ)·K^{t−1}`` is a convex combination (weights sum to 1), so it
holds exactly for any affine statistic of the field: the code, the first and second kernel moments (the kernel
variance map), or a consumer's projection (the diffusion's kernel encoder reads ``W·K + b`` first). :class:`FieldStats`
stacks them into one matrix; :func:`run_coded` keeps their EMA per LR pixel, never the field, and runs KE and NBSR over
tiles with a halo (``tiled_stages``) and DE on the SR image gathered tile by tile (``depth_stream``).

The field itself, where a consumer needs it (BlindDiff guidance), is rebuilt for a window on demand from the stored
depth iterates D^0..D^T (:meth:`CodedSVKR.kernel`): ``K_T = Σ_t w_t·KE(LR, D^t)`` with ``w_T = γ``,
``w_t = γ(1 − γ)^{T−t}`` for ``1 ≤ t < T`` and ``w_0 = (1 − γ)^T``: exact, with each iterate's image-level KE
statistics kept (a few numbers).

Per LR pixel this keeps the LR image, T + 1 depth maps and the statistics' EMA (12 code + 5 moment channels + the
probes'); I_T goes to ``image_sink`` tile by tile (or into one HR tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ssr_lightning.inference.depth_stream import StreamedDepth, streams
from ssr_lightning.inference.tiled_stages import TiledKE, Window, tiled_sr

__all__ = ["CodedSVKR", "FieldStats", "ImageSink", "Probe", "iterate_weights", "run_coded"]

Probe = tuple[Tensor, Tensor | None]  # (weight (c, k²), bias (c,) or None): an affine map of each pixel's kernel
ImageSink = Callable[[Window, Tensor], None]  # (LR window, SR tile (B, 3, s·h, s·w)) of I_T, in raster order


class FieldStats:
    """Affine per-pixel statistics of a kernel field ``(B, k², h, w)``, stacked: ``code`` (the codec's whitened PCA
    code), ``moments`` (E[dy], E[dx], E[dy²], E[dx²], E[dy·dx] in HR px) and each probe's output."""

    def __init__(self, codec: Any, kernel_size: int, probes: Mapping[str, Probe] | None = None) -> None:
        k = kernel_size
        r = torch.arange(k, dtype=torch.float64) - k // 2
        ry, rx = r.repeat_interleave(k), r.repeat(k)  # tap c = dy·k + dx
        comp = codec.basis.components.double() / codec.code_std.double()[:, None]
        rows = [comp, torch.stack([ry, rx, ry * ry, rx * rx, ry * rx])]
        offsets = [-(comp @ codec.basis.mean.double()), torch.zeros(5, dtype=torch.float64)]
        self.slices: dict[str, slice] = {"code": slice(0, comp.shape[0]), "moments": slice(comp.shape[0],
                                                                                           comp.shape[0] + 5)}
        at = comp.shape[0] + 5
        for name, (weight, bias) in (probes or {}).items():
            w = weight.detach().double().reshape(weight.shape[0], -1)
            rows.append(w)
            offsets.append(bias.detach().double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64))
            self.slices[name] = slice(at, at + w.shape[0])
            at += w.shape[0]
        self.matrix = torch.cat(rows).float()
        self.offset = torch.cat(offsets).float()

    def __call__(self, kernel: Tensor) -> Tensor:
        """``(B, channels, h, w)`` of a field tile."""
        b, c, h, w = kernel.shape
        m = self.matrix.to(kernel.device)
        out = torch.matmul(m, kernel.float().reshape(b, c, h * w)) + self.offset.to(kernel.device)[:, None]
        return out.view(b, -1, h, w)


def iterate_weights(iterations: int, gamma: float) -> list[float]:
    """``w_t`` with ``K_T = Σ_t w_t·KE(LR, D^t)``: ``w_0 = (1 − γ)^T``, ``w_t = γ(1 − γ)^{T−t}`` (they sum to 1)."""
    t_max = iterations
    return [(1.0 - gamma) ** t_max if t == 0 else gamma * (1.0 - gamma) ** (t_max - t) for t in range(t_max + 1)]


@dataclass
class CodedSVKR:
    """The result of :func:`run_coded`: ``depths`` D^0..D^T ``(B, 1, h, w)``; ``codes`` (every iterate's code with
    ``keep_all``, else the final one) ``(B, M, h, w)``; ``stats`` the final EMA of the other statistics (``moments``,
    each probe); ``images`` (every iterate with ``keep_all``, else I_T unless it went to a sink) ``(B, 3, s·h, s·w)``."""

    depths: list[Tensor]
    codes: list[Tensor]
    stats: dict[str, Tensor]
    images: list[Tensor]
    gamma: float
    rebuild: Any = field(default=None, repr=False)

    @property
    def iterations(self) -> int:
        return len(self.depths) - 1

    @property
    def final_depth(self) -> Tensor:
        return self.depths[-1]

    @property
    def final_code(self) -> Tensor:
        return self.codes[-1]

    @property
    def final_image(self) -> Tensor | None:
        return self.images[-1] if self.images else None

    def kernel_var(self) -> Tensor:
        """Per-pixel variance of K_T ``(B, 1, h, w)`` (HR px², ``visualize.kernel_spread`` squared) from its moments."""
        m = self.stats["moments"]
        vy, vx = m[:, 2] - m[:, 0] ** 2, m[:, 3] - m[:, 1] ** 2
        return ((vx + vy).clamp_min(0) / 2).unsqueeze(1)

    def release(self, keep_rebuild: bool = False) -> None:
        """Drop what a sampler no longer reads, once ``kernel_var`` and the final depth are taken: the codes, the
        moments, the images and, unless ``keep_rebuild`` (:meth:`kernel` rebuilds from them), the depth iterates
        D^0..D^(T−1). The probes and D_T stay."""
        self.codes.clear()
        self.stats.pop("moments", None)
        self.images.clear()
        if not keep_rebuild:
            del self.depths[:-1]
            self.rebuild = None

    def kernel(self, window: Window) -> Tensor:
        """K_T ``(B, k², y1 − y0, x1 − x0)`` on an LR window, rebuilt from the depth iterates (exact)."""
        if self.rebuild is None:
            raise RuntimeError("this SVKR result keeps no kernel estimator to rebuild K_T")
        return self.rebuild(window)


class _Rebuild:
    """K_T on a window: Σ_t w_t·KE(LR, D^t) with each iterate's whole-image KE statistics."""

    def __init__(self, net: Any, lr: Tensor, depths: list[Tensor], stats: list[dict[str, Any]], gamma: float,
                 tile: int, dtype: torch.dtype | None) -> None:
        self.net, self.lr, self.depths, self.stats, self.tile, self.dtype = net, lr, depths, stats, tile, dtype
        self.weights = iterate_weights(len(depths) - 1, gamma)
        self._ke: list[TiledKE] | None = None

    def __call__(self, window: Window) -> Tensor:
        if self._ke is None:
            self._ke = [TiledKE(self.net, self.lr, d, self.tile, dtype=self.dtype, stats=s)
                        for d, s in zip(self.depths, self.stats, strict=True)]
        out = None
        for w, ke in zip(self.weights, self._ke, strict=True):
            if w == 0.0:
                continue
            part = ke.field(window).mul_(w)
            out = part if out is None else out.add_(part)
        assert out is not None
        return out


@torch.no_grad()
def run_coded(
    depth_estimator: Any, kernel_estimator: Any, sr_model: Any, lr: Tensor, *, iterations: int, gamma: float,
    gt_depth: Tensor | None = None, tile: int = 256, align: int = 2, dtype: torch.dtype | None = None,
    probes: Mapping[str, Probe] | None = None, probe_dtype: torch.dtype = torch.float32, keep_all: bool = False,
    image_sink: ImageSink | None = None, on_stage: Callable[[str, int], None] | None = None,
    estimate_depth: Callable[..., Tensor] | None = None,
) -> CodedSVKR:
    """Algorithm 1 on ``lr (B, 3, h, w)`` in code space and tiles (the module doc); ``estimate_depth(image, size,
    gt_depth)`` is ``SVKR.estimate_depth`` (DE resampled to the LR grid), used where DE cannot be streamed. The
    probes' maps are kept in ``probe_dtype`` (float16: half the memory; each update is computed in float32)."""
    stage = on_stage or (lambda name, t: None)
    size = (lr.shape[-2], lr.shape[-1])
    s = int(sr_model.net.scale)
    stats_of = FieldStats(sr_model.codec, kernel_estimator.kernel_size, probes)
    b = lr.shape[0]
    # one tensor per statistic: the ones a caller keeps hold no other statistic's memory
    running = {name: torch.empty(b, sl.stop - sl.start, *size, device=lr.device,
                                 dtype=probe_dtype if name not in ("code", "moments") else torch.float32)
               for name, sl in stats_of.slices.items()}
    level = sr_model.noise_level(lr)
    assert estimate_depth is not None
    stage("DE", 0)
    depths = [estimate_depth(lr, size, gt_depth)]
    ke_stats: list[dict[str, Any]] = []
    codes: list[Tensor] = []
    images: list[Tensor] = []
    for t in range(iterations + 1):
        stage("KE", t)
        ke = TiledKE(kernel_estimator, lr, depths[t], tile, align, dtype)
        ke_stats.append(ke.stats)
        for (y0, y1, x0, x1), fld in ke:
            new = stats_of(fld)
            for name, sl in stats_of.slices.items():
                part = running[name][..., y0:y1, x0:x1]
                value = new[:, sl]
                part.copy_(value if t == 0 else value.mul_(gamma).add_(part, alpha=1.0 - gamma))
        del ke
        if keep_all:
            codes.append(running["code"].clone())
        stage("NBSR", t)
        last = t == iterations
        hr = (s * size[0], s * size[1])
        stream = StreamedDepth(depth_estimator, hr, b, lr.device) if not last and streams(depth_estimator, hr) \
            else None
        whole = None
        if (not last and stream is None) or keep_all or (last and image_sink is None):
            whole = torch.empty(b, 3, *hr, device=lr.device)
        for win, out in tiled_sr(sr_model, lr, running["code"], tile, align, dtype, level):
            out = out.clamp_(0.0, 1.0)
            y0, y1, x0, x1 = win
            if stream is not None:
                stream.add(s * y0, s * x0, out)
            if whole is not None:
                whole[..., s * y0 : s * y1, s * x0 : s * x1] = out
            if last and image_sink is not None:
                image_sink(win, out)
        if whole is not None and (keep_all or last):
            images.append(whole)
        if not last:
            stage("DE", t + 1)
            depths.append(stream.depth_lr(size) if stream is not None else estimate_depth(whole, size, gt_depth))
        del whole, stream
    if not keep_all:
        codes.append(running["code"])
    stats = {name: value for name, value in running.items() if name != "code"}
    rebuild = _Rebuild(kernel_estimator, lr, depths, ke_stats, gamma, tile, dtype)
    return CodedSVKR(depths, codes, stats, images, gamma, rebuild)
