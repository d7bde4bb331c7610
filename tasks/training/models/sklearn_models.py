"""The linear and tree models of scikit-learn: logistic regression and a random forest."""

from __future__ import annotations

from typing import Literal

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import Field, PositiveInt
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from tasks.core.contracts import N_CLASSES, Scaling
from tasks.training.models.base import Budgeting, HyperParameters, ModelSpec, TrainingContext
from tasks.training.models.sklearn_adapter import SklearnClassifier


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
