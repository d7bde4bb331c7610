"""Prefect's process pool, made safe against a worker process that is killed."""

from __future__ import annotations

from prefect.task_runners import ProcessPoolTaskRunner


class KillSafeProcessPool(ProcessPoolTaskRunner):
    """Prefect's process pool, whose exit cannot hang on a worker process that was killed.

    The workers send their logs and events to this process through one queue. A worker
    killed while it sends (`kill -9`, the out-of-memory killer) holds the queue's write lock
    forever: the thread that sends the queue's closing message from here never can, and
    Python joins that thread when the interpreter exits, so the run printed its report and
    never ended. Not joining it loses nothing: this process sends nothing else there."""

    def __enter__(self) -> KillSafeProcessPool:
        super().__enter__()
        self._subprocess_message_queue.cancel_join_thread()
        return self
