"""The peers benchmark's rows: the project's run through the budget sweep, then each peer on
its split, with the overrun of the budget."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import budget_sweep, peers
from tests.support.waiting import wait_until


@pytest.mark.parametrize(
    ("chosen", "avx2", "seed"),
    [(peers.PEERS, False, 42), (("autogluon",), False, 7), (("autogluon",), True, 42)],
)
def test_each_budget_runs_the_project_then_each_chosen_peer_on_its_split(
    tmp_path, monkeypatch, chosen, avx2, seed
):
    processed = tmp_path / "data" / "processed" / "0123456789abcdef"
    processed.mkdir(parents=True)
    swept = []

    def run_budget(*args, **kwargs):
        # The call must fit the sweep's own function: a changed signature fails here.
        call = inspect.signature(budget_sweep.run_budget).bind(*args, **kwargs)
        call.apply_defaults()
        swept.append(tuple(call.arguments.values()))
        setting = "AVX2 / float32" if call.arguments["avx2"] else "native"
        return {"directory": str(tmp_path), "best_single_accuracy": 0.916,
                "ensemble_accuracy": 0.917, "wall_seconds": 275.0, "setting": setting}  # fmt: skip

    def peer_in_fresh_process(peer, split, minutes, python):
        assert (split, minutes, python) == (processed, 5.0, "peers-python")
        return {"accuracy": 0.904, "wall_seconds": 330.0 if peer == "flaml" else 303.0}

    monkeypatch.setattr(peers, "run_budget", run_budget)
    monkeypatch.setattr(peers, "in_fresh_process", peer_in_fresh_process)
    recorded = []
    monkeypatch.setattr(peers, "record", lambda row, output: recorded.append((row, output)))
    rows = peers.budget_rows(5.0, "peers-python", chosen, avx2, sweep_output=tmp_path, seed=seed)
    assert swept == [(5.0, avx2, [], seed)]
    # The project's run is the sweep's row too, with every field the sweep records.
    assert [(row["setting"], output) for row, output in recorded] == [
        ("AVX2 / float32" if avx2 else "native", tmp_path)
    ]
    # Every row, the peers' too, says how the project ran beside them, and on which split.
    assert {row["setting"] for row in rows} == {"AVX2 / float32" if avx2 else "native"}
    assert {row["seed"] for row in rows} == {seed}
    assert [row["system"] for row in rows] == [
        "this project (best single model)", "this project (ensemble)", *chosen,
    ]  # fmt: skip
    overruns = {"autogluon": 1.0, "flaml": 10.0}
    assert [row["overrun_percent"] for row in rows] == [-8.3, -8.3, *map(overruns.get, chosen)]
    assert rows[0]["accuracy"] == pytest.approx(0.916)


def test_a_peer_still_running_at_four_times_its_budget_is_stopped_without_an_accuracy(
    tmp_path,
):
    stuck = tmp_path / "stuck-python"  # a peer whose worker outlives it unless stopped too
    stuck.write_text(
        f"#!/bin/sh\nsleep 60 >/dev/null 2>&1 &\necho $! > {tmp_path / 'worker'}\nwait\n"
    )
    stuck.chmod(0o755)
    minutes = 0.005  # a 0.3 s budget: stopped after 1.2 s
    found = peers.in_fresh_process("flaml", tmp_path, minutes, str(stuck))
    worker = Path(f"/proc/{(tmp_path / 'worker').read_text().strip()}/stat")

    def dead() -> bool:
        try:
            return worker.read_text().split()[2] == "Z"
        except FileNotFoundError:  # reaped
            return True

    wait_until(dead, 5, "the killed worker to die")  # a busy machine may take a moment
    assert math.isnan(found["accuracy"])
    assert found["wall_seconds"] == pytest.approx(peers.STOP_AT_BUDGETS * minutes * 60)
    rows = pd.DataFrame([
        {"budget_minutes": minutes, "system": "flaml", "overrun_percent": 300.0, "cpu": "x",
         "commit": "c"} | found,
    ])  # fmt: skip
    peers.render(rows, tmp_path / "peers.md")
    # A row written before `--avx2` and `--seed` existed ran the project as it is, seed 42.
    assert (
        "| flaml | none: stopped at 4x its budget | 1.2 | 300.0 | x | native | 42 | c |"
        in (tmp_path / "peers.md").read_text()
    )
