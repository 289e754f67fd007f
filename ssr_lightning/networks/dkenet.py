"""DKENet: the Depth-Informed Kernel Estimate Network (paper §3.2, docs/DESIGN.md §3).

Two branches on the LR grid:

- LR branch: conv3x3 -> DABlock -> down (stride-2 conv) -> DABlock -> up (resize + conv, + U skip) -> DABlock
  -> conv -> Softmax over the k*k kernel channels -> optional upscale layer (nearest, to the HR grid).
- Depth branch (``use_depth=True``): the same U-shaped extractor built from plain residual conv blocks; its
  features at each stage's resolution modulate every DABlock of that stage through SFT.

Output: a kernel field ``(B, k*k, h, w)``, one non-negative kernel summing to 1 per LR pixel, laid out as in
docs/ARCHITECTURE.md (channel ``dy*k + dx``). ``use_depth=False`` is the MANet-like "no DI-Kernel" baseline.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from ssr_lightning.degradation.kernels import anisotropic_covariance, gaussian_log_field
from ssr_lightning.registry import register_stage

from .blocks import DABlock
from .depth_maps import normalize_depth_map
from .depth_pooling import DepthKernelPool

__all__ = ["DKENet"]

# Initial kernel: the softmax of the final conv's bias is a centred isotropic Gaussian of this std (HR px),
# mid-range of the training kernels (σ in [0.6, 5]), so training starts from a plausible blur rather than
# from the uniform 1/441 box a zero-initialised head would give.
_INIT_SIGMA = 2.0
# Soft depth bins of the thin-lens head's depth-binned pooling (centres at 0, 1/3, 2/3, 1 of the depth range).
_LENS_BINS = 4
_LENS_FLOOR = -6.0
# Scale on the final conv's default weights: keeps the initial field close to that Gaussian but not constant.
_INIT_WEIGHT_GAIN = 0.1


class _ResBlock(nn.Module):
    """Plain residual block ``x + conv(ReLU(conv(x)))`` for the depth branch."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(ch, ch, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class _Up(nn.Module):
    """Upsample to an exact size (bilinear) then conv3x3; exact size handles odd h/w after the stride-2 down."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class _DepthEncoder(nn.Module):
    """Depth feature extractor with the LR branch's U shape; returns features for the three stages."""

    def __init__(self, depth_channels: int, ch: int, blocks_per_stage: int) -> None:
        super().__init__()
        self.head = nn.Conv2d(depth_channels, ch, 3, padding=1)
        self.stage1 = nn.Sequential(*[_ResBlock(ch) for _ in range(blocks_per_stage)])
        self.down = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.stage2 = nn.Sequential(*[_ResBlock(ch) for _ in range(blocks_per_stage)])
        self.up = _Up(ch)
        self.stage3 = nn.Sequential(*[_ResBlock(ch) for _ in range(blocks_per_stage)])

    def forward(self, depth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d1 = self.stage1(self.head(depth))
        d2 = self.stage2(self.down(d1))
        d3 = self.stage3(self.up(d2, d1.shape[-2:]) + d1)
        return d1, d2, d3


@register_stage("dkenet", label="DKENet (KE)", config="configs/dkenet.yaml", module="DKENetModule")
class DKENet(ModelMixin, ConfigMixin):
    """Depth-Informed Kernel Estimate Network: LR image (+ depth) -> per-pixel blur kernel field."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        depth_channels: int = 1,
        channels: int = 64,
        kernel_size: int = 21,
        scale: int = 4,
        use_depth: bool = True,
        blocks_per_stage: int = 1,
        global_context: bool = True,
        global_kernel: bool = False,
        normalize_depth: bool = False,
        depth_fusion: Literal["sft", "input", "none"] = "sft",
        focal_plane: bool = False,
        thin_lens: bool = False,
        lens_sharpness: float = 1.0,
        lens_floor: float = _LENS_FLOOR,
        depth_pool_bins: int = 0,
    ) -> None:
        """
        Args:
            in_channels: Image channels (3, RGB).
            depth_channels: Depth channels (1).
            channels: Feature width of both branches (16: tiny CPU model, 64: paper size).
            kernel_size: Kernel side k; the field has k² channels.
            scale: SR factor s (set from data.scale by ``ssr``).
            use_depth: False removes the depth branch: the MANet-like "no DI-Kernel" baseline.
            blocks_per_stage: DABlocks per U stage (1 tiny, 2 paper).
            global_context: Add an image-level (pooled) context vector at the bottleneck, so each pixel's kernel can
                draw on the image's overall blur level.
            global_kernel: Add image-level kernel logits (from pooled feature statistics) to every pixel's logits: a
                direct path for the per-image blur that spatially invariant samples are made of.
            normalize_depth: Read depth normalised per image (robust min/max, as every depth estimator's output is
                at test time) instead of the data's absolute [0, 1] depth, in training and evaluation.
            depth_fusion: Where depth enters: "sft" (a depth branch modulating every DABlock), "input" (the depth
                channels concatenated to the LR at the first conv) or "none" (only the thin-lens prior reads depth:
                needs thin_lens).
            focal_plane: Feed the depth branch depth relative to a focal depth estimated from the LR's sharpness.
            thin_lens: Add a thin-lens prior to the kernel logits: per-image lens parameters read from the pixels
                make a per-pixel Gaussian whose defocus part follows depth (CoC ∝ |z − z_f|/z).
            lens_sharpness: β of the prior's defocus σ = softplus(β·(g·|d − d_f|/(d + c) − t))/β. At 1 (the first
                thin-lens KEs) an in-focus pixel keeps σ ≈ 0.6 px; at 10 the prior is the thin lens's max(·, 0) to
                0.01 px (results/lens_reading: the form's own kernel L1 with the true lens).
            lens_floor: Log-floor of every prior tap relative to the centre tap, so that a wrong lens cannot saturate
                the softmax. At −6 the floors of 441 taps outweigh a sharp kernel's centre; −10 costs it 2 %.
            depth_pool_bins: Soft depth bins in which the per-pixel kernels are pooled, confidence-weighted, so that
                pixels at one depth share their kernel (networks/depth_pooling.py); 0: off. Needs use_depth.
        """
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if channels < 2:
            raise ValueError(f"channels must be >= 2 (MAConv splits them in two), got {channels}")
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        if not lens_sharpness > 0:
            raise ValueError(f"lens_sharpness must be > 0 (β of the prior's softplus), got {lens_sharpness}")
        if not lens_floor < 0:
            raise ValueError(f"lens_floor must be < 0 (a log-ratio to the centre tap), got {lens_floor}")
        self.lens_sharpness, self.lens_floor = float(lens_sharpness), float(lens_floor)
        if depth_pool_bins < 0:
            raise ValueError(f"depth_pool_bins must be 0 (off) or >= 2, got {depth_pool_bins}")
        if depth_pool_bins and not use_depth:
            raise ValueError("depth_pool_bins pools kernels by depth: set use_depth true, or depth_pool_bins 0")
        self.in_channels, self.depth_channels = in_channels, depth_channels
        self.kernel_size, self.scale, self.use_depth = kernel_size, scale, use_depth
        # Per-image [0, 1] depth (robust min/max), as every depth estimator returns it: the network then sees the
        # same kind of input from GT depth in training and from DE in SVKR, whatever the crop's depth range.
        self.normalize_depth = normalize_depth
        if depth_fusion not in ("sft", "input", "none"):
            raise ValueError(f"depth_fusion must be 'sft', 'input' or 'none', got {depth_fusion!r}")
        if depth_fusion == "none" and use_depth and not thin_lens:
            raise ValueError("depth_fusion='none' feeds depth only to the thin-lens prior: set thin_lens=True, or use "
                             "'sft' / 'input'")
        self.depth_fusion = depth_fusion
        # Thin-lens defocus grows with |z - z_f|/z: the focal plane z_f is a per-image unknown that depth alone
        # cannot give. With focal_plane, a sharpness score on the LR picks where the image is in focus, its
        # softmax-weighted depth is the image's focal depth d_f, and the depth branch reads d, d - d_f, |d - d_f|.
        self.focus_score = (nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                          nn.Conv2d(channels, 1, 3, padding=1))
                            if use_depth and focal_plane else None)
        depth_in = depth_channels * (3 if self.focus_score is not None else 1)

        # A one-channel depth map needs less width than the RGB trunk; half keeps the depth branch + SFT from
        # dwarfing the MAConv trunk (and the with/without-depth ablation closer in size).
        self.depth_features = max(channels // 2, 4)
        sft = use_depth and depth_fusion == "sft"
        cond_ch = self.depth_features if sft else None
        self.depth_encoder = _DepthEncoder(depth_in, self.depth_features, blocks_per_stage) if sft else None
        # depth_fusion="input": the depth channels join the LR at the first conv (early fusion, no SFT)
        head_in = in_channels + (depth_in if use_depth and depth_fusion == "input" else 0)

        self.head = nn.Conv2d(head_in, channels, 3, padding=1)
        self.stage1 = nn.ModuleList([DABlock(channels, cond_ch) for _ in range(blocks_per_stage)])
        self.down = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.stage2 = nn.ModuleList([DABlock(channels, cond_ch) for _ in range(blocks_per_stage)])
        # Image-level context at the bottleneck: most of the kernel error is the per-image blur level (focus,
        # aperture, optics), which a purely local receptive field cannot pool (issue 2 in
        # docs/history/EXPERIMENTS_issues_2-13.md).
        self.context = (
            nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))
            if global_context
            else None
        )
        self.up = _Up(channels)
        self.stage3 = nn.ModuleList([DABlock(channels, cond_ch) for _ in range(blocks_per_stage)])
        self.tail = nn.Conv2d(channels, kernel_size * kernel_size, 3, padding=1)
        # Image-level kernel: logits from pooled statistics (mean, std) of the last features, added to every
        # pixel's logits. A spatially invariant blur is one kernel per image, read from the whole image's edges;
        # per-pixel logits then only model the variation around it. Zero-initialised: starts as without it.
        self.kernel_head = (
            nn.Sequential(nn.Linear(2 * channels, 2 * channels), nn.ReLU(inplace=True),
                          nn.Linear(2 * channels, kernel_size * kernel_size))
            if global_kernel
            else None
        )
        if self.kernel_head is not None:
            nn.init.zeros_(self.kernel_head[-1].weight)
            nn.init.zeros_(self.kernel_head[-1].bias)
        # Thin-lens head: per-image lens parameters read from pooled features — focal depth d_f, defocus gain g and
        # threshold t, optics σx, σy, θ — make a per-pixel Gaussian log-kernel with covariance
        # R diag(σx², σy²) Rᵀ + σ_def² I, σ_def = softplus_β(g·|d − d_f|/(d + c) − t): the thin-lens CoC
        # m·A·|z − z_f|/z with z affine in d (docs/DESIGN.md §2), added to the per-pixel logits. Depth then sets
        # where the blur is, and the only way to get its level right is to read the lens from the pixels.
        # With depth, the head also reads the last features pooled in soft depth bins: the lens is told by how
        # sharpness changes with depth, which a plain mean/std over the image averages away.
        lens_in = (2 + (_LENS_BINS if use_depth else 0)) * channels
        self.lens_head = (nn.Sequential(nn.Linear(lens_in, 2 * channels), nn.ReLU(inplace=True),
                                        nn.Linear(2 * channels, 6)) if thin_lens else None)
        # c = z_near / (z_far - z_near), learned; softplus⁻¹(1/3) starts it at the default z_range (1, 4)
        self.lens_offset = nn.Parameter(torch.tensor(math.log(math.expm1(1 / 3)))) if thin_lens and use_depth else None
        if self.lens_head is not None:
            last = self.lens_head[-1]
            nn.init.zeros_(last.weight)
            with torch.no_grad():  # d_f = 0.5, g = 3, t = 1, σx = σy = 1 px, θ = 0
                last.bias.copy_(torch.tensor([0.0, math.log(math.expm1(3.0)), 1.0, math.log(math.expm1(0.9)),
                                              math.log(math.expm1(0.9)), 0.0]))
        self.depth_pool = DepthKernelPool(channels, depth_pool_bins) if depth_pool_bins else None
        self._init_tail()

    # ----------------------------------------------------------------------------------------------- presets
    @classmethod
    def tiny(cls, **kw: object) -> DKENet:
        """Small preset for tests and smoke runs (channels=16); keyword arguments override."""
        return cls(**{"channels": 16, **kw})  # type: ignore[arg-type]

    @classmethod
    def paper(cls, **kw: object) -> DKENet:
        """Paper-scale preset (channels=64, two DABlocks per stage); keyword arguments override."""
        return cls(**{"channels": 64, "blocks_per_stage": 2, **kw})  # type: ignore[arg-type]

    # -------------------------------------------------------------------------------------------- internals
    @property
    def kernel_channels(self) -> int:
        """Number of output channels, ``kernel_size**2``."""
        return self.kernel_size * self.kernel_size

    def _init_tail(self) -> None:
        k = self.kernel_size
        with torch.no_grad():
            self.tail.weight.mul_(_INIT_WEIGHT_GAIN)
            r = torch.arange(k, dtype=torch.float32) - k // 2
            r2 = r[:, None] ** 2 + r[None, :] ** 2  # (dy, dx) grid, flattened as dy*k + dx below
            self.tail.bias.copy_((-r2 / (2 * _INIT_SIGMA**2)).flatten())
            if self.lens_head is not None:  # the thin-lens prior is the initial kernel
                self.tail.bias.zero_()

    def _prepare_depth(self, depth: Tensor | None, size: tuple[int, int]) -> Tensor:
        if depth is None:
            raise ValueError(
                "DKENet was built with use_depth=True, so depth is required: pass depth or build with use_depth=False"
            )
        if depth.dim() != 4:
            raise ValueError(f"depth must be (B,{self.depth_channels},h,w), got shape {tuple(depth.shape)}")
        h, w = size
        dh, dw = depth.shape[-2:]
        if (dh, dw) == (h, w):
            return depth
        if (dh, dw) == (self.scale * h, self.scale * w):
            # HR-grid depth: take the LR sample positions, exactly how depth_lr is defined for training batches
            # (docs/ARCHITECTURE.md), so the network sees the same input either way.
            return depth[..., :: self.scale, :: self.scale]
        return F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)

    def _focal_depth(self, lr: Tensor, depth: Tensor) -> Tensor:
        """``d_f (B, 1, 1, 1)``: the depth where the LR looks sharpest (softmax-weighted by a sharpness score)."""
        assert self.focus_score is not None
        weights = torch.softmax(self.focus_score(lr).flatten(2), dim=-1).view_as(depth[:, :1])
        return (weights * depth[:, :1]).sum(dim=(2, 3), keepdim=True)

    @staticmethod
    def depth_bin_sums(feat: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        """Sums of ``feat (B, C, h, w)`` in soft depth bins (triangular weights over [0, 1]) and of the weights:
        ``(B, bins, C)``, ``(B, bins)``."""
        centres = torch.linspace(0.0, 1.0, _LENS_BINS, device=feat.device, dtype=feat.dtype).view(1, -1, 1, 1)
        w = (1.0 - (depth[:, :1].to(feat.dtype).clamp(0, 1) - centres).abs() * (_LENS_BINS - 1)).clamp_min(0.0)
        return torch.einsum("bkhw,bchw->bkc", w, feat), w.sum(dim=(2, 3))

    @staticmethod
    def binned_mean(num: Tensor, den: Tensor) -> Tensor:
        """``(B, bins·C)``: the bin means of :meth:`depth_bin_sums`."""
        return (num / (den[..., None] + 1e-6)).flatten(1)

    @classmethod
    def _depth_binned(cls, feat: Tensor, depth: Tensor) -> Tensor:
        """``feat (B, C, h, w)`` averaged in soft depth bins -> ``(B, bins·C)``."""
        return cls.binned_mean(*cls.depth_bin_sums(feat, depth))

    def lens_terms(self, params: Tensor, focal: Tensor | None = None) -> dict[str, Tensor]:
        """The thin-lens head's raw ``params (B, 6)`` as the lens they describe, each ``(B,)``: ``focus`` d_f (on the
        depth scale the network reads), ``gain`` g, ``threshold`` t (σ_def = softplus_β(g·|d − d_f|/(d + c) − t),
        β = ``lens_sharpness``) and the optics ``sigma_x``, ``sigma_y``, ``theta``; ``focal`` (the sharpness-weighted
        depth) replaces the head's focal depth, the head then only shifts it. ``degradation.lens_targets`` gives the same terms of a GT kernel."""
        p = params.float()
        focus = torch.sigmoid(p[:, 0]) if focal is None else focal.reshape(-1).float() + 0.25 * torch.tanh(p[:, 0])
        return {"focus": focus, "gain": F.softplus(p[:, 1]), "threshold": p[:, 2],
                "sigma_x": F.softplus(p[:, 3]) + 0.1, "sigma_y": F.softplus(p[:, 4]) + 0.1, "theta": p[:, 5]}

    @staticmethod
    def raw_lens(terms: Tensor, focal: Tensor | None = None) -> Tensor:
        """The inverse of :meth:`lens_terms`: raw ``params (B, 6)`` whose terms are ``terms (B, 6)`` = d_f, g, t, σx,
        σy, θ (``degradation.lens_targets``' layout). σ below the head's floor of 0.1 px maps to the floor; d_f is
        clamped into (0, 1), or, with a sharpness ``focal``, into the head's reach focal ± 0.25."""
        def inv_softplus(y: Tensor) -> Tensor:
            y = y.clamp_min(1e-4)
            return y + torch.log(-torch.expm1(-y))  # stable for large y

        t = terms.float()
        if focal is None:
            focus = t[:, 0].clamp(1e-4, 1 - 1e-4)
            shift = torch.log(focus / (1 - focus))
        else:
            shift = torch.atanh(((t[:, 0] - focal.reshape(-1).float()) / 0.25).clamp(-1 + 1e-4, 1 - 1e-4))
        return torch.stack([shift, inv_softplus(t[:, 1]), t[:, 2],
                            inv_softplus(t[:, 3] - 0.1), inv_softplus(t[:, 4] - 0.1), t[:, 5]], dim=1)

    def lens_prior(self, params: Tensor, depth: Tensor, size: tuple[int, int], focal: Tensor | None = None) -> Tensor:
        """The thin-lens prior alone, as a kernel field ``(B, k², h, w)``: the softmax of the head's log-kernels for
        raw ``params`` on ``depth`` (as :meth:`prepare_depth` returns it), no per-pixel logits."""
        return torch.softmax(self._lens_prior(params, depth, size, focal), dim=1)

    def lens_parameters(self, f3: Tensor, depth: Tensor | None, pooled: Tensor | None = None,
                        binned: Tensor | None = None) -> Tensor:
        """The thin-lens head's raw parameters ``(B, 6)`` from last features ``f3`` (see :meth:`kernels` for
        ``pooled``/``binned``); :meth:`lens_terms` reads them."""
        if self.lens_head is None:
            raise ValueError("DKENet has no thin-lens head: build it with thin_lens=True")
        if pooled is None:
            pooled = torch.cat([f3.mean(dim=(2, 3)), f3.std(dim=(2, 3), unbiased=False)], dim=1)
        lens_in = pooled.to(f3.dtype)
        if depth is not None:
            binned = self._depth_binned(f3, depth) if binned is None else binned.to(f3.dtype)
            lens_in = torch.cat([lens_in, binned], 1)
        return self.lens_head(lens_in)

    def _lens_prior(self, params: Tensor, depth: Tensor | None, size: tuple[int, int],
                    focal: Tensor | None = None) -> Tensor:
        """Per-pixel Gaussian log-kernels (B, k², h, w) of the thin-lens parameters ``params (B, 6)``
        (:meth:`lens_terms`)."""
        b = params.shape[0]
        h, w = size
        lens = self.lens_terms(params, focal)
        cov = anisotropic_covariance(lens["sigma_x"], lens["sigma_y"], lens["theta"]).view(b, 1, 1, 2, 2)
        cov = cov.expand(b, h, w, 2, 2)
        if depth is not None and self.lens_offset is not None:
            d = depth[:, 0].float()  # (B, h, w)
            d_f = lens["focus"].view(b, 1, 1)
            coc = lens["gain"].view(b, 1, 1) * (d - d_f).abs() / (d + F.softplus(self.lens_offset))
            beta = self.lens_sharpness
            sigma = F.softplus(beta * (coc - lens["threshold"].view(b, 1, 1))) / beta
            cov = cov + (sigma * sigma)[..., None, None] * torch.eye(2, device=params.device, dtype=torch.float32)
        # Floored at e^lens_floor of the centre tap: a wrong lens (too sharp, e.g. a depth-driven blur on a spatially
        # invariant image) must not saturate the softmax, or the per-pixel logits could never correct it.
        return torch.logaddexp(gaussian_log_field(cov, self.kernel_size),
                               torch.tensor(self.lens_floor, device=params.device))

    # ---------------------------------------------------------------------------------------------- forward
    def upscale_field(self, field: Tensor, scale: int | None = None) -> Tensor:
        """Upscale layer: ``(B,k*k,h,w) -> (B,k*k,s*h,s*w)`` by nearest repeat (each HR pixel takes the kernel
        of the LR pixel whose s×s cell it lies in); normalisation is preserved exactly."""
        s = self.scale if scale is None else scale
        if s == 1:
            return field
        return F.interpolate(field, scale_factor=s, mode="nearest")

    def forward(self, lr: Tensor, depth: Tensor | None = None, upscale: bool = False) -> Tensor:
        """Estimate the kernel field.

        Args:
            lr: LR image ``(B, in_channels, h, w)`` in ``[0, 1]``.
            depth: depth map ``(B, depth_channels, h', w')``; required iff ``use_depth``. An HR-grid map
                (``h' = s*h``) is sampled at the LR positions; any other size is resized bilinearly.
            upscale: return the field on the HR grid ``(B, k*k, s*h, s*w)`` instead of the LR grid.

        Returns:
            Softmax-normalised kernels ``(B, k*k, h, w)`` (or HR-grid), each non-negative and summing to 1.
        """
        depth = self.prepare_depth(lr, depth)
        focal = self.focal_depth(lr, depth) if self.focus_score is not None else None
        f3 = self.features(lr, depth, focal)
        field = self.kernels(f3, depth, focal)
        return self.upscale_field(field) if upscale else field

    def forward_with_lens(self, lr: Tensor, depth: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`forward`'s LR-grid field and the thin-lens head's lens (:meth:`lens_terms`) of the same pass."""
        depth = self.prepare_depth(lr, depth)
        focal = self.focal_depth(lr, depth) if self.focus_score is not None else None
        f3 = self.features(lr, depth, focal)
        params = self.lens_parameters(f3, depth)
        return self.kernels(f3, depth, focal, lens=params), self.lens_terms(params, focal)

    # The stages of forward, so that a tiled caller (inference/tiled_stages.py) can give the image-level statistics
    # (focal depth, bottleneck mean, pooled last features) measured over the whole image instead of over a tile.
    def prepare_depth(self, lr: Tensor, depth: Tensor | None) -> Tensor | None:
        """The depth the network reads, on the LR grid (per-image normalised with ``normalize_depth``): a whole-image
        operation; None without ``use_depth`` (a depth given is then ignored: the MANet-like baseline)."""
        if lr.dim() != 4:
            raise ValueError(f"lr must be (B,{self.in_channels},h,w), got shape {tuple(lr.shape)}")
        if not self.use_depth:
            return None
        depth = self._prepare_depth(depth, (lr.shape[-2], lr.shape[-1])).to(lr.dtype)
        return normalize_depth_map(depth).to(lr.dtype) if self.normalize_depth else depth

    def focal_depth(self, lr: Tensor, depth: Tensor) -> Tensor:
        """``d_f (B, 1, 1, 1)``: the depth where the LR looks sharpest (softmax-weighted by a sharpness score)."""
        return self._focal_depth(lr, depth)

    def bottleneck(self, lr: Tensor, depth: Tensor | None, focal: Tensor | None = None) -> Tensor:
        """``f2``, the half-resolution features before the global context is added (its mean is the context input)."""
        return self._trunk(lr, depth, focal, until="f2")[0]

    def features(self, lr: Tensor, depth: Tensor | None, focal: Tensor | None = None,
                 context_mean: Tensor | None = None) -> Tensor:
        """``f3``, the last features; ``context_mean (B, C)`` replaces the bottleneck mean (else pooled here)."""
        return self._trunk(lr, depth, focal, until="f3", context_mean=context_mean)[0]

    def _trunk(self, lr: Tensor, depth: Tensor | None, focal: Tensor | None, until: str,
               context_mean: Tensor | None = None) -> tuple[Tensor]:
        size = (lr.shape[-2], lr.shape[-1])
        d1 = d2 = d3 = None
        x = lr
        if depth is not None:
            if self.focus_score is not None:
                if focal is None:
                    raise ValueError("DKENet(focal_plane=True) needs the focal depth (focal_depth())")
                rel = depth - focal
                depth = torch.cat([depth, rel, rel.abs()], dim=1)
            if self.depth_encoder is not None:
                d1, d2, d3 = self.depth_encoder(depth)
            elif self.depth_fusion == "input":
                x = torch.cat([lr, depth], dim=1)
        elif self.use_depth:
            raise ValueError("DKENet(use_depth=True) needs the depth from prepare_depth()")

        f1 = self.head(x)
        for block in self.stage1:
            f1 = block(f1, d1)
        f2 = self.down(f1)
        for block in self.stage2:
            f2 = block(f2, d2)
        if until == "f2":
            return (f2,)
        if self.context is not None:
            mean = f2.mean(dim=(2, 3)) if context_mean is None else context_mean.to(f2.dtype)
            f2 = f2 + self.context(mean)[..., None, None]
        f3 = self.up(f2, size) + f1  # U skip: keeps full-resolution detail the down/up path loses
        for block in self.stage3:
            f3 = block(f3, d3)
        return (f3,)

    @property
    def pools_features(self) -> bool:
        """Whether the kernel heads read the whole image's pooled last features (mean and std of ``f3``)."""
        return self.kernel_head is not None or self.lens_head is not None

    @property
    def bins_features(self) -> bool:
        """Whether the thin-lens head also reads the last features pooled in soft depth bins (with depth)."""
        return self.lens_head is not None and self.use_depth

    def kernels(self, f3: Tensor, depth: Tensor | None, focal: Tensor | None = None,
                pooled: Tensor | None = None, binned: Tensor | None = None, lens: Tensor | None = None,
                depth_table: Tensor | None = None) -> Tensor:
        """The kernel field (softmax over the k² channels) of last features ``f3``. ``pooled (B, 2C)`` (mean, std of
        ``f3``) and ``binned (B, bins·C)`` (``f3`` averaged in soft depth bins) replace the pooling of ``f3``
        itself (a tile's caller gives the whole image's); ``lens``: the thin-lens head's parameters, already computed
        (:meth:`lens_parameters`). ``depth``/``focal``: as :meth:`features` read them. ``depth_table``: the whole
        image's depth-pooled kernels (``depth_pool_bins``; :meth:`DepthKernelPool.table`), else pooled here."""
        logits = self.kernel_logits(f3, depth, focal, pooled, binned, lens)
        if self.depth_pool is not None:
            assert depth is not None
            logits = self.depth_pool(self.depth_pool.inputs(f3, logits), depth, depth_table)
        return torch.softmax(logits, dim=1)

    def kernel_logits(self, f3: Tensor, depth: Tensor | None, focal: Tensor | None = None,
                      pooled: Tensor | None = None, binned: Tensor | None = None,
                      lens: Tensor | None = None) -> Tensor:
        """The per-pixel kernel logits of :meth:`kernels`, before the depth pooling and the softmax."""
        size = (f3.shape[-2], f3.shape[-1])
        logits = self.tail(f3)
        if self.pools_features and pooled is None:
            pooled = torch.cat([f3.mean(dim=(2, 3)), f3.std(dim=(2, 3), unbiased=False)], dim=1)
        if self.kernel_head is not None:
            logits = logits + self.kernel_head(pooled.to(f3.dtype))[..., None, None]
        if self.lens_head is not None:
            params = self.lens_parameters(f3, depth, pooled, binned) if lens is None else lens
            prior = self._lens_prior(params, depth, size, focal)
            logits = logits + prior.to(logits.dtype)
        return logits

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if not k.startswith("_"))


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":  # quick size report: python -m ssr_lightning.networks.dkenet
    for name in ("tiny", "paper"):
        for use_depth in (True, False):
            net = getattr(DKENet, name)(use_depth=use_depth)
            print(f"{name:5s} use_depth={use_depth!s:5s} params={_num_params(net):,}")
