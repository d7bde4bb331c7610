"""Measuring the models' costs as a Prefect task, in the training pool beside the
others, the way each model will train."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from prefect import task

from tasks.budget.measure import measure_variants
from tasks.budget.planner import Variant
from tasks.core.contracts import ModelFailure, ProcessedDataset
from tasks.core.runtime import stage_logger
from tasks.core.stopping import check_stop
from tasks.run.config import ModelParams
from tasks.training.cores import CoreShare, every_core, held_to_lane
from tasks.training.models.base import TrainingContext


@task(name="measure-costs", task_run_name="measure-{names}")
def measure_task(
    names: list[str],
    params: ModelParams,
    pinned: dict[str, frozenset[str]],
    data: ProcessedDataset,
    seed: int,
    threads: int,
    seconds: float | None = None,
    cores: CoreShare | None = None,
) -> tuple[dict[str, list[Variant]], list[ModelFailure]]:
    """With `cores`, measured as the model will train: threads sized to every core, held
    to the lane's beside the others, then on every core once they are measured."""
    threads = cores.threads if cores else threads
    context = TrainingContext(seed, threads, stage_logger(), check_stop=check_stop)
    if cores:
        context = replace(context, every_core=partial(every_core, cores, check_stop))
    with held_to_lane(cores, context.logger, until_released=False):
        return measure_variants(names, params, pinned, data, context, seconds)
