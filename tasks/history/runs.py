"""The history stage: compare the run with the previous one of its profile, alert on
regressions, and record the run once its report is written.

`since_previous_run` goes into metrics.json and opens the report. Each regression, a
significant drop beyond `regression_tolerance`, is also a Prefect event, which an
automation can notify on (automations/model-regressed.yaml).
"""

from __future__ import annotations

from pathlib import Path

from tasks.core.contracts import ModelEvaluation, ProcessedDataset, RawDataset
from tasks.core.errors import RegressionError
from tasks.history.changes import change_text, compare_runs, regressions
from tasks.history.db import champion_run, record_snapshot, set_champion
from tasks.history.snapshots import snapshot_run

PINNED = "pinned with --baseline"
WITHOUT_REGRESSION = "the last run without a regression"


def compare_with_previous(
    history_db: Path,
    profile: str,
    run_id: str,
    raw: RawDataset,
    data: ProcessedDataset,
    evaluations: list[ModelEvaluation],
    tolerance: float,
    baseline: str | None = None,
) -> dict | None:
    """`since_previous_run`: this run against its profile's champion in `history_db` (the
    last run without a regression, or `baseline`, which this promotes to champion), or
    None when the history holds no run of the profile.

    Raises:
        UsageError: `baseline` is no run of the profile in the history.
    """
    if baseline is not None:
        set_champion(history_db, profile, baseline, PINNED)
    found = champion_run(history_db, profile, run_id)
    if found is None:
        return None
    champion, chosen = found
    current = snapshot_run(run_id, profile, raw, data, evaluations)
    return compare_runs(champion, current, tolerance, chosen)


def record_run(
    history_db: Path,
    run_id: str,
    profile: str,
    raw: RawDataset,
    data: ProcessedDataset,
    evaluations: list[ModelEvaluation],
    regressed: bool = False,
) -> None:
    """Record a completed run; without a regression it becomes its profile's champion,
    the run the next one is compared with, so that a regression keeps being reported
    until it is fixed or accepted (`--baseline`)."""
    record_snapshot(history_db, snapshot_run(run_id, profile, raw, data, evaluations))
    if not regressed:
        set_champion(history_db, profile, run_id, WITHOUT_REGRESSION)


def regression_error(since: dict, report_dir: Path | None = None) -> RegressionError:
    """The error a run asked to fail on regressions ends with; `since` must hold some."""
    found = regressions(since)
    models = "; ".join(f"{row['model']} {change_text(row)}" for row in found)
    return RegressionError(
        f"{len(found)} model{'s' if len(found) > 1 else ''} regressed since run "
        f"{since['previous_run_id']} (accuracy down more than "
        f"{since['regression_tolerance']:g}, p < 0.05): {models}",
        report_dir,
    )
