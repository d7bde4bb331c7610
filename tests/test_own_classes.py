"""Data with its own classes, not Fashion-MNIST's ten: every model, the evaluation, the
report and prediction use the data's number of classes and their names."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from flows.predict import main
from tasks.budget.measure import measure_variants
from tasks.evaluation.ensemble import build_ensemble
from tasks.evaluation.evaluate import evaluate_model, plot_confusion_matrix
from tasks.evaluation.report.artifacts import summary_markdown
from tasks.evaluation.report.figures import plot_confusion_grid
from tasks.evaluation.report.writer import write_report
from tasks.run.config import MODEL_NAMES, ModelParams
from tasks.training.models.base import ProbeData, TrainingContext
from tasks.training.models.measuring import sample
from tasks.training.models.registry import build_model, load_model
from tasks.training.train import train_model
from tasks.training.tune import TuningSession, run_trial
from tests.support.data import THREE_CLASSES

DATASET = "your data: image-folder at /data/shoes (3 classes)"
# Every model small: one epoch of a one-block CNN, ten trees, ten boosting rounds.
FAST = ModelParams.model_validate(
    {
        "random_forest": {"n_estimators": 10},
        "xgboost": {"n_estimators": 10, "early_stopping_rounds": 3},
        "cnn": {"epochs": 1, "conv_blocks": [[8]], "dense_units": 16, "batch_size": 32,
                "shift_pixels": 0},
    }
)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, three_classes):
    """Every model and their ensemble trained on the three classes, and the run's report."""
    root = tmp_path_factory.mktemp("three-classes")
    context = TrainingContext(seed=0, threads=1)  # Fashion-MNIST's ten: the data decides
    trained = [train_model(name, FAST, three_classes, root, context) for name in MODEL_NAMES]
    evaluations = [evaluate_model(t, three_classes, root, threads=1) for t in trained]
    ensemble = build_ensemble(evaluations, three_classes, root, size=2)
    facts = {"validation": {"dataset": DATASET}}
    report = write_report(
        [*evaluations, ensemble], three_classes, root / "reports" / "run-3", facts, seed=0
    )
    return [*evaluations, ensemble], report


def test_every_model_gives_one_probability_per_class(run, three_classes):
    evaluations, _ = run
    x_test, y_test = three_classes.load("x_test", "y_test")
    for evaluation in evaluations:
        probabilities = evaluation.test_probabilities.load()
        assert probabilities.shape == (len(y_test), 3), evaluation.name
        assert np.asarray(evaluation.confusion).shape == (3, 3)
        assert len(evaluation.f1) == len(evaluation.support) == 3
        assert sum(evaluation.support) == len(y_test)
    by_name = {e.name: e for e in evaluations}
    for name in ("logistic_regression", "svm_rbf", "xgboost"):
        assert by_name[name].test_accuracy >= 0.9, f"{name} did not learn the three classes"
    cnn = load_model(by_name["cnn"].model_dir, threads=1)
    assert cnn.model.output_shape == (None, 3)
    assert cnn.predict_proba(x_test[:5]).shape == (5, 3)


def test_confusion_figures_name_the_classes(run):
    evaluations, _ = run
    confusion = evaluations[0].confusion
    figure = plot_confusion_matrix(confusion, THREE_CLASSES, "logistic_regression")
    (axes, _colorbar) = figure.axes
    assert [t.get_text() for t in axes.get_xticklabels()] == list(THREE_CLASSES)
    assert [t.get_text() for t in axes.get_yticklabels()] == list(THREE_CLASSES)
    assert len(axes.texts) == 9  # each cell's count
    grid = plot_confusion_grid({e.name: e.confusion for e in evaluations}, THREE_CLASSES)
    for panel in grid.axes[: len(evaluations)]:
        assert [t.get_text() for t in panel.get_yticklabels()] == list(THREE_CLASSES)


