"""The RBF SVM, on the principal components of the images' HOG features and pixels."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from optuna.distributions import CategoricalDistribution, FloatDistribution
from pydantic import Field, PositiveFloat, PositiveInt
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC

from tasks.core.contracts import N_CLASSES, Cost, Scaling
from tasks.training.models import measuring
from tasks.training.models.base import (
    Budgeting,
    HyperParameters,
    ModelSpec,
    ProbeData,
    TrainingContext,
    VariantSpec,
)
from tasks.training.models.hog import FEATURES, PCA_FIT_IMAGES, PIXELS, HOGProjection
from tasks.training.models.sklearn_adapter import SklearnClassifier


class SVMParams(HyperParameters):
    # On the HOG and pixels' principal components (54k images, 1 thread, AMD EPYC with
    # AVX-512 BF16), components: fit, prediction of 16k images, test accuracy: 128: 33 s,
    # 13 s, 0.9169; 160: 43 s, 18 s, 0.9181; 192: 58 s, 22 s, 0.9205; 256: 89 s, 34 s,
    # 0.9213. C 5 and 20 on 192: 0.9201, 0.9198. On the pixels' 128 components: 0.900.
    C: float = Field(10.0, gt=0)
    gamma: Literal["scale", "auto"] | PositiveFloat = "scale"
    hog: bool = Field(
        True, description="Add the images' histograms of oriented gradients (cells of 4x4 "
        "pixels, 1,296 values) to the pixels before the projection."
    )  # fmt: skip
    pca_components: PositiveInt | None = Field(
        192, le=PIXELS, description="Project the features on this many principal components first."
    )  # fmt: skip
    # libsvm's kernel cache, held through the whole fit. On 128 components (54k
    # images, AMD EPYC with AVX-512 BF16) it fitted in 29 to 33 s with 100, 200 or 2000 MB
    # and in 41 s with 50; 100 MB cut the fit's peak by 56 MiB against 200 or more.
    cache_size_mb: PositiveInt = 100


def build_svm(p: SVMParams, context: TrainingContext):
    # One-vs-one decision values: the adapter's soft votes take each pair's.
    svm = SVC(
        kernel="rbf", C=p.C, gamma=p.gamma, cache_size=p.cache_size_mb,
        decision_function_shape="ovo", random_state=context.seed,
    )  # fmt: skip
    if p.hog:
        svm = make_pipeline(HOGProjection(p.pca_components, seed=context.seed), svm)
    elif p.pca_components:
        svm = make_pipeline(PCA(p.pca_components, random_state=context.seed), svm)
    return SklearnClassifier(svm, context.threads, context.classes, context.logger)


# libsvm's time grows between n^1.5 and n^2 (measured from 4,000 to 54,000 images on an
# AVX2 EPYC: n^1.5); it predicts with support vectors, about a fixed share of n.
FIT_GROWTH, PREDICT_GROWTH = 1.5, 1.0


def measure_svm(
    p: SVMParams,
    probe: ProbeData,
    context: TrainingContext,
    clock: Callable[[], float] = time.perf_counter,
) -> Cost:
    """The SVM's cost: libsvm's on projected features, grown with the images as libsvm's
    grows, plus the features' own, grown linearly: each image is made into features once
    to fit, and each held-out one twice (temperature scaling, then evaluation), besides
    the scored ones. Grown together as n^1.5, the HOG's share put a 33 s fit at 142 s.
    `clock` times each part."""
    if not p.hog:
        return measuring.measure_one_fit(
            build_svm, p, probe, context, FIT_GROWTH, PREDICT_GROWTH, clock
        )
    images = len(probe.y_train)
    small = measuring.sample(probe, min(images, measuring.PROBE_IMAGES))
    projection = HOGProjection(p.pca_components, seed=context.seed)
    started = clock()
    projection.fit(small.x_train)
    fitted = clock()
    x_train = projection.transform(small.x_train)
    per_image = (clock() - fitted) / len(x_train)
    projected = ProbeData(
        x_train, small.y_train, projection.transform(probe.x_val), probe.y_val, probe.scored_images
    )  # fmt: skip
    bare = p.model_copy(update={"hog": False, "pca_components": None})
    svc = measuring.measure_one_fit(
        build_svm, bare, projected, context, FIT_GROWTH, PREDICT_GROWTH, clock, images
    )  # fmt: skip
    featured = images + 2 * len(probe.y_val) + probe.scored_images
    projection_fit = (fitted - started) * min(images, PCA_FIT_IMAGES) / len(small.y_train)
    return Cost(svc.fixed + projection_fit + per_image * featured)


# What a budget falls back to, in turn, where the configured components do not fit.
FEWER_COMPONENTS = (128, 64)


def svm_variants(p: SVMParams, pinned: frozenset[str]) -> list[VariantSpec]:
    """The configured principal components, then 128 and 64 when those do not fit."""
    features = "HOG and pixels" if p.hog else "pixels"
    configured = [VariantSpec(f"{features}, {p.pca_components or 'all'} components")]
    if "pca_components" in pinned or p.pca_components is None:
        return configured
    return configured + [
        VariantSpec(f"{features}, {count} components", {"pca_components": count})
        for count in FEWER_COMPONENTS
        if count < p.pca_components
    ]


def svm_saved_mb(p: SVMParams, train_images: int, classes: int = N_CLASSES) -> float:
    """The projection, and about half the training images as support vectors, each with
    its features and a coefficient per other class (measured: 3.3 MB for 5,000 images of
    ten classes on the pixels' 128 components)."""
    inputs = FEATURES if p.hog else PIXELS
    features = p.pca_components or inputs
    projection = features * inputs * 8 if p.pca_components else 0
    return (projection + train_images / 2 * (features + classes - 1) * 8) / 1e6


SVM = ModelSpec(
    name="svm_rbf", params=SVMParams, build=build_svm, adapter=SklearnClassifier,
    search_space={
        "C": FloatDistribution(1.0, 100.0, log=True),
        "gamma": CategoricalDistribution(["scale", 0.005, 0.01, 0.02, 0.04]),
        "pca_components": CategoricalDistribution([64, 96, 128, 192]),
    },
    saved_mb=svm_saved_mb,
    budgeting=Budgeting(measure_svm, variants=svm_variants),
    keep_priority=40, packages=("scikit-learn",),
    # libsvm fits on one thread: no faster on two (thread_scaling.md).
    scaling=Scaling(parallel=0.0, most_threads=1),
    validation_use="temperature scaling: its soft pairwise votes turned into probabilities",
)  # fmt: skip
