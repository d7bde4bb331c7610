"""Measuring what a model costs on this machine: a fit on a sample of the training
images, timed, and scaled to all of them by how the fit's time grows with its data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tasks.core.contracts import Cost
from tasks.training.models.base import ModelSpec, ProbeData, TrainingContext, with_every_class

# Images a measurement fits on: a second or two for every model here.
PROBE_IMAGES = 4000
PREDICT_PROBE_IMAGES = 2000


def sample(probe: ProbeData, images: int) -> ProbeData:
    """The first `images` training images (the split is shuffled and stratified), and one
    of each class they lack, so that every model can be fitted on them."""
    rows = with_every_class(np.arange(images), probe.y_train)
    return ProbeData(
        probe.x_train[rows], probe.y_train[rows], probe.x_val, probe.y_val, probe.scored_images
    )


def measure_one_fit(
    build: Callable[[Any, TrainingContext], Any],
    params: Any,
    probe: ProbeData,
    context: TrainingContext,
    fit_growth: float,
    predict_growth: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
    images: int | None = None,
) -> Cost:
    """A one-go fit's cost: fitted on `PROBE_IMAGES` images, its time scaled by
    `(n / PROBE_IMAGES) ** fit_growth`, and its prediction of the held-out and test
    images by `** predict_growth` (an SVM predicts with every support vector, and keeps
    about a fixed share of its training images as those). `clock` times both. n is
    `images`, by default the probe's training images."""
    images = images or len(probe.y_train)
    small = sample(probe, min(images, PROBE_IMAGES))
    classifier = build(params, context)
    started = clock()
    classifier.fit(small.x_train, small.y_train, small.x_val, small.y_val)
    fit_seconds = clock() - started
    predicted = probe.x_val[:PREDICT_PROBE_IMAGES]
    started = clock()
    classifier.predict_proba(predicted)
    predict_per_image = (clock() - started) / len(predicted)
    growth = images / len(small.y_train)
    predict_images = len(probe.y_val) + probe.scored_images
    return Cost(
        fit_seconds * growth**fit_growth
        + predict_per_image * predict_images * growth**predict_growth
    )


def measure_cost(spec: ModelSpec, params: Any, probe: ProbeData, context: TrainingContext) -> Cost:
    """A model's cost for `params`: its own measurement, or one timed fit scaled by the
    growth its spec states."""
    budgeting = spec.budgeting
    if budgeting.measure is not None:
        return budgeting.measure(params, probe, context)
    growths = budgeting.fit_growth, budgeting.predict_growth
    return measure_one_fit(spec.build, params, probe, context, *growths)
