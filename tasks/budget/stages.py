"""Measuring the models' costs as a Prefect task, in the training pool beside the
others, the way each model will train."""

from __future__ import annotations

from prefect import task

from tasks.budget.measure import measure_variants
from tasks.budget.plan_types import Variant
from tasks.core.contracts import ModelFailure, ProcessedDataset
from tasks.core.cpus import HostThreads, threads_here
from tasks.core.memory import say_memory_given_back
from tasks.core.runtime import stage_logger
from tasks.core.stopping import check_stop
from tasks.run.config import ModelParams
from tasks.training.cores import CoreHandover
from tasks.training.models.base import TrainingContext


@task(name="measure-costs", task_run_name="measure-{names}")
def measure_task(
    names: list[str],
    params: ModelParams,
    pinned: dict[str, frozenset[str]],
    data: ProcessedDataset,
    seed: int,
    threads: dict[str, int | HostThreads],
    seconds: float | None = None,
    handover: CoreHandover | None = None,
) -> tuple[dict[str, list[Variant]], list[ModelFailure]]:
    """Each model measured on its `threads` (on a Dask cluster, its host's). With a
    `handover` bound to the cores, measured as the model will train: threads sized to
    every core, held to the lane's beside the others, then on every core once they are
    measured."""
    threads = {name: threads_here(count) for name, count in threads.items()}
    lane = max(threads.values(), default=1)
    handover = (handover or CoreHandover()).on_this_machine(lane)
    if handover.bound:
        threads = dict.fromkeys(threads, handover.threads)
    context = TrainingContext(seed, 1, stage_logger(), check_stop=check_stop, handover=handover)
    with handover.held_to_lane(context.logger, until_released=False):
        measured = measure_variants(names, params, pinned, data, context, seconds, threads)
    say_memory_given_back(context.logger, "measuring")
    return measured
