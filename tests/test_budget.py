"""The time budget: what the user set stays, costs are measured for real, and a run
keeps, reports and reuses its plan."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from benchmarks.xgboost_rounds import WITHIN_POINTS, rounds_within
from tasks.budget.measure import measure_variants
from tasks.budget.plan_types import ModelPlan, Plan
from tasks.budget.plans import pinned_fields, planned_params, training_limits
from tasks.core.contracts import Cost, ProcessedDataset
from tasks.core.storage import array_refs, save_arrays
from tasks.run.config import build_config
from tasks.training.cores import CoreHandover
from tasks.training.models import measuring, svm
from tasks.training.models.base import ProbeData, TrainingContext
from tasks.training.models.cnn import MIDDLE_BLOCKS, SMALL_BLOCKS, CNNParams, cnn_variants
from tasks.training.models.registry import model_spec
from tasks.training.models.sklearn_models import LogisticRegressionParams
from tasks.training.models.svm import SVMParams
from tasks.training.models.xgboost_model import ROUNDS_NEEDED, XGBoostParams, xgboost_variants
from tests.support.servers import REPO, LocalPrefect


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


def test_training_takes_the_deadline_and_the_handover_bound_to_the_cores(tmp_path):
    handover = CoreHandover(after=300, speedup=2.0)
    plan = Plan(
        900, 30, 25, 760, 2,
        (ModelPlan("cnn", "small", {"epochs": 16}, 16, 740, 0, (), 18, handover, 14.0),
         ModelPlan("xgboost", "hist", {"n_estimators": 140}, 140, 400, 1, (), 500),
         ModelPlan("svm_rbf", "64 components", {}, None, 290, 1)),
    )  # fmt: skip
    share = CoreHandover(lane_cores=(0,), all_cores=(0, 1), directory=tmp_path)
    limits = training_limits(plan, started_at=1000, share=share)
    bound = limits["cnn"].pop("handover")
    assert limits == {
        # The CNN's last epoch leaves 14 s for its predictions; XGBoost the SVM's 290 s.
        "cnn": {"deadline": 1000 + 900 - 25 - 14, "most_steps": 18},
        "xgboost": {"deadline": 1000 + 900 - 25 - 290, "most_steps": 500},
        "svm_rbf": {"deadline": 1000 + 900 - 25, "most_steps": None},
    }
    assert bound.expected_at == 1000 + 30 + 300  # planned 30 s in, the others done 300 s on
    assert (bound.speedup, bound.lane_cores, bound.all_cores) == (2.0, (0,), (0, 1))
    assert not bound.released
    share.release()
    assert bound.released  # the same word, in the same directory
    assert training_limits(plan, 1000)["cnn"]["handover"].bound is False  # no cores here


def tiny_split(directory) -> ProcessedDataset:
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), 100))
    pixels = (rng.random((1000, 784)) + labels[:, None] / 10).astype(np.float32)
    arrays = {
        "x_train": pixels[:800], "y_train": labels[:800], "x_val": pixels[800:],
        "y_val": labels[800:], "y_selection": labels[:100], "y_test": labels[:300],
    }  # fmt: skip
    save_arrays(directory, arrays)
    return ProcessedDataset(directory, array_refs(directory, list(arrays)))


def test_costs_are_measured_by_fitting_and_scaled_to_the_data(tmp_path):
    data = tiny_split(tmp_path)
    config = build_config("quick", models=["xgboost", "logistic_regression"])
    pinned = {name: frozenset() for name in config.models}
    measured, failures = measure_variants(
        config.models, config.params, pinned, data, TrainingContext(seed=0, threads=1)
    )
    assert failures == []
    (xgboost,) = measured["xgboost"]
    assert xgboost.step_field == "n_estimators"
    assert (xgboost.min_steps, xgboost.max_steps) == (20, 30)
    assert xgboost.cost.per_step > 0
    assert xgboost.cost.seconds(30) == pytest.approx(
        xgboost.cost.fixed + 30 * xgboost.cost.per_step
    )
    (logistic,) = measured["logistic_regression"]
    assert logistic.step_field is None
    assert logistic.cost.fixed > 0
    assert logistic.cost.per_step == 0


@pytest.mark.parametrize(
    ("profile", "epochs", "most"),
    [("full", None, {"wide": 60, "middle": 30, "small": 30}), ("quick", None, {"small": 2}),
     ("full", 12, {"wide": 12, "small": 12})],  # 12 < the middle one's fewest, 15
)  # fmt: skip
def test_under_a_budget_the_network_may_train_past_its_default_epochs_but_never_a_chosen_number(
    tmp_path, monkeypatch, profile, epochs, most
):
    """The defaults' epochs are no cap: each network may get the epochs it was measured
    to gain from. The quick profile's and the user's epochs stay the most."""
    monkeypatch.setattr("tasks.budget.measure.measure_cost", lambda *args: Cost(5.0, 1.0))
    params = {"cnn": {"epochs": epochs}} if epochs else {}
    config = build_config(profile, models=["cnn"], params=params)
    pinned = {"cnn": pinned_fields(config, "cnn")}
    measured, failures = measure_variants(
        ["cnn"], config.params, pinned, tiny_split(tmp_path), TrainingContext(0, 1)
    )
    assert failures == []
    found = {variant.label.split()[0]: variant.max_steps for variant in measured["cnn"]}
    assert found == most


def test_the_middle_and_small_networks_train_without_dropout_unless_dropout_was_set():
    def planned(pinned=frozenset(), **params) -> list[dict]:
        return [v.params for v in cnn_variants(CNNParams(**params), frozenset(pinned))]

    warmed = {"learning_rate": 4e-3, "warmup_epochs": 1}
    assert planned() == [
        warmed,
        {"conv_blocks": MIDDLE_BLOCKS, "dropout": 0.0},
        {"conv_blocks": SMALL_BLOCKS, "dropout": 0.0},
    ]
    assert planned({"dropout"}, dropout=0.3) == [
        warmed,
        {"conv_blocks": MIDDLE_BLOCKS},
        {"conv_blocks": SMALL_BLOCKS},
    ]


@pytest.mark.parametrize(
    ("pinned", "planned"),
    [
        ({}, {"learning_rate": 4e-3, "warmup_epochs": 1}),
        ({"learning_rate": 1e-3}, {}),
        ({"warmup_epochs": 0}, {}),
    ],
)
def test_the_wide_network_warms_up_to_twice_the_rate_unless_the_rate_or_warm_up_was_set(
    pinned, planned
):
    (wide, *_) = cnn_variants(CNNParams(**pinned), frozenset(pinned))
    assert wide.params == planned


def test_boosting_is_planned_for_the_rounds_that_get_near_its_best_not_all_it_may_take():
    def planned(**params) -> int:
        (variant,) = xgboost_variants(XGBoostParams(**params), frozenset())
        return variant.most_steps

    assert planned() == ROUNDS_NEEDED == 140  # within half a point of its best at rate 0.2
    assert planned(learning_rate=0.1) == 280  # half the rate, twice the rounds
    assert planned(learning_rate=0.05) == 500  # never past the rounds configured


def test_the_svm_falls_back_to_fewer_components_only_where_they_are_fewer_and_not_set():
    def planned(pinned=frozenset(), **params) -> list[tuple[str, dict]]:
        return [(v.label, v.params) for v in svm.svm_variants(SVMParams(**params), pinned)]

    assert planned() == [
        ("HOG and pixels, 192 components", {}),
        ("HOG and pixels, 128 components", {"pca_components": 128}),
        ("HOG and pixels, 64 components", {"pca_components": 64}),
    ]
    assert planned(pca_components=100, hog=False) == [
        ("pixels, 100 components", {}),
        ("pixels, 64 components", {"pca_components": 64}),
    ]
    assert planned(frozenset({"pca_components"})) == [("HOG and pixels, 192 components", {})]
    assert planned(pca_components=None) == [("HOG and pixels, all components", {})]


def test_the_rounds_planned_are_the_first_within_half_a_point_of_the_best_validation():
    table = pd.DataFrame({
        "rounds": [10, 20, 30, 40],
        "validation_accuracy": [0.880, 0.9105, 0.905, 0.9150],
    })  # fmt: skip
    assert rounds_within(table, 0.5) == 20  # 0.9105 >= 0.915 - 0.005; 30 dips, 20 is first
    assert rounds_within(table, 0.1) == 40
    published = pd.read_csv(REPO / "docs" / "benchmark" / "xgboost_rounds.csv")
    assert rounds_within(published, WITHIN_POINTS) == ROUNDS_NEEDED


def _probe() -> ProbeData:
    """800 training images of ten classes, 200 of them held out, 300 more to score."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), 80))
    pixels = (rng.random((800, 784)) + labels[:, None] / 10).astype(np.float32)
    return ProbeData(pixels, labels, pixels[:200], labels[:200], scored_images=300)


