from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import SVC
from threadpoolctl import threadpool_info, threadpool_limits

from tasks.core.contracts import TRAINING_ARRAYS
from tasks.run.config import ModelParams
from tasks.training.models.base import TrainingContext
from tasks.training.models.registry import build_model
from tasks.training.models.sklearn_adapter import SoftVotes, convergence_warnings_ignored


def fit_logistic_regression(processed, max_iter: int = 200, threads: int = 1) -> None:
    params = ModelParams(logistic_regression={"max_iter": max_iter})
    context = TrainingContext(seed=0, threads=threads)
    build_model("logistic_regression", params, context).fit(*processed.load(*TRAINING_ARRAYS))


def convergence_warnings_shown(recorded) -> list[str]:
    return [str(w.message) for w in recorded if issubclass(w.category, ConvergenceWarning)]


def blas_threads() -> set[int]:
    blas_pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas_pools
    return {pool["num_threads"] for pool in blas_pools}


def test_iteration_cap_is_one_log_line_not_a_warning(processed, caplog, recwarn):
    with caplog.at_level("INFO", logger="tasks.training.models"):
        fit_logistic_regression(processed, max_iter=2)
    assert "LogisticRegression stopped at its cap of max_iter=2 iterations" in caplog.text
    assert [w for w in recwarn if "converge" in str(w.message)] == []


def test_convergence_warnings_outside_a_fit_are_still_shown(processed, recwarn):
    fit_logistic_regression(processed, max_iter=2)
    warnings.warn("raised outside any fit", ConvergenceWarning, stacklevel=1)
    assert convergence_warnings_shown(recwarn) == ["raised outside any fit"]


def test_fits_overlapping_in_threads_leave_no_filter_behind(recwarn):
    # Entered and left out of order, as two fits in two threads may be.
    first, second = convergence_warnings_ignored(), convergence_warnings_ignored()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    warnings.warn("while the second fit runs", ConvergenceWarning, stacklevel=1)
    second.__exit__(None, None, None)
    warnings.warn("after both fits", ConvergenceWarning, stacklevel=1)
    assert convergence_warnings_shown(recwarn) == ["after both fits"]


def test_blas_limit_outlives_a_fit_so_a_parallel_fit_keeps_it(processed):
    threadpool_limits(limits=2, user_api="blas")  # not the limit the fit sets, whatever ran before
    assert blas_threads() == {2}
    fit_logistic_regression(processed, threads=1)
    assert blas_threads() == {1}


def _blobs(classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian blobs around the corners of a simplex: some points ambiguous."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    return np.eye(classes)[labels] * 2 + rng.normal(size=(len(labels), classes)), labels


def _log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(probabilities[np.arange(len(labels)), labels]).mean())


def test_soft_votes_keep_the_svm_s_predictions_and_fit_their_temperature():
    x, y = _blobs(classes=4, per_class=150, seed=0)
    x_val, y_val = _blobs(classes=4, per_class=100, seed=1)
    svm = SVC(decision_function_shape="ovo", random_state=0).fit(x, y)

    calibrated = SoftVotes(svm).fit(x_val, y_val)
    probabilities = calibrated.predict_proba(x_val)

    assert probabilities.shape == (400, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1)
    # Steep enough, a soft vote is the hard vote SVC.predict counts (ties aside).
    steep = SoftVotes(svm, slope=50).fit(x_val, y_val)
    assert np.mean(steep.predict(x_val) == svm.predict(x_val)) >= 0.98
    assert (
        np.mean(calibrated.predict(x_val) == y_val) >= np.mean(svm.predict(x_val) == y_val) - 0.02
    )
    # The temperature is the log-loss's minimum on the images it was fitted on.
    fitted = _log_loss(probabilities, y_val)
    for factor in (0.5, 2.0):
        calibrated.temperature_ *= factor
        assert _log_loss(calibrated.predict_proba(x_val), y_val) > fitted
        calibrated.temperature_ /= factor


def test_soft_votes_favour_the_class_each_pair_s_value_points_to():
    x, y = _blobs(classes=3, per_class=100, seed=2)
    svm = SVC(decision_function_shape="ovo", random_state=0).fit(x, y)
    calibrated = SoftVotes(svm).fit(x, y)
    centres = np.eye(3) * 4  # far into each class's blob
    np.testing.assert_array_equal(calibrated.predict(centres), [0, 1, 2])
    assert calibrated.predict_proba(centres).diagonal().min() > 0.5


def test_soft_votes_of_two_classes_come_from_a_single_column_of_values():
    x, y = _blobs(classes=2, per_class=100, seed=3)
    svm = SVC(decision_function_shape="ovo", random_state=0).fit(x, y)
    probabilities = SoftVotes(svm).fit(x, y).predict_proba(x)
    assert probabilities.shape == (200, 2)
    assert np.mean(probabilities.argmax(axis=1) == y) >= 0.9
