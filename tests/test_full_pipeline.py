"""The flow and its command line, end to end under a Prefect test server."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.full_pipeline import main
from tasks.config import DEFAULT_MODELS
from tasks.ingest import FASHION_MNIST_FILES
from tests.idx_files import write_dataset

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


@pytest.mark.slow
def test_quick_profile_on_real_data(tmp_path, monkeypatch, capsys, real_data_dir):
    monkeypatch.chdir(tmp_path)
    # The user's copy of the real files, named explicitly.
    shutil.copytree(real_data_dir, tmp_path / "fashion")
    assert main(["--profile", "quick", "--data-dir", "fashion", "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    latest = tmp_path / "reports" / "latest"
    report_dir = latest.resolve()
    assert f"report: reports/{report_dir.name}/report.md" in printed
    assert report_dir.name.endswith(tuple("0123456789abcdef"))
    assert "-quick-" in report_dir.name

    board = pd.read_csv(report_dir / "leaderboard.csv")
    assert sorted(board.model) == sorted(DEFAULT_MODELS)
    assert board["rank"].tolist() == [1, 2, 3, 4, 5]
    assert board.test_accuracy.is_monotonic_decreasing
    assert (board.test_accuracy > 0.7).all(), board
    assert (board.fit_seconds > 0).all()
    for model in board.model:
        assert model in printed

    predictions = pd.read_csv(report_dir / "test_predictions.csv")
    assert len(predictions) == 2000
    assert predictions["index"].is_unique
    assert predictions["index"].between(0, 9999).all()
    with gzip.open(real_data_dir / FASHION_MNIST_FILES["test_labels"].name) as stream:
        real_labels = np.frombuffer(stream.read(), np.uint8, offset=8)
    np.testing.assert_array_equal(predictions.true_label, real_labels[predictions["index"]])
    assert np.bincount(predictions.true_label).tolist() == [200] * 10
    for row in board.itertuples():
        recomputed = (predictions[row.model] == predictions.true_label).mean()
        assert row.test_accuracy == pytest.approx(recomputed, abs=1e-9)

    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["seed"] == 7
    assert metrics["config"]["profile"] == "quick"
    assert metrics["data"]["file_sha256"] == {
        s.name: s.sha256 for s in FASHION_MNIST_FILES.values()
    }
    assert metrics["validation"]["class_counts"]["train"] == [6000] * 10
    for model, record in metrics["models"].items():
        assert sum(map(sum, record["confusion_matrix"])) == 2000
        assert Path(record["model_dir"]).is_dir(), model
        (png,) = report_dir.glob(f"confusion_matrix_{model}.png")
        assert png.stat().st_size > 10_000
    assert "## Most confused class pairs" in (report_dir / "report.md").read_text()

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["fashion-mnist-leaderboard"])
            ),
            limit=1,
        )
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert [row["model"] for row in table] == board.model.tolist()
