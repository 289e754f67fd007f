"""CMOS, the cross-modal blur + semantics estimator of the CMOS paper (§4), CPU-sized, and its non-blind SR.

CMOS is a peer row of the front-end table (docs/DESIGN.md §3, "Peer row: CMOS"). From the LR image alone it
estimates, per LR pixel, an isotropic Gaussian blur level σ (the paper's blur map B, in HR pixels) together with a
semantic map S, the two task branches exchanging features through Grouping Interactive Attention (GIA). The σ map
(plus, optionally, the semantics) then conditions an RRDB-SFT non-blind SR network, here the project's NBSR.

Structure of :class:`CMOSNet` (paper Eqs. 2-8, with scale 0 the coarsest, as in the paper):

- encoder: F^0, F^1, F^2 at 1/4, 1/2 and 1 of the LR grid (widths ``widths[2], widths[1], widths[0]``);
- head inputs: F_b^0 = F_s^0 = F^0 and, for i > 0, F_b^i = Sum(GIA_b^i(F^i, P(F̂_blur^{i-1}))) (same for s),
  where P is a 1x1 conv to F^i's width and Sum adds GIA's two outputs;
- task heads (one residual block each): F_blur^i = head_b^i(F_b^i), F_seg^i = head_s^i(F_s^i);
- interaction: F̂_blur^i, F̂_seg^i = GIA_m^i(F_blur^i, F_seg^i); each scale's F̂ gives an auxiliary σ map and
  semantic logits (deep supervision);
- last stage: F_B^i, F_S^i = GIA_l^i(F_blur^i, F_seg^i), all brought to the finest scale, concatenated and convolved
  into σ (softplus, so σ ≥ 0) and the logits.

Deviations from the paper, all for a CPU-sized, self-contained model:

- a small plain conv encoder over 3 scales (1, 1/2, 1/4 of LR) instead of ImageNet-pretrained HRNet (4 scales);
- every output stays on the LR grid (one σ per LR pixel, in HR pixels, as the kernel fields of the suite); the paper
  upsamples its maps bilinearly by s to the HR grid;
- GIA: no window partition, and the flow-based upsampling is replaced by bilinear resizing + a 3x3 conv (below);
- auxiliary outputs at every scale (the paper supervises only the finest scale's intermediate features);
- the SR network takes σ (and the one-hot semantics) through its SFT condition net instead of a GIA module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from ssr_lightning.registry import register_stage

from .nbsr import NBSR

__all__ = ["CMOS", "GIA", "SIGMA_CENTER", "SIGMA_RANGE", "CMOSNet", "SigmaConditionedSR", "labels_to_onehot"]

# Fixed normalisation of the σ condition of the SR net: (σ − 1.5) / 1.5. The suite's σ (kernel spread in HR px)
# lies in about [0.3, 5], so the condition is roughly in [−1, 2.5]; being fixed, estimated and GT maps see the same.
SIGMA_CENTER = 1.5
SIGMA_RANGE = 1.5
# σ head bias: softplus(b) = 1.5 px, mid-range of the training blur, so a fresh estimator starts from a plausible blur.
_INIT_SIGMA = 1.5


def _inv_softplus(y: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(y))))


def labels_to_onehot(labels: Tensor, num_classes: int) -> Tensor:
    """Integer labels ``(B, 1, h, w)`` or ``(B, h, w)`` → float one-hot ``(B, C, h, w)``.

    Labels ≥ C − 1 are folded into the last class C − 1 (the embedded scenes can have more layers than classes);
    negative labels (unknown) give an all-zero vector.
    """
    if labels.dim() == 4:
        labels = labels[:, 0]
    labels = labels.long()
    valid = labels >= 0
    idx = labels.clamp(0, num_classes - 1)
    onehot = F.one_hot(idx, num_classes).permute(0, 3, 1, 2).float()
    return onehot * valid.unsqueeze(1).float()


class _ResBlock(nn.Module):
    """``x + conv3x3(ReLU(conv3x3(x)))``: the task heads and encoder stages (the paper's basic residual block)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class GIA(nn.Module):
    r"""Grouping Interactive Attention (CMOS §4.2), small version: two feature maps interact in C/G-channel groups.

    Inputs ``a (B, C, H, W)`` and ``b (B, C, H', W')``. When the sizes differ, b is resized bilinearly to a's size;
    with ``upsample=True`` a learned 3x3 conv follows (this offset-free "bilinear + conv" replaces the paper's
    flow-based upsampling, and there is no flow alignment for same-size inputs). The channels of each input are
    split into G = ``groups`` groups x^g (C/G channels each). With σ the logistic function, for m ∈ {a, b}:

    Spatial stream (per group g; the paper's Eq. 9 without window partition). Pooled maps over the group's channels
      p_m^g = [mean_c x_m^g, max_c x_m^g]                       (2 maps)
      q^g   = [p_a^g, p_b^g, mean_c(x_a^g ⊙ x_b^g)]             (5 maps; the last is the per-pixel inner product,
                                                                 the diagonal of the paper's G_1 G_2^T, Eq. 11)
      M_o^{m,g} = conv3x3_m(p_m^g)        own attention logits
      M_a^{m,g} = conv3x3(q^g)_m          shared (interaction) attention logits, one map per modality
      S_m^g = σ(M_o^{m,g} + β_s^m · M_a^{m,g})                   (β_s learnable, one per modality)

    Channel stream (per group g; Eq. 10). Global average pooling v_m = GAP(x_m) ∈ R^C, split into groups v_m^g:
      A_o^m = W_2^m ReLU(W_1^m v_m)                              own squeeze-excitation over all C channels
      [A_a^{a,g}, A_a^{b,g}] = U_2^g ReLU(U_1^g [v_a^g, v_b^g])  per-group SE on the concatenated pooled vectors
      C_m = σ(A_o^m + β_c^m · A_a^m)                             (β_c learnable, one per modality)

    Output (residual modulation; a 1x1 conv takes the place of the paper's 3x3 seam-smoothing conv, as there are
    no windows and so no seams; it is zero-initialised so that a new GIA is the identity and the interaction is
    learned as a correction):
      x_m' = x_m + conv1x1_m(x_m ⊙ S_m + x_m ⊙ C_m)

    Returns ``(a', b')``, both at a's resolution. The groups are realised by grouped convolutions.
    """

    def __init__(self, channels: int, groups: int = 4, reduction: int = 4, upsample: bool = False,
                 init_beta: float = 0.5) -> None:
        super().__init__()
        if channels < 1 or groups < 1 or channels % groups:
            raise ValueError(f"GIA: channels ({channels}) must be a positive multiple of groups ({groups})")
        self.channels, self.groups = channels, groups
        g, c = groups, channels
        hidden = max(c // reduction, 4)
        group_hidden = max(2 * (c // g) // reduction, 2)
        self.up = nn.Conv2d(c, c, 3, padding=1) if upsample else None
        # spatial stream: own maps (2 per group -> 1 per group), shared maps (5 per group -> 2 per group)
        self.own_spatial = nn.ModuleList([nn.Conv2d(2 * g, g, 3, padding=1, groups=g) for _ in range(2)])
        self.shared_spatial = nn.Conv2d(5 * g, 2 * g, 3, padding=1, groups=g)
        # channel stream: own SE per modality, shared SE per group on [v_a^g, v_b^g]
        self.own_channel = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, c, 1)) for _ in range(2)
        ])
        self.shared_channel = nn.Sequential(nn.Conv2d(2 * c, g * group_hidden, 1, groups=g), nn.ReLU(inplace=True),
                                            nn.Conv2d(g * group_hidden, 2 * c, 1, groups=g))
        self.beta_spatial = nn.Parameter(torch.full((2,), float(init_beta)))
        self.beta_channel = nn.Parameter(torch.full((2,), float(init_beta)))
        self.out = nn.ModuleList([nn.Conv2d(c, c, 1) for _ in range(2)])
        for conv in self.out:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def _grouped(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w)

    def align(self, a: Tensor, b: Tensor) -> Tensor:
        """b at a's resolution: bilinear resize (+ the learned 3x3 conv when built with ``upsample=True``)."""
        if b.shape[-2:] != a.shape[-2:]:
            b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        return self.up(b) if self.up is not None else b

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        if a.dim() != 4 or b.dim() != 4 or a.shape[1] != self.channels or b.shape[1] != self.channels:
            raise ValueError(f"GIA({self.channels}) needs two (B, {self.channels}, H, W) maps, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        b = self.align(a, b)
        n, c, h, w = a.shape
        ga, gb = self._grouped(a), self._grouped(b)

        # spatial stream
        pa = torch.stack([ga.mean(2), ga.amax(2)], dim=2)  # (B, G, 2, H, W)
        pb = torch.stack([gb.mean(2), gb.amax(2)], dim=2)
        inner = (ga * gb).mean(2, keepdim=True)  # (B, G, 1, H, W)
        q = torch.cat([pa, pb, inner], dim=2).reshape(n, 5 * self.groups, h, w)
        shared = self.shared_spatial(q).view(n, self.groups, 2, h, w)
        spatial = []
        for m, p in enumerate((pa, pb)):
            own = self.own_spatial[m](p.reshape(n, 2 * self.groups, h, w))  # (B, G, H, W)
            logits = own + self.beta_spatial[m] * shared[:, :, m]
            # one spatial map per group, shared by the group's channels
            spatial.append(torch.sigmoid(logits).unsqueeze(2).expand(-1, -1, c // self.groups, -1, -1)
                           .reshape(n, c, h, w))

        # channel stream
        va, vb = a.mean((2, 3), keepdim=True), b.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        cat = torch.cat([self._grouped(va), self._grouped(vb)], dim=2).reshape(n, 2 * c, 1, 1)
        shared_c = self.shared_channel(cat).view(n, self.groups, 2, c // self.groups)
        channel = []
        for m, v in enumerate((va, vb)):
            own = self.own_channel[m](v)  # (B, C, 1, 1)
            adj = shared_c[:, :, m].reshape(n, c, 1, 1)
            channel.append(torch.sigmoid(own + self.beta_channel[m] * adj))

        outs = tuple(x + self.out[m](x * spatial[m] + x * channel[m]) for m, x in enumerate((a, b)))
        return outs[0], outs[1]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}, upsample={self.up is not None}"


class CMOSNet(ModelMixin, ConfigMixin):
    """Joint blur (σ) and semantic estimator: LR ``(B, 3, h, w)`` → σ ``(B, 1, h, w)`` ≥ 0 (HR px), logits ``(B, C, h, w)``.

    See the module docstring for the structure. ``widths`` are the encoder/head widths at scales 1, 1/2, 1/4 of the
    LR grid; each must be a multiple of ``groups`` (GIA). Any h, w ≥ 1 works (exact-size resizing between scales).
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, num_classes: int = 8, widths: Sequence[int] = (16, 32, 64),
                 groups: int = 4) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3:
            raise ValueError(f"CMOSNet needs 3 widths (scales 1, 1/2, 1/4), got {widths}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        # internal order: coarse -> fine (the paper's scale index i)
        self.scale_widths = widths[::-1]
        c_fine, c_mid, c_coarse = widths
        self.encoder = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_channels, c_fine, 3, padding=1), nn.ReLU(inplace=True), _ResBlock(c_fine)),
            nn.Sequential(nn.Conv2d(c_fine, c_mid, 3, stride=2, padding=1), nn.ReLU(inplace=True), _ResBlock(c_mid)),
            nn.Sequential(nn.Conv2d(c_mid, c_coarse, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                          _ResBlock(c_coarse)),
        ])
        ws = self.scale_widths
        self.head_blur = nn.ModuleList([_ResBlock(w) for w in ws])
        self.head_seg = nn.ModuleList([_ResBlock(w) for w in ws])
        self.gia_m = nn.ModuleList([GIA(w, groups) for w in ws])
        self.gia_l = nn.ModuleList([GIA(w, groups) for w in ws])
        # multi-scale fusion into the head inputs (scales 1..n): projections of the coarser F̂ + GIA_b / GIA_s
        self.proj_blur = nn.ModuleList([nn.Conv2d(ws[i - 1], ws[i], 1) for i in range(1, 3)])
        self.proj_seg = nn.ModuleList([nn.Conv2d(ws[i - 1], ws[i], 1) for i in range(1, 3)])
        self.gia_b = nn.ModuleList([GIA(ws[i], groups, upsample=True) for i in range(1, 3)])
        self.gia_s = nn.ModuleList([GIA(ws[i], groups, upsample=True) for i in range(1, 3)])
        # auxiliary outputs, one pair per scale
        self.aux_blur = nn.ModuleList([nn.Conv2d(w, 1, 3, padding=1) for w in ws])
        self.aux_seg = nn.ModuleList([nn.Conv2d(w, num_classes, 3, padding=1) for w in ws])
        total = sum(ws)
        self.fuse_blur = nn.Sequential(nn.Conv2d(total, c_fine, 3, padding=1), nn.ReLU(inplace=True),
                                       nn.Conv2d(c_fine, 1, 3, padding=1))
        self.fuse_seg = nn.Sequential(nn.Conv2d(total, c_fine, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(c_fine, num_classes, 3, padding=1))
        with torch.no_grad():
            bias = _inv_softplus(_INIT_SIGMA)
            for conv in [self.fuse_blur[-1], *self.aux_blur]:
                conv.weight.mul_(0.1)
                conv.bias.fill_(bias)

    def forward(self, lr: Tensor, return_aux: bool = False
                ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
        """σ map and semantic logits on the LR grid.

        With ``return_aux`` a third item lists the auxiliary ``(σ_i, logits_i)`` of every scale (coarse → fine),
        resized bilinearly to the LR grid, for the auxiliary losses.
        """
        if lr.dim() != 4:
            raise ValueError(f"lr must be (B, 3, h, w), got shape {tuple(lr.shape)}")
        size = lr.shape[-2:]
        feats = []
        x = lr
        for stage in self.encoder:
            x = stage(x)
            feats.append(x)
        feats = feats[::-1]  # coarse -> fine

        blur, seg, aux = [], [], []
        prev_blur = prev_seg = None
        for i, f in enumerate(feats):
            if i == 0:
                fb = fs = f
            else:
                fb = sum(self.gia_b[i - 1](f, self.proj_blur[i - 1](prev_blur)))
                fs = sum(self.gia_s[i - 1](f, self.proj_seg[i - 1](prev_seg)))
            f_blur, f_seg = self.head_blur[i](fb), self.head_seg[i](fs)
            blur.append(f_blur)
            seg.append(f_seg)
            prev_blur, prev_seg = self.gia_m[i](f_blur, f_seg)
            if return_aux:
                aux.append((F.softplus(self._resize(self.aux_blur[i](prev_blur), size)),
                            self._resize(self.aux_seg[i](prev_seg), size)))

        fused_b, fused_s = [], []
        for i in range(len(feats)):
            fb_i, fs_i = self.gia_l[i](blur[i], seg[i])
            fused_b.append(self._resize(fb_i, size))
            fused_s.append(self._resize(fs_i, size))
        sigma = F.softplus(self.fuse_blur(torch.cat(fused_b, 1)))
        logits = self.fuse_seg(torch.cat(fused_s, 1))
        return (sigma, logits, aux) if return_aux else (sigma, logits)

    @staticmethod
    def _resize(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
        if x.shape[-2:] == size:
            return x
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SigmaConditionedSR(ModelMixin, ConfigMixin):
    """The non-blind SR of the CMOS row: NBSR (RRDB-SFT) conditioned on the σ map (+ one-hot semantics).

    Condition map on the LR grid: ``(σ − 1.5) / 1.5`` (a fixed normalisation, :data:`SIGMA_CENTER` /
    :data:`SIGMA_RANGE`), followed, when ``use_semantics``, by the C one-hot channels of the semantic map; it feeds
    NBSR's condition net (1x1 → 3x3 → 3x3) and the SFT of every RRDB.
    """

    @register_to_config
    def __init__(self, num_classes: int = 8, use_semantics: bool = True, channels: int = 16, num_blocks: int = 2,
                 growth: int = 8, scale: int = 4) -> None:
        super().__init__()
        self.num_classes, self.use_semantics, self.scale = num_classes, use_semantics, scale
        self.net = NBSR(code_channels=1 + (num_classes if use_semantics else 0), channels=channels,
                        num_blocks=num_blocks, growth=growth, scale=scale)

    def condition(self, sigma: Tensor, semantics: Tensor | None = None) -> Tensor:
        """The condition map ``(B, 1 [+ C], h, w)``.

        ``semantics``: float logits ``(B, C, h, w)`` (→ one-hot of the argmax), integer labels ``(B, 1, h, w)``
        (→ one-hot, labels ≥ C − 1 folded into C − 1), or None (all-zero semantic channels: "no semantics").
        Ignored when the net was built with ``use_semantics=False``.
        """
        cond = (sigma - SIGMA_CENTER) / SIGMA_RANGE
        if not self.use_semantics:
            return cond
        b, _, h, w = sigma.shape
        if semantics is None:
            onehot = sigma.new_zeros(b, self.num_classes, h, w)
        elif semantics.is_floating_point():
            if semantics.shape[1] != self.num_classes:
                raise ValueError(f"semantic logits must have {self.num_classes} channels, got {tuple(semantics.shape)}")
            onehot = labels_to_onehot(semantics.argmax(1), self.num_classes)
        else:
            onehot = labels_to_onehot(semantics, self.num_classes)
        return torch.cat([cond, onehot.to(cond.dtype)], dim=1)

    def forward(self, lr: Tensor, sigma: Tensor, semantics: Tensor | None = None) -> Tensor:
        """SR ``(B, 3, s·h, s·w)`` of ``lr (B, 3, h, w)`` under ``sigma (B, 1, h, w)`` (HR px) and the semantics."""
        if sigma.dim() != 4 or sigma.shape[0] != lr.shape[0] or sigma.shape[1] != 1 or sigma.shape[-2:] != lr.shape[-2:]:
            raise ValueError(f"sigma must be (B, 1, h, w) on the LR grid of lr {tuple(lr.shape)}, "
                             f"got {tuple(sigma.shape)}")
        return self.net(lr, self.condition(sigma.to(lr.dtype), semantics))


@register_stage("cmos", label="CMOS (blur map + semantics)", config="configs/cmos.yaml", module="CMOSModule")
class CMOS(ModelMixin, ConfigMixin):
    """The CMOS row as one blind SR model: ``forward(lr) = sr(lr, *estimator(lr))``.

    ``estimator`` is a :class:`CMOSNet` (σ map + semantic logits), ``sr`` a :class:`SigmaConditionedSR`.
    """

    @register_to_config
    def __init__(self, num_classes: int = 8, use_semantics: bool = True,
                 estimator_widths: Sequence[int] = (16, 32, 64), gia_groups: int = 4, sr_channels: int = 16,
                 sr_blocks: int = 2, sr_growth: int = 8, scale: int = 4) -> None:
        """
        Args:
            num_classes: Semantic classes C (0 background, 1 ground, 2+ objects/layers; larger labels fold into C − 1).
            use_semantics: Feed the one-hot semantic map to the SR network besides σ (False: σ only).
            estimator_widths: CMOSNet widths at scales 1, 1/2, 1/4 of the LR grid (multiples of gia_groups).
            gia_groups: Channel groups of every GIA module.
            sr_channels: RRDB trunk width of the SR network (16 tiny, 64 paper).
            sr_blocks: SFT-modulated RRDBs of the SR network (2 tiny, 8 paper).
            sr_growth: Dense-block growth channels of the SR network (8 tiny, 32 paper).
            scale: SR factor s, 2, 3 or 4 (set from data.scale by ``ssr``).
        """
        super().__init__()
        self.estimator = CMOSNet(num_classes=num_classes, widths=tuple(estimator_widths), groups=gia_groups)
        self.sr = SigmaConditionedSR(num_classes=num_classes, use_semantics=use_semantics, channels=sr_channels,
                                     num_blocks=sr_blocks, growth=sr_growth, scale=scale)

    def estimate(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        """``(sigma (B, 1, h, w), logits (B, C, h, w))`` on the LR grid."""
        sigma, logits = self.estimator(lr)
        return sigma, logits

    def forward(self, lr: Tensor) -> Tensor:
        """Blind SR ``(B, 3, s·h, s·w)`` (not clamped) from the estimated σ map and semantics."""
        return self.sr(lr, *self.estimate(lr))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if not k.startswith("_"))


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":  # quick size report: python -m ssr_lightning.networks.cmos
    model = CMOS()
    print(f"CMOS tiny: estimator={_num_params(model.estimator):,} sr={_num_params(model.sr):,} "
          f"total={_num_params(model):,}")
