"""The model being served, and the switch to a newer run's model when one lands.

`--run reports/latest` follows the schedule: each finished run points `latest` at its
report directory (`tasks.evaluation.report.writer.point_latest_at`). When it points at
another run, that run's model is loaded beside the one serving, after the same manifest
check as `flows.predict`, and replaces it in one assignment: a batch already being
classified finishes on the old model, the next one takes the new. A run whose model is
refused (files failing their manifest, the model missing) is logged once and the old
model keeps serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.predict.model import RunModel, load_run_model, pinned_run

logger = logging.getLogger("fashion_mnist.serve")


@dataclass(frozen=True)
class Switch:
    """What a check for a newer run did: `switched` to its model, or refused it."""

    switched: bool
    message: str


@dataclass(frozen=True)
class Refusal:
    """A newer run whose model was not switched to, and why."""

    run_dir: str
    reason: str
    at: str


class ModelSlot:
    """The served model: `model` is read by each batch; `switch_if_newer` replaces it.

    Args:
        run: the run directory to serve; a link such as `reports/latest` is followed
            again on every check.
        model: the model to serve from each run; None: the one each run chose.
    """

    def __init__(self, run: Path, model: str | None, threads: int) -> None:
        self.run = run
        self.model_name = model
        self.threads = threads
        self._switching = threading.Lock()
        self.model: RunModel = self._load(pinned_run(run))
        self.since = _now()
        self.refused: Refusal | None = None
        self.switches = 0

    def newer_run(self) -> Path | None:
        """The run `run` points at now, when it is neither the one serving nor one refused."""
        try:
            target = self.run.resolve(strict=True)
        except OSError:  # `latest` being replaced this instant, or gone: check again later
            return None
        if target == self.model.run_dir or (self.refused and str(target) == self.refused.run_dir):
            return None
        return target

    def switch_if_newer(self) -> Switch | None:
        """Load the newer run's model and serve it, or refuse it; None: no newer run.
        Safe to call from any thread: one switch at a time."""
        with self._switching:
            if (target := self.newer_run()) is None:
                return None
            try:
                loaded = self._load(target)
            except Exception as exc:  # whatever fails, the old model serves on
                self.refused = Refusal(str(target), f"{exc.__class__.__name__}: {exc}", _now())
                message = (
                    f"refused the model of run {target.name}: {exc}; still serving "
                    f"{self.model.name} of run {self.model.run_id}"
                )
                logger.warning("%s", message)
                return Switch(switched=False, message=message)
            previous = self.model
            self.model, self.since, self.refused = loaded, _now(), None
            self.switches += 1
            message = (
                f"now serving {loaded.name} of run {loaded.run_id} (test accuracy "
                f"{loaded.test_accuracy:.4f}), in place of {previous.name} of run {previous.run_id}"
            )
            logger.info("%s", message)
            return Switch(switched=True, message=message)

    def _load(self, run_dir: Path) -> RunModel:
        return load_run_model(run_dir, self.model_name, self.threads)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
