"""The stage graph on an in-process runner: the wiring the flow and the benchmark share."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import types
from concurrent.futures.process import BrokenProcessPool

import pandas as pd
import pytest

import flows.parallel
from flows.graph import run_stages
from flows.parallel import WORKER_PROCESS_DIED, checked, submit, train_and_evaluate
from tasks.core.errors import ModelsFailedError
from tasks.evaluation.report.tables import console_table
from tasks.run.config import build_config
from tasks.training.stages import train_task
from tests.support.pools import FakePool


class InlineStages:
    """A sequential runner: the same stage functions, without Prefect."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("test-graph")
        self.called: list[str] = []
        self.inline_pool = FakePool()

    def call(self, stage, parameters):
        self.called.append(stage.name)
        return stage.fn(**parameters)

    @contextlib.contextmanager
    def pool(self, config):
        yield self.inline_pool


def test_a_misspelled_parameter_fails_before_anything_is_submitted():
    pool = FakePool()
    parameters = {"name": "x", "params": 0, "data": 0, "cache_dir": 0, "threads": 1}
    with pytest.raises(TypeError, match=r"^train-model: missing a required argument: 'seed'"):
        submit(pool, train_task, seeds=1, refresh=False, **parameters)
    assert pool.submitted == []
    unexpected = r"^train-model: got an unexpected keyword argument 'seeds'"
    with pytest.raises(TypeError, match=unexpected):
        checked(train_task, {"seed": 1, "seeds": 1, "refresh": False, **parameters})


def small_config(tmp_path, data_dir, models: list[str], **overrides):
    """The quick profile on 1,200 training images, in tmp_path."""
    return build_config(
        "quick",
        models=models,
        data={"dir": data_dir},
        cache_dir=tmp_path / "data",
        output_dir=tmp_path / "reports",
        train_subset_size=1200,
        validation_size=200,
        test_subset_size=300,
        **overrides,
    )


@pytest.mark.slow
def test_the_graph_runs_every_stage_in_order_on_a_plain_runner(tmp_path, real_data_dir):
    config = small_config(tmp_path, real_data_dir, ["random_forest", "logistic_regression"])
    runner = InlineStages()
    report_dir = run_stages(config, runner, "inline")

    assert report_dir == tmp_path / "reports" / "inline"
    assert runner.called == [
        "ingest-fashion-mnist", "validate-data", "preprocess", "soft-voting-ensemble",
        "compare-with-previous-run", "compare-models", "record-run",
    ]  # fmt: skip
    submitted = runner.inline_pool.submitted
    # The time budget's measurements first, in the pool the models train in.
    assert [name for name, _, _ in submitted] == (
        ["measure-costs"] + ["train-model"] * 2 + ["evaluate-model"] * 2
    )
    assert submitted[0][1]["names"] == config.models
    trainings = [s for s in submitted if s[0] == "train-model"]
    assert all(parameters["deadline"] > time.time() - 600 for _, parameters, _ in trainings)
    for _, parameters, wait_for in submitted[3:]:
        # Each evaluation waits for the training whose result it evaluates.
        (training,) = wait_for
        assert training.result() == parameters["trained"]
    # In the plan's order, longest first: as it placed them on the lanes.
    plan = json.loads((report_dir / "metrics.json").read_text())["plan"]
    assert [parameters["name"] for _, parameters, _ in trainings] == [
        model["model"] for model in plan["models"]
    ]
    assert sorted(model["model"] for model in plan["models"]) == sorted(config.models)
    estimates = [model["estimated_seconds"] for model in plan["models"]]
    assert estimates == sorted(estimates, reverse=True)
    board = pd.read_csv(report_dir / "leaderboard.csv")
    assert sorted(board.model) == ["ensemble", "logistic_regression", "random_forest"]
    assert (board.test_accuracy > 0.6).all()


def xgboost_refuses_to_fit(monkeypatch) -> None:
    """XGBoost raising its own error from inside its fit, as when it refuses a model."""
    import xgboost

    def fit(self, *args, **kwargs):
        raise xgboost.core.XGBoostError("injected: the booster could not be built")

    monkeypatch.setattr(xgboost.XGBClassifier, "fit", fit)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["measuring", "training", "tuning"])
