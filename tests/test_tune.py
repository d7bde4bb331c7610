from __future__ import annotations

import errno
import os
import re
from dataclasses import replace

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from pydantic import ValidationError

from tasks.core.contracts import TRAINING_ARRAYS, ProcessedDataset
from tasks.core.errors import StorageError
from tasks.core.storage import array_refs, save_arrays
from tasks.run.config import ModelParams, PipelineConfig
from tasks.training import stages
from tasks.training.models.base import TrainingContext
from tasks.training.models.registry import build_model, model_spec
from tasks.training.models.xgboost_model import XGBoostParams
from tasks.training.tune import (
    JOURNAL_FILE,
    TrialOutcome,
    TrialRequest,
    TuningSession,
    journal,
    run_trial,
    study_key,
    tuned_params,
    with_overrides,
    write_profile,
)
from tests.support.params import SMALL


def tune_synchronously(session: TuningSession, data, subset=None) -> None:
    """The flow's loop, one trial at a time and without Prefect."""
    while request := session.next_trial():
        outcome = run_trial(
            request, SMALL, data, session.directory, subset, seed=0, threads=1,
            logger=optuna.logging.get_logger("test"),
        )  # fmt: skip
        session.record(request, outcome)


def test_session_starts_from_the_defaults_and_keeps_to_the_budget(tmp_path, processed, monkeypatch):
    read = []
    original_load = ProcessedDataset.load

    def recording_load(self, *names):
        read.extend(names)
        return original_load(self, *names)

    monkeypatch.setattr(ProcessedDataset, "load", recording_load)
    budget_minutes = 0.03
    session = TuningSession(
        ["logistic_regression", "random_forest"], SMALL, budget_minutes, tmp_path / "study"
    )
    tune_synchronously(session, processed, subset=120)

    assert set(read) == {"x_train", "y_train", "x_val", "y_val"}
    summaries = {summary.model: summary for summary in session.summaries()}
    for model, summary in summaries.items():
        trials = pd.read_csv(summary.trials_file)
        assert len(trials) == summary.trials >= 2
        first = trials.iloc[0]
        for name in model_spec(model).search_space:
            assert first[f"params_{name}"] == getattr(getattr(SMALL, model), name)
        assert summary.default_accuracy == first.value
        assert summary.best_accuracy == trials.value.max() >= summary.default_accuracy
        best = trials.set_index("number").loc[summary.best_trial]
        assert best.value == summary.best_accuracy
        assert summary.best_params == {
            name: best[f"params_{name}"] for name in model_spec(model).search_space
        }
        assert summary.train_images == 120
        # The budget stops new trials; only the last one may run past it.
        seconds = trials.user_attrs_seconds
        assert summary.seconds == pytest.approx(seconds.sum())
        assert seconds.sum() - seconds.iloc[-1] < 60 * budget_minutes


