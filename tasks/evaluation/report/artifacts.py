"""The report's Prefect layer: the compare-models task and the artifacts it publishes.

The summary artifact carries its two key figures inline, at a low resolution, so the
Prefect UI shows them without the report's directory and the server stores little.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.evaluation.report.analysis import PARETO_COSTS, Findings
from tasks.evaluation.report.figures import plot_confusion_grid, plot_pareto, png_bytes
from tasks.evaluation.report.html import data_uri
from tasks.evaluation.report.tables import (
    data_line,
    failure_lines,
    leaderboard_with_failures,
    markdown_table,
    readable_leaderboard,
    since_last_run_section,
)
from tasks.evaluation.significance import describe_comparisons

ARTIFACT_DPI = 72  # six models: about 200 KB of markdown, most of it the confusion grid
# The widest figure drawn at ARTIFACT_DPI, the grid of ten classes: a wider one (more
# classes) is drawn at a lower resolution, and the grid's cells are left unlabelled beyond
# ten classes, so that the summary stays about as small up to 100 classes.
ARTIFACT_INCHES = 15.6
ARTIFACT_LABELLED_CLASSES = 10


def summary_markdown(findings: Findings, report_dir: Path) -> str:
    """The data, what changed since the last run, the leaderboard, findings, the
    row-normalised confusion grid and accuracy against fit time, and a link to the full
    report in `report_dir`."""
    html_report = report_dir.resolve() / "report.html"
    cost, label, _ = PARETO_COSTS[0]
    grid = plot_confusion_grid(findings.confusions, findings.class_names, ARTIFACT_LABELLED_CLASSES)
    sections = [
        f"# Run {report_dir.name}",
        data_line(findings),
        *since_last_run_section(findings),
        markdown_table(readable_leaderboard(findings.leaderboard, findings.confidence)),
        *(["## Failed models", "\n".join(failure_lines(findings))] if findings.failures else []),
        *[f"- {finding}" for finding in findings.analysis],
        *differences_section(findings),
        "## Confusion matrices, each row scaled to its true class",
        _inline_image(grid, "confusion matrices, row-normalised"),
        f"## Accuracy against {label}",
        _inline_image(plot_pareto(findings, cost, label), label),
        f"Full report, one self-contained page: [report.html]({html_report.as_uri()}) "
        f"(`{html_report}`; the same as markdown beside it in `report.md`)",
    ]
    return "\n\n".join(sections)


def differences_section(findings: Findings) -> list[str]:
    sentences = describe_comparisons(findings.comparisons, findings.confidence)
    if not sentences:
        return []
    return ["## Which differences are real (McNemar, Holm-adjusted for the family)",
            "\n".join(f"- {sentence}" for sentence in sentences)]  # fmt: skip


def _inline_image(figure: Figure, alt: str) -> str:
    dpi = ARTIFACT_DPI * min(1.0, ARTIFACT_INCHES / figure.get_size_inches()[0])
    return f"![{alt}]({data_uri(png_bytes(figure, dpi), 'image/png')})"


def publish_artifacts(findings: Findings, report_dir: Path) -> None:
    """The leaderboard as a table artifact and the summary as a markdown artifact."""
    board = leaderboard_with_failures(findings).round(4).astype(object)
    create_table_artifact(
        key="fashion-mnist-leaderboard",
        table=board.where(board.notna(), None).to_dict(orient="records"),  # no NaN in JSON
        description=f"Models ranked by test accuracy, then any that failed: run {report_dir.name}",
    )
    create_markdown_artifact(
        key="fashion-mnist-summary",
        markdown=summary_markdown(findings, report_dir),
        description="Leaderboard, findings, confusion matrices and accuracy against fit time",
    )
