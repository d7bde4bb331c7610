"""The benchmarks' tables: the rows of each measurement appended to its CSV as soon as they
are measured, so that a stopped benchmark keeps what it ran."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def appended(table: Path, rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """`table`'s rows (none where it does not exist yet) and `rows` after them, written back
    to it; all of them."""
    kept = pd.read_csv(table) if table.exists() else pd.DataFrame()
    everything = pd.concat([kept, pd.DataFrame(rows)], ignore_index=True)
    everything.to_csv(table, index=False)
    return everything
