"""What all the report's views share: the interval level, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.budget.plan_types import ModelPlan, Plan
from tasks.evaluation.report import analysis
from tasks.evaluation.report.artifacts import summary_markdown
from tasks.evaluation.report.figures import plot_pareto
from tasks.evaluation.report.writer import write_report
from tasks.evaluation.significance import accuracy_intervals, bootstrap_accuracies
from tests.support.samples import Y_TEST, evaluation, sample_evaluations, sample_split

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
    intervals = accuracy_intervals(bootstrap_accuracies(correct, seed=0), list(correct), level)
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
    code = "import sys, tasks.evaluation.report; print('\\n'.join(sys.modules))"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, check=True
    )
    libraries = {"optuna", "xgboost", "tensorflow", "keras"}
    training = ("tasks.training.train", "tasks.training.tune", "tasks.training.models")
    loaded = run.stdout.split()
    assert [m for m in loaded if m.split(".")[0] in libraries or m.startswith(training)] == []


SINCE = {
    "previous_run_id": "run-1",
    "summary": [
        "The data gained 120 **Sandal** training images; nothing else changed.",
        "No model is significantly better or worse (McNemar's test, p < 0.05).",
    ],
    "models": {"perfect": {"accuracy_then": 0.99, "accuracy_now": 1.0, "p_value": 0.5}},
}


def test_what_changed_since_the_last_run_opens_every_view(tmp_path):
    report = write_report(
        evaluations=sample_evaluations(tmp_path),
        data=sample_split(tmp_path),
        report_dir=tmp_path / "reports" / "run-2",
        context={"since_previous_run": SINCE},
        seed=0,
    )
    lead = f"- Compared with run {SINCE['previous_run_id']}, the last run.\n"
    section = "## Since the champion run\n\n" + lead + "\n".join(f"- {s}" for s in SINCE["summary"])
    markdown = (report.directory / "report.md").read_text()
    assert section in markdown
    assert markdown.index(section) < markdown.index("## Leaderboard")
    page = (report.directory / "report.html").read_text()
    assert page.index("<h2>Since the champion run</h2>") < page.index("<h2>Leaderboard</h2>")
    assert "gained 120 <strong>Sandal</strong> training images" in page
    summary = summary_markdown(report.findings, report.directory)
    assert summary.index(section) < summary.index("| rank | model |")
    metrics = json.loads((report.directory / "metrics.json").read_text())
    assert metrics["since_previous_run"] == SINCE


@pytest.mark.parametrize("context", [{}, {"since_previous_run": None}], ids=["absent", "none"])
def test_a_first_run_says_nothing_about_a_last_run(tmp_path, context):
    report = write_report(
        evaluations=sample_evaluations(tmp_path),
        data=sample_split(tmp_path),
        report_dir=tmp_path / "reports" / "run-1",
        context=context,
        seed=0,
    )
    markdown = (report.directory / "report.md").read_text()
    page = (report.directory / "report.html").read_text()
    for text in (markdown, page, summary_markdown(report.findings, report.directory)):
        assert "Since the champion run" not in text
    assert json.loads((report.directory / "metrics.json").read_text())["since_previous_run"] is None


def test_the_time_budget_section_says_how_long_the_others_could_hold_their_lanes(tmp_path):
    evaluations = [evaluation("cnn", Y_TEST, tmp_path), *sample_evaluations(tmp_path)[:2]]
    models = tuple(
        ModelPlan(e.name, "as configured", {}, None, 60.0, lane)
        for lane, e in enumerate(evaluations)
    )
    data = sample_split(tmp_path)
    for room, run in ((159.9, "held"), (None, "free")):
        # The CNN listed after the others: the plan names the model its room is for.
        plan = Plan(300, 34, 27, 215.1, 2, models[::-1], {}, room_beside=room, own_lane="cnn")
        report = write_report(
            evaluations=evaluations,
            data=data,
            report_dir=tmp_path / "reports" / run,
            context={"plan": json.loads(json.dumps(plan.as_dict()))},
            seed=0,
        )
        text = (report.directory / "report.md").read_text()
        assert "the plan gave training 215 s on 2 lane(s)." in text
        said = (
            "The models beside cnn held their lanes for at most 160 s: longer would have "
            "cost cnn over 30% of the epochs it trains with every core."
        )
        assert (said in text) == (room is not None)
