"""The run history's SQLite database, so that a run can say what changed since the last one.

Each completed run is recorded in `<output_dir>/history.sqlite`: its data's fingerprint
and class counts; per image, a content hash, the label and the mean intensity (to count
images added, removed and relabelled, and to test for drift); and each model's test
accuracy and per-image correctness (for McNemar's paired test). Each profile has a
champion, the run the next one is compared with: the last run without a regression, or
one a user pinned. Runs sharing an output directory may record at once: every write is
one transaction, and a busy database is waited for. Only the newest runs of a profile and
its champion keep their per-image data; the rest of every run stays.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tasks.core.errors import RunEnvironmentError, UsageError
from tasks.history.snapshots import ModelOutcome, RunSnapshot, SplitImages

HISTORY_FILE = "history.sqlite"
SCHEMA_VERSION = 2
BUSY_TIMEOUT_SECONDS = 60.0
# Comparing needs the previous run's per-image data only; ~1 MB a run for 70,000 images.
KEEP_IMAGE_DATA_RUNS = 3

_SCHEMA = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        finished_at TEXT NOT NULL,  -- ISO 8601 in UTC, so text order is time order
        profile TEXT NOT NULL,
        class_names TEXT NOT NULL,  -- JSON list, which labels index
        data_fingerprint TEXT NOT NULL,
        test_set_fingerprint TEXT NOT NULL
    )""",
    "CREATE INDEX runs_by_profile ON runs (profile, finished_at)",
    """CREATE TABLE class_counts (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        split TEXT NOT NULL,
        class_name TEXT NOT NULL,
        images INTEGER NOT NULL,
        PRIMARY KEY (run_id, split, class_name)
    )""",
    """CREATE TABLE split_images (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        split TEXT NOT NULL,
        image_hashes BLOB NOT NULL,  -- .npy of uint64: each image's BLAKE2b-64
        labels BLOB NOT NULL,  -- .npy of uint8
        mean_intensity BLOB NOT NULL,  -- .npy of float32, 0-255
        PRIMARY KEY (run_id, split)
    )""",
    """CREATE TABLE models (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        model TEXT NOT NULL,
        test_accuracy REAL NOT NULL,
        test_images INTEGER NOT NULL,
        correct BLOB NOT NULL,  -- np.packbits of each test image's correctness
        PRIMARY KEY (run_id, model)
    )""",
)
_RUN_COLUMNS = "run_id, finished_at, class_names, data_fingerprint, test_set_fingerprint"
LAST_RUN = "the last run"  # how a run is chosen for comparison when its profile has no champion
# Version 2: each profile's champion, the run the next one is compared with.
_CHAMPIONS = """CREATE TABLE champions (
    profile TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    chosen TEXT NOT NULL  -- how: the last run without a regression, or pinned by a user
)"""


def history_path(output_dir: Path) -> Path:
    return output_dir / HISTORY_FILE


def record_snapshot(history_db: Path, run: RunSnapshot) -> None:
    """Write one run in a single transaction (a rerun of the same run id replaces it),
    then drop the per-image data of the profile's older runs.

    Raises:
        RunEnvironmentError: the history cannot be written (locked too long, a full
            disk, a file that is not a history database).
    """
    with _open(history_db) as db, _transaction(db, write=True):
        for table in ("class_counts", "split_images", "models", "runs"):
            db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run.run_id,))
        db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)",
            (run.run_id, run.finished_at, run.profile, json.dumps(list(run.class_names)),
             run.data_fingerprint, run.test_set_fingerprint),
        )  # fmt: skip
        for split, images in run.splits.items():
            counts = np.bincount(images.labels, minlength=len(run.class_names))
            db.executemany(
                "INSERT INTO class_counts VALUES (?, ?, ?, ?)",
                [
                    (run.run_id, split, name, int(n))
                    for name, n in zip(run.class_names, counts, strict=True)
                ],
            )
            db.execute(
                "INSERT INTO split_images VALUES (?, ?, ?, ?, ?)",
                (run.run_id, split, _blob(images.hashes), _blob(images.labels),
                 _blob(images.mean_intensity)),
            )  # fmt: skip
        db.executemany(
            "INSERT INTO models VALUES (?, ?, ?, ?, ?)",
            [(run.run_id, name, model.accuracy, len(model.correct),
              np.packbits(model.correct).tobytes()) for name, model in run.models.items()],
        )  # fmt: skip
        db.execute(
            """DELETE FROM split_images WHERE run_id IN (
                SELECT run_id FROM runs WHERE profile = ?
                ORDER BY finished_at DESC, rowid DESC LIMIT -1 OFFSET ?)
            AND run_id NOT IN (SELECT run_id FROM champions)""",
            (run.profile, KEEP_IMAGE_DATA_RUNS),
        )


