from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from tasks.evaluation.evaluate import expected_calibration_error


def test_confident_and_right_is_perfectly_calibrated():
    labels = np.array([0, 1, 2])
    assert expected_calibration_error(labels, np.eye(10)[labels]) == 0.0


def test_calibration_error_weights_each_bin_by_its_share():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.full((4, 10), 0.0)
    probabilities[[0, 1], [0, 1]] = 0.9  # bin (0.867, 0.933]: one right, one wrong
    probabilities[[0, 1], [1, 0]] = 0.1
    probabilities[[2, 3], 1] = 0.6  # bin (0.533, 0.6]: both right
    probabilities[[2, 3], 2] = 0.4
    # Half the images at |0.5 - 0.9|, half at |1.0 - 0.6|.
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.4)


def test_calibration_error_matches_a_direct_count():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1000, 10)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 10, size=1000)
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, 16)
    expected = sum(
        in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
        for low, high in pairwise(edges)
        if (in_bin := (confidence > low) & (confidence <= high)).any()
    )
    assert expected_calibration_error(labels, probabilities, bins=15) == pytest.approx(expected)
