"""Comparison: rank the models and write the run's report directory.

`analysis` computes one `Findings` record; report.md, report.html, metrics.json, the
figures, the console table and the Prefect artifacts are views of it.
"""

from tasks.report.analysis import LEADERBOARD_COLUMNS, Findings, analyse
from tasks.report.artifacts import report_task
from tasks.report.metrics import run_context
from tasks.report.tables import CONSOLE_COLUMNS, console_table, markdown_table
from tasks.report.writer import Report, write_report

__all__ = [
    "CONSOLE_COLUMNS",
    "LEADERBOARD_COLUMNS",
    "Findings",
    "Report",
    "analyse",
    "console_table",
    "markdown_table",
    "report_task",
    "run_context",
    "write_report",
]
