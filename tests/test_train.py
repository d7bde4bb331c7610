from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from tasks.config import MODEL_NAMES, CNNParams, ModelParams, RandomForestParams, XGBoostParams
from tasks.evaluate import evaluate_model
from tasks.train import (
    MODEL_BUILDERS,
    TENSORFLOW_STARTUP_NOISE,
    TrainingContext,
    build_model,
    load_model,
    native_stderr_without,
    shift_and_mirror,
    train_model,
)

SMALL = ModelParams(
    random_forest=RandomForestParams(n_estimators=20),
    xgboost=XGBoostParams(n_estimators=30, early_stopping_rounds=5),
    # Class k is a band of rows 2 apart, so shifting would blur the classes into each other.
    cnn=CNNParams(
        epochs=4, batch_size=32, conv_blocks=((8,), (16,)), dense_units=32, shift_pixels=0
    ),
)
MODEL_FILES = {
    "logistic_regression": "model.joblib",
    "random_forest": "model.joblib",
    "svm_rbf": "model.joblib",
    "xgboost": "model.ubj",
    "cnn": "model.keras",
}


def test_registry_covers_every_configured_model():
    assert tuple(MODEL_BUILDERS) == MODEL_NAMES


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"unknown model 'svm'; valid models: logistic_regression, "
    ):
        build_model("svm", ModelParams(), TrainingContext(seed=0, threads=1))


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

    monkeypatch.setattr("tasks.train.build_model", counting_build)
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


def test_iteration_cap_is_one_log_line_not_a_warning(tmp_path, processed, caplog, recwarn):
    capped = ModelParams(logistic_regression={"max_iter": 2})
    context = TrainingContext(seed=0, threads=1)
    with caplog.at_level("INFO", logger="tasks.train"):
        train_model("logistic_regression", capped, processed, tmp_path, context)
    assert "LogisticRegression stopped at its cap of max_iter=2 iterations" in caplog.text
    assert [w for w in recwarn if "converge" in str(w.message)] == []


def test_stderr_filter_drops_native_notices_and_passes_the_rest(capfd):
    with native_stderr_without(TENSORFLOW_STARTUP_NOISE):
        os.write(2, b"I0000 00:00:1795 port.cc:153] oneDNN custom operations are on.\n")
        writer = threading.Thread(target=os.write, args=(2, b"worker log line\n"))
        writer.start()
        writer.join()
        os.write(2, b"To enable the following instructions: AVX2 FMA\n")
        os.write(2, b"E0000 00:00:1795 real native error\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "worker log line\nE0000 00:00:1795 real native error\nafter\n"


def test_blas_limit_outlives_a_fit_so_a_parallel_fit_keeps_it(tmp_path, processed):
    train_model("logistic_regression", SMALL, processed, tmp_path, TrainingContext(0, threads=1))
    blas_pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas_pools
    assert {pool["num_threads"] for pool in blas_pools} == {1}


def test_shift_and_mirror_moves_each_image_within_bounds():
    images = np.zeros((400, 28, 28, 1), dtype=np.float32)
    images[:, 10, 5] = 1.0  # one bright pixel, far enough from every edge
    shifted = shift_and_mirror(images, 2, mirror=True, rng=np.random.default_rng(0))
    again = shift_and_mirror(images, 2, mirror=True, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(shifted, again)
    assert images[:, 10, 5].all()  # the input is left as it was
    _, rows, columns, _ = np.nonzero(shifted)
    assert len(rows) == len(images)  # no pixel lost or duplicated
    assert set(rows) == set(range(8, 13))
    mirrored = columns > 13
    assert set(columns[~mirrored]) == set(range(3, 8))
    assert set(columns[mirrored]) == set(range(20, 25))  # column 27 - 5 = 22, shifted
    assert 0.4 < mirrored.mean() < 0.6
    unchanged = shift_and_mirror(images, 0, mirror=False, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(unchanged, images)


@pytest.mark.parametrize("shape", [(16, 5, 5, 3), (16, 7)])
def test_fused_batch_normalisation_matches_keras(shape):
    import keras

    from tasks.keras_layers import FusedBatchNormalization

    x = np.random.default_rng(0).normal(2.0, 3.0, size=shape).astype(np.float32)
    fused, reference = (
        FusedBatchNormalization(momentum=0.9),
        keras.layers.BatchNormalization(momentum=0.9),
    )
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean, reference.moving_mean, rtol=1e-5)
    assert np.all(np.asarray(fused.moving_variance) > 1)  # moved from 1 towards the data's 9
    reference.moving_variance.assign(fused.moving_variance)
    np.testing.assert_allclose(fused(x), reference(x), atol=1e-5)  # inference statistics
    restored = FusedBatchNormalization.from_config(fused.get_config())
    assert (restored.momentum, restored.epsilon) == (0.9, 1e-3)
