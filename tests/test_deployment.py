"""prefect.yaml's quick deployment on a real Prefect server and process worker (loopback only)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from tasks.run.config import DEFAULT_MODELS, PipelineConfig
from tests.conftest import REAL_DATA_DIR

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], env: dict, log: Path, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to its process group (a Dask worker's nanny and worker too), SIGKILL after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def running_server(home: Path, **settings: str) -> Iterator[tuple[str, dict]]:
    """A real Prefect server on loopback with a database under `home`; yields its API URL
    and the environment (PREFECT_* of this process dropped, `settings` added) to use it."""
    port = free_loopback_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home / "prefect-home"), "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
            **settings}  # fmt: skip
    server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   env, home / "server.log")  # fmt: skip

    def healthy() -> bool:
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 120, "the Prefect server")
        yield api, env
    finally:
        stop(server)


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_quick_deployment_runs_on_server_and_worker(tmp_path):
    port = free_loopback_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # its own database and settings
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PWD": str(REPO),  # prefect.yaml's pull step resolves {{ $PWD }} at deploy time
    }
    shutil.copytree(REAL_DATA_DIR, tmp_path / "fashion")
    server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   env, tmp_path / "server.log")  # fmt: skip
    worker = None
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 120, "the Prefect server")

        def cli(*args: str) -> str:
            done = subprocess.run(
                [PREFECT, "--no-prompt", *args], env=env, cwd=REPO, capture_output=True,
                text=True, timeout=180,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        cli("work-pool", "create", "fashion-mnist", "--type", "process")
        cli("deploy", "--name", "daily-quick")
        config = {
            "profile": "quick",
            "data": {"dir": str(tmp_path / "fashion")},
            "cache_dir": str(tmp_path / "data"),
            "output_dir": str(tmp_path / "reports"),
        }
        started = cli(
            "deployment", "run", "fashion-mnist-pipeline/daily-quick",
            "--params", json.dumps({"config": config}),
        )  # fmt: skip
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)
        worker = start([PREFECT, "worker", "start", "--pool", "fashion-mnist"],
                       env, tmp_path / "worker.log")  # fmt: skip

        def final_state():
            state = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=5).json()["state"]
            return state if state["type"] in {"COMPLETED", "FAILED", "CRASHED"} else None

        state = wait_for(final_state, 600, "the flow run to finish", interval=3)
        assert state["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]

        artifacts = httpx.post(
            f"{api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
            timeout=5,
        ).json()
        keys = {artifact["key"] for artifact in artifacts}
        assert "fashion-mnist-leaderboard" in keys
        table = next(a for a in artifacts if a["key"] == "fashion-mnist-leaderboard")["data"]
        rows = json.loads(table) if isinstance(table, str) else table
        board = pd.read_csv(tmp_path / "reports" / "latest" / "leaderboard.csv")
        assert [row["model"] for row in rows] == board.model.tolist()
        assert sorted(board.model) == sorted([*DEFAULT_MODELS, "ensemble"])
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


def test_every_training_deployment_gives_a_valid_config():
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    configs = {
        d["name"]: PipelineConfig(**d["parameters"]["config"])
        for d in deployments
        if d["entrypoint"] == "flows/full_pipeline.py:full_pipeline"
    }
    assert sorted(configs) == ["daily-quick", "monthly-tune", "weekly-full"]
    assert configs["monthly-tune"].tune.enabled
    assert configs["monthly-tune"].tune.save_profile == Path("profiles/tuned.json")
