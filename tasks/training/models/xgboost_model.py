"""Gradient-boosted trees with XGBoost, stopped early on the validation split's log-loss."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import xgboost
from optuna.distributions import FloatDistribution, IntDistribution
from pydantic import Field, PositiveInt

from tasks.core.contracts import N_CLASSES, Cost, LearningCurve, Scaling
from tasks.core.devices import detect_devices, xgboost_device
from tasks.training.models.base import (
    Budgeting,
    HyperParameters,
    ModelSpec,
    ProbeData,
    TrainingContext,
    VariantSpec,
    check_labels,
)
from tasks.training.models.measuring import PROBE_IMAGES, sample

LOG_EVERY_ROUNDS = 25


class XGBoostParams(HyperParameters):
    # Measured here (54k images, 1 thread): stops near round 175 at 0.898 test accuracy in
    # ~220 s. Learning rate 0.1 reached 0.898 too, in twice the time; sampling half the
    # columns saved 10 % of the time and cost 0.2 points.
    n_estimators: PositiveInt = 500
    learning_rate: float = Field(0.2, gt=0, le=1)
    max_depth: PositiveInt = 6
    max_bin: int = Field(
        64, ge=2, description="Histogram bins per feature; XGBoost needs 2 or more."
    )
    colsample_bytree: float = Field(1.0, gt=0, le=1)
    early_stopping_rounds: PositiveInt = 20


# Tuning: named after the fields above, so the best values are configuration values.
SEARCH_SPACE = {
    "learning_rate": FloatDistribution(0.05, 0.4, log=True),
    "max_depth": IntDistribution(3, 10),
    "colsample_bytree": FloatDistribution(0.2, 1.0),
}


class XGBoostProgress(xgboost.callback.TrainingCallback):
    """Log validation error and log-loss, and report progress, every few boosting rounds;
    stop between rounds when the run is told to (a round takes seconds on all the data),
    and after the round that reaches the time budget's deadline. Between rounds, it takes
    the threads the models done have granted it (`context.handover`)."""

    def __init__(self, rounds: int, context: TrainingContext):
        super().__init__()
        self.rounds = rounds
        self.logger = context.logger
        self.report_progress = context.report_progress
        self.report_validation = context.report_validation
        self.check_stop = context.check_stop
        self.past_deadline = context.past_deadline
        self.handover, self.threads = context.handover, context.threads

    def before_iteration(self, model, epoch: int, evals_log) -> bool:
        self.check_stop()
        granted = self.handover.granted if self.handover.bound else self.threads
        if granted > self.threads:
            model.set_param("nthread", granted)
            self.logger.info(
                "xgboost: %d more thread(s) from the models done, %d from round %d",
                granted - self.threads, granted, epoch + 1,
            )  # fmt: skip
            self.threads = granted
        return False

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        self.check_stop()
        if self.past_deadline():
            self.logger.info(
                "xgboost: stopped after round %d at the time budget's deadline", epoch + 1
            )
            return True
        if (epoch + 1) % LOG_EVERY_ROUNDS == 0:
            self.report_progress((epoch + 1) / self.rounds)
            validation = evals_log["validation_1"]  # eval sets are named by position
            self.logger.info(
                "xgboost round %d: validation error %.4f, log-loss %.4f",
                epoch + 1, validation["merror"][-1], validation["mlogloss"][-1],
            )  # fmt: skip
            self.report_validation(epoch + 1, 1 - validation["merror"][-1])
        return False


@dataclass
class XGBoostClassifier:
    model: xgboost.XGBClassifier
    model_file: ClassVar[str] = "model.ubj"

    def fit(self, x_train, y_train, x_val, y_val) -> LearningCurve:
        # Evaluated on both splits for the learning curves; the last set drives early stopping.
        self.model.fit(
            x_train, y_train, eval_set=[(x_train, y_train), (x_val, y_val)], verbose=False
        )
        # XGBoost refuses labels with a gap before it fits; labels lacking the last classes
        # it takes for fewer classes, which only its fitted model shows.
        if self.model.n_classes_ != self.model.get_params()["num_class"]:
            check_labels(y_train, self.model.get_params()["num_class"], "training")
        curves = self.model.evals_result()  # eval sets are named by position
        return LearningCurve(
            "boosting round", curves["validation_0"]["merror"], curves["validation_1"]["merror"]
        )

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(x)

    def save(self, directory: Path) -> None:
        self.model.save_model(directory / self.model_file)

    @classmethod
    def load(cls, directory: Path, threads: int) -> XGBoostClassifier:
        # The saved model does not keep its device: it predicts where this process may.
        model = xgboost.XGBClassifier(n_jobs=threads, device=xgboost_device(detect_devices()))
        model.load_model(directory / cls.model_file)
        return cls(model)


def build_xgboost(p: XGBoostParams, context: TrainingContext) -> XGBoostClassifier:
    model = xgboost.XGBClassifier(
        tree_method="hist",
        # On a GPU where the build has CUDA; its histograms are deterministic there too.
        device=xgboost_device(detect_devices()),
        n_estimators=p.n_estimators,
        learning_rate=p.learning_rate,
        max_depth=p.max_depth,
        max_bin=p.max_bin,
        colsample_bytree=p.colsample_bytree,
        n_jobs=context.threads,
        random_state=context.seed,
        # One probability per class, two classes included (XGBoost's binary objective
        # gives one column, and its multi-class metrics refuse it).
        objective="multi:softprob",
        num_class=context.classes,
        # The last metric drives early stopping: validation log-loss.
        eval_metric=["merror", "mlogloss"],
        early_stopping_rounds=p.early_stopping_rounds,
        callbacks=[XGBoostProgress(p.n_estimators, context)],
    )
    return XGBoostClassifier(model)


class RoundTimes(xgboost.callback.TrainingCallback):
    """When each boosting round ended, for measuring a round's cost."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        self.ends.append(time.perf_counter())
        return False


