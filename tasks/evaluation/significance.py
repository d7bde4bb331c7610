"""Which differences between models are real: bootstrap intervals and McNemar's test.

Used by the comparison stage. Both work on the test set's per-image correctness, so
they compare the models on the same images (paired), which is what makes small
differences detectable at all. A run compared with an earlier one on other test images
can only use the unpaired two-proportion z-test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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


def bootstrap_accuracy_intervals(
    correct: Mapping[str, np.ndarray],
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Percentile bootstrap interval of each model's accuracy, from paired resamples.

    Every resample draws one set of test images for all models, so the intervals of
    two models come from the same draws.

    Args:
        correct: per model, a boolean array saying which test images it got right.

    Returns:
        One row per model: `accuracy_low`, `accuracy_high`, indexed by model.
    """
    names = list(correct)
    hits = np.stack([np.asarray(correct[name], dtype=np.uint8) for name in names])
    n_images = hits.shape[1]
    rng = np.random.default_rng(seed)
    accuracies = []
    for start in range(0, resamples, _RESAMPLES_PER_CHUNK):
        size = min(_RESAMPLES_PER_CHUNK, resamples - start)
        draws = rng.integers(0, n_images, size=(size, n_images))
        accuracies.append(hits[:, draws].sum(axis=2) / n_images)  # models x resamples
    accuracies = np.concatenate(accuracies, axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(accuracies, [tail, 100 - tail], axis=1)
    return pd.DataFrame({"accuracy_low": low, "accuracy_high": high}, index=names)


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


def rank_comparisons(ranked: list[str], correct: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """McNemar's test of each model against the one ranked just above it and the best.

    Returns:
        One row per (model, compared_to) pair, with the discordant counts, the p-value
        and whether the difference is significant at `ALPHA`.
    """
    rows = []
    for position, name in enumerate(ranked[1:], start=1):
        others = dict.fromkeys([ranked[position - 1], ranked[0]])  # once if they coincide
        for other in others:
            only_model, only_other, p_value = mcnemar_exact(correct[name], correct[other])
            rows.append(
                {
                    "model": name,
                    "compared_to": other,
                    "against": "next above" if other == ranked[position - 1] else "best",
                    "only_model_right": only_model,
                    "only_other_right": only_other,
                    "p_value": p_value,
                    "significant": p_value < ALPHA,
                }
            )
    columns = ["model", "compared_to", "against", "only_model_right", "only_other_right",
               "p_value", "significant"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def describe_comparisons(comparisons: pd.DataFrame) -> list[str]:
    """One plain sentence per comparison with the model ranked just above."""
    sentences = []
    for row in comparisons[comparisons.against == "next above"].itertuples():
        evidence = (
            f"McNemar exact p = {row.p_value:.3g}; {row.only_other_right} test images only "
            f"{row.compared_to} gets right, {row.only_model_right} only {row.model}"
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
