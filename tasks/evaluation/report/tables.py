"""The leaderboard and tuning tables as the report, the artifacts and the console show them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tasks.core.contracts import TuningSummary
from tasks.evaluation.report.analysis import Findings
from tasks.evaluation.significance import percent

# What the command line prints: the ranking and its uncertainty, and the time it cost.
CONSOLE_COLUMNS = [
    "rank", "model", "test_accuracy", "accuracy_low", "accuracy_high", "macro_f1",
    "fit_seconds", "predict_seconds",
]  # fmt: skip
COLUMN_FORMATS = {
    "fit_seconds": ".1f", "predict_seconds": ".2f", "predict_ms_per_1000": ".1f",
    "model_size_mb": ".2f", "validation_gap": ".2f", "selection_gap": ".2f",
}  # fmt: skip
NAMED_CLASSES = 12  # the data line names this many classes, then counts the rest


def console_table(report_dir: Path) -> str:
    """The leaderboard as the command line prints it, read back from the run's files: the
    ranked models, the model the run chose, then one line for each model that failed."""
    board = pd.read_csv(report_dir / "leaderboard.csv")
    ranked = board[board["rank"].notna()][CONSOLE_COLUMNS].astype({"rank": int})
    chosen = json.loads((report_dir / "metrics.json").read_text())["chosen_model"]
    lines = [
        ranked.to_string(index=False, float_format=lambda value: f"{value:.4f}"),
        f"chosen: {chosen} (best selection accuracy; what predict and serve use)",
    ]
    if "error" in board:
        lines += [f"{row.model}: {row.error}" for row in board[board["rank"].isna()].itertuples()]
    return "\n".join(lines)


def leaderboard_with_failures(findings: Findings) -> pd.DataFrame:
    """The ranked models, then a row for each failed one with no rank, no metrics and its
    error in one line: the leaderboard's file and table."""
    failed = pd.DataFrame(
        [{"model": f.model, "error": f"failed in {f.stage}: {f.error}"} for f in findings.failures],
        columns=["model", "error"],
    )
    board = pd.concat([findings.leaderboard.assign(error=""), failed], ignore_index=True)
    return board.astype({"rank": "Int64"})


def data_line(findings: Findings) -> str:
    """What the models learnt: the data's name, when known, and its classes; and what
    they trained on, the CPU and its usable cores."""
    names = findings.class_names
    listed = ", ".join(names[:NAMED_CLASSES])
    if len(names) > NAMED_CLASSES:
        listed += f" and {len(names) - NAMED_CLASSES} more"
    called = f"{findings.dataset}. " if findings.dataset else ""
    warning = f"\n\n**Warning:** {findings.data_warning}." if findings.data_warning else ""
    machine = f"\n\n**Machine:** {findings.machine}." if findings.machine else ""
    return f"**Data:** {called}Classes: {listed}.{warning}{machine}"


def since_last_run_section(findings: Findings) -> list[str]:
    """The comparison with the champion run in its sentences; nothing on a first run."""
    if not findings.since_last_run:
        return []
    return ["## Since the champion run", "\n".join(f"- {s}" for s in findings.since_last_run)]


def failure_lines(findings: Findings) -> list[str]:
    """One markdown line per failed model, for the report and the run's summary."""
    return [f"- **{f.model}** failed in {f.stage}: `{f.error}`" for f in findings.failures]


def markdown_table(frame: pd.DataFrame, floats: str = ".4f") -> str:
    """Floats with `floats` digits, except times and sizes, which need fewer; a `|` in a
    cell (a class name, say) is escaped so that it stays in its cell."""
    formats = [COLUMN_FORMATS.get(column, floats) for column in frame.columns]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(formats)]
    for row in frame.itertuples(index=False):
        cells = [
            format(value, spec) if isinstance(value, float) else str(value).replace("|", "\\|")
            for value, spec in zip(row, formats, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readable_leaderboard(board: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """The leaderboard with each accuracy interval in one `[low, high]` column.

    Args:
        confidence: level of the intervals, named in the column's header.
    """
    shown = board.drop(columns=["accuracy_low", "accuracy_high"])
    intervals = [f"[{r.accuracy_low:.4f}, {r.accuracy_high:.4f}]" for r in board.itertuples()]
    shown.insert(shown.columns.get_loc("test_accuracy") + 1, f"{percent(confidence)} CI", intervals)
    return shown


def budget_table(findings: Findings) -> pd.DataFrame:
    """Per planned model: what the plan chose and estimated, and what training did."""
    board = findings.leaderboard.set_index("model")
    rows = []
    for model in findings.plan["models"]:
        name = model["model"]
        curve = findings.curves.get(name)
        measured = name in board.index
        rows.append({
            "model": name,
            "variant": model["variant"],
            "planned steps": model["steps"] or "",
            "trained steps": len(curve.validation_error) if curve and model["steps"] else "",
            "estimated seconds": f"{model['estimated_seconds']:.0f}",
            "seconds": f"{board.fit_seconds[name] + board.predict_seconds[name]:.0f}"
            if measured else "failed",
            "trimmed": "; ".join(model["notes"]),
        })  # fmt: skip
    return pd.DataFrame(rows)


def tuning_table(tuning: Sequence[TuningSummary]) -> pd.DataFrame:
    """One row per tuned model: its search, and the defaults' and best validation accuracy."""
    return pd.DataFrame(
        {
            "model": s.model,
            "trials": s.trials,
            "pruned": s.pruned,
            "minutes": f"{s.seconds / 60:.1f}",
            "default validation accuracy": s.default_accuracy,
            "best validation accuracy": s.best_accuracy,
            "gain": s.best_accuracy - s.default_accuracy,
            "best trial": s.best_trial,
            "best parameters": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in s.best_params.items()),
        }
        for s in tuning
    )  # fmt: skip