@pytest.fixture
def unlearnable(tmp_path) -> ProcessedDataset:
    """Labels without any relation to the images: nothing reaches earlier trials' 0.9."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((300, 784), dtype=np.float32),
        "y_train": rng.integers(0, 10, 300).astype(np.uint8),
        "x_val": rng.random((100, 784), dtype=np.float32),
        "y_val": rng.integers(0, 10, 100).astype(np.uint8),
    }
    save_arrays(tmp_path, arrays)
    return ProcessedDataset(tmp_path, array_refs(tmp_path, list(arrays)))


# Fitted to the end unless pruned: no early stopping before the last round or epoch.
UNSTOPPED = SMALL.model_copy(
    update={
        "xgboost": XGBoostParams(n_estimators=200, early_stopping_rounds=200),
        "cnn": SMALL.cnn.model_copy(update={"epochs": 6, "early_stopping_patience": 6}),
    }
)


def add_finished_trials(study: optuna.Study, model: str, step: int) -> None:
    """Two trials that scored 0.9 at every step: the median a new trial is held to."""
    name, distribution = next(iter(model_spec(model).search_space.items()))
    for _ in range(2):
        study.add_trial(
            optuna.trial.create_trial(
                params={name: getattr(getattr(UNSTOPPED, model), name)},
                distributions={name: distribution},
                value=0.9,
                intermediate_values={s: 0.9 for s in range(step, 201, step)},
            )
        )


def run_one_trial(model: str, data: ProcessedDataset, study_dir) -> TrialOutcome:
    return run_trial(
        TrialRequest(model, 0), UNSTOPPED, data, study_dir, None, seed=0, threads=1,
        logger=optuna.logging.get_logger("test"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("model", "step"),
    [("xgboost", 25), ("cnn", 1)],  # XGBoost reports every 25 rounds, the CNN every epoch
)
def test_trial_below_the_median_is_pruned(tmp_path, unlearnable, model, step):
    study = optuna.create_study(study_name=model, storage=journal(tmp_path), direction="maximize")
    add_finished_trials(study, model, step)
    outcome = run_one_trial(model, unlearnable, tmp_path)
    assert outcome.pruned
    trial = optuna.load_study(study_name=model, storage=journal(tmp_path)).trials[-1]
    assert trial.state == TrialState.PRUNED
    # Pruned at the first step after the warm-up, not fitted to the end.
    assert max(trial.intermediate_values) == model_spec(model).pruning_warmup_steps
    assert trial.user_attrs["seconds"] == outcome.seconds


def test_the_defaults_trial_is_never_pruned(tmp_path, unlearnable):
    # Trials 1 and 2 finish first, as they may when trials run in parallel.
    session = TuningSession(["xgboost"], UNSTOPPED, budget_minutes=1, directory=tmp_path)
    add_finished_trials(session.studies["xgboost"], "xgboost", step=25)
    outcome = run_one_trial("xgboost", unlearnable, tmp_path)

    defaults = optuna.load_study(study_name="xgboost", storage=journal(tmp_path)).trials[0]
    assert defaults.state == TrialState.COMPLETE
    classifier = build_model("xgboost", UNSTOPPED, TrainingContext(seed=0, threads=1))
    x_train, y_train, x_val, y_val = unlearnable.load(*TRAINING_ARRAYS)
    classifier.fit(x_train, y_train, x_val, y_val)
    accuracy = np.mean(classifier.predict_proba(x_val).argmax(axis=1) == y_val)
    assert defaults.value == outcome.validation_accuracy == pytest.approx(accuracy)
    assert max(defaults.intermediate_values) == UNSTOPPED.xgboost.n_estimators


def test_best_parameters_round_trip_through_a_profile_file(tmp_path, processed):
    session = TuningSession(["logistic_regression"], SMALL, 0.01, tmp_path / "study")
    tune_synchronously(session, processed)
    summaries = session.summaries()
    profile = tmp_path / "profiles" / "tuned.json"
    write_profile(profile, summaries)

    tuned = tuned_params(ModelParams(), summaries)
    assert summaries[0].best_params["C"] == tuned.logistic_regression.C
    config = PipelineConfig(profile_file=profile)
    assert config.params == tuned
    explicit = PipelineConfig(profile_file=profile, params={"logistic_regression": {"C": 3.0}})
    assert explicit.params.logistic_regression.C == 3.0
    assert list(profile.parent.iterdir()) == [profile]  # no staging file left behind


def test_unreadable_profile_file_is_named_in_the_error(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ValidationError, match=re.escape(f"profile file {missing}: cannot be read")):
        PipelineConfig(profile_file=missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"params": ')
    with pytest.raises(ValidationError, match=re.escape(f"profile file {broken}: not valid JSON")):
        PipelineConfig(profile_file=broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"params": {"svm_rbf": {"C": -1}}}')
    with pytest.raises(ValidationError, match=r"params\.svm_rbf\.C"):
        PipelineConfig(profile_file=wrong)


def test_a_trial_gives_back_the_memory_it_freed(tmp_path, processed, monkeypatch):
    """Trials fit one model after another in the run's process: what each frees goes back
    to the machine, as after training, instead of staying in malloc's arenas."""
    given_back = []
    monkeypatch.setattr(stages, "give_back_freed_memory", lambda: given_back.append("trial"))
    session = TuningSession(["logistic_regression"], SMALL, 1, tmp_path / "study")
    request = session.next_trial()
    outcome = stages.trial_task.fn(request, SMALL, processed, session.directory, 120, 0, 1)
    assert given_back == ["trial"]
    assert 0 <= outcome.validation_accuracy <= 1
    study = optuna.load_study(study_name="logistic_regression", storage=journal(tmp_path / "study"))
    assert study.trials[-1].user_attrs["train_images"] == 120


