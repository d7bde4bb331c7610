"""Prediction with a real run on the real data: exported test images give the run's own
predictions, and prefect.yaml's batch-predict deployment runs on a real server and worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from prefect.exceptions import ParameterTypeError

from flows.predict import batch_predict, main
from tasks.core.storage import sha256_file
from tasks.data.sources.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from tests.support.data import REAL_DATA_DIR
from tests.support.servers import REPO

SMALL = {"train_subset_size": 2000, "validation_size": 500, "test_subset_size": 1000}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, prefect_server) -> Path:
    """A quick-profile run of two fast models on a small subset of the real data, started
    from its own working directory: returns its report directory (`reports/latest`).
    It records on the tests' server rather than starting a temporary one."""
    workdir = tmp_path_factory.mktemp("real-run")
    (workdir / "small.json").write_text(json.dumps(SMALL))
    env = prefect_server.env | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "flows.full_pipeline", "--profile", "quick",
         "--models", "logistic_regression,random_forest", "--data-dir", str(REAL_DATA_DIR),
         "--profile-file", "small.json"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return workdir / "reports" / "latest"


def real_test_split(split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(REAL_DATA_DIR / f"{split}-images-idx3-ubyte.gz", IMAGES_MAGIC)
    labels = read_idx(REAL_DATA_DIR / f"{split}-labels-idx1-ubyte.gz", LABELS_MAGIC)
    return images.array, labels.array


@pytest.mark.slow
def test_exported_test_images_give_the_runs_predictions_and_accuracy(real_run, tmp_path):
    images, _ = real_test_split()
    stored = pd.read_csv(real_run / "test_predictions.csv")
    best = pd.read_csv(real_run / "leaderboard.csv").model[0]
    for index in stored["index"]:
        Image.fromarray(images[index]).save(tmp_path / f"{index:05d}.png")
        dark_on_white = Image.fromarray(255 - images[index]).resize((112, 112), Image.BICUBIC)
        dark_on_white.convert("RGB").save(tmp_path / f"{index:05d}.jpg")
    results = {}
    for kind in ("png", "jpg"):
        paths = sorted(tmp_path.glob(f"*.{kind}"))
        assert main([*map(str, paths), "--run", str(real_run), "--output",
                     str(tmp_path / f"{kind}.csv")]) == 0  # fmt: skip
        rows = pd.read_csv(tmp_path / f"{kind}.csv")
        rows["index"] = rows.path.map(lambda p: int(Path(p).stem))
        results[kind] = rows.set_index("index").loc[stored["index"]].predicted_label.to_numpy()
    truth = stored.true_label.to_numpy()
    np.testing.assert_array_equal(results["png"], stored[best])  # the very same predictions
    assert (results["png"] == truth).mean() == (stored[best] == truth).mean()
    assert abs((results["jpg"] == truth).mean() - (stored[best] == truth).mean()) <= 0.02

    card = (real_run / "model_card.md").read_text()
    assert card.startswith(f"# Model card: {best}\n")
    files = json.loads((tmp_path / "png.provenance.json").read_text())["model_files_sha256"]
    for path, digest in files.items():  # relative to the run's working directory
        assert sha256_file(real_run.parents[1] / path) == digest
        assert f"`{digest}`" in card


@pytest.mark.slow
def test_batch_predict_deployment_runs_on_a_server_and_worker(real_run, tmp_path, prefect_server):
    images, _ = real_test_split()
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        Image.fromarray(images[index]).save(folder / f"{index}.png")
    (folder / "broken.png").write_text("not an image")
    prefect_server.deploy("batch-predict")
    output = tmp_path / "out" / "predictions.csv"
    parameters = {"paths": [str(folder)], "run": str(real_run), "output": str(output)}
    flow_run_id = prefect_server.run_deployment("batch-predict/batch-predict", parameters)
    log = prefect_server.worker()
    state = prefect_server.wait_for_end(flow_run_id, 300)
    assert state["type"] == "COMPLETED", log.read_text()[-3000:]

    rows = pd.read_csv(output, keep_default_na=False)
    names = ["0.png", "1.png", "2.png", "3.png", "4.png", "broken.png"]
    assert rows.path.tolist() == [str(folder / name) for name in names]
    assert main([*rows.path[:5], "--run", str(real_run), "--output",
                 str(tmp_path / "cli.csv")]) == 0  # fmt: skip
    cli_rows = pd.read_csv(tmp_path / "cli.csv")
    assert rows.predicted_class[:5].tolist() == cli_rows.predicted_class.tolist()
    assert rows.error.tolist()[5] == "not an image: Pillow recognises no image format in it"
    artifacts = httpx.post(f"{prefect_server.api}/artifacts/filter", timeout=5, json={
        "artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).json()  # fmt: skip
    summary = next(a for a in artifacts if a["key"] == "batch-predictions")["data"]
    assert "classified 5 images" in summary
    assert "unreadable         1" in summary


def test_the_batch_predict_deployment_gives_the_flow_valid_parameters():
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    (deployment,) = [d for d in deployments if d["name"] == "batch-predict"]
    assert deployment["entrypoint"] == "flows/predict.py:batch_predict"
    given = {"paths": ["images/"], **deployment["parameters"]}
    assert batch_predict.validate_parameters(given) == {
        "paths": [Path("images")], "run": Path("reports/latest"), "model": None,
        "output": Path("predictions.csv"), "top_k": 3,
    }  # fmt: skip
    with pytest.raises(ParameterTypeError, match="top_k"):
        batch_predict.validate_parameters(given | {"top_k": 101})  # more than any data's classes
