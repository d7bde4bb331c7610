"""Shared fixtures: tiny real IDX files in tmp_path, and a session-wide Prefect harness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.ingest import FASHION_MNIST_FILES, ingest_dataset
from tasks.preprocess import preprocess_dataset
from tests.idx_files import write_dataset

# Keep the test server off the network and TensorFlow's notices out of the output.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REAL_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def synthetic_dir(tmp_path: Path):
    """(directory, IdxFile specs with this content's checksums, the arrays written)."""
    files, arrays = write_dataset(tmp_path / "idx")
    return tmp_path / "idx", files, arrays


@pytest.fixture
def processed(tmp_path: Path, synthetic_dir):
    """The synthetic files ingested and split: 50 validation images."""
    directory, files, _ = synthetic_dir
    raw = ingest_dataset(directory, tmp_path / "data", files)
    return preprocess_dataset(raw, tmp_path / "data", validation_size=50, seed=0)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def real_data_dir() -> Path:
    if not all((REAL_DATA_DIR / spec.name).is_file() for spec in FASHION_MNIST_FILES.values()):
        pytest.fail(
            f"{REAL_DATA_DIR} lacks the Fashion-MNIST files: apt-get install dataset-fashion-mnist"
        )
    return REAL_DATA_DIR
