from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from tasks.core.storage import PROJECT_PACKAGE
from tasks.evaluation.evaluate import evaluate_model
from tasks.run.config import MODEL_NAMES
from tasks.training.models.base import TrainingContext
from tasks.training.models.registry import SPECS, build_model, load_model
from tasks.training.models.sklearn_models import RandomForestParams
from tasks.training.train import model_code_version, train_model
from tests.support.params import SMALL

MODEL_FILES = {
    "logistic_regression": "model.joblib",
    "random_forest": "model.joblib",
    "svm_rbf": "model.joblib",
    "xgboost": "model.ubj",
    "cnn": "model.keras",
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_learns_saves_and_reloads(name, tmp_path, processed):
    trained = train_model(name, SMALL, processed, tmp_path, TrainingContext(seed=0, threads=1))
    assert (trained.directory / MODEL_FILES[name]).is_file()
    record = json.loads((trained.directory / "params.json").read_text())
    assert record["params"] == getattr(SMALL, name).model_dump(mode="json")
    assert record["fit_seconds"] > 0

    evaluation = evaluate_model(trained, processed, tmp_path, threads=1)
    assert evaluation.curve == trained.curve  # the report's learning curves use it
    assert evaluation.test_accuracy >= 0.8, f"{name} did not learn the synthetic classes"
    assert evaluation.confusion_figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    x_test, y_test = processed.load("x_test", "y_test")
    probabilities = load_model(trained.directory, threads=1).predict_proba(x_test)
    assert probabilities.shape == (len(x_test), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(evaluation.test_probabilities.load(), probabilities, atol=1e-6)
    reloaded = probabilities.argmax(axis=1)
    np.testing.assert_array_equal(reloaded, evaluation.test_predictions.load())
    assert evaluation.test_accuracy == pytest.approx(np.mean(reloaded == y_test))


def test_iterative_models_record_learning_curves(tmp_path, processed):
    xgb = train_model("xgboost", SMALL, processed, tmp_path, TrainingContext(seed=0, threads=1))
    assert xgb.curve.step == "boosting round"
    assert 0 < len(xgb.curve.validation_error) == len(xgb.curve.train_error)
    assert len(xgb.curve.validation_error) <= SMALL.xgboost.n_estimators
    cnn = train_model("cnn", SMALL, processed, tmp_path, TrainingContext(seed=0, threads=1))
    assert cnn.curve.step == "epoch"
    assert 0 < len(cnn.curve.validation_error) == len(cnn.curve.train_error) <= SMALL.cnn.epochs
    assert all(0 <= error <= 1 for error in cnn.curve.validation_error)
    forest = train_model("random_forest", SMALL, processed, tmp_path, TrainingContext(0, 1))
    assert forest.curve is None


def test_same_seed_same_forest(tmp_path, processed):
    context = TrainingContext(seed=3, threads=1)
    first = train_model("random_forest", SMALL, processed, tmp_path / "a", context)
    second = train_model("random_forest", SMALL, processed, tmp_path / "b", context)
    x_test = processed.load("x_test")[0]
    np.testing.assert_array_equal(
        load_model(first.directory, 1).estimator.predict_proba(x_test),
        load_model(second.directory, 1).estimator.predict_proba(x_test),
    )


def test_trained_model_is_reused_until_its_inputs_change(tmp_path, processed, monkeypatch):
    context = TrainingContext(seed=0, threads=1)
    first = train_model("random_forest", SMALL, processed, tmp_path, context)
    assert first.directory.parent == tmp_path / "models" / "random_forest"
    fitted = []
    original_build = build_model

    def counting_build(*args):
        fitted.append(args[0])
        return original_build(*args)

    monkeypatch.setattr("tasks.training.train.build_model", counting_build)
    again = train_model("random_forest", SMALL, processed, tmp_path, context)
    assert again == first
    assert fitted == []

    deeper = SMALL.model_copy(update={"random_forest": RandomForestParams(n_estimators=21)})
    changed = train_model("random_forest", deeper, processed, tmp_path, context)
    assert changed.directory != first.directory
    assert train_model("xgboost", deeper, processed, tmp_path, context).name == "xgboost"
    assert fitted == ["random_forest", "xgboost"]
    train_model("random_forest", SMALL, processed, tmp_path, context, refresh=True)
    assert fitted == ["random_forest", "xgboost", "random_forest"]


def test_a_fit_under_a_time_budget_is_not_reused_without_one(tmp_path, processed):
    """Under a budget an epoch or round model may extend to the plan's most steps and stops
    at the deadline, not on a plateau: the same parameters without one train another model.
    The deadline's time is left out, so that a rerun after a cancel finds the model."""
    unbudgeted = train_model(
        "xgboost", SMALL, processed, tmp_path, TrainingContext(seed=0, threads=1)
    )
    budgeted = [
        train_model("xgboost", SMALL, processed, tmp_path,
                    TrainingContext(0, 1, deadline=time.time() + hours, most_steps=30))
        for hours in (3600, 7200)
    ]  # fmt: skip
    assert budgeted[0].directory == budgeted[1].directory != unbudgeted.directory
    other_most = TrainingContext(0, 1, deadline=time.time() + 3600, most_steps=40)
    extended = train_model("xgboost", SMALL, processed, tmp_path, other_most)
    assert extended.directory not in {budgeted[0].directory, unbudgeted.directory}
    one_go = [  # a fit in one go is the same model under a budget: no most steps there
        train_model("logistic_regression", SMALL, processed, tmp_path, context)
        for context in (TrainingContext(0, 1), TrainingContext(0, 1, deadline=time.time() + 60))
    ]
    assert one_go[0].directory == one_go[1].directory


def test_truncated_model_file_is_detected_and_retrained(tmp_path, processed, caplog):
    context = TrainingContext(seed=0, threads=1)
    first = train_model("logistic_regression", SMALL, processed, tmp_path, context)
    model_file = first.directory / "model.joblib"
    model_file.write_bytes(model_file.read_bytes()[:100])
    again = train_model("logistic_regression", SMALL, processed, tmp_path, context)
    assert "(model.joblib does not match its recorded hash); rebuilding it" in caplog.text
    assert again.directory == first.directory
    x_test = processed.load("x_test")[0]
    assert load_model(again.directory, threads=1).predict_proba(x_test).shape == (len(x_test), 10)


def test_a_model_is_retrained_only_when_the_code_it_runs_changes(tmp_path):
    package = shutil.copytree(
        PROJECT_PACKAGE, tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__")
    )

    def retrained_after_editing(module_file: str) -> set[str]:
        before = {spec.name: model_code_version(spec.name, package) for spec in SPECS}
        with (package / module_file).open("a") as source:
            source.write("\n# edited\n")
        return {
            spec.name
            for spec in SPECS
            if model_code_version(spec.name, package) != before[spec.name]
        }

    assert retrained_after_editing("training/models/cnn.py") == {"cnn"}
    assert retrained_after_editing("training/models/keras_layers.py") == {"cnn"}
    assert retrained_after_editing("training/models/xgboost_model.py") == {"xgboost"}
    assert retrained_after_editing("training/models/svm.py") == {"svm_rbf"}
    assert retrained_after_editing("training/models/hog.py") == {"svm_rbf"}
    linear_and_trees = {"logistic_regression", "random_forest"}
    assert retrained_after_editing("training/models/sklearn_models.py") == linear_and_trees
    sklearn_models = linear_and_trees | {"svm_rbf"}
    assert retrained_after_editing("training/models/sklearn_adapter.py") == sklearn_models
    assert (
        retrained_after_editing("training/models/registry.py") == set()
    )  # the registry fits nothing
    assert retrained_after_editing("training/train.py") == set(MODEL_NAMES)  # it writes params.json