def champion_run(history_db: Path, profile: str, run_id: str) -> tuple[RunSnapshot, str] | None:
    """The run `run_id` is compared with, and how it was chosen: the profile's champion
    (`set_champion`), or else its last completed run other than `run_id` (`LAST_RUN`);
    None without one.

    Raises:
        RunEnvironmentError: the history cannot be read.
    """
    if not history_db.is_file():
        return None
    with _open(history_db) as db, _transaction(db):
        champion = db.execute(
            f"""SELECT {_RUN_COLUMNS}, chosen FROM champions JOIN runs USING (run_id)
            WHERE champions.profile = ? AND runs.run_id != ?""",
            (profile, run_id),
        ).fetchone()
        if champion:
            return _snapshot(db, profile, champion[:-1]), champion[-1]
        row = _last_run(db, profile, run_id)
        return row and (_snapshot(db, profile, row), LAST_RUN)


def _last_run(db: sqlite3.Connection, profile: str, run_id: str) -> tuple | None:
    return db.execute(
        f"""SELECT {_RUN_COLUMNS} FROM runs WHERE profile = ? AND run_id != ?
        ORDER BY finished_at DESC, rowid DESC LIMIT 1""",
        (profile, run_id),
    ).fetchone()


def _snapshot(db: sqlite3.Connection, profile: str, row: tuple) -> RunSnapshot:
    """The run of a `runs` row (`_RUN_COLUMNS`), with its per-image data and models."""
    run_id, finished_at, class_names, data_fingerprint, test_set_fingerprint = row
    found = db.execute(
        "SELECT split, image_hashes, labels, mean_intensity FROM split_images WHERE run_id = ?",
        (run_id,),
    )
    splits = {split: SplitImages(*map(_array, blobs)) for split, *blobs in found}
    found = db.execute(
        "SELECT model, test_accuracy, test_images, correct FROM models WHERE run_id = ?",
        (run_id,),
    )
    models = {
        name: ModelOutcome(accuracy, _unpacked(correct, images))
        for name, accuracy, images, correct in found
    }
    return RunSnapshot(
        run_id=run_id,
        finished_at=finished_at,
        profile=profile,
        class_names=tuple(json.loads(class_names)),
        data_fingerprint=data_fingerprint,
        test_set_fingerprint=test_set_fingerprint,
        splits=splits,
        models=models,
    )


def set_champion(history_db: Path, profile: str, run_id: str, chosen: str) -> None:
    """Make `run_id` the run the next runs of `profile` are compared with.

    Raises:
        UsageError: the history holds no run `run_id` of `profile`.
        RunEnvironmentError: the history cannot be written.
    """
    check_known_run(history_db, profile, run_id)
    with _open(history_db) as db, _transaction(db, write=True):
        db.execute("INSERT OR REPLACE INTO champions VALUES (?, ?, ?)", (profile, run_id, chosen))


def check_known_run(history_db: Path, profile: str, run_id: str) -> None:
    """That the history holds run `run_id` of `profile` (a `--baseline`).

    Raises:
        UsageError: naming the profile's latest runs.
        RunEnvironmentError: the history cannot be read.
    """
    if not history_db.is_file():
        raise UsageError(f"--baseline {run_id}: no run history in {history_db} yet")
    with _open(history_db) as db, _transaction(db):
        found = db.execute(
            "SELECT run_id FROM runs WHERE profile = ? ORDER BY finished_at DESC", (profile,)
        )
        runs = [name for (name,) in found]
    if run_id not in runs:
        raise UsageError(
            f"--baseline {run_id}: no {profile} run of that id in {history_db}; its latest: "
            f"{', '.join(runs[:5]) or 'none'}"
        )


def _blob(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def _unpacked(packed: bytes, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(packed, np.uint8), count=count).astype(bool)


@contextlib.contextmanager
def _open(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to the history, its tables created when missing; SQLite errors
    become one line naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun and ended explicitly, below.
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    except (OSError, sqlite3.Error) as error:
        raise RunEnvironmentError(f"{path}: run history cannot be opened ({error})") from error
    try:
        _ensure_schema(db, path)
        yield db
    except sqlite3.Error as error:
        raise RunEnvironmentError(f"{path}: run history failed ({error})") from error
    finally:
        db.close()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, write: bool = False) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: a read lock upgraded later fails at once
    # when another writer holds it, where waiting for the lock is what is wanted.
    db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # SQLite ends it itself after some errors (a full disk)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _ensure_schema(db: sqlite3.Connection, path: Path) -> None:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    with _transaction(db, write=True):
        (version,) = db.execute("PRAGMA user_version").fetchone()  # another run's, meanwhile
        if version == 0:
            for statement in _SCHEMA:
                db.execute(statement)
        if version in (0, 1):  # a version-1 history gains its champions
            db.execute(_CHAMPIONS)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise RunEnvironmentError(
                f"{path}: run history has schema version {version}; this pipeline reads "
                f"version {SCHEMA_VERSION}. Use another output_dir, or move the file aside"
            )
