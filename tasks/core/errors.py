"""Errors the command line reports in one `error:` line, as opposed to bugs in the pipeline."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class PipelineError(Exception):
    """A failure the command line reports in one line, without a traceback, and exits
    with `exit_status`: 2 for a usage error, 4 for a regression the run was told to fail
    on, 1 for anything else."""

    exit_status = 1


class PipelineInputError(PipelineError):
    """Input the user can fix; the command line reports it in one line, without a traceback."""


class UsageError(PipelineInputError):
    """An argument or configuration value the run cannot work with, refused before it starts."""

    exit_status = 2


class DatasetFileError(PipelineInputError):
    """A data file or directory is missing, unreadable, or not what Fashion-MNIST ships."""


class DataValidationError(PipelineInputError):
    """The parsed data breaks the dataset's schema or its dataset-level checks."""


class PredictionInputError(PipelineInputError):
    """Prediction cannot start: no run or model to use, a model failing its manifest, no inputs."""


class RunEnvironmentError(PipelineError):
    """The machine cannot run it: a directory that cannot be written, too little disk
    space, a Prefect API that does not answer."""


class StorageError(RunEnvironmentError):
    """Writing a cache entry or a report failed; nothing half-written was left.

    Args:
        path: what was being written.
        reason: the cause, as the operating system words it.
        needs_mb: about how much the run writes there, when known.
    """

    def __init__(self, path: Path | str, reason: str, needs_mb: float | None = None):
        super().__init__(path, reason, needs_mb)
        self.path, self.reason, self.needs_mb = Path(path), reason, needs_mb

    @classmethod
    def from_os_error(cls, path: Path, error: OSError) -> StorageError:
        """The error of writing `path`; a missing or forbidden file is named instead."""
        code = error.errno or (errno.ENOSPC if _disk_is_full(path) else None)
        reason = os.strerror(code) if code else str(error)
        named = error.filename if code in (errno.ENOENT, errno.EACCES) else None
        return cls(named or path, reason[:1].lower() + reason[1:])

    @property
    def disk_full(self) -> bool:
        return self.reason == os.strerror(errno.ENOSPC).lower()

    def needing(self, needs_mb: float) -> StorageError:
        return StorageError(self.path, self.reason, needs_mb)

    def __str__(self) -> str:
        needs = f" (needs about {self.needs_mb:.0f} MB)" if self.needs_mb is not None else ""
        return f"{self.path}: {self.reason}{needs}"


def _disk_is_full(path: Path) -> bool:
    """Whether the file system of `path` has no room left: numpy's short writes raise an
    OSError without an errno ("524288 requested and 262112 written")."""
    for directory in (path, *path.parents):
        if directory.exists():
            return shutil.disk_usage(directory).free < 2**20
    return False


class ModelsFailedError(PipelineError):
    """Some models (or all) could not be trained or evaluated; the others were reported.

    Args:
        message: one line naming each failed model and its error.
        report_dir: the report of the models that succeeded, if any did.
    """

    def __init__(self, message: str, report_dir: Path | None = None):
        super().__init__(message, report_dir)
        self.report_dir = report_dir

    def __str__(self) -> str:
        return str(self.args[0])


class RegressionError(PipelineError):
    """Models got significantly worse since the previous run and the run was asked to fail
    for it (`fail_on_regression`); raised after the report is written.

    Args:
        message: one line naming each regressed model with both accuracies and its p-value.
        report_dir: the run's report, which says what changed.
    """

    exit_status = 4

    def __init__(self, message: str, report_dir: Path | None = None):
        super().__init__(message, report_dir)
        self.report_dir = report_dir

    def __str__(self) -> str:
        return str(self.args[0])