def test_a_one_go_fit_is_timed_on_a_sample_and_scaled_by_its_growth(monkeypatch):
    probe = _probe()
    monkeypatch.setattr(measuring, "PROBE_IMAGES", 400)
    ticks = iter([0.0, 2.0, 10.0, 10.5])  # a 2 s fit on 400 images, 0.5 s to predict 200
    cost = measuring.measure_one_fit(
        model_spec("logistic_regression").build,
        LogisticRegressionParams(),
        probe,
        TrainingContext(seed=0, threads=1),
        fit_growth=1.5,
        predict_growth=1.0,
        clock=lambda: next(ticks),
    )
    # 800 images are twice the sample: the fit 2 s x 2^1.5, the 500 predictions 0.5 s /
    # 200 images x 500 x 2^1.
    assert cost.fixed == pytest.approx(2 * 2**1.5 + 0.5 / 200 * 500 * 2)
    assert cost.per_step == 0


def test_the_svm_s_features_grow_linearly_and_libsvm_as_its_growth(monkeypatch):
    probe = _probe()
    monkeypatch.setattr(measuring, "PROBE_IMAGES", 400)
    monkeypatch.setattr(svm, "PCA_FIT_IMAGES", 600)
    # The projection fitted in 1 s and 400 images projected in 0.4 s; then libsvm's fit
    # on them in 2 s and its prediction of 200 images in 0.5 s.
    ticks = iter([0.0, 1.0, 1.4, 10.0, 12.0, 20.0, 20.5])
    cost = svm.measure_svm(
        SVMParams(pca_components=16), probe, TrainingContext(seed=0, threads=1),
        clock=lambda: next(ticks),
    )  # fmt: skip
    libsvm = 2 * 2**1.5 + 0.5 / 200 * 500 * 2  # 800 images are twice the sample
    projection_fit = 1.0 * 600 / 400  # fitted on 600 of the 800 images
    features = 0.4 / 400 * (800 + 2 * 200 + 300)
    assert cost.fixed == pytest.approx(libsvm + projection_fit + features)
    assert next(ticks, None) is None


