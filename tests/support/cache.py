"""What a run leaves in its cache directory."""

from __future__ import annotations

from pathlib import Path


def scratch_left(data: Path) -> list[Path]:
    """Staging or stale directories: what a half-written cache entry would leave."""
    return [path for path in data.rglob(".*") if "staging" in path.name or "stale" in path.name]


def entries(data: Path, kind: str = "models") -> dict[Path, int]:
    """Every published entry of `kind` with its modification time."""
    published = (p for p in (data / kind).glob("*/*") if not p.name.startswith("."))
    return {p: p.stat().st_mtime_ns for p in published}
