"""Pre-flight checks: what can be known to fail before any work starts is refused then.

The configuration's ranges are checked when it is built (pydantic); these checks cover
the machine: the directories a run reads and writes, the disk space it needs, and the
Prefect API. Each problem is one line naming the path or URL and what is wrong with it:
a `UsageError` (exit status 2) for an argument the run cannot use at all, another
`PipelineError` (exit status 1) for the rest.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tasks.core.errors import RunEnvironmentError
from tasks.core.files import check_writable_directory, existing_ancestor
from tasks.data.ingest import check_data_source
from tasks.data.preprocess import held_out_sizes
from tasks.history.db import check_known_run, history_path
from tasks.training.models.registry import model_spec

if TYPE_CHECKING:
    from tasks.run.config import PipelineConfig

MB = 1e6
TRAINING_IMAGES, TEST_IMAGES, PIXELS = 60_000, 10_000, 784
# Measured on a quick run: figures and the HTML page that embeds them, then per model its
# confusion matrix (twice: the PNG and the page) and its share of the figures.
REPORT_BASE_MB, REPORT_PER_MODEL_MB = 0.5, 0.25
# A temporary server listens on this host's loopback for one run, while a long-lived
# Dask worker process keeps sending events to the first Prefect API it reported to.
CLUSTER_NEEDS_SERVER = (
    "an external Dask cluster needs a Prefect server its workers reach, not this run's "
    "temporary one (loopback only, gone after the run): start `prefect server start --host "
    "0.0.0.0` and set PREFECT_API_URL=http://<server>:4200/api here and for every worker"
)


def check_run(config: PipelineConfig, api_url: str | None = None) -> None:
    """Every check that needs no data; `api_url`, when given, must answer.

    Raises:
        UsageError: a path names a file where a directory belongs, or `--baseline` a run
            the history does not hold.
        DatasetFileError: the data directory does not exist or lacks files.
        RunEnvironmentError: a directory cannot be written, its disk is too full for
            what the run writes, or the Prefect API does not answer.
    """
    check_data_source(config.data.dir, config.cache_dir)
    check_writable_directory(config.cache_dir)
    check_writable_directory(config.output_dir)
    if config.tune.save_profile:
        check_writable_directory(config.tune.save_profile.parent)
    check_disk_space(estimate_writes(config))
    if config.baseline:
        check_known_run(history_path(config.output_dir), config.profile, config.baseline)
    if api_url:
        check_api(api_url)


def check_cluster_server(config: PipelineConfig, api_url: str | None) -> None:
    """A run on an external Dask cluster names the Prefect server its workers report to
    (`api_url`, from PREFECT_API_URL): refused before a temporary server would start.

    Raises:
        RunEnvironmentError: `dask_address` is set and `api_url` is not.
    """
    if config.dask_address and not api_url:
        raise RunEnvironmentError(CLUSTER_NEEDS_SERVER)


def estimate_writes(config: PipelineConfig) -> dict[Path, float]:
    """About how many MB a run writes into its cache and its output directory, counting
    every cache entry as new: reused ones write nothing, so this is an upper bound."""
    subset = config.train_subset_size or TRAINING_IMAGES
    held_out = sum(held_out_sizes(subset, config.validation_size, config.selection_size))
    train_images = subset - held_out
    test_images = config.test_subset_size or TEST_IMAGES
    images = train_images + held_out + test_images
    parsed = (TRAINING_IMAGES + TEST_IMAGES) * (PIXELS + 1) / MB  # uint8 images, labels
    processed = images * (PIXELS * 4 + 9) / MB  # float32 pixels, label, test index
    specs = [model_spec(name) for name in config.models]
    models = sum(
        # A model that keeps its epochs has one kept beside it until it is published.
        (1 + spec.keeps_epochs) * spec.saved_mb(getattr(config.params, spec.name), train_images)
        for spec in specs
    )
    evaluated = len(config.models) + (config.ensemble_size >= 2)
    # Held-out and test probabilities (float32, ten classes), predictions, a figure.
    evaluations = evaluated * ((held_out + test_images) * 41 / MB + 0.1)
    report = REPORT_BASE_MB + evaluated * (REPORT_PER_MODEL_MB + test_images * 48 / MB)
    return {config.cache_dir: parsed + processed + models + evaluations, config.output_dir: report}


def check_disk_space(needs_mb: dict[Path, float]) -> None:
    """Each file system holding these directories has room for what they will hold.

    Raises:
        RunEnvironmentError: `<directory>: no space left on device (needs about N MB)`.
    """
    by_device: dict[int, list[tuple[Path, float]]] = defaultdict(list)
    for directory, megabytes in needs_mb.items():
        by_device[os.stat(existing_ancestor(directory)).st_dev].append((directory, megabytes))
    for directories in by_device.values():
        needed = sum(megabytes for _, megabytes in directories)
        free = shutil.disk_usage(existing_ancestor(directories[0][0])).free / MB
        if needed > free:
            names = " and ".join(str(directory) for directory, _ in directories)
            raise RunEnvironmentError(
                f"{names}: no space left on device (needs about {needed:.0f} MB)"
            )


def check_api(url: str, timeout_seconds: float = 5.0) -> None:
    """The Prefect API at `url` answers; any HTTP answer will do (Prefect Cloud asks for
    a key), only no answer at all is an error."""
    if reason := api_problem(url, timeout_seconds):
        raise RunEnvironmentError(
            f"cannot reach the Prefect API at {url} ({reason}): start the server "
            "(`prefect server start`), or unset PREFECT_API_URL to run on a temporary one"
        )


def api_problem(url: str, timeout_seconds: float = 5.0) -> str | None:
    """Why the Prefect API at `url` gives no answer at all, such as "connection refused";
    None when it answers."""
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_seconds)
    except httpx.HTTPError as error:
        return (str(error).split("] ")[-1].strip() or type(error).__name__).lower()
    return None


def space_needed(config: PipelineConfig, path: Path) -> float:
    """About how many MB the run writes into the directory (cache or output) holding `path`."""
    estimates = estimate_writes(config)
    where = Path(os.path.abspath(path))
    for directory, megabytes in estimates.items():
        if where.is_relative_to(os.path.abspath(directory)):
            return megabytes
    return sum(estimates.values())
