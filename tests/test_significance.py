from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from tasks.evaluation.significance import (
    BOOTSTRAP_RESAMPLES,
    accuracy_intervals,
    bootstrap_accuracies,
    describe_comparisons,
    holm_adjusted,
    mcnemar_exact,
    percent,
    rank_comparisons,
)


def paired_outcomes(both: int, only_a: int, only_b: int, neither: int):
    """Correctness arrays for two models with the given 2x2 table of outcomes."""
    a = np.repeat([True, True, False, False], [both, only_a, only_b, neither])
    b = np.repeat([True, False, True, False], [both, only_a, only_b, neither])
    return a, b


@pytest.mark.parametrize(
    "table",
    [(50, 5, 12, 40), (900, 31, 30, 39), (10, 0, 7, 3), (20, 4, 4, 2), (8000, 612, 518, 870)],
)
def test_mcnemar_matches_statsmodels_exact_test(table):
    both, only_a, only_b, neither = table
    a, b = paired_outcomes(*table)
    reference = mcnemar([[both, only_a], [only_b, neither]], exact=True)
    assert mcnemar_exact(a, b) == (only_a, only_b, pytest.approx(reference.pvalue, rel=1e-12))


def test_mcnemar_without_disagreements_is_a_tie():
    a, b = paired_outcomes(90, 0, 0, 10)
    assert mcnemar_exact(a, b) == (0, 0, 1.0)


def intervals(correct: dict[str, np.ndarray], seed: int, resamples: int = BOOTSTRAP_RESAMPLES):
    return accuracy_intervals(bootstrap_accuracies(correct, seed, resamples), list(correct))


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    correct = np.random.default_rng(1).random(2000) < 0.9
    ours = intervals({"m": correct}, seed=3, resamples=4000).loc["m"]
    reference = stats.bootstrap(
        (correct.astype(float),), np.mean, n_resamples=4000, method="percentile",
        confidence_level=0.95, rng=np.random.default_rng(3),
    ).confidence_interval  # fmt: skip
    # Different draws: the end points agree to within Monte Carlo error.
    assert ours.accuracy_low == pytest.approx(reference.low, abs=0.003)
    assert ours.accuracy_high == pytest.approx(reference.high, abs=0.003)
    assert ours.accuracy_low < correct.mean() < ours.accuracy_high


def test_bootstrap_is_seeded_and_paired():
    correct = np.random.default_rng(2).random(500) < 0.8
    first = intervals({"a": correct, "b": correct.copy()}, seed=5)
    again = intervals({"a": correct, "b": correct.copy()}, seed=5)
    assert first.equals(again)
    # Same images drawn for every model: identical outcomes give identical intervals.
    assert first.loc["a"].tolist() == first.loc["b"].tolist()
    other_seed = intervals({"a": correct}, seed=6)
    assert other_seed.loc["a"].tolist() != first.loc["a"].tolist()


def test_each_model_is_compared_with_the_one_above_and_the_best():
    best = np.arange(1000) < 960
    tied = best.copy()
    tied[:3] = False  # 3 images fewer: no real difference
    worse = np.arange(1000) < 500
    correct = {"best": best, "tied": tied, "worse": worse}
    comparisons = rank_comparisons(["best", "tied", "worse"], correct)
    pairs = list(zip(comparisons.model, comparisons.compared_to, comparisons.against, strict=True))
    assert pairs == [
        ("tied", "best", "next above"),
        ("worse", "tied", "next above"),
        ("worse", "best", "best"),
    ]
    assert comparisons.significant.tolist() == [False, True, True]
    sentences = describe_comparisons(comparisons)
    assert sentences[0].startswith(
        "best and tied are statistically tied at the 5% level (+0.30 points for best (95% CI ["
    )
    assert sentences[1].startswith(
        "tied is significantly more accurate than worse (+45.70 points for tied (95% CI ["
    )
    assert "Holm-adjusted over 3 tests p = " in sentences[0]


def test_holm_adjustment_matches_statsmodels():
    rng = np.random.default_rng(3)
    for size in (1, 2, 5, 9, 30):
        p_values = np.concatenate([rng.uniform(0, 0.08, size), [1.0, 0.01, 0.01]])
        expected = multipletests(p_values, alpha=0.05, method="holm")[1]
        np.testing.assert_allclose(holm_adjusted(p_values), expected, rtol=1e-12)


def test_a_difference_significant_alone_need_not_survive_the_family():
    # 6 images only `best` gets right: p = 0.031 alone, 0.062 once Holm counts three tests.
    best = np.arange(1000) < 900
    second, third = best.copy(), best.copy()
    second[:6] = False  # 6 images only `best` gets right: p = 2 * 0.5**6 = 0.031
    third[:12] = False
    comparisons = rank_comparisons(["best", "second", "third"], {
        "best": best, "second": second, "third": third})  # fmt: skip
    first = comparisons.iloc[0]
    assert first.p_value == pytest.approx(2 * 0.5**6)
    assert first.p_holm == pytest.approx(min(1, 2 * 2 * 0.5**6))  # second smallest of three
    assert first.p_value < 0.05
    assert not first.significant


@pytest.mark.parametrize("table", [(8700, 320, 180, 800), (9000, 40, 60, 900), (5000, 5, 0, 4995)])
def test_paired_difference_interval_agrees_with_the_wald_interval(table):
    both, only_a, only_b, neither = table
    a, b = paired_outcomes(both, only_a, only_b, neither)
    row = rank_comparisons(["a", "b"], {"a": a, "b": b}, seed=0, resamples=4000).iloc[0]
    n = len(a)
    # Independent: the normal approximation for a paired difference of proportions.
    difference = (only_a - only_b) / n
    error = math.sqrt(only_a + only_b - (only_a - only_b) ** 2 / n) / n
    wald = 100 * (difference + np.array([-1, 1]) * stats.norm.ppf(0.975) * error)
    assert row.difference == pytest.approx(100 * difference)
    assert [row.difference_low, row.difference_high] == pytest.approx(wald, abs=0.06)


@pytest.mark.parametrize(("level", "text"), [(0.95, "95%"), (0.9, "90%"), (0.975, "97.5%")])
def test_levels_read_as_percentages(level, text):
    assert percent(level) == text
