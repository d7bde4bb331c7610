"""Where the real data is, and names for data of classes of its own."""

from __future__ import annotations

from pathlib import Path

REAL_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
THREE_CLASSES = ("sandal", "sneaker", "boot")
# The shared quick run's command line (conftest's `quick_run`), from its working directory.
QUICK_ARGS = ["--profile", "quick", "--data-dir", "fashion", "--seed", "7"]
