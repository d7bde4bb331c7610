"""What every model shares: the classifier interface, how it is trained, and its spec.

A `ModelSpec` holds everything the pipeline knows about one model, next to the code
that fits it; the registry in `tasks.training.models.registry` lists the specs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from optuna.distributions import BaseDistribution
from pydantic import BaseModel, ConfigDict

from tasks.core.contracts import N_CLASSES, LearningCurve, Scaling
from tasks.training.cores import CoreHandover

# Written by the training stage next to every saved model; the CNN reads its parameters back.
PARAMS_FILE = "params.json"
# In `TrainingContext.resume_dir`, written by a fit that took up an earlier run's kept epoch:
# the training stage adds the seconds it says to the model's.
RESUMED_FILE = "resumed.json"


class HyperParameters(BaseModel):
    """A model's hyper-parameters: a frozen configuration section that rejects unknown names."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class TrainingContext:
    """How a model is trained, apart from its hyper-parameters."""

    seed: int
    threads: int
    logger: logging.Logger = logging.getLogger(__name__)  # noqa: RUF009
    report_progress: Callable[[float], None] = lambda fraction: None
    # Validation accuracy part-way through a fit (step: boosting round or epoch); the
    # tuning stage prunes a trial by raising from it.
    report_validation: Callable[[int, float], None] = lambda step, accuracy: None
    # Called between training steps (rounds, batches): raises once the run is told to stop.
    check_stop: Callable[[], None] = lambda: None
    # The time (`time.time()`) by which the run's budget wants training over: iterative
    # fits stop at their next step after it, keeping what they have learnt.
    deadline: float | None = None
    # With a deadline: the most steps a fit that runs faster than planned may extend to.
    most_steps: int | None = None
    # Every core to the fit once the other models are done: whether they are, when the
    # plan expects it and the speed-up then; measuring, how to time the fit with them.
    handover: CoreHandover = field(default_factory=CoreHandover)
    # How many classes the model predicts: the training stages set the data's; Fashion-MNIST's
    # ten where no data is at hand (loading a saved model).
    classes: int = N_CLASSES
    # Where an epoch fit keeps its latest whole epoch, for a rerun to take up after a cancel,
    # a kill or a full disk (the CNN's: `keras_resume`); None: nowhere (measuring, tuning).
    resume_dir: Path | None = None

    def past_deadline(self, clock: Callable[[], float] = time.time) -> bool:
        return self.deadline is not None and clock() >= self.deadline

    def resumed_seconds(self) -> tuple[float, float]:
        """The wall and CPU seconds earlier runs spent on the epochs a fit took up, or 0."""
        if self.resume_dir is None:
            return 0.0, 0.0
        try:
            resumed = json.loads((self.resume_dir / RESUMED_FILE).read_text())
        except (OSError, ValueError):  # nothing taken up
            return 0.0, 0.0
        return resumed["seconds"], resumed["cpu_seconds"]


@dataclass(frozen=True)
class ProbeData:
    """What the cost measurements fit on: the run's arrays, and the sizes to scale to."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    scored_images: int  # predicted once trained, besides validation: selection and test


def check_labels(labels: np.ndarray, classes: int, split: str) -> None:
    """Every one of the `classes` classes, and no other label, is in `labels`: scikit-learn
    and XGBoost take their classes from the labels they fit on, so a missing class would
    shift the probability columns of every class after it.

    Raises:
        ValueError: naming the labels out of range or the classes missing.
    """
    found = np.unique(labels)
    if outside := [int(label) for label in found if not 0 <= label < classes]:
        raise ValueError(
            f"{split} labels {outside[:5]} are outside the {classes} classes (0 to {classes - 1})"
        )
    if missing := sorted(set(range(classes)) - {int(label) for label in found}):
        raise ValueError(
            f"the {split} labels lack class(es) {missing[:5]} of the {classes}: the model "
            f"needs {split} images of every class to give one probability per class"
        )


def with_every_class(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`rows`, sorted, with the first row of each class they lack added: a sample of the
    training images that every model can be fitted on (`check_labels`)."""
    classes, first_rows = np.unique(labels, return_index=True)
    lacking = np.isin(classes, labels[rows], invert=True)
    return np.union1d(rows, first_rows[lacking])


@dataclass(frozen=True)
class VariantSpec:
    """One way to train a model, before the planner measures what it costs.

    Attributes:
        label: what it is, for the plan's table ("wide network").
        params: the parameter values it sets.
        min_steps: the fewest steps worth training it for; below them it is left out.
        most_steps: under a time budget, the most steps the plan may give it, where
            more stopped paying when measured; None: the configured steps. Steps set by
            the user or a profile are kept instead.
        shared_most_steps: the most where it shares its lane with the others (one
            core), where each gets the same fraction of its most; None: `most_steps`.
    """

    label: str
    params: dict = field(default_factory=dict)
    min_steps: int = 0
    most_steps: int | None = None
    shared_most_steps: int | None = None


