"""A deployment's flow run cancelled through a real Prefect server and process worker
(`prefect flow-run cancel`): it stops cleanly, ends Cancelled, and a rerun resumes, the CNN
from its last whole epoch."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.storage import entry_problem
from tests.support.cache import entries, scratch_left
from tests.support.data import REAL_DATA_DIR
from tests.support.waiting import wait_until

# Enough epochs that the CNN is still fitting when the cancel lands, on any CPU: on a
# 2-core AMX Xeon three took 16 s in all, and the cancel 8 s after the first had ended.
CNN_EPOCHS = 8


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


@pytest.mark.slow
def test_cancelled_flow_run_stops_cleanly_and_a_rerun_resumes(tmp_path, prefect_server):
    shutil.copytree(REAL_DATA_DIR, tmp_path / "fashion")
    data = tmp_path / "data"
    prefect_server.deploy("daily-quick")

    def run_deployment() -> str:
        # The CNN (CNN_EPOCHS epochs, 4 to 30 s each: it gets both cores once logistic
        # regression is done) is the long fit to interrupt; logistic regression
        # finishes first and must survive the cancellation.
        config = {
            "profile": "quick",
            "models": ["cnn", "logistic_regression"],
            "params": {"cnn": {"epochs": CNN_EPOCHS}},
            "time_budget_minutes": 0,  # the configured (wide) network, not a plan
            "data": {"dir": str(tmp_path / "fashion")},
            "cache_dir": str(data),
            "output_dir": str(tmp_path / "reports"),
        }
        return prefect_server.run_deployment(
            "fashion-mnist-pipeline/daily-quick", {"config": config}
        )

    since = len(prefect_server.worker_output())
    first = run_deployment()
    log = prefect_server.worker()

    def cnn_training() -> bool:  # logistic regression saved, the CNN mid-fit
        saved = list((data / "models" / "logistic_regression").glob("*/manifest.json"))
        staging = list((data / "models" / "cnn").glob(".*staging*"))
        # Logged at the end of the first of its epochs: the second has begun.
        epoch = "Task run 'train-cnn' - cnn epoch 1:" in prefect_server.worker_output(since)
        return bool(saved) and bool(staging) and epoch

    wait_until(cnn_training, 400, "logistic regression to finish and the CNN's first epoch")
    finished = entries(data)
    cancelled = time.monotonic()
    prefect_server.cli("flow-run", "cancel", first)

    # The flow run's processes exit within seconds (Prefect's worker would SIGKILL them
    # after 30 s); the worker records Cancelled once it has seen them go.
    wait_until(lambda: not processes_of(first), 60, "the run's processes to exit", 0.5)
    print(f"cancel command -> processes gone: {time.monotonic() - cancelled:.1f} s")
    state = prefect_server.wait_for_end(first, 120)
    print(f"cancel command -> {state['type']}: {time.monotonic() - cancelled:.1f} s")
    assert state["type"] == "CANCELLED", log.read_text()[-3000:]
    assert f"cnn epoch {CNN_EPOCHS}:" not in prefect_server.worker_output(since)  # mid-fit
    assert scratch_left(data) == []  # nothing half-written, no staging directories
    assert all(entry_problem(entry) is None for entry in entries(data))
    assert entries(data) == finished  # the CNN never published a partial model
    assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").iterdir())

    # The CNN's whole epochs were kept: the rerun takes its fit up after the last of them.
    (kept,) = (data / "models" / "cnn").glob(".*.resume/epoch-*")
    epochs_done = int(kept.name.removeprefix("epoch-"))
    since = len(prefect_server.worker_output())
    second = run_deployment()
    state = prefect_server.wait_for_end(second, 600)
    assert state["type"] == "COMPLETED", log.read_text()[-3000:]
    rerun = prefect_server.worker_output(since)
    assert f"cnn: takes up the fit after epoch {epochs_done}, kept by an earlier run" in rerun
    assert f"cnn epoch {epochs_done}:" not in rerun
    assert f"cnn epoch {CNN_EPOCHS}:" in rerun
    assert not list((data / "models" / "cnn").glob(".*.resume"))
    after = entries(data)
    assert {path: after[path] for path in finished} == finished  # reused, not retrained
    assert {path.parent.name for path in after} == {"cnn", "logistic_regression"}
    board = pd.read_csv(tmp_path / "reports" / "latest" / "leaderboard.csv")
    assert sorted(board.model) == ["cnn", "ensemble", "logistic_regression"]
