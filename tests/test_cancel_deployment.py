"""A deployment's flow run cancelled through a real Prefect server and process worker
(`prefect flow-run cancel`): it stops cleanly, ends Cancelled, and a rerun resumes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tasks.core.errors import RunEnvironmentError
from tasks.core.storage import entry_problem
from tasks.run.preflight import check_api
from tests.conftest import REAL_DATA_DIR
from tests.test_deployment import free_loopback_port, start, stop, wait_for

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def scratch_left(data: Path) -> list[Path]:
    """Staging or stale directories: what a half-written cache entry would leave."""
    return [path for path in data.rglob(".*") if "staging" in path.name or "stale" in path.name]


def answers(api: str) -> bool:
    try:
        check_api(api, timeout_seconds=2)
    except RunEnvironmentError:
        return False
    return True


def prefect_cli(env: dict, *args: str) -> str:
    """The output of a `prefect` command that must succeed."""
    command = [PREFECT, "--no-prompt", *args]
    try:
        return subprocess.check_output(command, env=env, cwd=REPO, text=True, timeout=180,
                                       stderr=subprocess.STDOUT)  # fmt: skip
    except subprocess.CalledProcessError as failed:
        pytest.fail(f"{' '.join(args)} failed: {failed.output[-3000:]}")


def processes_of(flow_run_id: str) -> list[int]:
    """The processes a worker started for the flow run (they carry its id in their
    environment), and their children: the flow's and its task runner's."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def entries(data: Path, kind: str = "models") -> dict[Path, int]:
    """Every published entry of `kind` with its modification time."""
    published = (p for p in (data / kind).glob("*/*") if not p.name.startswith("."))
    return {p: p.stat().st_mtime_ns for p in published}


@pytest.mark.slow
def test_cancelled_flow_run_stops_cleanly_and_a_rerun_resumes(tmp_path):
    port = free_loopback_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PWD": str(REPO),
    }
    shutil.copytree(REAL_DATA_DIR, tmp_path / "fashion")
    data = tmp_path / "data"
    server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   env, tmp_path / "server.log")  # fmt: skip
    worker = None
    try:
        wait_for(lambda: answers(api), 120, "the Prefect server")

        def cli(*args: str) -> str:
            return prefect_cli(env, *args)

        def run_deployment() -> str:
            # The CNN (three epochs, 15 to 30 s each here: it gets both cores once logistic
            # regression is done) is the long fit to interrupt; logistic regression
            # finishes first and must survive the cancellation.
            config = {
                "profile": "quick",
                "models": ["cnn", "logistic_regression"],
                "params": {"cnn": {"epochs": 3}},
                "time_budget_minutes": 0,  # the configured (wide) network, not a plan
                "data": {"dir": str(tmp_path / "fashion")},
                "cache_dir": str(data),
                "output_dir": str(tmp_path / "reports"),
            }
            started = cli(
                "deployment", "run", "fashion-mnist-pipeline/daily-quick",
                "--params", json.dumps({"config": config}),
            )  # fmt: skip
            return re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)

        def state_of(flow_run_id: str) -> dict:
            return httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=5).json()["state"]

        cli("work-pool", "create", "fashion-mnist", "--type", "process")
        cli("deploy", "--name", "daily-quick")
        first = run_deployment()
        worker = start([PREFECT, "worker", "start", "--pool", "fashion-mnist"],
                       env, tmp_path / "worker.log")  # fmt: skip

        def cnn_training() -> bool:  # logistic regression saved, the CNN mid-fit
            saved = list((data / "models" / "logistic_regression").glob("*/manifest.json"))
            return bool(saved) and bool(list((data / "models" / "cnn").glob(".*staging*")))

        wait_for(cnn_training, 400, "logistic regression to finish and the CNN to train")
        time.sleep(10)  # well into the CNN's first epoch
        finished = entries(data)
        cancelled = time.monotonic()
        cli("flow-run", "cancel", first)

        def final(flow_run_id: str):
            state = state_of(flow_run_id)
            ended = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
            return state if state["type"] in ended else None

        # The flow run's processes exit within seconds (Prefect's worker would SIGKILL them
        # after 30 s); the worker records Cancelled once it has seen them go.
        wait_for(lambda: not processes_of(first), 60, "the run's processes to exit", 0.5)
        print(f"cancel command -> processes gone: {time.monotonic() - cancelled:.1f} s")
        state = wait_for(lambda: final(first), 120, "the cancelled run to end", interval=0.5)
        print(f"cancel command -> {state['type']}: {time.monotonic() - cancelled:.1f} s")
        assert state["type"] == "CANCELLED", (tmp_path / "worker.log").read_text()[-3000:]
        assert scratch_left(data) == []  # nothing half-written, no staging directories
        assert all(entry_problem(entry) is None for entry in entries(data))
        assert entries(data) == finished  # the CNN never published a partial model
        assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").iterdir())

        second = run_deployment()
        state = wait_for(lambda: final(second), 600, "the rerun to finish", interval=3)
        assert state["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
        after = entries(data)
        assert {path: after[path] for path in finished} == finished  # reused, not retrained
        assert {path.parent.name for path in after} == {"cnn", "logistic_regression"}
        board = pd.read_csv(tmp_path / "reports" / "latest" / "leaderboard.csv")
        assert sorted(board.model) == ["cnn", "ensemble", "logistic_regression"]
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
