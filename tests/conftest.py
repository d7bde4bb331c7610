"""Shared fixtures: tiny real IDX files in tmp_path, data of other classes than
Fashion-MNIST's, and a session-wide Prefect harness."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from tasks.core.contracts import ProcessedDataset, RawDataset
from tasks.core.storage import array_refs, save_arrays
from tasks.data.ingest import FASHION_MNIST_FILES, ingest_dataset
from tasks.data.preprocess import preprocess_dataset
from tests.support.data import QUICK_ARGS, REAL_DATA_DIR, THREE_CLASSES
from tests.support.idx_files import make_images, write_dataset
from tests.support.servers import LocalPrefect, local_prefect

# Keep the test server off the network and TensorFlow's notices out of the output.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def synthetic_dir(tmp_path: Path):
    """(directory, IdxFile specs with this content's checksums, the arrays written)."""
    files, arrays = write_dataset(tmp_path / "idx")
    return tmp_path / "idx", files, arrays


@pytest.fixture
def processed(tmp_path: Path, synthetic_dir):
    """The synthetic files ingested and split: 50 validation and 50 selection images."""
    directory, files, _ = synthetic_dir
    raw = ingest_dataset(directory, tmp_path / "data", files)
    return preprocess_dataset(raw, tmp_path / "data", validation_size=50, seed=0)


@pytest.fixture(scope="module")
def own_classes(tmp_path_factory) -> Callable[..., ProcessedDataset]:
    """Makes data with its own class names, as a user's image folders give it, processed:
    `own_classes(names, train_per_class=80, test_per_class=20)`, a tenth of the training
    images for validation and a tenth for selection. Class k lights up band k of its
    images (up to 12 classes)."""

    def make(
        class_names: Sequence[str], train_per_class: int = 80, test_per_class: int = 20
    ) -> ProcessedDataset:
        directory = tmp_path_factory.mktemp("own-classes")
        rng = np.random.default_rng(len(class_names))
        arrays = {}
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            labels = rng.permutation(np.arange(per_class * len(class_names)) % len(class_names))
            arrays[f"{split}_images"] = make_images(labels, seed=per_class)
            arrays[f"{split}_labels"] = labels.astype(np.uint8)
        save_arrays(directory, arrays)
        raw = RawDataset(
            directory, {}, array_refs(directory, list(arrays)), tuple(class_names), "image-folder"
        )
        validation = train_per_class * len(class_names) // 10
        return preprocess_dataset(raw, directory / "data", validation_size=validation, seed=0)

    return make


@pytest.fixture(scope="module")
def three_classes(own_classes) -> ProcessedDataset:
    """Three classes of their own names (`THREE_CLASSES`): 192 training, 24 validation,
    24 selection and 60 test images."""
    return own_classes(THREE_CLASSES)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, prefect_harness) -> tuple[Path, Path, str]:
    """One quick-profile run of the command line on the user's copy of the real files,
    shared by the tests that read what it wrote or start from its cache: its working
    directory, report directory and printed output."""
    from flows.full_pipeline import main

    workdir = tmp_path_factory.mktemp("quick")
    shutil.copytree(REAL_DATA_DIR, workdir / "fashion")
    printed = io.StringIO()
    with contextlib.chdir(workdir), contextlib.redirect_stdout(printed):
        assert main(QUICK_ARGS) == 0
    return workdir, (workdir / "reports" / "latest").resolve(), printed.getvalue()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[LocalPrefect]:
    """One real Prefect server on loopback for every test that needs a server, a pool
    and a worker of its own process (the deployment tests): started once, since each
    start costs seconds. Tests tell their runs apart by flow-run id."""
    with local_prefect(tmp_path_factory.mktemp("prefect-server")) as prefect:
        yield prefect


@pytest.fixture
def real_data_dir() -> Path:
    if not all((REAL_DATA_DIR / spec.name).is_file() for spec in FASHION_MNIST_FILES.values()):
        pytest.fail(
            f"{REAL_DATA_DIR} lacks the Fashion-MNIST files: apt-get install dataset-fashion-mnist"
        )
    return REAL_DATA_DIR
