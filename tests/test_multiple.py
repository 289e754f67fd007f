"""Multiple comparisons: Holm and Benjamini–Hochberg against hand-computed examples; the Δ column's marks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssr_lightning.metrics.multiple import (
    DeltaMark,
    adjust_pvalues,
    correction_note,
    mark_deltas,
)
from ssr_lightning.metrics.stats import Bootstrap, bootstrap_ci, paired_difference_seeds


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert adjust_pvalues([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_pvalues([0.2, 0.5, 0.9], "holm") == pytest.approx([0.6, 1.0, 1.0]), "capped at 1"


def test_benjamini_hochberg_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4/1, 4/2, 4/3, 4/4 = 0.02, 0.02, 0.04, 0.04 -> running min from the top
    assert adjust_pvalues([0.01, 0.04, 0.03, 0.005], "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # 0.01·5/1 = 0.05, 0.02·5/2 = 0.05, 0.03·5/3 = 0.05, 0.04·5/4 = 0.05, 0.2·5/5 = 0.2
    assert adjust_pvalues([0.2, 0.04, 0.03, 0.02, 0.01], "bh") == pytest.approx([0.2, 0.05, 0.05, 0.05, 0.05])
    # step-up: a large p lowers nothing, a small one below it is pulled down to the later minimum
    assert adjust_pvalues([0.04, 0.045], "bh") == pytest.approx([0.045, 0.045])


def test_adjust_leaves_missing_out_of_the_family_and_rejects_bad_input() -> None:
    out = adjust_pvalues([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert adjust_pvalues([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adjust_pvalues([0.5, 1.5])
    with pytest.raises(ValueError, match="method"):
        adjust_pvalues([0.5], "bonferroni")  # type: ignore[arg-type]
    p = np.random.default_rng(0).uniform(size=20)
    for method in ("holm", "bh"):
        adj = np.array(adjust_pvalues(p, method))  # type: ignore[arg-type]
        assert ((adj >= p) & (adj <= 1)).all(), "a correction never lowers a p-value"


def _delta(lo: float, hi: float, p: float) -> Bootstrap:
    return Bootstrap((lo + hi) / 2, lo, hi, 24, 3, 24, p)


def test_marks_beside_each_other() -> None:
    deltas = [_delta(0.01, 0.2, 0.03), _delta(0.02, 0.3, 0.04), _delta(0.5, 0.9, 0.001), None,
              _delta(-0.1, 0.2, 0.6)]
    marks = mark_deltas(deltas)
    assert marks[3] is None
    # Holm over the 4 tests: 0.001·4 = 0.004, 0.03·3 = 0.09, 0.04·2 = 0.08 -> 0.09, 0.6
    assert [m.raw for m in marks if m] == ["*", "*", "*", "n.s."]
    assert [m.corrected for m in marks if m] == ["n.s.", "n.s.", "*", "n.s."]
    assert [m.text for m in marks if m] == ["* (Holm n.s.)", "* (Holm n.s.)", "* (Holm *)", "n.s."]
    assert marks[0] == DeltaMark("*", "n.s.", 0.03, pytest.approx(0.09), "holm")
    assert correction_note(marks) == ("corrected mark: Holm across the 4 Δ tests of this table "
                                      "(family-wise error 0.05)")
    bh = mark_deltas(deltas, "bh")  # 0.001·4/1, 0.03·4/2 = 0.06, 0.04·4/3 = 0.053 -> 0.053, 0.053
    assert [m.corrected for m in bh if m] == ["n.s.", "n.s.", "*", "n.s."] and bh[2].text == "* (BH *)"
    assert "Benjamini–Hochberg across the 4 Δ tests" in correction_note(bh, "bh")


def test_marks_need_p_values_and_a_raw_ns_stays_ns() -> None:
    with pytest.raises(ValueError, match="paired_difference_seeds"):
        mark_deltas([bootstrap_ci([1.0, 2.0, 3.0])])
    # a p below alpha with a CI touching 0 (quantile interpolation): the corrected mark never claims more
    (m,) = mark_deltas([_delta(0.0, 0.3, 0.01)])
    assert (m.raw, m.corrected) == ("n.s.", "n.s.")
    rng = np.random.default_rng(1)
    ref = rng.normal(25, 2, (3, 24))
    real = [paired_difference_seeds(ref + d + rng.normal(0, 0.1, (3, 24)), ref, paired_seeds=True)
            for d in (0.0, 0.02, 0.5)]
    marks = mark_deltas(real)
    assert marks[2] is not None and marks[2].corrected == "*" and all(0 < d.p <= 1 for d in real)
