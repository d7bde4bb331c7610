"""Training and tuning as Prefect tasks: thin wrappers around `train_model` and
`run_trial`, with the run's logger, stop flag, deadline and a progress bar in the UI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks.core.contracts import ProcessedDataset, TrainedModel
from tasks.core.cpus import HostThreads, threads_here
from tasks.core.memory import give_back_freed_memory, say_memory_given_back
from tasks.core.runtime import in_task_run, stage_logger
from tasks.core.stopping import check_stop
from tasks.training.cores import CoreHandover
from tasks.training.models.base import TrainingContext
from tasks.training.models.registry import ModelParams
from tasks.training.train import train_model
from tasks.training.tune import TrialOutcome, TrialRequest, run_trial


def artifact_key(text: str) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes only."""
    return text.lower().replace("_", "-")


# No retries: a fit that failed fails the same way again (same data, parameters and
# seed), and would cost its whole training time again before saying so.
@task(name="train-model", task_run_name="train-{name}")
def train_task(
    name: str,
    params: ModelParams,
    data: ProcessedDataset,
    cache_dir: Path,
    seed: int,
    threads: int | HostThreads,
    refresh: bool,
    deadline: float | None = None,
    most_steps: int | None = None,
    handover: CoreHandover | None = None,
) -> TrainedModel:
    """With a `handover` bound to the cores, the model's threads are sized to every core
    and held to its lane's until the other models are done; with the plan's, its epochs
    count on every core from when the plan expects that. On a Dask cluster, `threads`
    and the cores are those of the machine it trains on."""
    threads = threads_here(threads)
    handover = (handover or CoreHandover()).on_this_machine(threads)
    threads = handover.threads if handover.bound and handover.pinned else threads
    context = TrainingContext(
        seed, threads, stage_logger(), check_stop=check_stop, deadline=deadline,
        most_steps=most_steps, handover=handover,
    )  # fmt: skip
    if in_task_run():  # a progress bar in the UI; none when the benchmark calls this plainly
        progress = create_progress_artifact(
            progress=0.0, key=artifact_key(f"training-{name}"), description=f"Training {name}"
        )
        context = replace(
            context,
            report_progress=lambda fraction: update_progress_artifact(progress, 100 * fraction),
        )
    with handover.held_to_lane(context.logger):
        trained = train_model(name, params, data, cache_dir, context, refresh)
    say_memory_given_back(context.logger, f"training {name}")
    return trained


@task(name="tune-trial", task_run_name="tune-{request.model}")
def trial_task(
    request: TrialRequest,
    params: ModelParams,
    data: ProcessedDataset,
    study_dir: Path,
    train_subset_size: int | None,
    seed: int,
    threads: int | HostThreads,
) -> TrialOutcome:
    outcome = run_trial(
        request, params, data, study_dir, train_subset_size, seed, threads_here(threads),
        stage_logger(),
    )  # fmt: skip
    give_back_freed_memory()  # unsaid: the trials' own lines already fill the log
    return outcome