def test_the_report_uses_the_datas_name_and_classes(run):
    evaluations, report = run
    directory = report.directory
    markdown = (directory / "report.md").read_text()
    data_line = f"**Data:** {DATASET}. Classes: sandal, sneaker, boot."
    assert markdown.split("\n\n")[:2] == ["# Model comparison — run `run-3`", data_line]
    assert "| boot | " in markdown  # the per-class tables
    assert "Ankle boot" not in markdown
    assert "Since the champion run" not in markdown  # a first run
    assert "sandal, sneaker, boot" in (directory / "report.html").read_text()
    assert data_line in summary_markdown(report.findings, directory)

    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["class_names"] == list(THREE_CLASSES)
    assert metrics["validation"]["dataset"] == DATASET
    assert metrics["since_previous_run"] is None
    for name, model in metrics["models"].items():
        assert list(model["per_class"]) == list(THREE_CLASSES), name
        assert np.asarray(model["confusion_matrix"]).shape == (3, 3)
    assert set(report.findings.confused_pairs.class_a) <= set(THREE_CLASSES)
    card = (directory / "model_card.md").read_text()
    assert "Its 3 classes: sandal, sneaker, boot." in card
    assert len(evaluations) == len(report.findings.leaderboard)


def test_prediction_names_the_runs_classes(run, three_classes, tmp_path, capsys):
    evaluations, report = run
    np.save(tmp_path / "x.npy", three_classes.load("x_test")[0][:12])  # features in [0, 1]
    output = tmp_path / "p.csv"
    argv = [str(tmp_path / "x.npy"), "--run", str(report.directory), "--output", str(output)]
    assert main([*argv, "--top-k", "3", "--model", "cnn"]) == 0
    printed = capsys.readouterr().out
    rows = pd.read_csv(output)
    cnn = next(e for e in evaluations if e.name == "cnn")
    np.testing.assert_array_equal(rows.predicted_label, cnn.test_predictions.load()[:12])
    assert set(rows.predicted_class) <= set(THREE_CLASSES)
    assert set(rows.top3_class) <= set(THREE_CLASSES)
    assert [THREE_CLASSES[label] for label in rows.predicted_label] == rows.predicted_class.tolist()
    provenance = json.loads((tmp_path / "p.provenance.json").read_text())
    assert list(provenance["per_class"]) == list(THREE_CLASSES)
    assert all(f"  {name:<12}" in printed for name in THREE_CLASSES)

    assert main([*argv, "--top-k", "4"]) == 1
    assert capsys.readouterr().err == (
        "error: top-k 4 is out of range: run run-3 has 3 classes; expected 1 to 3\n"
    )


@pytest.mark.parametrize("name", ["logistic_regression", "svm_rbf", "xgboost"])
def test_two_classes_give_two_probability_columns(name, own_classes, tmp_path):
    data = own_classes(("cat", "dog"), train_per_class=100, test_per_class=10)
    trained = train_model(name, FAST, data, tmp_path, TrainingContext(seed=0, threads=1))
    evaluation = evaluate_model(trained, data, tmp_path, threads=1)
    assert evaluation.test_probabilities.load().shape == (20, 2)
    assert evaluation.test_accuracy >= 0.9


@pytest.mark.parametrize("name", ["logistic_regression", "xgboost"])
def test_a_class_missing_from_the_training_images_is_refused(name, three_classes):
    x_train, y_train, x_val, y_val = three_classes.load("x_train", "y_train", "x_val", "y_val")
    kept = y_train != 2  # the last class: the one the libraries would silently drop
    classifier = build_model(name, FAST, TrainingContext(seed=0, threads=1, classes=3))
    with pytest.raises(ValueError, match=r"the training labels lack class\(es\) \[2\] of the 3"):
        classifier.fit(x_train[kept], y_train[kept], x_val, y_val)


