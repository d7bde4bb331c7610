from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tasks.evaluation.ensemble import build_ensemble, choose_members, choose_weights
from tasks.evaluation.evaluate import evaluate_model
from tasks.run.config import ModelParams
from tasks.training.models.base import TrainingContext
from tasks.training.train import train_model


def test_members_are_chosen_by_selection_accuracy_not_validation_or_test():
    scores = {
        "a": (0.99, 0.80, 0.99), "b": (0.50, 0.90, 0.50), "c": (0.60, 0.85, 0.60),
        "d": (0.98, 0.70, 0.98),
    }  # fmt: skip
    evaluations = [
        SimpleNamespace(name=name, validation_accuracy=val, selection_accuracy=sel,
                        test_accuracy=test)
        for name, (val, sel, test) in scores.items()
    ]  # fmt: skip
    assert [m.name for m in choose_members(evaluations, 2)] == ["b", "c"]


def test_weights_favour_the_model_that_predicts_the_labels():
    rng = np.random.default_rng(0)
    y_val = rng.integers(0, 10, size=300)
    knows = np.full((300, 10), 0.01)
    knows[np.arange(300), y_val] = 0.91
    guesses = rng.dirichlet(np.ones(10), size=300)
    weights = choose_weights([guesses, knows], y_val)
    assert weights.sum() == pytest.approx(1)
    assert (weights >= 0).all()
    assert weights[1] > 0.95


def test_ensemble_mixes_the_members_stored_probabilities(tmp_path, processed):
    context = TrainingContext(seed=0, threads=1)
    evaluations = [
        evaluate_model(train_model(name, ModelParams(), processed, tmp_path, context),
                       processed, tmp_path, threads=1)
        for name in ("logistic_regression", "random_forest", "svm_rbf")
    ]  # fmt: skip
    ensemble = build_ensemble(evaluations, processed, tmp_path, size=2)

    record = json.loads((ensemble.model_dir / "weights.json").read_text())
    members = {e.name: e for e in choose_members(evaluations, 2)}
    assert record["members"] == list(members) == ensemble.params["members"]
    mixed = sum(
        weight * members[name].test_probabilities.load()
        for name, weight in zip(record["members"], record["weights"], strict=True)
    )
    np.testing.assert_allclose(ensemble.test_probabilities.load(), mixed, atol=1e-6)
    # The weights are the mix's best on the selection split, which no member saw.
    (y_selection,) = processed.load("y_selection")
    on_selection = [members[name].selection_probabilities.load() for name in record["members"]]
    np.testing.assert_allclose(
        record["weights"], choose_weights(on_selection, y_selection), atol=1e-6
    )
    y_test = processed.load("y_test")[0]
    predicted = ensemble.test_predictions.load()
    np.testing.assert_array_equal(predicted, mixed.argmax(axis=1))
    assert ensemble.test_accuracy == pytest.approx(np.mean(predicted == y_test))
    assert ensemble.fit_seconds == pytest.approx(sum(m.fit_seconds for m in members.values()))
    assert ensemble.model_size_mb == pytest.approx(sum(m.model_size_mb for m in members.values()))

    stamp = (ensemble.model_dir / "weights.json").stat().st_mtime_ns
    again = build_ensemble(evaluations, processed, tmp_path, size=2)
    assert again.model_dir == ensemble.model_dir
    assert (again.model_dir / "weights.json").stat().st_mtime_ns == stamp
