"""The soft-voting ensemble: a weighted average of the best models' class probabilities.

Members and weights are chosen on the selection split, which no model was fitted,
stopped, calibrated or tuned on: chosen on the validation split, they would favour the
models that fit that split best. The test set only scores the result. The ensemble is
built from the members' stored probabilities, so it costs no new prediction, and it is
reported like any other model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax

from tasks.core.contracts import (
    ENSEMBLE_NAME,
    HELD_OUT,
    SPLIT_ARRAYS,
    ModelEvaluation,
    ProcessedDataset,
    TrainedModel,
)
from tasks.core.storage import cached_stage, code_version, content_key
from tasks.evaluation.evaluate import read_evaluation, write_evaluation

WEIGHTS_FILE = "weights.json"
_PROBABILITY_FLOOR = 1e-7  # log-loss of a confident mistake stays finite


def choose_members(evaluations: list[ModelEvaluation], size: int) -> list[ModelEvaluation]:
    """The `size` models with the best selection accuracy (never the test accuracy).

    Ties, common on a small selection split, go to the model whose name sorts first.
    """
    ranked = sorted(evaluations, key=lambda e: (-e.selection_accuracy, e.name))
    return ranked[:size]


def choose_weights(probabilities: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the log-loss of the mix on these
    (the selection split's) labels.

    The weights are a softmax of free parameters, so the search is unconstrained.
    """
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    rows = np.arange(len(labels))

    def mixed_log_loss(parameters: np.ndarray) -> float:
        mixed = np.tensordot(softmax(parameters), stacked, axes=1)
        return float(-np.mean(np.log(np.maximum(mixed[rows, labels], _PROBABILITY_FLOOR))))

    result = minimize(mixed_log_loss, np.zeros(len(stacked)), method="L-BFGS-B")
    return softmax(result.x)


def build_ensemble(
    evaluations: list[ModelEvaluation],
    data: ProcessedDataset,
    cache_dir: Path,
    size: int,
    refresh: bool = False,
    logger: logging.Logger | None = None,
) -> ModelEvaluation:
    """Mix the best `size` models' probabilities; cached per members' probabilities."""
    members = choose_members(evaluations, size)
    splits = (*HELD_OUT, "test")
    inputs = [
        (m.name, *(getattr(m, f"{split}_probabilities").sha256 for split in splits))
        for m in members
    ]
    labels = [data.arrays[SPLIT_ARRAYS[split][1]].sha256 for split in splits]
    key = content_key(inputs, labels, list(data.class_names), code_version(__file__))
    target = cache_dir / "evaluations" / ENSEMBLE_NAME / key

    def mix_and_measure(staging: Path) -> None:
        (y_selection,) = data.load("y_selection")
        weights = choose_weights([m.selection_probabilities.load() for m in members], y_selection)
        record = {"members": [m.name for m in members], "weights": weights.tolist()}
        (staging / WEIGHTS_FILE).write_text(json.dumps(record, indent=2))

        def mix(split: str) -> np.ndarray:
            arrays = [getattr(m, f"{split}_probabilities").load() for m in members]
            return np.tensordot(weights, np.stack(arrays).astype(np.float64), axes=1)

        # Predicting with the ensemble means predicting with every member.
        cost = {
            "predict_seconds": sum(m.predict_seconds for m in members),
            "predict_cpu_seconds": sum(m.predict_cpu_seconds for m in members),
            "model_size_mb": sum(m.model_size_mb for m in members),
        }
        held_out = {
            split: (data.arrays[SPLIT_ARRAYS[split][1]].load(), mix(split)) for split in HELD_OUT
        }
        (y_test,) = data.load("y_test")
        write_evaluation(
            staging, ENSEMBLE_NAME, data.class_names, held_out, y_test, mix("test"), cost
        )

    def read(entry: Path) -> ModelEvaluation:
        params = json.loads((entry / WEIGHTS_FILE).read_text())
        # Training it means training them all.
        fit = TrainedModel(
            ENSEMBLE_NAME, entry, sum(m.fit_seconds for m in members),
            sum(m.fit_cpu_seconds for m in members), params,
        )  # fmt: skip
        return read_evaluation(entry, fit)

    return cached_stage(target, mix_and_measure, read, "the ensemble", refresh, logger)
