"""The run's report directory: every view of the findings, published at once.

Everything is written into a hidden staging directory and renamed to the report's
directory only when complete; `latest` beside it then points at it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.contracts import (
    SPLIT_ARRAYS,
    ModelEvaluation,
    ModelFailure,
    ProcessedDataset,
    TuningSummary,
)
from tasks.core.errors import StorageError
from tasks.core.files import replacing
from tasks.core.storage import write_new_directory
from tasks.evaluation.report.analysis import Findings, analyse
from tasks.evaluation.report.figures import save_figures
from tasks.evaluation.report.html import render_html
from tasks.evaluation.report.markdown import render_markdown
from tasks.evaluation.report.metrics import metrics_document
from tasks.evaluation.report.model_card import render_model_card
from tasks.evaluation.report.tables import leaderboard_with_failures
from tasks.history.db import LAST_RUN
from tasks.training.tuned_profile import write_tuning_files


@dataclass(frozen=True)
class Report:
    """A published report: its directory, and the findings every file in it shows."""

    directory: Path
    findings: Findings


def write_report(
    evaluations: list[ModelEvaluation],
    data: ProcessedDataset,
    report_dir: Path,
    context: dict,
    seed: int,
    tuning: Sequence[TuningSummary] = (),
    failures: Sequence[ModelFailure] = (),
) -> Report:
    """Write the complete report for a run and point `latest` beside it at it.

    Args:
        data: the split whose test arrays the models were evaluated on.
        report_dir: the report's directory, named after the run id; it must not exist.
        context: JSON-ready facts about the run (`run_context`); its `validation` names
            the data, its `since_previous_run` (absent or None on a first run) compares
            with the previous run, in `summary` sentences among other facts.
        seed: seed of the bootstrap resamples.
        tuning: the tuning stage's searches, when it ran.
        failures: the models that failed; the leaderboard lists them after the others.

    Raises:
        StorageError: the report could not be written; nothing half-written is left.
    """
    y_test, test_index, x_test = data.load("y_test", "test_index", "x_test")
    # Each stored array is read (and its hash checked) once.
    predicted = {e.name: e.test_predictions.load() for e in evaluations}
    probabilities = {e.name: e.test_probabilities.load() for e in evaluations}
    findings = analyse(
        evaluations=evaluations,
        class_names=data.class_names,
        y_test=y_test,
        predicted=predicted,
        probabilities=probabilities,
        seed=seed,
        split_images={split: data.arrays[y].shape[0] for split, (_, y) in SPLIT_ARRAYS.items()},
        tuning=tuning,
        failures=failures,
        plan=context.get("plan"),
        dataset=context.get("validation", {}).get("dataset"),
        data_warning=context.get("validation", {}).get("warning", ""),
        since_last_run=since_sentences(context.get("since_previous_run")),
        machine=context.get("machine", {}).get("summary", ""),
    )
    run_id = report_dir.name
    ranked = list(findings.leaderboard.model)

    def write(staging: Path) -> None:
        board = leaderboard_with_failures(findings)
        board.to_csv(staging / "leaderboard.csv", index=False, float_format="%.6f")
        predictions = pd.DataFrame({"index": test_index, "true_label": y_test})
        for name in ranked:
            predictions[name] = predicted[name]
        predictions.to_csv(staging / "test_predictions.csv", index=False)
        np.savez_compressed(
            staging / "test_probabilities.npz", **{name: probabilities[name] for name in ranked}
        )
        document = metrics_document(
            findings=findings, evaluations=evaluations, run_id=run_id, context=context
        )
        (staging / "metrics.json").write_text(json.dumps(document, indent=2, default=str))
        if tuning:
            write_tuning_files(tuning, staging)
        for e in evaluations:
            shutil.copyfile(e.confusion_figure, staging / f"confusion_matrix_{e.name}.png")
        save_figures(findings, x_test, staging)
        markdown = render_markdown(findings, run_id)
        (staging / "report.md").write_text(markdown)
        page = render_html(markdown, staging, f"Model comparison, run {run_id}")
        (staging / "report.html").write_text(page)
        card = render_model_card(findings, evaluations, context, report_dir)
        (staging / "model_card.md").write_text(card)

    write_new_directory(report_dir, write)
    point_latest_at(report_dir)
    return Report(report_dir, findings)


def since_sentences(since: dict | None) -> tuple[str, ...]:
    """What the report says of the comparison with the champion run: which run, why it
    is the one, then what changed."""
    if not since:
        return ()
    chosen = since.get("previous_chosen", LAST_RUN)  # a comparison from before champions
    return (f"Compared with run {since['previous_run_id']}, {chosen}.", *since["summary"])


def point_latest_at(report_dir: Path) -> None:
    """Swap `latest` to `report_dir` in one rename, so it never points at nothing."""
    latest = report_dir.parent / "latest"
    try:
        with replacing(latest) as staging:
            staging.symlink_to(report_dir.name, target_is_directory=True)
    except OSError as error:
        raise StorageError.from_os_error(latest, error) from error
