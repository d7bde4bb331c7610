"""A finished run on tiny synthetic IDX files, for the prediction tests: real model cache
entries (with manifests), evaluations, an ensemble and the report directory.

The stages are called directly rather than through the flow, whose checksum gate only
passes the published Fashion-MNIST files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tasks.core.contracts import content_hashes
from tasks.data.ingest import ingest_dataset
from tasks.data.preprocess import preprocess_dataset
from tasks.evaluation.ensemble import build_ensemble
from tasks.evaluation.evaluate import evaluate_model
from tasks.evaluation.report.writer import write_report
from tasks.run.config import ModelParams
from tasks.training.models.base import TrainingContext
from tasks.training.train import train_model
from tests.support.idx_files import write_dataset

RUN_ID = "run-1"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
FAST = {"random_forest": {"n_estimators": 10}, "cnn": {"epochs": 1, "conv_blocks": [[8]],
        "dense_units": 16, "batch_size": 64}}  # fmt: skip


@contextlib.contextmanager
def working_directory(directory: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def make_run(root: Path, models: tuple[str, ...] = ("logistic_regression", "random_forest")):
    """Train `models` and an ensemble of them on synthetic data, as a run started in `root`
    does: the report in `root/reports/run-1`, the cache under `root/data`, recorded relative.

    Returns:
        the report directory, and the synthetic arrays (`test_images` among them).
    """
    files, arrays = write_dataset(root / "idx")
    params = ModelParams.model_validate({name: FAST.get(name, {}) for name in models})
    with working_directory(root):
        cache = Path("data")  # relative, as the pipeline's default
        raw = ingest_dataset(root / "idx", cache, files)
        data = preprocess_dataset(raw, cache, validation_size=50, seed=0)
        context = TrainingContext(seed=0, threads=1)
        trained = [train_model(name, params, data, cache, context) for name in models]
        evaluations = [evaluate_model(t, data, cache, threads=1) for t in trained]
        ensemble = build_ensemble(evaluations, data, cache, size=len(models))
        facts = {
            "seed": 0,
            "config": {"profile": "synthetic"},
            "data": {
                "source_dir": str(raw.source_dir),
                "file_sha256": raw.file_sha256,
                "processed_sha256": content_hashes(data.arrays),
            },
        }
        report = write_report(
            [*evaluations, ensemble], data, Path("reports") / RUN_ID, context=facts, seed=0
        )
    return root / report.directory, arrays
