"""What all the report's views share: the interval level, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.report import analysis, write_report
from tasks.report.artifacts import summary_markdown
from tasks.report.figures import plot_pareto
from tasks.significance import bootstrap_accuracy_intervals
from tests.test_report import Y_TEST, sample_evaluations, sample_split

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("level", "shown", "absent"), [(0.95, "95%", "90%"), (0.9, "90%", "95%")])
def test_interval_level_comes_from_the_configured_confidence(
    tmp_path, monkeypatch, level, shown, absent
):
    monkeypatch.setattr(analysis, "CONFIDENCE", level)
    evaluations = sample_evaluations(tmp_path)
    report = write_report(
        evaluations=evaluations,
        data=sample_split(tmp_path),
        report_dir=tmp_path / "reports" / "run-1",
        context={},
        seed=0,
    )
    findings = report.findings
    correct = {e.name: e.test_predictions.load() == Y_TEST for e in evaluations}
    intervals = bootstrap_accuracy_intervals(correct, seed=0, confidence=level)
    board = findings.leaderboard.set_index("model")
    assert board.loc["mixed", "accuracy_low"] == intervals.loc["mixed", "accuracy_low"]

    markdown = (report.directory / "report.md").read_text()
    for phrase in (
        f"The {shown} confidence intervals come from",
        f"| test_accuracy | {shown} CI |",
        f"test accuracy 1.0000 ({shown} CI [1.0000, 1.0000]",
        f"Bars are the {shown} confidence intervals.",
    ):
        assert phrase in markdown
    page = (report.directory / "report.html").read_text()
    summary = summary_markdown(findings, report.directory)
    for text in (markdown, page, summary):
        assert f"{shown} CI" in text
        assert absent not in text
    metrics = json.loads((report.directory / "metrics.json").read_text())
    assert metrics["accuracy_interval"]["confidence"] == level
    pareto = plot_pareto(findings, "fit_seconds", "fit time (s)")
    assert pareto.axes[0].get_ylabel() == f"test accuracy ({shown} CI)"


def test_importing_the_report_loads_no_training_library():
    code = "import sys, tasks.report; print('\\n'.join(sys.modules))"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, check=True
    )
    libraries = {"optuna", "xgboost", "tensorflow", "keras"}
    training = ("tasks.train", "tasks.tune", "tasks.models")
    loaded = run.stdout.split()
    assert [m for m in loaded if m.split(".")[0] in libraries or m.startswith(training)] == []
