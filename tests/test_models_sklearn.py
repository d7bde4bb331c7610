from __future__ import annotations

import warnings

from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_info, threadpool_limits

from tasks.core.contracts import TRAINING_ARRAYS
from tasks.run.config import ModelParams
from tasks.training.models.base import TrainingContext
from tasks.training.models.registry import build_model
from tasks.training.models.sklearn_adapter import convergence_warnings_ignored


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