def test_a_failing_model_is_named_and_the_others_are_trained_ranked_and_reported(
    tmp_path, real_data_dir, monkeypatch, stage
):
    xgboost_refuses_to_fit(monkeypatch)
    models = ["xgboost", "random_forest", "logistic_regression"]
    tune = {"enabled": stage == "tuning", "budget_minutes": 0.05, "train_subset_size": 600}
    # A time budget measures every model first: the first fit, and so the first failure.
    budget = 3 if stage == "measuring" else 0
    config = small_config(tmp_path, real_data_dir, models, tune=tune, time_budget_minutes=budget)
    with pytest.raises(ModelsFailedError) as raised:
        run_stages(config, InlineStages(), "inline")
    error = "XGBoostError: injected: the booster could not be built"
    assert str(raised.value) == (
        f"1 of 3 models failed: xgboost ({stage}: {error}); a rerun retrains only what failed"
    )
    report_dir = raised.value.report_dir
    assert report_dir == tmp_path / "reports" / "inline"
    board = pd.read_csv(report_dir / "leaderboard.csv")
    assert board.model.tolist()[-1] == "xgboost"
    assert sorted(board.model[:-1]) == ["ensemble", "logistic_regression", "random_forest"]
    assert board["rank"].tolist()[:-1] == [1, 2, 3]
    assert board.error.tolist()[-1] == f"failed in {stage}: {error}"
    assert board.test_accuracy[:-1].notna().all()
    assert board.test_accuracy.isna().tolist()[-1]
    assert console_table(report_dir).splitlines()[-1] == f"xgboost: failed in {stage}: {error}"
    assert f"- **xgboost** failed in {stage}: `{error}`" in (report_dir / "report.md").read_text()
    metrics = json.loads((report_dir / "metrics.json").read_text())
    (failure,) = metrics["failures"]
    assert (failure["model"], failure["stage"], failure["error"]) == ("xgboost", stage, error)
    members = metrics["models"]["ensemble"]["params"]["members"]
    assert sorted(members) == ["logistic_regression", "random_forest"]  # of those that succeeded
    assert sorted(p.name for p in (tmp_path / "data" / "models").iterdir() if any(p.iterdir())) == [
        "logistic_regression", "random_forest",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_measuring_task_lost_with_its_process_pool_fails_its_models_in_one_line(
    tmp_path, real_data_dir, monkeypatch
):
    """The task itself fails (its worker killed), not one of its models: before, the
    BrokenProcessPool left the flow with a traceback."""

    def killed_with_its_pool(**_):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(flows.parallel, "measure_task", killed_with_its_pool)
    models = ["random_forest", "logistic_regression"]
    config = small_config(tmp_path, real_data_dir, models, time_budget_minutes=3)
    with pytest.raises(ModelsFailedError) as raised:
        run_stages(config, InlineStages(), "inline")
    assert str(raised.value) == (
        f"all 2 models failed: random_forest (measuring: {WORKER_PROCESS_DIED}); "
        f"logistic_regression (measuring: {WORKER_PROCESS_DIED})"
    )


def test_a_trained_models_evaluation_goes_before_the_next_models_training(tmp_path, monkeypatch):
    """The plan counts a model's prediction on its lane right after its fit: queued behind
    the trainings still to come, the SVM's (18 s) ran after the deadline."""
    events = []

    def train(name, **_):
        events.append(f"train {name}")
        return types.SimpleNamespace(name=name)

    def evaluate(trained, **_):
        events.append(f"evaluate {trained.name}")
        return trained.name

    monkeypatch.setattr(flows.parallel, "train_task", train)
    monkeypatch.setattr(flows.parallel, "evaluate_task", evaluate)
    config = build_config("quick", cache_dir=tmp_path, parallel_models=1)
    models = ["xgboost", "svm_rbf", "random_forest"]
    results, failures = train_and_evaluate(
        FakePool(threads=1, lanes=1), config, None, None, models, logging.getLogger("test-graph")
    )
    assert failures == []
    assert results == models
    assert events == [f"{step} {model}" for model in models for step in ("train", "evaluate")]
