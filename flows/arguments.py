"""What the command lines share: one-line errors, number parsing, the default run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

DEFAULT_RUN = Path("reports/latest")


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, naming where help is, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def whole_number(low: int, high: int | None = None):
    """A parser of whole numbers from `low` to `high` (no upper bound when None)."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
            expected = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"{text!r} is not a number {expected}")
        return int(text)

    return parse


def non_negative_number(text: str) -> float:
    """A parser of numbers of at least 0, fractions allowed."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of at least 0")
    return value
