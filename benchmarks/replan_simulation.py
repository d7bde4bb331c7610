"""How the CNN's re-planning under a deadline behaves when epoch times waver: simulated,
no training. The schedule (`CosineToDeadline`) runs on a fake clock with epochs of
`--epoch-seconds`, each `--waver` either side at random, with and without the margin it
asks of the slowest epoch before adding epochs (`deadline_schedule.RAISE_MARGIN`).

    python -m benchmarks.replan_simulation [--runs 200] [--deadline 1600] [--waver 0.03]

Prints, for each margin, the plan's moves and reversals (a move against the one before)
per run, the seconds left unused, the runs that went past the deadline, and the epochs
trained.

Simpler than a run in two ways: the first epoch takes as long as the others (in a run it
also traces the network, and being among the latest three it holds back raising for
three epochs), and the epochs are not capped (the product caps them at 30, 60 for the
wide network on a lane of its own).
"""

from __future__ import annotations

import argparse
import itertools
import random
import types

from tasks.training.models.base import TrainingContext
from tasks.training.models.deadline_schedule import RAISE_MARGIN, CosineToDeadline


class FakeClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    seed: int, args: argparse.Namespace, margin: float = RAISE_MARGIN
) -> tuple[int, int, float, int]:
    """One run with `margin`: its plan's moves and reversals, its seconds unused, its
    epochs trained."""
    rng, clock = random.Random(seed), FakeClock()
    network = types.SimpleNamespace(optimizer=types.SimpleNamespace(), stop_training=False)
    context = TrainingContext(seed=0, threads=1, deadline=args.deadline, most_steps=1000)
    schedule = CosineToDeadline(
        network, 0.002, 1, args.planned, context, clock=clock, raise_margin=margin
    )
    plans, epoch = [args.planned], 0
    while not network.stop_training:
        schedule.on_epoch_begin(epoch)
        clock.now += args.epoch_seconds * (1 + rng.uniform(-args.waver, args.waver))
        schedule.on_train_batch_begin(0)
        schedule.on_train_batch_end(0)
        schedule.on_epoch_end(epoch)
        plans.append(schedule.last_epoch)
        epoch += 1
    moves = [b - a for a, b in itertools.pairwise(plans) if a != b]
    reversals = sum((a > 0) != (b > 0) for a, b in itertools.pairwise(moves))
    return len(moves), reversals, args.deadline - clock.now, epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=1600.0)
    parser.add_argument("--epoch-seconds", type=float, default=50.0)
    parser.add_argument("--planned", type=int, default=28, help="epochs planned at the start")
    parser.add_argument("--waver", type=float, default=0.03)
    args = parser.parse_args()
    for margin in sorted({0.0, RAISE_MARGIN}):
        moves, reversals, unused, epochs = zip(
            *(simulate(seed, args, margin) for seed in range(args.runs)), strict=True
        )
        print(
            f"margin {margin:.0%}: {sum(moves) / args.runs:.2f} moves and "
            f"{sum(reversals) / args.runs:.2f} reversals a run, {sum(unused) / args.runs:.1f} s "
            f"unused (most {max(unused):.1f} s), {sum(u < 0 for u in unused)} of {args.runs} "
            f"runs past the deadline, {sum(epochs) / args.runs:.2f} epochs"
        )


if __name__ == "__main__":
    main()
