"""The time budget: what the user set stays, costs are measured for real, and a run
keeps, reports and reuses its plan."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tasks.budget.measure import measure_variants
from tasks.budget.planner import ModelPlan, Plan
from tasks.budget.plans import pinned_fields, planned_params
from tasks.core.contracts import ProcessedDataset
from tasks.core.storage import array_refs, save_arrays
from tasks.run.config import build_config
from tasks.training.models.base import TrainingContext
from tasks.training.models.cnn import SMALL_BLOCKS


def test_only_values_changed_from_the_profile_are_the_users(tmp_path):
    quick = build_config("quick")
    # The quick profile's own 2 epochs are a cap the plan may fill, not the user's.
    assert pinned_fields(quick, "cnn") == frozenset()
    profile = tmp_path / "mine.json"
    profile.write_text(json.dumps({"params": {"xgboost": {"n_estimators": 80}}}))
    mine = build_config("full", profile_file=profile, params={"cnn": {"epochs": 7}})
    assert pinned_fields(mine, "xgboost") == {"n_estimators"}
    assert pinned_fields(mine, "cnn") == {"epochs"}


def test_the_plan_sets_what_it_chose_and_leaves_the_rest():
    params = build_config("full").params
    plan = Plan(
        900, 30, 25, 760, 2,
        (ModelPlan("cnn", "small", {"conv_blocks": SMALL_BLOCKS, "epochs": 16}, 16, 740, 0),),
    )  # fmt: skip
    planned = planned_params(params, plan)
    assert planned.cnn.epochs == 16
    assert planned.cnn.conv_blocks == SMALL_BLOCKS
    assert planned.cnn.learning_rate == params.cnn.learning_rate
    assert planned.xgboost == params.xgboost


def test_costs_are_measured_by_fitting_and_scaled_to_the_data(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), 100))
    pixels = (rng.random((1000, 784)) + labels[:, None] / 10).astype(np.float32)
    arrays = {
        "x_train": pixels[:800], "y_train": labels[:800], "x_val": pixels[800:],
        "y_val": labels[800:], "y_test": labels[:300],
    }  # fmt: skip
    save_arrays(tmp_path, arrays)
    data = ProcessedDataset(tmp_path, array_refs(tmp_path, list(arrays)))
    config = build_config("quick", models=["xgboost", "logistic_regression"])
    pinned = {name: frozenset() for name in config.models}
    measured, failures = measure_variants(
        config.models, config.params, pinned, data, TrainingContext(seed=0, threads=1)
    )
    assert failures == []
    (xgboost,) = measured["xgboost"]
    assert xgboost.step_field == "n_estimators"
    assert (xgboost.min_steps, xgboost.max_steps) == (20, 30)
    assert 0 < xgboost.cost.per_step < 5
    (logistic,) = measured["logistic_regression"]
    assert logistic.step_field is None
    assert 0 < logistic.cost.fixed < 30


def pipeline(tmp_path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.full_pipeline", "--profile", "quick", *options],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_a_budget_below_the_cheapest_plan_is_one_line_before_training(tmp_path, real_data_dir):
    result = pipeline(tmp_path, "--models", "svm_rbf,logistic_regression", "--time-budget", "0.3")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: a time budget of 0.3 min cannot fit the cheapest useful plan")
    assert "logistic_regression alone needs about" in last
    assert not (tmp_path / "data" / "models").exists()
    assert not (tmp_path / "reports").exists()


@pytest.mark.slow
def test_a_run_reports_its_plan_and_a_rerun_reuses_it_and_its_models(tmp_path, real_data_dir):
    models = "cnn,xgboost,logistic_regression"
    first = pipeline(tmp_path, "--models", models, "--time-budget", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = json.loads((tmp_path / "reports" / "latest" / "metrics.json").read_text())
    plan = metrics["plan"]
    assert plan["budget_seconds"] == 240
    planned = {model["model"]: model for model in plan["models"]}
    assert planned["cnn"]["lane"] == 0
    assert planned["cnn"]["params"]["conv_blocks"] == [list(block) for block in SMALL_BLOCKS]
    assert planned["cnn"]["steps"] == 2  # the quick profile's cap
    # The CNN was timed on its lane's core and on both, for after the others are done.
    assert re.search(r"measured cnn \(small .*, [0-9.]+ s with every core", first.stderr)
    assert planned["cnn"]["alone_after"] == pytest.approx(
        sum(m["estimated_seconds"] for m in plan["models"] if m["lane"] == 1)
    )
    assert planned["cnn"]["speedup_alone"] > 0
    report = (tmp_path / "reports" / "latest" / "report.md").read_text()
    assert "## Time budget" in report
    assert "| cnn | small network (16),(32,32),(64) | 2 | 2 |" in report

    second = pipeline(tmp_path, "--models", models, "--time-budget", "4")
    assert second.returncode == 0
    assert "reused plan" in second.stderr
    assert "built cnn" not in second.stderr
    assert "reused cnn" in second.stderr