def run_requested(session: TuningSession, data: ProcessedDataset, request: TrialRequest):
    outcome = run_trial(
        request, SMALL, data, session.directory, 120, seed=0, threads=1,
        logger=optuna.logging.get_logger("test"),
    )  # fmt: skip
    session.record(request, outcome)
    return outcome


def test_a_rerun_resumes_the_search_a_cancel_cut_short(tmp_path, processed):
    """Two trials finished and a third left running, as a cancel leaves them: the rerun's
    session counts the two against the budget, not the third, runs no second defaults
    trial and proposes afresh; with the budget used, a rerun has nothing left to do."""
    model, directory = "logistic_regression", tmp_path / "study"
    first = TuningSession([model], SMALL, 1, directory)
    finished = [run_requested(first, processed, first.next_trial()) for _ in range(2)]
    first.studies[model].ask(model_spec(model).search_space)  # cut short by the cancel

    rerun = TuningSession([model], SMALL, 1, directory)
    assert rerun.resumed == {model: 2}
    assert rerun.spent[model] == pytest.approx(sum(outcome.seconds for outcome in finished))
    run_requested(rerun, processed, rerun.next_trial())
    trials = rerun.studies[model].get_trials(deepcopy=False)
    assert [trial.state for trial in trials] == [
        TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING, TrialState.COMPLETE
    ]  # fmt: skip
    assert trials[3].params != trials[1].params  # its sampler is not the second trial's
    (summary,) = rerun.summaries()
    assert summary.trials == 3
    assert summary.default_accuracy == trials[0].value
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    assert summary.seconds == pytest.approx(sum(t.user_attrs["seconds"] for t in complete))
    assert list(pd.read_csv(summary.trials_file).number) == [0, 1, 3]

    used = TuningSession([model], SMALL, summary.seconds / 60, directory)
    assert used.next_trial() is None
    assert used.summaries()[0].best_params == summary.best_params


def test_defaults_cut_short_are_run_again_on_a_rerun(tmp_path, processed):
    model, directory = "logistic_regression", tmp_path / "study"
    first = TuningSession([model], SMALL, 1, directory)
    first.studies[model].ask(model_spec(model).search_space)  # the defaults, cut short

    rerun = TuningSession([model], SMALL, 1, directory)
    assert rerun.resumed == {model: 0}
    outcome = run_requested(rerun, processed, rerun.next_trial())
    defaults = rerun.studies[model].get_trials(deepcopy=False)[-1]
    assert defaults.user_attrs["defaults"]
    assert defaults.params == {"C": SMALL.logistic_regression.C}
    assert rerun.summaries()[0].default_accuracy == outcome.validation_accuracy


def test_the_study_is_keyed_by_what_its_trials_depend_on_but_the_budget(processed, tmp_path):
    models = ["logistic_regression", "xgboost"]
    key = study_key(models, SMALL, 120, 0, processed)
    assert study_key(list(reversed(models)), SMALL, 120, 0, processed) == key
    moved = ProcessedDataset(tmp_path / "elsewhere", processed.arrays)
    assert study_key(models, SMALL, 120, 0, moved) == key  # the same arrays
    other_forest = with_overrides(SMALL, "random_forest", {"n_estimators": 5})
    assert study_key(models, other_forest, 120, 0, processed) == key  # not tuned here
    other_rate = with_overrides(SMALL, "xgboost", {"learning_rate": 0.05})
    other_labels = replace(processed.arrays["y_val"], sha256="0" * 64)
    other_data = ProcessedDataset(tmp_path, processed.arrays | {"y_val": other_labels})
    changed = [
        study_key(models, other_rate, 120, 0, processed),
        study_key(models, SMALL, 240, 0, processed),
        study_key(models, SMALL, 120, 1, processed),
        study_key(models, SMALL, 120, 0, other_data),
        study_key(["logistic_regression"], SMALL, 120, 0, processed),
    ]
    assert len({key, *changed}) == 6


def test_a_full_disk_under_the_journal_is_one_line_naming_it(tmp_path, monkeypatch):
    def full(self, logs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(JournalFileBackend, "append_logs", full)
    directory = tmp_path / "study"
    with pytest.raises(StorageError) as raised:
        TuningSession(["logistic_regression"], SMALL, 1, directory)
    assert str(raised.value) == f"{directory / JOURNAL_FILE}: no space left on device"
