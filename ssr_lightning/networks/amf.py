"""AMF: Adaptive Multi-Modal Fusion (paper §3.3, Eq. 3; docs/DESIGN.md §4).

Eq. 3 modulates a UNet feature map ``F_in`` by each modality feature ``f_i`` (i ∈ {kernel, depth, LR})::

    F_out = (1 + M_α,i(f_i)) ⊙ BN(F_in) + M_β,i(f_i)

``M`` is an MLP with hidden width 128 and ReLU, applied **per pixel** (1×1 convs) so the modulation stays
spatially variant; ``pooled=True`` gives the global variant (``f_i`` average-pooled to 1×1 first).

How several modalities combine (the paper indexes Eq. 3 by i but does not say): one shared ``BN(F_in)`` and the
**sum** of the per-modality (α_i, β_i). The sum is order-independent, and a modality that is switched off simply
has no term (no parameters, no effect), which is what the ablation runner needs.

Two forms (``mode``):

- ``"residual"`` (default): ``F_out = F_in + Σ_i [α_i ⊙ BN(F_in) + β_i]``. This is Eq. 3 with the un-modulated
  ``1·BN(F_in)`` term replaced by ``F_in`` itself, so the backbone's own features pass unchanged and the
  modalities add the modulation ``α ⊙ BN(F_in) + β`` on top. With the zero-initialised last layers of ``M`` a new
  AMF is the exact identity, so inserting it into a (pre-)trained backbone does not disturb it (the diffusers /
  ControlNet principle: without conditioning the model is the plain backbone).
- ``"paper"``: the literal ``F_out = (1 + Σ α_i) ⊙ BN(F_in) + Σ β_i``; a new AMF is BN-only. Fine for a
  backbone trained from scratch, not for a frozen pretrained one.

With no modality at all the AMF has no parameters and returns ``F_in`` unchanged in both modes.
BN is ``BatchNorm2d(affine=False)``: the affine part is exactly what α and β provide.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AMF", "AMFMode", "ModalityMLP"]

AMFMode = Literal["residual", "paper"]


class ModalityMLP(nn.Module):
    """``M_α,i`` and ``M_β,i`` of one modality: two per-pixel MLPs (1×1 conv → ReLU → 1×1 conv) run as one.

    The two hidden layers are stacked into one conv (``in → 2·hidden``) and the two output layers form one
    grouped conv (``groups=2``), which is mathematically the same as two separate MLPs (no weight is shared) but
    half the kernel launches. The output layers start at zero, so a new AMF applies no modulation.
    ``forward`` returns ``(α, β)``, each ``(B, out_ch, h, w)`` (``(B, out_ch, 1, 1)`` when pooled).
    """

    def __init__(self, in_ch: int, out_ch: int, hidden: int = 128, pooled: bool = False) -> None:
        super().__init__()
        self.pooled, self.out_ch, self.hidden = pooled, out_ch, hidden
        self.fc1 = nn.Conv2d(in_ch, 2 * hidden, 1)  # rows [:hidden] feed α, [hidden:] feed β
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(2 * hidden, 2 * out_ch, 1, groups=2)  # rows [:out_ch] = α, [out_ch:] = β
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        if self.pooled:
            f = f.mean(dim=(-2, -1), keepdim=True)
        out = self.fc2(self.act(self.fc1(f)))
        return out[:, : self.out_ch], out[:, self.out_ch :]


class AMF(nn.Module):
    """Adaptive Multi-Modal Fusion of one UNet feature map with several modality features (Eq. 3).

    Args:
        feat_ch: Channels of the modulated UNet feature ``F_in``.
        mod_channels: ``{modality name: channels of f_i}`` for the **enabled** modalities only; an empty dict
            gives a parameter-free identity.
        hidden: Hidden width of every ``M_α,i`` / ``M_β,i`` (paper: 128).
        pooled: Global variant: ``f_i`` is average-pooled, so α_i and β_i are per-channel, not per-pixel.
        mode: ``"residual"`` (identity at init; default) or ``"paper"`` (literal Eq. 3), see the module doc.
        bn_momentum: Momentum of the BN running statistics (used in eval, e.g. sampling and tiled inference).
    """

    def __init__(
        self,
        feat_ch: int,
        mod_channels: dict[str, int],
        hidden: int = 128,
        pooled: bool = False,
        mode: AMFMode = "residual",
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if mode not in ("residual", "paper"):
            raise ValueError(f"AMF mode must be 'residual' or 'paper', got {mode!r}")
        if feat_ch < 1 or any(c < 1 for c in mod_channels.values()):
            raise ValueError(f"AMF needs positive channel counts, got feat_ch={feat_ch}, mod_channels={mod_channels}")
        self.feat_ch, self.mode, self.pooled = feat_ch, mode, pooled
        self.modalities = list(mod_channels)
        # Only enabled modalities get an MLP: an off modality must add no parameters at all.
        self.mlp = nn.ModuleDict({k: ModalityMLP(c, feat_ch, hidden, pooled) for k, c in mod_channels.items()})
        self.bn = nn.BatchNorm2d(feat_ch, affine=False, momentum=bn_momentum) if mod_channels else None

    @property
    def enabled(self) -> bool:
        """True when at least one modality modulates this feature map."""
        return self.bn is not None

    def modulation(self, feats: dict[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Σ_i α_i and Σ_i β_i, each ``(B, feat_ch, h, w)`` (or ``(B, feat_ch, 1, 1)`` when pooled)."""
        alpha: Tensor | float = 0.0
        beta: Tensor | float = 0.0
        for name in self.modalities:
            if name not in feats:
                raise KeyError(f"AMF expects a feature for modality {name!r}; got {sorted(feats)}")
            f = feats[name]
            if not self.pooled and f.shape[-2:] != size:
                # Encoders are built for the UNet's level sizes; other sizes (odd inputs, foreign backbones) resize.
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            a, b = self.mlp[name](f)
            alpha, beta = alpha + a, beta + b
        assert isinstance(alpha, Tensor) and isinstance(beta, Tensor)
        return alpha, beta

    def forward(self, x: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """Modulate ``x (B, feat_ch, h, w)`` by ``feats`` ({name: (B, c_i, h_i, w_i)}); extra keys are ignored."""
        if self.bn is None:
            return x
        alpha, beta = self.modulation(feats, (x.shape[-2], x.shape[-1]))
        normed = self.bn(x)
        if self.mode == "residual":
            return x + alpha * normed + beta
        return (1.0 + alpha) * normed + beta

    def extra_repr(self) -> str:
        return f"feat_ch={self.feat_ch}, modalities={self.modalities}, mode={self.mode!r}, pooled={self.pooled}"
