"""The model a run trained, loaded once, after its saved files pass their manifest check.

A run's report directory names its models' cache entries in `metrics.json`, relative to
the directory the run was started from; the ensemble is its members' entries and weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.contracts import CLASS_NAMES, as_stored
from tasks.core.errors import PredictionInputError
from tasks.core.storage import entry_problem
from tasks.training.models.base import Classifier
from tasks.training.models.registry import load_model, model_file_digests

LEADERBOARD_FILE = "leaderboard.csv"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class RunModel:
    """One of a run's models, ready to predict, with what identifies it.

    Attributes:
        class_names: the classes it predicts, by label (`run_class_names`).
        files: each saved model file it predicts with, and the SHA-256 its manifest holds.
        weights: the ensemble's weight of each classifier; None for a single model.
    """

    run_dir: Path
    run_id: str
    name: str
    rank: int
    test_accuracy: float
    accuracy_interval: tuple[float, float]
    confidence: float  # level of the interval
    class_names: tuple[str, ...]
    files: dict[str, str]
    classifiers: tuple[Classifier, ...]
    weights: tuple[float, ...] | None = None

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities of flat float32 features in [0, 1], one row per image."""
        stored = [as_stored(c.predict_proba(features)) for c in self.classifiers]
        if self.weights is None:
            return stored[0]
        # The ensemble's own mix (tasks/evaluation/ensemble.py), stored as its evaluation stores it.
        mixed = np.tensordot(np.asarray(self.weights), np.stack(stored).astype(np.float64), 1)
        return as_stored(mixed)

    def provenance(self) -> dict:
        """What names the model: JSON-ready."""
        low, high = self.accuracy_interval
        return {
            "run_id": self.run_id, "run_dir": str(self.run_dir), "model": self.name,
            "rank": self.rank, "test_accuracy": self.test_accuracy,
            "test_accuracy_interval": [low, high], "confidence": self.confidence,
            "model_files_sha256": self.files,
        }  # fmt: skip


def pinned_run(run_dir: Path) -> Path:
    """The run a link such as `reports/latest` points at now, so that every file is read
    from that one run when the next run moves the link meanwhile; a missing one as given,
    for the error to name it."""
    return run_dir.resolve() if run_dir.exists() else run_dir


def read_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """A run's leaderboard and metrics document.

    Raises:
        PredictionInputError: when `run_dir` is not a run's report directory.
    """
    if not run_dir.is_dir():
        raise PredictionInputError(
            f"{run_dir}: no run found; train one with `python -m flows.full_pipeline` "
            "or name a run's report directory with --run"
        )
    try:
        board = pd.read_csv(run_dir / LEADERBOARD_FILE)
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise PredictionInputError(
            f"{run_dir}: not a run's report directory ({exc.__class__.__name__}: {exc})"
        ) from None
    return board, metrics


def recorded_choice(metrics: dict, ranked: list[str]) -> str | None:
    """The model a run chose, as its metrics.json records it; its first-ranked for a run
    from before it recorded its choice."""
    return metrics.get("chosen_model") or next(iter(ranked), None)


def run_class_names(metrics: dict) -> tuple[str, ...]:
    """The classes a run's models predict, by label, as its metrics.json records them;
    Fashion-MNIST's for a run from before it recorded them."""
    return tuple(metrics.get("class_names", CLASS_NAMES))


def model_directory(recorded: str, run_dir: Path) -> Path:
    """A model's cache entry as the run recorded it: relative to the current directory, or
    else to the directory the run was started from (the one holding its output directory).

    Raises:
        PredictionInputError: when neither holds it.
    """
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [path, run_dir.resolve().parent.parent / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise PredictionInputError(
        f"{recorded}: the run's saved model is not in {' nor in '.join(map(str, candidates))}"
    )


def load_run_model(run_dir: Path, model: str | None, threads: int) -> RunModel:
    """The run's `model` (default: the one it chose, the ensemble included), loaded.

    Raises:
        PredictionInputError: no run in `run_dir`, a model it has not, or saved model
            files missing, failing their manifest check, or retrained since the run.
    """
    run_dir = pinned_run(run_dir)
    board, metrics = read_run(run_dir)
    run_id = metrics.get("run_id", run_dir.name)
    ranked = board.model[board["rank"].notna()].tolist()  # a model that failed has no rank
    name = model or recorded_choice(metrics, ranked)
    if name not in ranked:
        failed = dict(zip(board.model, board.get("error", board.model), strict=True))
        reason = f"{name!r} {failed[name]}" if name in failed else f"unknown model {name!r}"
        raise PredictionInputError(f"{reason}; run {run_id} has: {', '.join(ranked) or 'none'}")
    params = metrics["models"][name]["params"]
    is_ensemble = set(params) == {"members", "weights"}
    members = params["members"] if is_ensemble else [name]
    directories = [model_directory(metrics["models"][m]["model_dir"], run_dir) for m in members]
    files = {}
    for member, directory in zip(members, directories, strict=True):
        if problem := entry_problem(directory):
            raise PredictionInputError(
                f"{directory}: refusing the saved {member} model: {problem} (manifest check)"
            )
        digests = model_file_digests(directory)
        recorded = metrics["models"][member].get("model_files_sha256")  # None before they were
        if recorded is not None and digests != recorded:
            raise PredictionInputError(
                f"{directory}: refusing the saved {member} model: it is not the one run "
                f"{run_id} evaluated (retrained since, by a run with --refresh or a rebuilt "
                "cache entry); the run that retrained it can predict with it"
            )
        files |= {str(directory / name): digest for name, digest in digests.items()}
    row = board.set_index("model").loc[name]
    return RunModel(
        run_dir=run_dir,
        run_id=run_id,
        name=name,
        rank=int(row["rank"]),
        test_accuracy=float(row.test_accuracy),
        accuracy_interval=(float(row.accuracy_low), float(row.accuracy_high)),
        confidence=metrics.get("accuracy_interval", {}).get("confidence", 0.95),
        class_names=run_class_names(metrics),
        files=files,
        classifiers=tuple(load_model(directory, threads) for directory in directories),
        weights=tuple(params["weights"]) if is_ensemble else None,
    )
