"""Prediction with a real run on the real data: exported test images give the run's own
predictions, and prefect.yaml's batch-predict deployment runs on a real server and worker."""

from __future__ import annotations

import json
import os
import re
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
from tasks.data.sources.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_gzip
from tests.conftest import REAL_DATA_DIR
from tests.test_deployment import PREFECT, REPO, free_loopback_port, start, stop, wait_for

SMALL = {"train_subset_size": 2000, "validation_size": 500, "test_subset_size": 1000}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A quick-profile run of two fast models on a small subset of the real data, started
    from its own working directory: returns its report directory (`reports/latest`)."""
    workdir = tmp_path_factory.mktemp("real-run")
    (workdir / "small.json").write_text(json.dumps(SMALL))
    env = os.environ | {"PYTHONPATH": str(REPO), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.full_pipeline", "--profile", "quick",
         "--models", "logistic_regression,random_forest", "--data-dir", str(REAL_DATA_DIR),
         "--profile-file", "small.json"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return workdir / "reports" / "latest"


def real_test_split(split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    images = read_gzip(REAL_DATA_DIR / f"{split}-images-idx3-ubyte.gz")
    labels = read_gzip(REAL_DATA_DIR / f"{split}-labels-idx1-ubyte.gz")
    return parse_idx(images, IMAGES_MAGIC, split), parse_idx(labels, LABELS_MAGIC, split)


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


class LocalPrefect:
    """A Prefect server and a process worker of the `fashion-mnist` pool on loopback, with
    their own home (database, settings), as tests/test_deployment.py starts them."""

    def __init__(self, home: Path):
        self.home, port = home, free_loopback_port()
        self.api = f"http://127.0.0.1:{port}/api"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env = inherited | {
            "PREFECT_HOME": str(home), "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PWD": str(REPO),  # prefect.yaml's pull step resolves {{ $PWD }} at deploy time
        }  # fmt: skip
        self.server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], self.env, home.with_suffix(".server.log"))  # fmt: skip
        self.worker: subprocess.Popen | None = None

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.api}/health", timeout=2).is_success
        except httpx.HTTPError:
            return False

    def run(self, *args: str) -> str:
        """A `prefect` command against this server, which must succeed."""
        done = subprocess.run([PREFECT, "--no-prompt", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=180)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def start_worker(self) -> None:
        log = self.home.with_suffix(".worker.log")
        self.worker = start([PREFECT, "worker", "start", "--pool", "fashion-mnist"], self.env, log)

    def final_state(self, flow_run_id: str) -> dict | None:
        state = httpx.get(f"{self.api}/flow_runs/{flow_run_id}", timeout=5).json()["state"]
        return state if state["type"] in {"COMPLETED", "FAILED", "CRASHED"} else None

    def stop(self) -> None:
        for process in (self.worker, self.server):
            if process is not None:
                stop(process)


@pytest.mark.slow
def test_batch_predict_deployment_runs_on_a_server_and_worker(real_run, tmp_path):
    images, _ = real_test_split()
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        Image.fromarray(images[index]).save(folder / f"{index}.png")
    (folder / "broken.png").write_text("not an image")
    prefect = LocalPrefect(tmp_path / "prefect-home")
    try:
        wait_for(prefect.answers, 120, "the Prefect server")
        prefect.run("work-pool", "create", "fashion-mnist", "--type", "process")
        prefect.run("deploy", "--name", "batch-predict")
        output = tmp_path / "out" / "predictions.csv"
        parameters = {"paths": [str(folder)], "run": str(real_run), "output": str(output)}
        started = prefect.run("deployment", "run", "batch-predict/batch-predict",
                              "--params", json.dumps(parameters))  # fmt: skip
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)
        prefect.start_worker()
        state = wait_for(lambda: prefect.final_state(flow_run_id), 300, "the flow run", 3)
        log = tmp_path / "prefect-home.worker.log"
        assert state["type"] == "COMPLETED", log.read_text()[-3000:]

        rows = pd.read_csv(output, keep_default_na=False)
        names = ["0.png", "1.png", "2.png", "3.png", "4.png", "broken.png"]
        assert rows.path.tolist() == [str(folder / name) for name in names]
        assert main([*rows.path[:5], "--run", str(real_run), "--output",
                     str(tmp_path / "cli.csv")]) == 0  # fmt: skip
        cli_rows = pd.read_csv(tmp_path / "cli.csv")
        assert rows.predicted_class[:5].tolist() == cli_rows.predicted_class.tolist()
        assert rows.error.tolist()[5] == "not an image: Pillow recognises no image format in it"
        artifacts = httpx.post(f"{prefect.api}/artifacts/filter", timeout=5, json={
            "artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).json()  # fmt: skip
        summary = next(a for a in artifacts if a["key"] == "batch-predictions")["data"]
        assert "classified 5 images" in summary
        assert "unreadable         1" in summary
    finally:
        prefect.stop()


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
