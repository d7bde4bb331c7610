"""The re-planning simulation drives the CNN's real schedule: its margin on adding epochs
is what stops a wavering plan's reversals."""

from __future__ import annotations

import argparse

from benchmarks.replan_simulation import simulate


def test_the_margin_on_adding_epochs_stops_the_plan_reversing():
    args = argparse.Namespace(deadline=1600.0, epoch_seconds=50.0, planned=28, waver=0.03)
    with_margin = [simulate(seed, args) for seed in range(20)]
    without = [simulate(seed, args, margin=0.0) for seed in range(20)]
    assert sum(reversals for _, reversals, _, _ in with_margin) == 0
    assert sum(reversals for _, reversals, _, _ in without) >= 20
    for _, _, unused, epochs in with_margin:
        assert 0 <= unused < 2 * 50 * 1.03
        assert 30 <= epochs <= 32