PROBE_ROUNDS = 6


def measure_xgboost(p: XGBoostParams, probe: ProbeData, context: TrainingContext) -> Cost:
    """A few rounds on a sample, scaled to all the images by the spec's `fit_growth`."""
    images = len(probe.y_train)
    small = sample(probe, min(images, 2 * PROBE_IMAGES))
    classifier = build_xgboost(p.model_copy(update={"n_estimators": PROBE_ROUNDS}), context)
    rounds = RoundTimes()
    classifier.model.set_params(callbacks=[rounds])
    started = time.perf_counter()
    classifier.fit(small.x_train, small.y_train, small.x_val, small.y_val)
    per_round = (rounds.ends[-1] - rounds.ends[0]) / (len(rounds.ends) - 1)
    setup = rounds.ends[0] - started - per_round
    growth = (images / len(small.y_train)) ** XGBOOST.budgeting.fit_growth
    return Cost(fixed=max(setup, 0.0) * growth, per_step=per_round * growth)


def saved_mb(p: XGBoostParams, train_images: int, classes: int = N_CLASSES) -> float:
    """At most one tree per class and round, of up to 2^(depth+1) nodes of ~20 bytes
    (measured: 0.7 MB after 30 rounds of depth 6 on ten classes)."""
    return p.n_estimators * classes * 2 ** (min(p.max_depth, 16) + 1) * 20 / 1e6


# Under a time budget, the rounds planned at the default learning rate: those after which
# its validation accuracy is within half a point of its best (the planner's objective for
# the models beside the CNN; docs/benchmark/xgboost_rounds.md: 300 rounds on all 54,000
# images, best 0.915, 0.910 from round 140; test 0.8965 there, 0.9011 after 200). The
# rounds it would add go to the CNN, which gets every core sooner. Learning rate 0.1 took
# twice the rounds, so they scale with its inverse.
ROUNDS_NEEDED = 140


def xgboost_variants(p: XGBoostParams, pinned: frozenset[str]) -> list[VariantSpec]:
    default_rate = XGBoostParams.model_fields["learning_rate"].default
    needed = min(p.n_estimators, math.ceil(ROUNDS_NEEDED * default_rate / p.learning_rate))
    return [VariantSpec(f"hist, depth {p.max_depth}", min_steps=20, most_steps=needed)]


XGBOOST = ModelSpec(
    name="xgboost", params=XGBoostParams, build=build_xgboost, adapter=XGBoostClassifier,
    # Pruning waits 50 boosting rounds: the first ones say too little.
    search_space=SEARCH_SPACE, pruning_warmup_steps=50,
    quick={"n_estimators": 30, "early_stopping_rounds": 5}, saved_mb=saved_mb,
    budgeting=Budgeting(
        measure_xgboost, step_field="n_estimators",
        variants=xgboost_variants,
        # The histogram method passes over each image once per round, but a round also
        # builds a tree per class whatever the images: from 8,000 to 54,000 images of ten
        # classes a round took n^0.6 longer on an AVX2 EPYC.
        fit_growth=0.6,
    ),
    # Left out early when not all models fit: the most time per point of accuracy on AVX2.
    keep_priority=20, step_name="boosting rounds", packages=("xgboost",),
    # 1.35 times as fast on two threads: its histograms of 54,000 images are small
    # (docs/benchmark/thread_scaling.md).
    scaling=Scaling(parallel=0.51),
    takes_more_threads=True,  # between rounds (`XGBoostProgress`)
    validation_use="early stopping: the boosting rounds kept",
)  # fmt: skip
