"""The CNN's fit kept after each whole epoch, so that a rerun of a run that was cancelled,
killed or stopped by a full disk takes it up at that epoch instead of the first: the
network's weights with the optimiser's state (Adam's moments and step), where the learning
rate's schedule is, the scores so far and the seconds they took.

Each epoch's is a cache entry of its own (`cached_directory`: written aside, published in
one rename, checked against its manifest), in the directory the training stage names
beside the model's entry (`TrainingContext.resume_dir`), so a run killed while writing one
leaves the one before usable. Keras' `BackupAndRestore` rewrites one backup in place and
keeps neither the schedule nor the scores.

TensorFlow is needed only by the network the hooks are given.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import StorageError
from tasks.core.storage import cached_directory, entry_problem, sweep_scratch
from tasks.training.models.base import RESUMED_FILE
from tasks.training.models.deadline_schedule import CosineToDeadline

WEIGHTS_FILE = "fit.weights.h5"  # Keras names weights files *.weights.h5
STATE_FILE = "state.json"


def epoch_name(epochs_done: int) -> str:
    return f"epoch-{epochs_done:04d}"


def seed_states(network: Any) -> list[Any]:
    """Where the network's dropout layers are in their streams of random masks: variables of
    the network that Keras' weights files leave out, so a resumed fit would draw other masks
    than the fit in one go."""
    return [v for v in network.variables if v.path.endswith("seed_generator_state")]


@dataclass
class KeptEpochs:
    """Keras' hooks that keep a fit's latest whole epoch in `directory` (None: nowhere, as
    when measuring or tuning), and take up the one found there.

    `keep_until`: the most epochs whose progress is kept (None: all); early stopping's own
    state (the best epoch's weights) is Keras', so an unbudgeted fit keeps only the epochs
    before it watches, where a resumed fit is the one that was not interrupted."""

    directory: Path | None
    logger: logging.Logger
    keep_until: int | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs_done: int = 0
    earlier_seconds: float = 0.0
    earlier_cpu_seconds: float = 0.0
    # When this fit started: wall and CPU seconds, as `time.perf_counter`, `process_time`.
    started: tuple[float, float] = field(
        default_factory=lambda: (time.perf_counter(), time.process_time())
    )
    failed: bool = False
    # The network and schedule `take_up` gave: the ones whose epochs `on_epoch_end` keeps.
    network: Any = None
    schedule: CosineToDeadline | None = None

    def take_up(
        self, fresh: Callable[[], tuple[Any, CosineToDeadline]]
    ) -> tuple[Any, CosineToDeadline]:
        """A compiled network and its schedule from `fresh()`, with the latest kept epoch
        restored into them (`epochs_done` says how many it had trained). A kept epoch that
        fails its manifest or does not load (written by another Keras) is removed with a
        warning, and the one before it tried, or the fit starts afresh."""
        self.network, self.schedule = network, schedule = fresh()
        if self.directory is None or not self.directory.is_dir():
            return network, schedule
        (self.directory / RESUMED_FILE).unlink(missing_ok=True)  # an earlier take-up's
        sweep_scratch([self.directory], self.logger)  # what a run killed mid-write left
        for kept in sorted(self.directory.glob("epoch-*"), reverse=True):
            try:
                if problem := entry_problem(kept):
                    raise ValueError(problem)
                state = json.loads((kept / STATE_FILE).read_text())
                network.optimizer.build(network.trainable_variables)
                network.load_weights(kept / WEIGHTS_FILE)
                for variable, value in zip(seed_states(network), state["seeds"], strict=True):
                    variable.assign(np.asarray(value, dtype=variable.dtype))
                schedule.resume(state["schedule"], state["epochs_done"])
            except (OSError, ValueError, KeyError) as error:
                self.logger.warning("cnn: cannot take up %s (%s); removed it", kept, error)
                shutil.rmtree(kept, ignore_errors=True)
                self.network, self.schedule = network, schedule = fresh()  # if part-loaded
                continue
            self.history, self.epochs_done = state["history"], state["epochs_done"]
            self.earlier_seconds, self.earlier_cpu_seconds = state["seconds"], state["cpu_seconds"]
            resumed = {"epochs_done": self.epochs_done, "seconds": self.earlier_seconds}
            resumed["cpu_seconds"] = self.earlier_cpu_seconds
            (self.directory / RESUMED_FILE).write_text(json.dumps(resumed))
            self.logger.info(
                "cnn: takes up the fit after epoch %d, kept by an earlier run that trained "
                "for %.0f s: %s", self.epochs_done, self.earlier_seconds, kept,
            )  # fmt: skip
            break
        return network, schedule

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """Record the epoch's scores; keep the epoch where its progress is kept. A write that
        fails (a full disk) is told once, and the fit goes on without keeping more."""
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))
        self.epochs_done = done = epoch + 1
        kept_no_more = self.keep_until is not None and done > self.keep_until
        if self.directory is None or self.failed or kept_no_more:
            return
        wall, cpu = self.started
        state = {"epochs_done": done, "schedule": self.schedule.resumable()}
        state["history"] = self.history
        state["seeds"] = [variable.numpy().tolist() for variable in seed_states(self.network)]
        state["seconds"] = self.earlier_seconds + time.perf_counter() - wall
        state["cpu_seconds"] = self.earlier_cpu_seconds + time.process_time() - cpu

        def write(staging: Path) -> None:
            self.network.save_weights(staging / WEIGHTS_FILE)
            (staging / STATE_FILE).write_text(json.dumps(state))

        try:
            # This run's epoch replaces any of that name: one that failed to load, or another run's.
            cached_directory(self.directory / epoch_name(done), write, refresh=True)
        except StorageError as error:
            self.failed = True
            self.logger.warning("cnn: epochs are no longer kept for a rerun to take up: %s", error)
            return
        for older in self.directory.glob("epoch-*"):
            if older.name < epoch_name(done):
                shutil.rmtree(older, ignore_errors=True)
