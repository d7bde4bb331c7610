"""What the report keeps of the tuning stage: its trials, and the best parameters as a
profile file for later runs. Imports nothing heavy, so the report can share it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from tasks.core.contracts import TuningSummary

TUNING_DIR = "tuning"
TUNED_PROFILE_FILE = "tuned-profile.json"


def profile_text(summaries: Sequence[TuningSummary]) -> str:
    """The best parameters as a profile file's JSON: configuration values for a later
    run's `profile_file`."""
    values = {"params": {summary.model: summary.best_params for summary in summaries}}
    return json.dumps(values, indent=2) + "\n"


def write_tuning_files(summaries: Sequence[TuningSummary], directory: Path) -> None:
    """Every search's trials in `TUNING_DIR`, and the best parameters as a profile file."""
    (directory / TUNING_DIR).mkdir()
    for summary in summaries:
        shutil.copyfile(summary.trials_file, directory / TUNING_DIR / summary.trials_file.name)
    (directory / TUNED_PROFILE_FILE).write_text(profile_text(summaries))