def pipeline(tmp_path, server: LocalPrefect, *options: str) -> subprocess.CompletedProcess:
    """The command line's quick profile, on the tests' Prefect server rather than a
    temporary one of its own."""
    return subprocess.run(
        [sys.executable, "-m", "flows.full_pipeline", "--profile", "quick", *options],
        cwd=tmp_path, env=server.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_the_commands_budget_counts_from_its_process_start_its_imports_included():
    """As a clock around the command does: the interpreter's start and the imports (seconds
    on a slow CPU) are part of the minutes the user gave."""
    code = (
        "import time; time.sleep(2); "
        "from flows.full_pipeline import command_started_at; "
        "print(time.time() - command_started_at())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout) >= 2


def test_main_as_the_command_starts_its_budget_at_the_process_start_and_from_python_at_the_call(
    monkeypatch,
):
    from flows import full_pipeline

    starts = []
    monkeypatch.setattr(
        full_pipeline, "_run", lambda args, started_at: starts.append(started_at) or 0
    )
    monkeypatch.setattr(sys, "argv", ["fashion-mnist-pipeline", "--models", "logistic_regression"])
    process_start = full_pipeline.command_started_at()
    called = time.time()
    assert full_pipeline.main() == 0  # as the command: its argv from sys.argv
    assert full_pipeline.main(["--models", "logistic_regression"]) == 0
    assert starts[0] == process_start < called  # this test process began before the call
    assert starts[1] >= called


@pytest.mark.slow
def test_a_budget_below_the_cheapest_plan_is_one_line_before_training(
    tmp_path, real_data_dir, prefect_server
):
    result = pipeline(
        tmp_path, prefect_server, "--models", "svm_rbf,logistic_regression", "--time-budget", "0.3"
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: a time budget of 0.3 min cannot fit the cheapest useful plan")
    assert "logistic_regression alone needs about" in last
    assert not (tmp_path / "data" / "models").exists()
    assert not (tmp_path / "reports").exists()


@pytest.mark.slow
def test_a_run_reports_its_plan_and_a_rerun_reuses_it_and_its_models(
    tmp_path, real_data_dir, prefect_server
):
    models = "cnn,xgboost,logistic_regression"
    first = pipeline(tmp_path, prefect_server, "--models", models, "--time-budget", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = json.loads((tmp_path / "reports" / "latest" / "metrics.json").read_text())
    plan = metrics["plan"]
    assert plan["budget_seconds"] == 240
    planned = {model["model"]: model for model in plan["models"]}
    assert planned["cnn"]["lane"] == 0
    assert planned["cnn"]["params"]["conv_blocks"] == [list(block) for block in SMALL_BLOCKS]
    assert planned["cnn"]["params"]["dropout"] == 0.0
    assert planned["cnn"]["steps"] == 2  # the quick profile's cap
    # The CNN was timed on its lane's core and on both, for after the others are done.
    assert re.search(r"measured cnn \(small .*, [0-9.]+ s with every core", first.stderr)
    assert planned["cnn"]["handover"]["after"] == pytest.approx(
        sum(m["estimated_seconds"] for m in plan["models"] if m["lane"] == 1)
    )
    assert planned["cnn"]["handover"]["speedup"] > 0
    report = (tmp_path / "reports" / "latest" / "report.md").read_text()
    assert "## Time budget" in report
    assert "| cnn | small network (16),(32,32),(64) | 2 | 2 |" in report

    second = pipeline(tmp_path, prefect_server, "--models", models, "--time-budget", "4")
    assert second.returncode == 0
    assert "reused plan" in second.stderr
    assert "built cnn" not in second.stderr
    assert "reused cnn" in second.stderr