def _as_configured(params: Any, pinned: frozenset[str]) -> list[VariantSpec]:
    return [VariantSpec("as configured")]


@dataclass(frozen=True)
class Budgeting:
    """How the time-budget planner handles a model (see `tasks.budget.planner`).

    Attributes:
        measure: the model's cost here for the given parameters, measured on a sample of
            the data and scaled to all of it; None for one timed fit on a sample, scaled
            by `fit_growth` and `predict_growth` (`measuring.measure_cost`).
        step_field: the parameter that counts its steps (epochs, boosting rounds), which
            the plan fills; None for a model fitted in one go.
        variants: the ways to train it, most accurate first, given the parameters and
            the fields the user set.
        fit_growth: how its fit's time (an iterative model's step's) grows with the
            training images n: as n ** fit_growth, measured on this model.
        predict_growth: how its time to predict an image grows with the training images.
    """

    measure: Callable[[Any, ProbeData, TrainingContext], Any] | None = None
    step_field: str | None = None
    variants: Callable[[Any, frozenset[str]], list[VariantSpec]] = _as_configured
    fit_growth: float = 1.0
    predict_growth: float = 0.0


class Classifier(Protocol):
    model_file: ClassVar[str]

    def fit(
        self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
    ) -> LearningCurve | None:
        """Fit on the training split; return the learning curve of iterative models."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, one column per class; the prediction is the most probable."""

    def save(self, directory: Path) -> None:
        """Write the fitted model into `directory` as `model_file`, in its library's format."""

    @classmethod
    def load(cls, directory: Path, threads: int) -> Classifier:
        """The model `save` wrote, ready to predict with `threads` threads."""


# A model whose work does not speed up with threads: the default, until measured.
ONE_THREAD = Scaling(parallel=0.0, most_threads=1)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline knows about one model.

    Attributes:
        name: the model's name in the configuration, the registry and the reports.
        params: its hyper-parameters; the configuration has one section of this class.
        build: an unfitted classifier for `params` and a training context.
        adapter: the class `build` returns: its `model_file` holds a saved model, which
            its `load` reads back.
        search_space: tuning distributions, named after fields of `params`.
        pruning_warmup_steps: steps (rounds, epochs) a trial reports before it may be pruned.
        quick: the `quick` profile's changes to the default hyper-parameters.
        saved_mb: about how many MB the saved model takes, given `params`, the number of
            training images and of classes (Fashion-MNIST's ten by default: the disk-space
            check that counts on it runs before the data is read).
        budgeting: how a time budget plans it.
        keep_priority: when not all models fit the budget, the planner leaves out the
            one of lowest priority first (ties: in the registry's order).
        step_name: what the logs and the report call its steps.
        own_lane: it trains on a lane of its own, and gets every core once the others
            are done: for the one model that gains the most from every minute.
        packages: the Python packages it needs, whose versions metrics.json records.
        validation_use: what the validation split decides in its training, for the
            report ("" when its training does not read it).
        budgeted_validation_use: the same under a time budget, where that differs.
        scaling: how its work speeds up with threads, for the core schedule.
        takes_more_threads: its fit takes the threads the models done grant it, up to
            the threads worth using (`Scaling.useful_threads`); the model with a lane
            of its own takes them first, and up to every core.
        keeps_epochs: the training stage names it a `TrainingContext.resume_dir` beside its
            entry, where its fit keeps its latest whole epoch for a rerun to take up (about
            its saved size again); the others get none.
    """

    name: str
    params: type[HyperParameters]
    build: Callable[[Any, TrainingContext], Classifier]
    adapter: type[Classifier]
    search_space: Mapping[str, BaseDistribution]
    pruning_warmup_steps: int = 0
    quick: Mapping[str, Any] = field(default_factory=dict)
    saved_mb: Callable[..., float] = lambda params, train_images, classes=N_CLASSES: 1.0
    budgeting: Budgeting | None = None
    keep_priority: int = 0
    step_name: str = "steps"
    own_lane: bool = False
    packages: tuple[str, ...] = ()
    validation_use: str = ""
    budgeted_validation_use: str | None = None
    scaling: Scaling = ONE_THREAD
    takes_more_threads: bool = False
    keeps_epochs: bool = False

    @property
    def module(self) -> str:
        """The module that builds the model: trained models are keyed with its code."""
        return self.build.__module__
