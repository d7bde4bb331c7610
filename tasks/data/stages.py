"""The data stages as Prefect tasks: thin wrappers that name the plain functions of
`ingest`, `validate` and `preprocess`, give them the run's logger and set their retries."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from tasks.core.contracts import ProcessedDataset, RawDataset, ValidationSummary
from tasks.core.runtime import stage_logger
from tasks.data import ingest
from tasks.data.ingest import ingest_dataset, is_network_error
from tasks.data.preprocess import preprocess_dataset
from tasks.data.validate import validate_raw_dataset


def _retry_on_network_error(task, task_run, state) -> bool:
    return is_network_error(state.result(raise_on_failure=False))


# Retried: a download is the one step whose failure may be gone a minute later.
@task(
    name="ingest-fashion-mnist",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_condition_fn=_retry_on_network_error,
)
def ingest_task(
    data_dir: Path | None, cache_dir: Path, test_fraction: float, seed: int, refresh: bool
) -> RawDataset:
    # The sources are looked up when the task runs, so that tests can move them away.
    return ingest_dataset(
        data_dir,
        cache_dir,
        test_fraction=test_fraction,
        seed=seed,
        system_dir=ingest.SYSTEM_DATA_DIR,
        mirror_url=ingest.MIRROR_URL,
        refresh=refresh,
        logger=stage_logger(),
    )


@task(name="validate-data")
def validate_task(
    raw: RawDataset,
    cache_dir: Path,
    output_dir: Path,
    min_images_per_class: int,
    max_duplicate_fraction: float,
    refresh: bool,
) -> ValidationSummary:
    return validate_raw_dataset(
        raw,
        cache_dir,
        output_dir,
        min_images_per_class,
        max_duplicate_fraction,
        refresh=refresh,
        logger=stage_logger(),
    )


@task(name="preprocess")
def preprocess_task(
    raw: RawDataset,
    cache_dir: Path,
    validation_size: int | None,
    seed: int,
    train_subset_size: int | None,
    test_subset_size: int | None,
    selection_size: int | None,
    refresh: bool,
) -> ProcessedDataset:
    return preprocess_dataset(
        raw, cache_dir, validation_size, seed, train_subset_size, test_subset_size,
        selection_size, refresh, stage_logger(),
    )  # fmt: skip
