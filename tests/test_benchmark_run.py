"""The Prefect-against-plain benchmark's bookkeeping: every task of the flow is timed in
one of its stages, and a stage of several calls counts them all."""

import time
from types import SimpleNamespace

import pandas as pd
import pytest
from prefect import Task

import tasks.budget.stages
import tasks.data.stages
import tasks.evaluation.stages
import tasks.history.stages
import tasks.training.stages
from benchmarks.run import STAGES, PlainStages, render, stage_of

FLOW_STAGE_MODULES = (
    tasks.data.stages,
    tasks.budget.stages,
    tasks.training.stages,
    tasks.evaluation.stages,
    tasks.history.stages,
)


def test_every_task_of_the_flow_and_its_runs_are_timed_in_one_stage():
    names = [
        value.name
        for module in FLOW_STAGE_MODULES
        for value in vars(module).values()
        if isinstance(value, Task)
    ]
    assert len(names) == 11
    assert {stage_of(name) for name in names} == set(STAGES)
    runs = {"measure-['cnn']": "train and evaluate", "train-cnn": "train and evaluate",
            "evaluate-xgboost": "train and evaluate", "tune-svm_rbf": "train and evaluate",
            "record-run": "report"}  # fmt: skip
    assert {run: stage_of(run) for run in runs} == runs


def test_a_task_no_stage_names_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'export-onnx' is in 0"):
        stage_of("export-onnx")


def wait(seconds: float) -> None:
    time.sleep(seconds)


def test_the_plain_side_adds_up_a_stage_s_calls():
    stages = PlainStages()
    for name in ("compare-with-previous-run", "compare-models", "record-run"):
        stages.call(SimpleNamespace(name=name, fn=wait), {"seconds": 0.05})
    assert set(stages.times) == {"report"}
    assert stages.times["report"] >= 0.15


def test_the_page_names_the_machine_the_code_and_the_lanes():
    stages = pd.DataFrame({"stage": ["report"], "prefect": [3.0], "plain": [2.0]})
    models = pd.DataFrame({"side": ["plain"], "model": ["cnn"], "test_accuracy": [0.95]})
    totals = {"prefect flow run": 110.0, "plain": 100.0, "prefect command": 120.0}
    page = render("full", "AMD EPYC (AVX2, 4 usable cores), code abc1234", 4, 3, stages,
                  models, {"plain": 0.5}, totals)  # fmt: skip
    assert "AMD EPYC (AVX2, 4 usable cores), code abc1234. Both sides" in page
    assert "from empty caches, 3 at a time in worker processes" in page
    assert "an overhead of +10.0%" in page
    assert "over 4 cores" in page
