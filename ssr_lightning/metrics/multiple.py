"""Multiple comparisons across a table's Δ column: Holm and Benjamini–Hochberg corrections, raw and corrected marks.

A table with k Δ tests at level α finds about α·k false effects by chance. :func:`adjust_pvalues` corrects the
two-sided bootstrap p-values of :func:`~ssr_lightning.metrics.stats.paired_difference_seeds`: Holm controls the
family-wise error (the chance of any false `*` in the table), Benjamini–Hochberg the expected share of false
`*` among the marked ones. :func:`mark_deltas` gives each Δ its raw mark (`*`: the CI excludes 0) and its
corrected mark (also `*` only when the corrected p < α); :func:`correction_note` is the caption's sentence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .stats import ALPHA, Estimate

__all__ = ["DeltaMark", "adjust_pvalues", "correction_note", "mark_deltas"]

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
        """``n.s.``, ``* (Holm *)`` or ``* (Holm n.s.)`` (``BH`` for Benjamini–Hochberg): the raw mark with the corrected one beside it."""
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


def correction_note(marks: Sequence[DeltaMark | None], method: Method = "holm", alpha: float = ALPHA) -> str:
    """The caption's sentence: which correction, over how many Δ tests, at which level."""
    k = sum(1 for m in marks if m is not None and not math.isnan(m.p))
    what = "family-wise error" if method == "holm" else "false discovery rate"
    return (f"corrected mark: {NAMES[method]} across the {k} Δ test{'s' if k != 1 else ''} of this table "
            f"({what} {alpha:g})")
