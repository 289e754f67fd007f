"""Statistics of reports against known cases: bootstrap CIs, paired differences, seed summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssr_lightning.metrics.stats import bootstrap_ci, paired_difference, seed_summary


def test_bootstrap_ci_of_a_normal_sample_matches_the_t_interval() -> None:
    x = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    est = bootstrap_ci(x)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)  # the textbook interval the bootstrap approximates
    assert est.mean == pytest.approx(x.mean())
    assert est.lo == pytest.approx(x.mean() - half, abs=0.05) and est.hi == pytest.approx(x.mean() + half, abs=0.05)
    assert est.significant and est.n == 400


def test_bootstrap_is_deterministic_and_degenerate_cases_are_explicit() -> None:
    x = [1.0, 2.0, 4.0, 8.0]
    assert bootstrap_ci(x) == bootstrap_ci(x)
    assert bootstrap_ci([5.0, 5.0, 5.0]).lo == 5.0 == bootstrap_ci([5.0, 5.0, 5.0]).hi
    one = bootstrap_ci([2.5])
    assert (one.mean, one.lo, one.hi, one.n, one.significant) == (2.5, 2.5, 2.5, 1, False)
    assert math.isnan(bootstrap_ci([float("nan")]).mean) and bootstrap_ci([1.0, float("inf"), 3.0]).n == 2


def test_paired_difference_sees_a_small_consistent_gain_that_unpaired_means_hide() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(25.0, 3.0, size=30)  # images differ a lot; the method adds 0.1 dB to each
    better = base + 0.1 + rng.normal(0, 0.02, size=30)
    diff = paired_difference(better, base)
    assert diff.mean == pytest.approx(0.1, abs=0.01) and diff.significant and diff.lo > 0.08
    symmetric = paired_difference(base + np.tile([-0.5, 0.5], 15), base)  # no effect on average
    assert symmetric.mean == pytest.approx(0.0) and symmetric.lo < 0.0 < symmetric.hi and not symmetric.significant
    with pytest.raises(ValueError, match="same images"):
        paired_difference([1.0, 2.0], [1.0])


def test_seed_summary() -> None:
    assert seed_summary([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert seed_summary([4.0]) == (4.0, 0.0, 1)
