"""Statistics of results (docs/DESIGN.md §5): means with 95 % bootstrap CIs, paired differences, seed summaries.

A cell is the mean over test images with a percentile bootstrap CI (images resampled with replacement, a fixed
seed, so a report regenerates byte-identically); a comparison "A beats B" is the paired per-image difference
A − B with its CI, significant when the CI excludes 0; training seeds give mean ± sample std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Estimate", "bootstrap_ci", "paired_difference", "seed_summary"]

N_BOOT = 2000
ALPHA = 0.05


@dataclass(frozen=True)
class Estimate:
    """A mean with its ``1 − alpha`` confidence interval over ``n`` values."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (for a difference: the effect is significant at level alpha)."""
        return self.n > 1 and (self.lo > 0 or self.hi < 0)

    def as_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "significant": self.significant}

    def format(self, digits: int = 2, signed: bool = False) -> str:
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        if self.n < 2:
            return f.format(self.mean)
        return f"{f.format(self.mean)} [{f.format(self.lo)}, {f.format(self.hi)}]"


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = N_BOOT, alpha: float = ALPHA,
                 seed: int = 0) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap CI; non-finite values are dropped (NaN when none is left)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Estimate(mean, float(lo), float(hi), n)


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, n_boot: int = N_BOOT,
                      alpha: float = ALPHA, seed: int = 0) -> Estimate:
    """Per-image differences ``a − b`` (same images, same order) with their bootstrap CI."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs values of the same images: got {a.size} and {b.size}")
    return bootstrap_ci(a - b, n_boot, alpha, seed)


def seed_summary(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std, count) over training seeds; std is 0 for a single seed."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0, int(x.size)
