"""The scikit-learn models: logistic regression, random forest and an RBF SVM.

They share one adapter, which caps the BLAS thread pools, turns the SVM's decision
values into probabilities and saves with joblib.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import joblib
import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import Field, PositiveFloat, PositiveInt
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from tasks.core.contracts import N_CLASSES, Scaling
from tasks.training.models.base import (
    Budgeting,
    HyperParameters,
    ModelSpec,
    TrainingContext,
    VariantSpec,
    check_labels,
)


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


class LogisticRegressionParams(HyperParameters):
    C: float = Field(1.0, gt=0)
    max_iter: PositiveInt = 200


def build_logistic_regression(p: LogisticRegressionParams, context: TrainingContext):
    estimator = LogisticRegression(C=p.C, max_iter=p.max_iter, random_state=context.seed)
    return SklearnClassifier(estimator, context.threads, context.classes, context.logger)


LOGISTIC_REGRESSION = ModelSpec(
    name="logistic_regression", params=LogisticRegressionParams,
    build=build_logistic_regression, adapter=SklearnClassifier,
    search_space={"C": FloatDistribution(1e-3, 10.0, log=True)},
    # A coefficient per class and pixel: measured 0.03 MB for ten classes and 0.3 for 100,
    # counted as 0.1 and 1 to be safe.
    quick={"max_iter": 100}, saved_mb=lambda p, train_images, classes=N_CLASSES: 0.01 * classes,
    # Its iterations are capped, each about linear in the images; measured from 4,000 to
    # 54,000 images on an AVX2 EPYC: n^0.85.
    budgeting=Budgeting(fit_growth=0.85),
    keep_priority=30, packages=("scikit-learn",),
    # Measured slower on two threads than on one (11.0 s against 28.8: BLAS threads on
    # small products, docs/benchmark/thread_scaling.md): one thread.
    scaling=Scaling(parallel=0.0, most_threads=1),
)  # fmt: skip


class RandomForestParams(HyperParameters):
    n_estimators: PositiveInt = 100
    max_features: Literal["sqrt", "log2"] = "sqrt"
    min_samples_leaf: PositiveInt = 1


def build_random_forest(p: RandomForestParams, context: TrainingContext):
    forest = RandomForestClassifier(
        n_estimators=p.n_estimators,
        max_features=p.max_features,
        min_samples_leaf=p.min_samples_leaf,
        n_jobs=context.threads,
        random_state=context.seed,
    )
    return SklearnClassifier(forest, context.threads, context.classes, context.logger)


RANDOM_FOREST = ModelSpec(
    name="random_forest", params=RandomForestParams,
    build=build_random_forest, adapter=SklearnClassifier,
    search_space={
        "max_features": CategoricalDistribution(["sqrt", "log2"]),
        "min_samples_leaf": IntDistribution(1, 4),
    },
    quick={"n_estimators": 30},
    # Measured: 32 bytes per tree and training image with leaves of one image and ten
    # classes; each node holds a float64 per class (random labels: 18, 86 and 850 bytes
    # for 2, 10 and 100 classes).
    saved_mb=lambda p, train_images, classes=N_CLASSES: (
        p.n_estimators * train_images * 3.2e-6 * classes / p.min_samples_leaf
    ),
    # Sorting at every split, n log n: measured from 4,000 to 54,000 images, n^1.1.
    budgeting=Budgeting(fit_growth=1.1),
    # Left out first when not all models fit: never the best, nor picked by the ensemble.
    keep_priority=10, packages=("scikit-learn",),
    # Its trees fit in parallel: 1.89 times as fast on two threads (thread_scaling.md).
    scaling=Scaling(parallel=0.94),
)  # fmt: skip


class SVMParams(HyperParameters):
    # Measured here (54k images, 1 thread): on 128 principal components the RBF SVM fits
    # in 51 s and predicts 16k images in 20 s at 0.900 test accuracy; on the 784 pixels
    # it took 282 s and 86 s for 0.899. 64 components: 33 s, 0.893.
    C: float = Field(10.0, gt=0)
    gamma: Literal["scale", "auto"] | PositiveFloat = "scale"
    pca_components: PositiveInt | None = Field(
        128, le=784, description="Project the pixels on this many principal components first."
    )
    # libsvm's kernel cache, held through the whole fit. On 128 components (54k
    # images, AMD EPYC with AVX-512 BF16) it fitted in 29 to 33 s with 100, 200 or 2000 MB
    # and in 41 s with 50; 100 MB cut the fit's peak by 56 MiB against 200 or more.
    cache_size_mb: PositiveInt = 100


def build_svm(p: SVMParams, context: TrainingContext):
    svm = SVC(
        kernel="rbf", C=p.C, gamma=p.gamma, cache_size=p.cache_size_mb, random_state=context.seed
    )
    if p.pca_components:
        svm = make_pipeline(PCA(p.pca_components, random_state=context.seed), svm)
    return SklearnClassifier(svm, context.threads, context.classes, context.logger)


def svm_variants(p: SVMParams, pinned: frozenset[str]) -> list[VariantSpec]:
    """128 principal components, or 64 when those do not fit (0.893 against 0.900)."""
    configured = f"{p.pca_components} components" if p.pca_components else "784 pixels"
    if "pca_components" in pinned or p.pca_components != 128:
        return [VariantSpec(configured)]
    return [VariantSpec(configured), VariantSpec("64 components", {"pca_components": 64})]


def svm_saved_mb(p: SVMParams, train_images: int, classes: int = N_CLASSES) -> float:
    """The projection, and about half the training images as support vectors, each with
    its features and a coefficient per other class (measured: 3.3 MB for 5,000 images of
    ten classes on 128 components)."""
    features = p.pca_components or 784
    projection = features * 784 * 8 if p.pca_components else 0
    return (projection + train_images / 2 * (features + classes - 1) * 8) / 1e6


SVM = ModelSpec(
    name="svm_rbf", params=SVMParams, build=build_svm, adapter=SklearnClassifier,
    search_space={
        "C": FloatDistribution(1.0, 100.0, log=True),
        "gamma": CategoricalDistribution(["scale", 0.005, 0.01, 0.02, 0.04]),
        "pca_components": CategoricalDistribution([64, 96, 128, 192]),
    },
    saved_mb=svm_saved_mb,
    budgeting=Budgeting(
        # libsvm's time grows between n^1.5 and n^2 (measured from 4,000 to 54,000 images
        # on an AVX2 EPYC: n^1.5); it predicts with support vectors, about a fixed share.
        fit_growth=1.5, predict_growth=1.0, variants=svm_variants,
    ),
    keep_priority=40, packages=("scikit-learn",),
    # libsvm fits on one thread: no faster on two (thread_scaling.md).
    scaling=Scaling(parallel=0.0, most_threads=1),
    validation_use="temperature scaling: its scores turned into probabilities",
)  # fmt: skip
