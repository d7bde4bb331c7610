"""Which differences between models are real: bootstrap intervals, McNemar's test
corrected for the many comparisons (Holm), and paired differences with their intervals.

Used by the comparison stage. Both work on the test set's per-image correctness, so
they compare the models on the same images (paired), which is what makes small
differences detectable at all. A run compared with an earlier one on other test images
can only use the unpaired two-proportion z-test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000
_RESAMPLES_PER_CHUNK = 250  # 250 x 10,000 indices: ~20 MB at a time


def percent(level: float) -> str:
    """A level as the text reports show: 0.95 as "95%", 0.975 as "97.5%"."""
    return f"{100 * level:g}%"


def bootstrap_accuracies(
    correct: Mapping[str, np.ndarray], seed: int, resamples: int = BOOTSTRAP_RESAMPLES
) -> np.ndarray:
    """Each model's accuracy on each bootstrap resample of the test images: models x
    resamples, in the order of `correct`. Every resample draws one set of images for all
    models, so any two rows are paired."""
    hits = np.stack([np.asarray(values, dtype=np.uint8) for values in correct.values()])
    n_images = hits.shape[1]
    rng = np.random.default_rng(seed)
    accuracies = []
    for start in range(0, resamples, _RESAMPLES_PER_CHUNK):
        size = min(_RESAMPLES_PER_CHUNK, resamples - start)
        draws = rng.integers(0, n_images, size=(size, n_images))
        accuracies.append(hits[:, draws].sum(axis=2) / n_images)  # models x resamples
    return np.concatenate(accuracies, axis=1)


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """The percentile bootstrap interval of each row of `samples`: (low, high) columns."""
    tail = 100 * (1 - confidence) / 2
    return np.percentile(samples, [tail, 100 - tail], axis=-1).T


def accuracy_intervals(
    resampled: np.ndarray, names: list[str], confidence: float = CONFIDENCE
) -> pd.DataFrame:
    """Each model's interval from its `bootstrap_accuracies` row (in the order of `names`)."""
    bounds = percentile_interval(resampled, confidence)
    return pd.DataFrame(bounds, columns=["accuracy_low", "accuracy_high"], index=names)


def holm_adjusted(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of a family of tests, in the order given: a test
    is significant at level alpha for the whole family when its adjusted value is below
    alpha. Uniformly more powerful than Bonferroni, and as valid under any dependence."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired predictions.

    Only the images exactly one model gets right carry information; under the null
    hypothesis of equal accuracy each of them is equally likely to favour either model.

    Returns:
        (images only A got right, images only B got right, two-sided p-value).
    """
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    if discordant == 0:
        return only_a, only_b, 1.0
    p_value = min(1.0, 2 * float(stats.binom.cdf(min(only_a, only_b), discordant, 0.5)))
    return only_a, only_b, p_value


def two_proportion_z_test(
    successes_a: int, total_a: int, successes_b: int, total_b: int
) -> tuple[float, float]:
    """Pooled two-proportion z-test: accuracies measured on different test images, where
    no image pairs them; much less sensitive than McNemar's test on the same images.

    Returns:
        (z, two-sided p-value); z > 0 when B's proportion is the higher.
    """
    pooled = (successes_a + successes_b) / (total_a + total_b)
    variance = pooled * (1 - pooled) * (1 / total_a + 1 / total_b)
    if variance == 0:  # both all right or both all wrong: nothing differs
        return 0.0, 1.0
    z = (successes_b / total_b - successes_a / total_a) / math.sqrt(variance)
    return z, float(2 * stats.norm.sf(abs(z)))


def rank_comparisons(
    ranked: list[str],
    correct: Mapping[str, np.ndarray],
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    resampled: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """McNemar's test of each model against the one ranked just above it and the best,
    corrected for the family of tests, with the paired accuracy difference.

    Args:
        resampled: each model's `bootstrap_accuracies`, when the caller has them (the
            leaderboard's intervals come from the same); else drawn here from `seed`.

    Returns:
        One row per (model, compared_to) pair: the discordant counts; `difference` (the
        accuracy of `compared_to` minus the model's, in points) with its percentile
        interval from paired bootstrap resamples of the test images (`seed`'s, the same
        draws as the accuracy intervals); McNemar's `p_value`, its Holm-adjusted
        `p_holm` over all the rows; and `significant`, `p_holm` < `ALPHA`.
    """
    if resampled is None:
        draws = bootstrap_accuracies({name: correct[name] for name in ranked}, seed, resamples)
        resampled = dict(zip(ranked, draws, strict=True))
    rows = []
    for position, name in enumerate(ranked[1:], start=1):
        others = dict.fromkeys([ranked[position - 1], ranked[0]])  # once if they coincide
        for other in others:
            only_model, only_other, p_value = mcnemar_exact(correct[name], correct[other])
            differences = resampled[other] - resampled[name]
            low, high = 100 * percentile_interval(differences, confidence)
            rows.append({
                "model": name, "compared_to": other,
                "against": "next above" if other == ranked[position - 1] else "best",
                "only_model_right": only_model, "only_other_right": only_other,
                "difference": 100 * (only_other - only_model) / len(correct[name]),
                "difference_low": low, "difference_high": high, "p_value": p_value,
            })  # fmt: skip
    columns = ["model", "compared_to", "against", "only_model_right", "only_other_right",
               "difference", "difference_low", "difference_high", "p_value"]  # fmt: skip
    comparisons = pd.DataFrame(rows, columns=columns)
    comparisons["p_holm"] = holm_adjusted(comparisons.p_value) if rows else []
    comparisons["significant"] = comparisons.p_holm < ALPHA
    return comparisons


def difference_text(row, confidence: float = CONFIDENCE) -> str:
    """A comparison's paired difference with its interval (at `confidence`), in points."""
    return (
        f"{row.difference:+.2f} points for {row.compared_to} ({percent(confidence)} CI "
        f"[{row.difference_low:+.2f}, {row.difference_high:+.2f}])"
    )


def describe_comparisons(comparisons: pd.DataFrame, confidence: float = CONFIDENCE) -> list[str]:
    """One plain sentence per comparison with the model ranked just above; significance
    follows the Holm-adjusted p-value, and `confidence` is the level of the intervals."""
    sentences = []
    tests = len(comparisons)
    for row in comparisons[comparisons.against == "next above"].itertuples():
        evidence = (
            f"{difference_text(row, confidence)}; McNemar exact p = {row.p_value:.3g}, "
            f"Holm-adjusted over {tests} tests p = {row.p_holm:.3g}; {row.only_other_right} "
            f"test images only {row.compared_to} gets right, {row.only_model_right} only "
            f"{row.model}"
        )
        if row.significant:
            sentences.append(
                f"{row.compared_to} is significantly more accurate than {row.model} ({evidence})."
            )
        else:
            sentences.append(
                f"{row.compared_to} and {row.model} are statistically tied at the "
                f"{percent(ALPHA)} level ({evidence})."
            )
    return sentences
