"""Statistics of reports against known cases: bootstrap CIs (one- and two-level, clustered), paired differences, p."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssr_lightning.metrics.stats import (
    Bootstrap,
    DeltaMark,
    Estimate,
    adjust_pvalues,
    bootstrap_ci,
    bootstrap_p_value,
    bootstrap_seeds,
    correction_note,
    mark_deltas,
    paired_difference,
    paired_difference_seeds,
    seed_matrix,
    seed_summary,
    source_clusters,
)


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


# --- two-level (seeds × images) and clustered bootstrap -------------------------------------------------------------

def _experiment(rng: np.random.Generator, seed_sd: float, seeds: int = 3, images: int = 24) -> np.ndarray:
    """Simulated (seeds, images) PSNRs: true mean 0, image effect sd 1, seed offset sd ``seed_sd``, noise sd 0.3."""
    return (rng.normal(0, 1.0, images)[None] + rng.normal(0, seed_sd, (seeds, 1))
            + rng.normal(0, 0.3, (seeds, images)))


def _fields(e: Estimate) -> tuple[float, float, float, int]:
    return e.mean, e.lo, e.hi, e.n


def test_one_seed_reduces_exactly_to_the_image_bootstrap() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(25, 3, 24)
    x[5] = math.inf  # identical images: PSNR inf, dropped by both
    y = x + rng.normal(0.1, 0.2, 24)
    y[5], y[7] = 25.0, math.nan
    for s in (0, 11):
        assert _fields(bootstrap_seeds(x, seed=s)) == _fields(bootstrap_ci(x, seed=s))
        assert _fields(bootstrap_seeds(x[None], seed=s)) == _fields(bootstrap_ci(x, seed=s))
        assert _fields(paired_difference_seeds(y, x, seed=s)) == _fields(paired_difference(y, x, seed=s))
        assert _fields(paired_difference_seeds(y[None], x[None], paired_seeds=True, seed=s)) == _fields(
            paired_difference(y, x, seed=s))
    assert bootstrap_seeds([2.5]).lo == 2.5 and bootstrap_seeds([math.nan]).n == 0
    est = bootstrap_seeds(x)
    assert (est.seeds, est.units, est.p) == (1, 23, None)


def test_two_level_ci_widens_with_seed_spread_only() -> None:
    base = np.random.default_rng(4).normal(25, 2, 24)
    spread = base[None] + np.array([[-1.0], [0.0], [1.0]])  # seed means differ by 1 dB
    image_only = bootstrap_ci(spread.mean(axis=0))  # today's report: average the seeds, then bootstrap images
    two = bootstrap_seeds(spread)
    assert two.mean == pytest.approx(image_only.mean)
    assert (two.hi - two.lo) > 1.3 * (image_only.hi - image_only.lo) and two.seeds == 3
    same = bootstrap_seeds(np.tile(base, (3, 1)))  # three seeds that agree: nothing to add
    ref = bootstrap_ci(base)
    assert same.lo == pytest.approx(ref.lo, abs=1e-9) and same.hi == pytest.approx(ref.hi, abs=1e-9)


def test_missing_values_and_empty_seeds_are_left_out() -> None:
    x = np.random.default_rng(5).normal(20, 1, (3, 6))
    x[0, 2] = math.nan  # seed 0 did not score image 2: image 2's mean is over seeds 1, 2
    x[:, 4] = math.nan  # no seed scored image 4
    est = bootstrap_seeds(np.vstack([x, np.full(6, math.nan)]))  # and a seed that scored nothing
    means = np.nanmean(x[:, [0, 1, 2, 3, 5]], axis=0)
    assert est.mean == pytest.approx(means.mean()) and (est.n, est.seeds) == (5, 3)
    assert est.lo < est.mean < est.hi
    assert bootstrap_seeds(x) == bootstrap_seeds(x) and bootstrap_seeds(x, seed=1) != bootstrap_seeds(x)
    with pytest.raises(ValueError, match="same images"):
        paired_difference_seeds(x, x[:, :5])
    with pytest.raises(ValueError, match="one label per image"):
        bootstrap_seeds(x, clusters=[0, 1])


def test_clusters_of_identical_copies_count_once() -> None:
    photos = np.array([24.0, 27.5, 22.0, 30.0, 25.5])
    copies = np.repeat(photos, 5)  # 5 photos x 5 kernel draws that score the same
    labels = [f"photo{i}" for i in range(5) for _ in range(5)]
    clustered, ref = bootstrap_seeds(copies, clusters=labels), bootstrap_ci(photos)
    assert clustered.mean == pytest.approx(ref.mean) and (clustered.n, clustered.units) == (25, 5)
    assert clustered.lo == pytest.approx(ref.lo, abs=1e-9) and clustered.hi == pytest.approx(ref.hi, abs=1e-9)
    naive = bootstrap_ci(copies)  # 25 "independent" images: too narrow by about sqrt(5)
    assert (naive.hi - naive.lo) < 0.6 * (clustered.hi - clustered.lo)
    # each image its own cluster: the image bootstrap again (same draws)
    x = np.random.default_rng(6).normal(0, 1, 12)
    alone = bootstrap_seeds(x, clusters=range(12))
    assert alone.lo == pytest.approx(bootstrap_ci(x).lo, abs=1e-12) and alone.units == 12
    # the paired difference resamples the same sources for both rows
    gain = paired_difference_seeds(copies + np.repeat([0.3, -0.1, 0.5, 0.0, 0.2], 5), copies, clusters=labels)
    ref_gain = paired_difference(photos + np.array([0.3, -0.1, 0.5, 0.0, 0.2]), photos)
    assert gain.lo == pytest.approx(ref_gain.lo, abs=1e-9) and gain.units == 5
    assert source_clusters(["a_v0", "a_v1", "b_c_v12", "plain"]) == ["a", "a", "b_c", "plain"]


def test_paired_seeds_cancel_shared_training_noise() -> None:
    rng = np.random.default_rng(7)
    ref = rng.normal(25, 2, 24)[None] + np.array([[-0.6], [0.1], [0.5]])  # seed s: the stage trainings both use
    row = ref + 0.1 + rng.normal(0, 0.05, (3, 24))
    independent = paired_difference_seeds(row, ref)
    paired = paired_difference_seeds(row, ref, paired_seeds=True)
    assert paired.mean == pytest.approx(0.1, abs=0.02) and paired.significant and paired.p < 0.01
    assert not independent.significant and independent.p > 0.2
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference_seeds(row, ref[:2], paired_seeds=True)
    two_vs_one = paired_difference_seeds(row[:2], ref[0])  # a trained row against a single bicubic evaluation
    assert (two_vs_one.seeds, two_vs_one.n) == (1, 24)


def test_p_values_lie_in_0_1_and_follow_the_tails() -> None:
    rng = np.random.default_rng(8)
    base = rng.normal(25, 2, (2, 24))
    clear = paired_difference_seeds(base + 1.0, base, paired_seeds=True)
    assert clear.p == pytest.approx(1 / 2001), "never 0: floored at 1/(n_boot + 1)"
    assert paired_difference_seeds(base, base).p == 1.0
    for shift in (-0.3, -0.05, 0.0, 0.05, 0.3):
        d = paired_difference_seeds(base + shift + rng.normal(0, 0.4, (2, 24)), base)
        assert 0.0 < d.p <= 1.0
        assert d.significant == (d.p < 0.05) or abs(d.p - 0.05) < 0.01, "CI and p tell the same story"
    assert bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(0.5)


def test_two_level_coverage_on_simulated_experiments() -> None:
    # 200 experiments of 3 seeds x 24 images; the truth is 0. Small seed offsets: about 95 % coverage. Seed-dominated
    # (sd 0.5 against 1/sqrt(24) = 0.2 for the images): averaging the seeds first misses often; the two-level CI less.
    rng = np.random.default_rng(9)
    hits = {"small": 0, "two_level": 0, "image_only": 0}
    for r in range(200):
        small = bootstrap_seeds(_experiment(rng, 0.1), n_boot=1000, seed=r)
        big = _experiment(rng, 0.5)
        two, image_only = bootstrap_seeds(big, n_boot=1000, seed=r), bootstrap_ci(big.mean(0), n_boot=1000, seed=r)
        hits["small"] += small.lo <= 0 <= small.hi
        hits["two_level"] += two.lo <= 0 <= two.hi
        hits["image_only"] += image_only.lo <= 0 <= image_only.hi
    assert 0.88 <= hits["small"] / 200 <= 0.99
    assert hits["two_level"] >= hits["image_only"] + 20 and hits["image_only"] / 200 < 0.85


def test_seed_matrix_aligns_names_and_reads_text_as_missing() -> None:
    names, x = seed_matrix([{"b": 2.0, "a": 1.0}, {"a": 3.0, "c": "n/a (weights missing)"}])
    assert names == ["a", "b", "c"]
    np.testing.assert_array_equal(x, [[1.0, 2.0, math.nan], [3.0, math.nan, math.nan]])
    _, y = seed_matrix([{"a": 5.0}], names=names)
    assert y.shape == (1, 3) and y[0, 0] == 5.0


# --- multiple comparisons: Holm and Benjamini–Hochberg by hand; the Δ column's marks --------------------------------

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
    assert "Benjamini–Hochberg across the 4 Δ tests" in correction_note(bh)


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
