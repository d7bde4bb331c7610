"""A model is one module and one line: a throwaway model, registered for a test, runs
through measuring, planning, training, evaluation, the ensemble and the report without
any other file naming it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import ClassVar, Literal

import joblib
import numpy as np
import pytest
from sklearn.dummy import DummyClassifier

from tasks.budget.measure import measure_variants
from tasks.budget.plans import describe_plan, make_plan, planned_params
from tasks.evaluation.ensemble import build_ensemble
from tasks.evaluation.evaluate import evaluate_model
from tasks.evaluation.report.writer import write_report
from tasks.run.config import PipelineConfig
from tasks.training.models.base import Budgeting, HyperParameters, ModelSpec, TrainingContext
from tasks.training.models.registry import (
    SPECS,
    drop_order,
    load_model,
    model_packages,
    model_spec,
    own_lane_model,
    registered,
)
from tasks.training.train import train_model


class DummyParams(HyperParameters):
    strategy: Literal["prior", "most_frequent"] = "prior"


class DummyAdapter:
    """scikit-learn's `DummyClassifier` behind the pipeline's classifier interface."""

    model_file: ClassVar[str] = "dummy.joblib"

    def __init__(self, model: DummyClassifier) -> None:
        self.model = model

    def fit(self, x_train, y_train, x_val, y_val) -> None:
        self.model.fit(x_train.reshape(len(x_train), -1), y_train)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(x.reshape(len(x), -1))

    def save(self, directory: Path) -> None:
        joblib.dump(self.model, directory / self.model_file)

    @classmethod
    def load(cls, directory: Path, threads: int) -> DummyAdapter:
        return cls(joblib.load(directory / cls.model_file))


def build_dummy(p: DummyParams, context: TrainingContext) -> DummyAdapter:
    return DummyAdapter(DummyClassifier(strategy=p.strategy))


DUMMY = ModelSpec(
    name="dummy", params=DummyParams, build=build_dummy, adapter=DummyAdapter,
    search_space={}, budgeting=Budgeting(fit_growth=1.0), packages=("joblib",),
)  # fmt: skip
PARTNER = "logistic_regression"  # a registered model to train beside it


def test_registry_facts_come_from_the_specs():
    """Today's plans: the forest left out first, the CNN last and on its own lane."""
    assert drop_order() == ("random_forest", "xgboost", "logistic_regression", "svm_rbf", "cnn")
    assert own_lane_model() == "cnn"
    assert model_spec("xgboost").step_name == "boosting rounds"
    assert model_packages() == ("scikit-learn", "xgboost", "tensorflow", "keras")


def test_registered_adds_a_model_for_the_block_only():
    with registered(DUMMY) as params:
        assert model_spec("dummy") is DUMMY
        assert drop_order()[0] == "dummy"  # no keep priority: left out first
        assert "joblib" in model_packages()
        assert type(params().dummy) is DummyParams
        assert set(params.model_fields) == {spec.name for spec in (*SPECS, DUMMY)}
    with pytest.raises(ValueError, match=r"unknown model 'dummy'; valid models: "):
        model_spec("dummy")
    assert "dummy" not in drop_order()


def test_registered_refuses_a_taken_name():
    with (
        pytest.raises(ValueError, match=r"^models already registered: cnn$"),
        registered(model_spec("cnn")),
    ):
        pass


def test_one_lane_of_its_own_at_most():
    lonely = ModelSpec(**{**vars(DUMMY), "own_lane": True})
    with (
        registered(lonely),
        pytest.raises(
            ValueError, match=r"^models cnn, dummy each ask for a lane of their own; one may$"
        ),
    ):
        own_lane_model()


def test_a_throwaway_model_runs_through_every_stage(processed, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    context = TrainingContext(seed=0, threads=1, logger=logging.getLogger("test"))
    names = ["dummy", PARTNER]
    with registered(DUMMY) as Params:
        params = Params()
        pinned = dict.fromkeys(names, frozenset())
        measured, failures = measure_variants(names, params, pinned, processed, context)
        assert failures == []
        (variant,) = measured["dummy"]
        assert variant.label == "as configured"
        assert variant.cost.fixed > 0

        plan = make_plan(PipelineConfig(time_budget_minutes=10), measured, 5, lanes=2)
        assert {model.model for model in plan.models} == set(names)
        assert not plan.dropped
        lines = describe_plan(plan)
        assert any(line.startswith("plan: dummy: as configured, about") for line in lines)
        params = planned_params(params, plan)

        trained = [train_model(name, params, processed, tmp_path, context) for name in names]
        assert (trained[0].directory / DummyAdapter.model_file).is_file()
        assert isinstance(load_model(trained[0].directory, threads=1), DummyAdapter)
        evaluations = [evaluate_model(t, processed, tmp_path, threads=1) for t in trained]
        ensemble = build_ensemble(evaluations, processed, tmp_path, size=2)
        report = write_report(
            [*evaluations, ensemble], processed, tmp_path / "reports" / "run-1",
            {"plan": plan.as_dict()}, seed=0,
        )  # fmt: skip

    dummy = evaluations[0]
    assert dummy.name == "dummy"
    # The prior: one class for every image, so as accurate as that class is frequent.
    y_train, y_test = processed.load("y_train", "y_test")
    assert dummy.test_accuracy == pytest.approx(np.mean(y_test == np.bincount(y_train).argmax()))
    assert 0 <= ensemble.test_accuracy <= 1
    metrics = json.loads((report.directory / "metrics.json").read_text())
    assert set(metrics["models"]) == {"dummy", PARTNER, "ensemble"}
    assert metrics["models"]["dummy"]["params"] == {"strategy": "prior"}
    assert "joblib" in metrics["packages"]
    markdown = (report.directory / "report.md").read_text()
    assert "| dummy |" in markdown
    assert (report.directory / "confusion_matrix_dummy.png").stat().st_size > 0
    assert "measured dummy (as configured)" in caplog.text
