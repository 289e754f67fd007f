"""Statistics of results (docs/DESIGN.md §5): means with 95 % bootstrap CIs, paired differences, seed summaries.

A cell is the mean over test images with a percentile bootstrap CI (a fixed seed, so a report regenerates
byte-identically); a comparison "A beats B" is the paired per-image difference A − B with its CI, significant when
the CI excludes 0.

With training seeds the values of a cell form a ``(seeds, images)`` array (NaN: not scored) and the bootstrap is
two-level (:func:`bootstrap_seeds`): each replicate resamples the seeds with replacement, then the images with
replacement (the same image indices for every seed, since the seeds score the same images), and takes the mean
over the drawn images of each image's mean over the drawn seeds. :func:`paired_difference_seeds` resamples the
images jointly for both rows (paired) and the seeds independently per row, or jointly (``paired_seeds``) when
seed s of both rows shares its stage trainings. ``clusters`` (one label per image, e.g. the source photo of
several kernel draws) resamples sources instead of images. With one seed and no clusters both reduce exactly to
:func:`bootstrap_ci` and :func:`paired_difference`: same draws, same numbers. Differences carry a two-sided
bootstrap p-value; :func:`adjust_pvalues` corrects a table's p-values (Holm, Benjamini–Hochberg) and
:func:`mark_deltas` gives each Δ its raw mark (`*`: the CI excludes 0) and its corrected mark.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "Bootstrap", "DeltaMark", "Estimate", "adjust_pvalues", "bootstrap_ci", "bootstrap_p_value", "bootstrap_seeds",
    "ci_phrase", "correction_note", "mark_deltas", "paired_difference", "paired_difference_seeds", "seed_matrix",
    "seed_summary", "source_clusters",
]

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

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}

    def format(self, digits: int = 2, signed: bool = False) -> str:
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        if self.n < 2:
            return f.format(self.mean)
        return f"{f.format(self.mean)} [{f.format(self.lo)}, {f.format(self.hi)}]"


@dataclass(frozen=True)
class Bootstrap(Estimate):
    """An :class:`Estimate` over ``n`` images and ``seeds`` training seeds (per row: the fewer of a difference's).

    ``units``: what the image level resampled (``n`` images, or the number of clusters); ``p``: the two-sided
    bootstrap p-value of "the mean is 0", set for differences only.
    """

    seeds: int = 1
    units: int = 0
    p: float | None = None


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


# --- seeds × images ------------------------------------------------------------------------------------------------

def seed_matrix(per_seed: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None
                ) -> tuple[list[str], np.ndarray]:
    """Per-image values of each seed (``{image name: value}``, one map per seed) as a ``(seeds, images)`` array.

    Columns follow ``names`` (default: the sorted union of the maps' names); an image a seed did not score, or
    scored as text ("n/a ..."), is NaN. Give two rows the same ``names`` to pair them.
    """
    cols = sorted(set().union(*per_seed)) if names is None else list(names)

    def number(v: Any) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        return float(v) if ok else math.nan

    return cols, np.array([[number(m.get(c)) for c in cols] for m in per_seed], dtype=np.float64).reshape(
        len(per_seed), len(cols))


def source_clusters(names: Sequence[str], suffix: str = r"_v\d+$") -> list[str]:
    """Cluster labels from image names: the name without ``suffix`` (``RealPhotos``' ``{photo}_v{draw}``)."""
    return [re.sub(suffix, "", n) for n in names]


def bootstrap_p_value(replicates: np.ndarray, n_boot: int | None = None) -> float:
    """Two-sided bootstrap p of "mean = 0": 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)), floored at 1/(n_boot + 1), at most 1."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan
    tail = min(np.count_nonzero(r <= 0), np.count_nonzero(r >= 0)) / r.size
    return float(min(1.0, max(2.0 * tail, 1.0 / ((n_boot or r.size) + 1))))


def _matrix(values: Any, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"{what}: expected (images,) or (seeds, images) values, got shape {x.shape}")
    return np.where(np.isfinite(x), x, np.nan)  # inf (identical images' PSNR) is dropped as bootstrap_ci does


def _scored(x: np.ndarray) -> np.ndarray:
    """Seeds (rows) that scored at least one image."""
    return ~np.isnan(x).all(axis=1)


def _codes(clusters: Sequence[Any] | None, n: int) -> np.ndarray | None:
    if clusters is None:
        return None
    labels = list(clusters)
    if len(labels) != n:
        raise ValueError(f"clusters: need one label per image, got {len(labels)} labels for {n} images")
    first: dict[Any, int] = {}
    return np.array([first.setdefault(c, len(first)) for c in labels], dtype=np.int64)


def _image_means(x: np.ndarray) -> np.ndarray:
    """Each image's mean over the seeds that scored it, ``(images,)`` (NaN: none did)."""
    ok = ~np.isnan(x)
    with np.errstate(invalid="ignore"):
        return np.where(ok, x, 0.0).sum(axis=0) / ok.sum(axis=0)


def _counts(draws: np.ndarray, k: int) -> np.ndarray:
    """How often each of ``k`` units was drawn in each replicate: ``(B, k)`` from draws ``(B, m)``."""
    b = draws.shape[0]
    flat = (draws + k * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * k).reshape(b, k).astype(np.float64)


def _seed_level(x: np.ndarray, rng: np.random.Generator, n_boot: int, draws: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Per replicate, each image's mean over resampled seeds ``(B, images)``, and the seed draws used."""
    s = x.shape[0]
    if s == 1:
        return np.broadcast_to(x[0], (n_boot, x.shape[1])), None
    if draws is None:
        draws = rng.integers(0, s, size=(n_boot, s))
    w, ok = _counts(draws, s), ~np.isnan(x)
    with np.errstate(invalid="ignore"):
        return (w @ np.where(ok, x, 0.0)) / (w @ ok.astype(np.float64)), draws


def _image_level(r: np.ndarray, units: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
    """Replicate means ``(B,)`` of per-replicate image values ``r (B, images)`` over the resampled images."""
    draws, codes = units
    if codes is None:
        g = np.take_along_axis(r, draws, axis=1)
        if not np.isnan(g).any():
            return g.mean(axis=1)  # as bootstrap_ci: same values, same order, same sum
        ok = ~np.isnan(g)
        with np.errstate(invalid="ignore"):
            return np.where(ok, g, 0.0).sum(axis=1) / ok.sum(axis=1)
    w = _counts(draws, int(codes.max()) + 1)[:, codes]  # each image weighs as often as its cluster was drawn
    ok = ~np.isnan(r)
    with np.errstate(invalid="ignore"):
        return (w * np.where(ok, r, 0.0)).sum(axis=1) / (w * ok).sum(axis=1)


def _draw_units(rng: np.random.Generator, n_boot: int, n: int, codes: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    k = n if codes is None else int(codes.max()) + 1
    return rng.integers(0, k, size=(n_boot, k)), codes  # images first: one seed draws as bootstrap_ci does


def _interval(means: np.ndarray, alpha: float) -> tuple[float, float]:
    q = np.quantile if not np.isnan(means).any() else np.nanquantile  # NaN: a replicate drew no scored value
    lo, hi = q(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_seeds(values: Sequence[Any] | np.ndarray, clusters: Sequence[Any] | None = None,
                    n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0) -> Bootstrap:
    """Mean of a cell over seeds and images with a two-level percentile bootstrap CI.

    Args:
        values: ``(seeds, images)`` per-image values of each training seed (1-D: one seed); NaN or inf: not
            scored. A seed with no value and an image no seed scored are left out.
        clusters: one label per image (column); resample clusters instead of images.
    Returns:
        the mean over images of each image's mean over seeds, its CI, ``n`` images, ``seeds``, ``units``.
        One seed, no clusters: equal to :func:`bootstrap_ci` of the values.
    """
    x = _matrix(values, "bootstrap_seeds")
    codes = _codes(clusters, x.shape[1])
    x = x[_scored(x)]
    keep = ~np.isnan(x).all(axis=0)
    x = x[:, keep]
    codes = np.unique(codes[keep], return_inverse=True)[1] if codes is not None else None
    s, n = x.shape
    if n == 0:
        return Bootstrap(math.nan, math.nan, math.nan, 0, s, 0)
    mean = float(_image_means(x).mean())
    k = n if codes is None else int(codes.max()) + 1
    if s == 1 and (n == 1 or k == 1):
        return Bootstrap(mean, mean, mean, n, s, k)
    rng = np.random.default_rng(seed)
    units = _draw_units(rng, n_boot, n, codes)
    means = _image_level(_seed_level(x, rng, n_boot)[0], units)
    return Bootstrap(mean, *_interval(means, alpha), n, s, k)


def paired_difference_seeds(a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray,
                            clusters: Sequence[Any] | None = None, paired_seeds: bool = False,
                            n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0) -> Bootstrap:
    """Row A ``(S_a, N)`` − reference B ``(S_b, N)`` on the same N images, with its CI and two-sided p-value.

    Images (or ``clusters``) are resampled jointly for A and B; seeds independently per row, or with the same
    draws when ``paired_seeds`` (S_a == S_b and seed s of both rows shares its stage trainings). Images that one
    row did not score are left out. One seed each, no clusters: the CI of :func:`paired_difference`.
    """
    xa, xb = _matrix(a, "paired_difference_seeds"), _matrix(b, "paired_difference_seeds")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"paired_difference_seeds needs values of the same images: got {xa.shape[1]} and "
                         f"{xb.shape[1]}")
    if paired_seeds:
        if xa.shape[0] != xb.shape[0]:
            raise ValueError(f"paired_seeds needs the same seeds in both rows: got {xa.shape[0]} and {xb.shape[0]}")
        both = _scored(xa) & _scored(xb)  # seed s pairs with seed s: a seed missing in one row leaves both
        xa, xb = xa[both], xb[both]
    else:
        xa, xb = xa[_scored(xa)], xb[_scored(xb)]
    codes = _codes(clusters, xa.shape[1])
    keep = ~np.isnan(_image_means(xa) - _image_means(xb))
    xa, xb = xa[:, keep], xb[:, keep]
    codes = np.unique(codes[keep], return_inverse=True)[1] if codes is not None else None
    n, seeds = int(keep.sum()), min(xa.shape[0], xb.shape[0])
    if n == 0:
        return Bootstrap(math.nan, math.nan, math.nan, 0, seeds, 0, math.nan)
    mean = float((_image_means(xa) - _image_means(xb)).mean())
    k = n if codes is None else int(codes.max()) + 1
    if xa.shape[0] == xb.shape[0] == 1 and (n == 1 or k == 1):
        return Bootstrap(mean, mean, mean, n, seeds, k, math.nan)  # nothing to resample: no p
    rng = np.random.default_rng(seed)
    units = _draw_units(rng, n_boot, n, codes)
    ra, draws = _seed_level(xa, rng, n_boot)
    rb, _ = _seed_level(xb, rng, n_boot, draws if paired_seeds else None)
    deltas = _image_level(ra - rb, units)
    return Bootstrap(mean, *_interval(deltas, alpha), n, seeds, k, bootstrap_p_value(deltas, n_boot))


# --- multiple comparisons across a table's Δ column ---------------------------------------------------------------
# A table with k Δ tests at level α finds about α·k false effects by chance. Holm controls the family-wise error (the
# chance of any false `*` in the table), Benjamini–Hochberg the expected share of false `*` among the marked ones.

Method = Literal["holm", "bh"]
NAMES: dict[str, str] = {"holm": "Holm", "bh": "Benjamini–Hochberg"}
SHORT: dict[str, str] = {"holm": "Holm", "bh": "BH"}
SIGNIFICANT, NOT_SIGNIFICANT = "*", "n.s."


def adjust_pvalues(p: Sequence[float] | np.ndarray, method: Method = "holm") -> list[float]:
    """Corrected p-values in the input order; NaN entries stay NaN and are not counted in the family.

    holm: step-down, p_(i) · (m − i + 1) made monotone from the smallest up (family-wise error rate).
    bh: step-up, p_(i) · m / i made monotone from the largest down (false discovery rate). Both capped at 1.
    """
    if method not in NAMES:
        raise ValueError(f"adjust_pvalues: method must be one of {sorted(NAMES)}, got {method!r}")
    x = np.asarray(p, dtype=np.float64).ravel()
    if ((x < 0) | (x > 1)).any():
        raise ValueError(f"adjust_pvalues: p-values must lie in [0, 1], got {x.tolist()}")
    out = np.full(x.shape, math.nan)
    idx = np.flatnonzero(~np.isnan(x))
    m = idx.size
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(x[idx], kind="stable")]
    ranked = x[order]
    i = np.arange(1, m + 1)
    if method == "holm":
        adj = np.maximum.accumulate(ranked * (m - i + 1))
    else:
        adj = np.minimum.accumulate((ranked * (m / i))[::-1])[::-1]
    out[order] = np.minimum(adj, 1.0)
    return out.tolist()


@dataclass(frozen=True)
class DeltaMark:
    """The marks of one Δ: ``raw`` from its CI, ``corrected`` after the table's correction (``method``)."""

    raw: str
    corrected: str
    p: float
    p_adjusted: float
    method: str = "holm"

    @property
    def text(self) -> str:
        """The raw mark with the corrected one beside it: ``n.s.``, ``* (Holm *)``, ``* (Holm n.s.)`` (or ``BH``)."""
        if self.raw != SIGNIFICANT:
            return self.raw
        return f"{self.raw} ({SHORT[self.method]} {self.corrected})"


def mark_deltas(deltas: Sequence[Estimate | None], method: Method = "holm", alpha: float = ALPHA
                ) -> list[DeltaMark | None]:
    """Raw and corrected marks of a table's Δ column; the family is every entry with a finite p.

    ``deltas``: the table's differences, as :func:`paired_difference_seeds` returns them (they carry ``p``);
    None for an n/a cell (it gets None). Raw `*`: the CI excludes 0. Corrected `*`: raw `*` and corrected p < α
    (so the corrected mark never claims more than the raw one).
    """
    ps = []
    for d in deltas:
        p = getattr(d, "p", None) if d is not None else math.nan
        if p is None:
            raise ValueError("mark_deltas needs differences with a p-value (use paired_difference_seeds)")
        ps.append(float(p))
    adjusted = adjust_pvalues(ps, method)
    marks: list[DeltaMark | None] = []
    for d, p, q in zip(deltas, ps, adjusted):
        if d is None:
            marks.append(None)
            continue
        raw = SIGNIFICANT if d.significant else NOT_SIGNIFICANT
        corrected = SIGNIFICANT if d.significant and q < alpha else NOT_SIGNIFICANT
        marks.append(DeltaMark(raw, corrected, p, q, method))
    return marks


def correction_note(marks: Sequence[DeltaMark | None], alpha: float = ALPHA) -> str:
    """The caption's sentence for the marks of :func:`mark_deltas`: which correction, over how many Δ tests."""
    k = sum(1 for m in marks if m is not None and not math.isnan(m.p))
    method = next((m.method for m in marks if m is not None), "holm")
    what = "family-wise error" if method == "holm" else "false discovery rate"
    return (f"corrected mark: {NAMES[method]} across the {k} Δ test{'s' if k != 1 else ''} of this table "
            f"({what} {alpha:g})")


def ci_phrase(seeds: int, images: int, units: int = 0) -> str:
    """A caption's name of a CI: "two-level bootstrap over 3 training seeds then 24 images", "bootstrap over
    5 sources (25 images)", "bootstrap over 24 images" (``units``: the clusters resampled, when fewer than images)."""
    what = f"{units} sources ({images} images)" if 0 < units < images else f"{images} images"
    return f"two-level bootstrap over {seeds} training seeds then {what}" if seeds > 1 else f"bootstrap over {what}"
