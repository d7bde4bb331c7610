"""The time-to-accuracy benchmark: budgets tried shortest first until the CNN alone reaches
the target, each run the budget sweep's command with the CNN alone, and the summary drawn
from the rows."""

from __future__ import annotations

import inspect
import json

import pandas as pd

from benchmarks import budget_sweep, time_to_accuracy

AVX512 = "AMD EPYC (AVX-512 BF16, 2 usable cores)"


def test_budgets_are_tried_shortest_first_and_the_first_to_reach_the_target_ends_the_search():
    accuracy = {4.0: 0.9301, 6.0: 0.9388, 8.0: 0.9402, 10.0: 0.9455}
    tried = []

    def measure(minutes):
        tried.append(minutes)
        return {"test_accuracy": accuracy[minutes]}

    rows = list(time_to_accuracy.budgets_until_reached([10, 6, 4, 8], 0.94, measure))
    assert tried == [4, 6, 8]
    assert [row["reached"] for row in rows] == [False, False, True]
    assert {row["target"] for row in rows} == {0.94}
    # None reaching it: every budget is tried, none reached.
    rows = list(time_to_accuracy.budgets_until_reached([4, 6], 0.95, measure))
    assert [row["reached"] for row in rows] == [False, False]


def test_a_run_is_the_sweeps_command_with_the_cnn_alone_and_its_fit_read_from_the_report(
    tmp_path, monkeypatch
):
    reports = tmp_path / "reports" / "latest"
    reports.mkdir(parents=True)
    fitted = {"test_accuracy": 0.9412, "validation_accuracy": 0.95033, "fit_seconds": 301.27}
    (reports / "metrics.json").write_text(json.dumps({"models": {"cnn": fitted}}))
    calls = []

    def run_budget(*args, **kwargs):
        # The call must fit the sweep's own function: a changed signature fails here.
        call = inspect.signature(budget_sweep.run_budget).bind(*args, **kwargs)
        calls.append(tuple(call.arguments.values()))
        return {
            "directory": str(tmp_path), "setting": "native", "exit_status": 0,
            "wall_seconds": 352.4, "cnn": "wide network, 11 epochs planned, 11 trained",
            "peak_rss_gb": 1.41, "cpu": AVX512, "commit": "abc1234",
        }  # fmt: skip

    monkeypatch.setattr(time_to_accuracy, "run_budget", run_budget)
    row = time_to_accuracy.measure_cnn_alone(6.0, False, 7)
    assert calls == [(6.0, False, ["--models", "cnn"], 7)]
    assert row["fit_seconds"] == 301.3
    assert row["test_accuracy"] == 0.9412
    assert row["validation_accuracy"] == 0.9503
    assert row["plan"] == "wide network, 11 epochs planned, 11 trained"


def row(minutes, accuracy, **changes):
    return {
        "target": 0.94, "budget_minutes": minutes, "setting": "native", "exit_status": 0,
        "wall_seconds": minutes * 60 - 20, "fit_seconds": minutes * 50,
        "plan": f"wide network, {minutes} epochs planned, {minutes} trained",
        "test_accuracy": accuracy, "validation_accuracy": accuracy + 0.01,
        "reached": accuracy >= 0.94, "seed": 42, "peak_rss_gb": 1.4, "cpu": AVX512,
        "commit": "abc1234",
    } | changes  # fmt: skip


def test_the_summary_names_the_shortest_budget_reaching_the_target_per_cpu_and_setting(
    tmp_path,
):
    emulated = {"setting": "AVX2 / float32"}
    rows = pd.DataFrame([
        row(8, 0.9402), row(6, 0.9388),  # appended out of order: the 8 reached it
        row(12, 0.9391, **emulated), row(10, 0.9362, **emulated),  # none reached it
        row(6, 0.9415, seed=7),
    ])  # fmt: skip
    summary = time_to_accuracy.time_to_target(rows).set_index(["setting", "seed"])
    assert summary.loc[("native", 42), ["reached", "budget_minutes"]].tolist() == [True, 8]
    assert summary.loc[("native", 7), ["reached", "budget_minutes"]].tolist() == [True, 6]
    assert summary.loc[("AVX2 / float32", 42), ["reached", "budget_minutes"]].tolist() == [
        False, 12,
    ]  # fmt: skip
    time_to_accuracy.render(rows, tmp_path)
    text = (tmp_path / "time_to_accuracy.md").read_text()
    assert (
        "- AVX-512 BF16, native, seed 42: **0.9402 in 7:40.0**, budget 8 minutes "
        "(wide network, 8 epochs planned, 8 trained; abc1234)" in text
    )
    assert "- AVX-512 BF16, AVX2 / float32, seed 42: 0.94 not reached within 12 minutes" in text
    table = [line for line in text.splitlines() if line.startswith("| 0.94")]
    # Grouped by CPU, setting and seed, each group's budgets in order.
    cells = [line.split(" | ") for line in table]
    assert [(cell[1], cell[3], cell[9]) for cell in cells] == [
        ("10", "AVX2 / float32", "42"), ("12", "AVX2 / float32", "42"),
        ("6", "native", "7"), ("6", "native", "42"), ("8", "native", "42"),
    ]  # fmt: skip
