"""Tuning: search each model's hyper-parameters on the validation split, within a time budget.

Optuna proposes the parameters (TPE sampler) and stops unpromising trials of the
iterative models early: XGBoost reports validation accuracy every few rounds and the
CNN every epoch, and a trial below the median of earlier trials at the same step is
pruned. The first trial of every model is its configured defaults, so the search
shows what it gained over them. The test set is never read.

A `TuningSession` decides which trial runs next and records the outcome; the trials
themselves (`run_trial`) may run anywhere that reads the study's journal file, so the
flow submits them to the same task runner that trains the models. The journal is keyed
by what the search depends on (`study_key`), so a rerun after a cancel resumes it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from tasks.core.contracts import TRAINING_ARRAYS, ProcessedDataset, TuningSummary, content_hashes
from tasks.core.errors import StorageError
from tasks.core.files import write_atomically
from tasks.core.stopping import check_stop, run_until_stopped
from tasks.core.storage import content_key, project_code_version
from tasks.data.preprocess import stratified_subset
from tasks.training.models.base import TrainingContext, with_every_class
from tasks.training.models.registry import ModelParams, build_model, model_spec
from tasks.training.tuned_profile import profile_text

UNPRUNED_TRIALS = 2  # the defaults and one more, before any trial is compared
DEFAULTS = "defaults"  # the user attribute marking the trial of the configured defaults
# Random proposals before TPE models the results: budgets of minutes allow few trials.
RANDOM_TRIALS = 4
JOURNAL_FILE = "study.journal"
# Trials that ended; one in another state was cut short by a cancel (or still runs) and
# counts nothing.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def pruner(model: str) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(
        n_startup_trials=UNPRUNED_TRIALS, n_warmup_steps=model_spec(model).pruning_warmup_steps
    )


def journal(directory: Path) -> JournalStorage:
    """The study storage: one append-only file that threads and processes share safely."""
    return JournalStorage(JournalFileBackend(str(directory / JOURNAL_FILE)))


def study_key(
    models: list[str],
    params: ModelParams,
    train_subset_size: int | None,
    seed: int,
    data: ProcessedDataset,
) -> str:
    """The search's key, from what its trials depend on: a rerun with the same models,
    parameters, subset, seed and data (the hashes of the arrays a trial reads, as a trained
    model's key has them) resumes its study rather than starting over (with a larger
    budget, it searches on; with the same, it has nothing left to do)."""
    return content_key(
        {model: getattr(params, model).model_dump(mode="json") for model in sorted(models)},
        train_subset_size, seed, content_hashes(data.arrays, TRAINING_ARRAYS),
        project_code_version(__name__),
    )  # fmt: skip


@dataclass(frozen=True)
class TrialRequest:
    """A trial the session wants run; `sequence` (trials asked so far) seeds its sampler."""

    model: str
    sequence: int


@dataclass(frozen=True)
class TrialOutcome:
    validation_accuracy: float | None  # None when the trial was pruned
    seconds: float

    @property
    def pruned(self) -> bool:
        return self.validation_accuracy is None


def with_overrides(params: ModelParams, model: str, overrides: dict) -> ModelParams:
    """`params` with one model's fields replaced, validated like any configuration."""
    merged = getattr(params, model).model_dump() | overrides
    return params.model_copy(update={model: type(getattr(params, model)).model_validate(merged)})


def run_trial(
    request: TrialRequest,
    params: ModelParams,
    data: ProcessedDataset,
    study_dir: Path,
    train_subset_size: int | None,
    seed: int,
    threads: int,
    logger: logging.Logger,
) -> TrialOutcome:
    """Ask the study for parameters, fit them on (a stratified subset of) the training
    split, score them on the validation split and tell the study; the study may prune
    the trial on the scores it reports while it fits."""
    model = request.model
    study = optuna.load_study(
        study_name=model,
        storage=journal(study_dir),
        sampler=optuna.samplers.TPESampler(
            n_startup_trials=RANDOM_TRIALS, seed=(seed + request.sequence) % 2**32
        ),
        pruner=pruner(model),
    )
    trial = study.ask(model_spec(model).search_space)

    def report_validation(step: int, accuracy: float) -> None:
        trial.report(accuracy, step)
        # The defaults are what the search is measured against: their score is always a
        # whole fit's, even when later trials finished first and set a higher median.
        if not trial.user_attrs.get(DEFAULTS) and trial.should_prune():
            raise optuna.TrialPruned(f"validation accuracy {accuracy:.4f} at step {step}")

    x_train, y_train, x_val, y_val = data.load(*TRAINING_ARRAYS)
    rows = with_every_class(stratified_subset(y_train, train_subset_size, seed), y_train)
    context = TrainingContext(
        seed, threads, logger, report_validation=report_validation, check_stop=check_stop,
        classes=len(data.class_names),
    )  # fmt: skip
    started = time.perf_counter()
    accuracy = None
    try:
        classifier = build_model(model, with_overrides(params, model, trial.params), context)
        run_until_stopped(classifier.fit, x_train[rows], y_train[rows], x_val, y_val)
        predicted = run_until_stopped(classifier.predict_proba, x_val).argmax(axis=1)
        accuracy = float(np.mean(predicted == y_val))
    except optuna.TrialPruned as pruned:
        logger.info("%s trial %d pruned: %s", model, trial.number, pruned)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    seconds = time.perf_counter() - started
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("train_images", len(rows))
    if accuracy is None:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, accuracy)
        logger.info(
            "%s trial %d: validation accuracy %.4f in %.1f s with %s",
            model, trial.number, accuracy, seconds, trial.params,
        )  # fmt: skip
    return TrialOutcome(accuracy, seconds)


