"""The command line's answers to bad input and its plain helpers: one line, nothing run."""

from __future__ import annotations

import pytest

from flows.full_pipeline import dask_threads_per_model, main
from tests.idx_files import write_dataset

# main() starts a flow run for input it can't refuse up front.
pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_unknown_model_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--models", "cnn,svm"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "error: models: unknown model 'svm'; "
        "valid models: logistic_regression, random_forest, svm_rbf, xgboost, cnn"
    )
    assert list(tmp_path.iterdir()) == []


def test_remote_dask_threads_come_from_the_workers_cores():
    # Two workers: 8 cores running 2 models at once, and 4 cores running 1.
    assert dask_threads_per_model({"a": 8, "b": 4}, {"a": 2, "b": 1}) == 4
    assert dask_threads_per_model({"a": 8, "b": 4}, {"a": 2, "b": 4}) == 1
    assert dask_threads_per_model({"a": 2}, {"a": 4}) == 1  # never below one thread


def test_missing_data_directory_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--profile", "quick", "--data-dir", "no-such-dir"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: no-such-dir: data directory does not exist"
    )
    assert not (tmp_path / "reports").exists()


def test_files_that_are_not_fashion_mnist_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "mine")
    assert main(["--profile", "quick", "--data-dir", "mine"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: mine/train-images-idx3-ubyte.gz: checksum mismatch")
    assert not (tmp_path / "reports").exists()
