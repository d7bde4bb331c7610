"""The adapter the scikit-learn models share: it caps the BLAS thread pools, turns an
SVM's decision values into probabilities, and saves with joblib.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import joblib
import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from threadpoolctl import threadpool_limits

from tasks.training.models.base import check_labels


def limit_blas_threads(threads: int) -> None:
    """Cap the process-wide BLAS pools at the per-model thread count, and leave them so.

    A scoped limit would be undone by whichever model finishes first while another
    still fits: that one would then oversubscribe the cores, and a capped-iteration
    solver such as logistic regression would give other results from run to run.
    """
    threadpool_limits(limits=threads, user_api="blas")


# The filter `warnings.filterwarnings` adds for it, and how many fits need it right now.
_IGNORE_CONVERGENCE = ("ignore", None, ConvergenceWarning, None, 0)
_fits_ignoring_convergence = 0
_convergence_filter_lock = threading.Lock()


@contextlib.contextmanager
def convergence_warnings_ignored() -> Iterator[None]:
    """Ignore scikit-learn's ConvergenceWarning while any fit runs, and only then.

    Filters are process-wide, and `warnings.catch_warnings()` restores the list it found
    on entry: two fits overlapping in threads would restore each other's filters and
    leave one in place for good. The filter is added by the first fit and removed by the
    last one instead.
    """
    global _fits_ignoring_convergence
    with _convergence_filter_lock:
        if _fits_ignoring_convergence == 0:
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
        _fits_ignoring_convergence += 1
    try:
        yield
    finally:
        with _convergence_filter_lock:
            _fits_ignoring_convergence -= 1
            if _fits_ignoring_convergence == 0 and _IGNORE_CONVERGENCE in warnings.filters:
                warnings.filters.remove(_IGNORE_CONVERGENCE)


@dataclass
class SklearnClassifier:
    estimator: ClassifierMixin
    threads: int
    classes: int
    logger: logging.Logger = logging.getLogger(__name__)  # noqa: RUF009
    model_file: ClassVar[str] = "model.joblib"

    def fit(self, x_train, y_train, x_val, y_val) -> None:
        check_labels(y_train, self.classes, "training")
        limit_blas_threads(self.threads)
        # An iteration cap is a deliberate time budget: one log line says when it was
        # reached, instead of scikit-learn's multi-line warning.
        with convergence_warnings_ignored():
            self.estimator.fit(x_train, y_train)
        max_iter = getattr(self.estimator, "max_iter", -1)
        if max_iter > 0 and np.max(getattr(self.estimator, "n_iter_", 0)) >= max_iter:
            self.logger.info(
                "%s stopped at its cap of max_iter=%d iterations before converging",
                type(self.estimator).__name__, max_iter,
            )  # fmt: skip
        if not hasattr(self.estimator, "predict_proba"):
            # An SVC has decision values, not probabilities. Temperature scaling, fitted on
            # the validation split, turns them into probabilities and keeps their ranking.
            check_labels(y_val, self.classes, "validation")
            frozen = FrozenEstimator(self.estimator)
            self.estimator = CalibratedClassifierCV(frozen, method="temperature")
            self.estimator.fit(x_val, y_val)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        limit_blas_threads(self.threads)
        return self.estimator.predict_proba(x)

    def save(self, directory: Path) -> None:
        joblib.dump(self.estimator, directory / self.model_file)

    @classmethod
    def load(cls, directory: Path, threads: int) -> SklearnClassifier:
        estimator = joblib.load(directory / cls.model_file)
        return cls(estimator, threads, len(estimator.classes_))