def test_a_measuring_sample_holds_every_class():
    labels = np.array([0, 0, 0, 0, 1, 2, 1, 0], dtype=np.uint8)
    features = np.arange(len(labels), dtype=np.float32)[:, None]
    probe = ProbeData(features, labels, features, labels, scored_images=1)
    small = sample(probe, 3)
    assert small.y_train.tolist() == [0, 0, 0, 1, 2]
    assert small.x_train[:, 0].tolist() == [0, 1, 2, 4, 5]
    assert sample(probe, 6).y_train.tolist() == [0, 0, 0, 0, 1, 2]  # every class already


def test_twelve_classes_make_twelve_of_everything(own_classes, tmp_path):
    names = tuple(f"kind {k}" for k in range(12))
    data = own_classes(names, train_per_class=20, test_per_class=5)
    context = TrainingContext(seed=0, threads=1)
    models = ("logistic_regression", "random_forest")
    trained = [train_model(name, FAST, data, tmp_path, context) for name in models]
    evaluations = [evaluate_model(t, data, tmp_path, threads=1) for t in trained]
    report = write_report(evaluations, data, tmp_path / "reports" / "run-12", {}, seed=0)

    findings = report.findings
    assert findings.class_names == names
    assert findings.f1.shape == (2, 12)
    assert sorted(findings.difficulty.index) == sorted(names)
    metrics = json.loads((report.directory / "metrics.json").read_text())
    assert metrics["class_names"] == list(names)
    for model in metrics["models"].values():
        assert list(model["per_class"]) == list(names)
        assert np.asarray(model["confusion_matrix"]).shape == (12, 12)
    markdown = (report.directory / "report.md").read_text()
    assert "Classes: kind 0, kind 1," in markdown
    for heading in ("## Hardest classes", "## Per-class F1"):
        section = markdown.split(heading)[1].split("\n## ")[0]
        assert sum(line.startswith("| kind ") for line in section.splitlines()) == 12, heading
    figure = plot_confusion_matrix(evaluations[0].confusion, names, "logistic_regression")
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == list(names)
    assert len(figure.axes[0].texts) == 144


def test_a_hundred_classes_stay_legible():
    names = [f"class {k}" for k in range(100)]
    rng = np.random.default_rng(0)
    confusion = (rng.integers(0, 3, (100, 100)) + 40 * np.eye(100, dtype=int)).tolist()
    figure = plot_confusion_matrix(confusion, names, "a model")
    axes = figure.axes[0]
    labels = axes.get_xticklabels()
    assert [t.get_text() for t in labels] == names
    assert len(axes.texts) == 0  # no count in cells this small
    assert 3 <= labels[0].get_fontsize() < 10
    ten = plot_confusion_matrix(np.eye(10, dtype=int).tolist(), names[:10], "a model")
    assert figure.get_size_inches()[0] > ten.get_size_inches()[0]
    grid = plot_confusion_grid({"a": confusion, "b": confusion}, names)
    assert all(len(panel.texts) == 0 for panel in grid.axes[:2])
    assert [t.get_text() for t in grid.axes[0].get_yticklabels()] == names


def test_tuning_and_measuring_fit_the_datas_classes(three_classes, tmp_path, caplog):
    models = ["logistic_regression", "xgboost"]
    session = TuningSession(models, FAST, budget_minutes=1, directory=tmp_path / "study")
    for _ in models:  # the defaults' trial of each, on a subset of one image per class
        request = session.next_trial()
        outcome = run_trial(
            request, FAST, three_classes, session.directory, 3, seed=0, threads=1,
            logger=logging.getLogger("test"),
        )  # fmt: skip
        assert outcome.validation_accuracy is not None, request.model
    assert {summary.train_images for summary in session.summaries()} == {3}

    pinned = dict.fromkeys(models, frozenset())
    context = TrainingContext(seed=0, threads=1)  # Fashion-MNIST's ten: the data decides
    measured, failures = measure_variants(models, FAST, pinned, three_classes, context)
    assert failures == []
    assert all(variant.cost.seconds(10) > 0 for name in models for variant in measured[name])
