"""The command line's answers to bad input and its plain helpers: one line, nothing run."""

from __future__ import annotations

import pytest

from flows.full_pipeline import main
from tasks.core.contracts import CLASS_NAMES
from tasks.run.config import MODEL_NAMES
from tests.support.idx_files import idx_bytes, write_dataset, write_idx_gz

# main() starts a flow run for input it can't refuse up front.
pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_unknown_model_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--models", "cnn,svm"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: models: unknown model 'svm'; valid models: {', '.join(MODEL_NAMES)}"
    assert list(tmp_path.iterdir()) == []


def test_missing_data_directory_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--profile", "quick", "--data-dir", "no-such-dir"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: no-such-dir: data directory does not exist"
    )
    assert not (tmp_path / "reports").exists()


def test_no_data_anywhere_is_one_line_naming_the_sources_and_the_fixes(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tasks.data.ingest.SYSTEM_DATA_DIR", tmp_path / "no-system")
    monkeypatch.setattr("tasks.data.ingest.MIRROR_URL", "http://fashion-mnist.invalid/")
    assert main(["--profile", "quick", "--models", "logistic_regression"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: no data found: tried data/raw (no such directory), {tmp_path}/no-system "
        "(no such directory) and http://fashion-mnist.invalid/ (name does not resolve); "
        "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        "or give your own data with --data-dir PATH"
    ]
    assert not (tmp_path / "reports").exists()


def test_data_failing_validation_is_one_line_and_nothing_is_trained(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    files, arrays = write_dataset(tmp_path / "mine")
    labels = arrays["train_labels"].copy()
    labels[[4, 9]] = 12
    write_idx_gz(tmp_path / "mine" / files["train_labels"].name, idx_bytes(labels))
    (tmp_path / "mine" / "classes.txt").write_text("\n".join(CLASS_NAMES))  # 12 is outside
    assert main(["--profile", "quick", "--data-dir", "mine", "--time-budget", "0"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: data validation failed for your data: idx at ")
    assert "label outside the classes: 2 (" in error[-1]
    problems = (tmp_path / "reports" / "validation_errors.csv").read_text().splitlines()
    assert len(problems) == 3  # the header and the two rows
    assert not (tmp_path / "data" / "models").exists()
