"""prefect.yaml's quick deployment on a real Prefect server and process worker (loopback only)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from tasks.run.config import DEFAULT_MODELS, PipelineConfig
from tests.support.servers import REPO

# One xdist worker runs the tests that share the quick run (conftest).
pytestmark = pytest.mark.xdist_group("quick-run")


@pytest.mark.slow
def test_quick_deployment_runs_on_server_and_worker(tmp_path, prefect_server, quick_run):
    # The deployment's own configuration (every model), with the command line's quick run's
    # seed and cache: the stages run on the worker and find their models trained there.
    # Training on a worker: tests/test_cancel_deployment.py, test_history_deployment.py.
    workdir, quick_report, _ = quick_run
    prefect_server.deploy("daily-quick")
    config = {
        "profile": "quick",
        "seed": 7,
        "data": {"dir": str(workdir / "fashion")},
        "cache_dir": str(workdir / "data"),
        "output_dir": str(tmp_path / "reports"),
    }
    flow_run_id = prefect_server.run_deployment(
        "fashion-mnist-pipeline/daily-quick", {"config": config}
    )
    log = prefect_server.worker()
    state = prefect_server.wait_for_end(flow_run_id, 600)
    assert state["type"] == "COMPLETED", log.read_text()[-3000:]

    artifacts = httpx.post(
        f"{prefect_server.api}/artifacts/filter",
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
    # Fit times are measured once: equal ones mean the worker's run reused every model.
    pd.testing.assert_frame_equal(board, pd.read_csv(quick_report / "leaderboard.csv"))


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
