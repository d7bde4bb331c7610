"""Runs that say what changed, through a real Prefect server and process worker: a
deployment runs on real images, then on the same images with 30 % of the Coat training
labels turned into Pullover. The second run names the change, shows the model's drop
with its p-value, emits the regression event, and fails as asked; the command line exits 4.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tasks.history.stages import REGRESSED_EVENT
from tests.support.data import REAL_DATA_DIR
from tests.support.servers import REPO
from tests.support.waiting import wait_until

COAT, PULLOVER = 4, 2
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path) -> np.ndarray:
    content = gzip.decompress(path.read_bytes())
    ndim = content[3]
    shape = [int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(content, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        size.to_bytes(4, "big") for size in array.shape
    )
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array).tobytes(), mtime=0))


def write_datasets(tmp_path: Path) -> tuple[Path, Path, int]:
    """6,000 real training and 2,000 test images as IDX files, and the same with 30 % of
    the Coat training labels changed to Pullover; returns both folders and that count."""
    arrays = {name: read_idx(REAL_DATA_DIR / file) for name, file in IDX_FILES.items()}
    arrays = {name: array[:6000] if name.startswith("train") else array[:2000]
              for name, array in arrays.items()}  # fmt: skip
    relabelled = arrays["train_labels"].copy()
    coats = np.flatnonzero(relabelled == COAT)
    changed = np.random.default_rng(0).choice(coats, int(0.3 * len(coats)), replace=False)
    relabelled[changed] = PULLOVER
    folders = []
    for name, labels in (("before", arrays["train_labels"]), ("after", relabelled)):
        folder = tmp_path / name
        folder.mkdir()
        for key, file in IDX_FILES.items():
            write_idx(folder / file, labels if key == "train_labels" else arrays[key])
        folders.append(folder)
    return folders[0], folders[1], len(changed)


def since_of(reports: Path) -> dict:
    return json.loads((reports / "latest" / "metrics.json").read_text())["since_previous_run"]


@pytest.mark.slow
def test_a_relabelled_class_is_named_and_the_model_regression_alerts_and_fails(
    tmp_path, prefect_server
):
    before, after, changed = write_datasets(tmp_path)
    reports = tmp_path / "reports"
    api, env = prefect_server.api, prefect_server.env
    prefect_server.deploy("daily-quick")
    log = prefect_server.worker()

    def run_deployment(data_dir: Path, **overrides) -> tuple[str, dict]:
        config = {
            "profile": "quick",
            "models": ["logistic_regression"],
            "time_budget_minutes": 0,
            "data": {"dir": str(data_dir)},
            "cache_dir": str(tmp_path / "data"),
            "output_dir": str(reports),
            **overrides,
        }
        flow_run_id = prefect_server.run_deployment(
            "fashion-mnist-pipeline/daily-quick", {"config": config}
        )
        return flow_run_id, prefect_server.wait_for_end(flow_run_id, 600)

    assert run_deployment(before)[1]["type"] == "COMPLETED"
    assert since_of(reports) is None  # the first run has nothing to compare with

    flow_run_id, state = run_deployment(after, fail_on_regression=True)
    assert state["type"] == "FAILED", log.read_text()[-3000:]
    assert "regressed" in state["message"]
    since = since_of(reports)
    train = since["data"]["splits"]["train"]
    assert train["classes"]["Coat"]["change"] == -changed
    assert train["classes"]["Pullover"]["change"] == changed
    assert train["relabelled"] == changed
    assert train["added"] == train["removed"] == 0
    assert train["relabellings"] == [{"from": "Coat", "to": "Pullover", "images": changed}]
    assert since["data"]["splits"]["test"]["relabelled"] == 0
    model = since["models"]["logistic_regression"]
    assert model["test"] == "McNemar"  # the same test images: a paired test
    assert model["change"] < -0.01
    assert model["p_value"] < 0.05
    assert model["regression"]
    report = (reports / "latest" / "report.md").read_text()
    section = report.split("## Since the champion run")[1].split("\n## ")[0]
    assert "Coat" in section
    assert "logistic_regression" in section

    def regression_events() -> list[dict]:
        # Events reach the server after the flow run ends, and the server is shared: this
        # flow run's events are those related to it.
        query = {"filter": {"event": {"name": [REGRESSED_EVENT]}}, "limit": 50}
        events = httpx.post(f"{api}/events/filter", json=query, timeout=10).json()["events"]
        return [
            event
            for event in events
            if f"prefect.flow-run.{flow_run_id}"
            in {related["prefect.resource.id"] for related in event["related"]}
        ]

    events = wait_until(regression_events, 60, "the regression event on the server")
    assert [event["payload"]["model"] for event in events] == ["logistic_regression"]
    assert events[0]["payload"]["p_value"] == pytest.approx(model["p_value"])

    # The same data from the command line: unchanged, then relabelled with the flag.
    cli_reports = tmp_path / "cli-reports"
    command = [sys.executable, "-m", "flows.full_pipeline", "--profile", "quick",
               "--models", "logistic_regression", "--time-budget", "0",
               "--output-dir", str(cli_reports)]  # fmt: skip
    cli_env = env | {"PYTHONPATH": str(REPO)}
    for data_dir in (before, before):
        done = subprocess.run(
            [*command, "--data-dir", str(data_dir)],
            cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    unchanged = since_of(cli_reports)
    assert not unchanged["data"]["changed"]
    assert not unchanged["models"]["logistic_regression"]["significant"]
    failed = subprocess.run(
        [*command, "--data-dir", str(after), "--fail-on-regression"],
        cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert failed.returncode == 4, failed.stderr[-3000:]
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: 1 model regressed")
    assert "logistic_regression" in last_line