class TuningSession:
    """Which model's trial runs next, within each model's budget, and what the trials found.

    A model's budget is the wall time of its trials, counted from each trial's start, so
    with N trials running at once the search takes about the budgets' sum over N. A
    model gets no new trial once its budget is used; a running trial is let finish.

    In a `directory` whose journal holds an earlier session's trials (a run cancelled,
    or rerun), the search resumes: their seconds count against the budgets, and a trial
    left running counts nothing; the defaults are run again unless they completed.
    """

    def __init__(
        self, models: list[str], params: ModelParams, budget_minutes: float, directory: Path
    ):
        self.budget_seconds, self.directory = 60 * budget_minutes, directory
        self.studies: dict[str, optuna.Study] = {}
        try:  # a full disk: one line naming the journal, before any trial runs
            directory.mkdir(parents=True, exist_ok=True)
            for model in models:
                self.studies[model] = _study_with_defaults(model, params, journal(directory))
        except OSError as error:
            raise StorageError.from_os_error(directory / JOURNAL_FILE, error) from None
        self.resumed = {model: len(_finished(study)) for model, study in self.studies.items()}
        self.spent = {
            model: sum(trial.user_attrs.get("seconds", 0.0) for trial in _finished(study))
            for model, study in self.studies.items()
        }
        self.running: dict[TrialRequest, float] = {}  # start times
        self.failed: dict[str, str] = {}  # the error of each model's failed trial
        # Each request's number seeds its sampler: resumed, the earlier ones are not repeated.
        self.asked = sum(len(study.get_trials(deepcopy=False)) for study in self.studies.values())

    def committed_seconds(self, model: str) -> float:
        now = time.monotonic()
        running = sum(now - start for r, start in self.running.items() if r.model == model)
        return self.spent[model] + running

    def next_trial(self) -> TrialRequest | None:
        """A trial of the model with budget left that has the fewest trials running and
        has used the least time; None when every budget is used."""
        open_models = [
            m
            for m in self.studies
            if m not in self.failed and self.committed_seconds(m) < self.budget_seconds
        ]
        if not open_models:
            return None
        running = Counter(request.model for request in self.running)
        model = min(open_models, key=lambda m: (running[m], self.committed_seconds(m)))
        request = TrialRequest(model, self.asked)
        self.asked += 1
        self.running[request] = time.monotonic()
        return request

    def record(self, request: TrialRequest, outcome: TrialOutcome) -> None:
        del self.running[request]
        self.spent[request.model] += outcome.seconds

    def fail(self, request: TrialRequest, error: str) -> None:
        """A trial raised `error` (one line): the model gets no more trials, as the next
        ones would most likely fail alike; a trial completed before still counts."""
        self.spent[request.model] += time.monotonic() - self.running.pop(request)
        self.failed.setdefault(request.model, error)

    def failures(self) -> dict[str, str]:
        """Why each model without a completed trial has none."""
        return {
            model: self.failed.get(model, "no trial completed within the budget")
            for model, study in self.studies.items()
            if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        }

    def summaries(self) -> list[TuningSummary]:
        """Each search that completed a trial, its trials written to `<model>-trials.csv`."""
        summaries = []
        for model, study in self.studies.items():
            trials = _finished(study)
            if not any(trial.state == TrialState.COMPLETE for trial in trials):
                continue  # in `failures()`
            trials_file = self.directory / f"{model}-trials.csv"
            columns = ("number", "state", "value", "params", "user_attrs")
            frame = study.trials_dataframe(attrs=columns)
            finished = frame[frame.number.isin([trial.number for trial in trials])]
            write_atomically(
                trials_file, lambda stream, rows=finished: rows.to_csv(stream, index=False)
            )
            best = study.best_trial
            defaults = _defaults_trial(study, (TrialState.COMPLETE,))
            summaries.append(
                TuningSummary(
                    model=model,
                    trials=len(trials),
                    pruned=sum(trial.state == TrialState.PRUNED for trial in trials),
                    seconds=self.spent[model],
                    # NaN when the defaults' trial failed and a later one did not
                    default_accuracy=float("nan" if defaults is None else defaults.value),
                    best_accuracy=float(best.value),
                    best_trial=best.number,
                    best_params=best.params,
                    train_images=best.user_attrs["train_images"],
                    trials_file=trials_file,
                )
            )
        return summaries


def _study_with_defaults(model: str, params: ModelParams, storage: JournalStorage) -> optuna.Study:
    """The model's study, new or an earlier session's, with its defaults' trial enqueued
    unless it completed or waits."""
    study = optuna.create_study(
        study_name=model, storage=storage, direction="maximize", load_if_exists=True
    )
    if not _defaults_trial(study, (TrialState.COMPLETE, TrialState.WAITING)):
        defaults, search_space = getattr(params, model), model_spec(model).search_space
        study.enqueue_trial(
            {name: getattr(defaults, name) for name in search_space}, {DEFAULTS: True}
        )
    return study


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def _defaults_trial(
    study: optuna.Study, states: tuple[TrialState, ...]
) -> optuna.trial.FrozenTrial | None:
    """The study's first trial of the configured defaults in one of `states`, if any."""
    trials = study.get_trials(deepcopy=False, states=states)
    return next((trial for trial in trials if trial.user_attrs.get(DEFAULTS)), None)


def tuned_params(params: ModelParams, summaries: list[TuningSummary]) -> ModelParams:
    """`params` with each tuned model's best parameters."""
    for summary in summaries:
        params = with_overrides(params, summary.model, summary.best_params)
    return params


def write_profile(path: Path, summaries: list[TuningSummary]) -> None:
    """Write the best parameters as a profile file, in one rename so that a scheduled run
    never reads half of one."""
    write_atomically(path, lambda stream: stream.write(profile_text(summaries)))
