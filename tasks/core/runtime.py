"""What a stage's task wrapper needs from Prefect, in a form that also works without it.

The benchmark runs the same task functions as plain calls (`task.fn`), outside any flow
run: they then log to the standard logger and create no artifacts.
"""

from __future__ import annotations

import logging

from prefect.context import TaskRunContext
from prefect.logging import get_run_logger


def in_task_run() -> bool:
    return TaskRunContext.get() is not None


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a task run (its lines reach the UI), else the module's."""
    return get_run_logger() if in_task_run() else logging.getLogger("fashion_mnist")
