"""Micro-batching: requests that arrive together are classified in one model call.

A model classifies 1,000 images in one call far faster than in 1,000 calls (a Keras
`predict` call alone costs milliseconds), so the server queues each request's images
and one worker classifies what has gathered: it waits at most `max_wait_seconds` after
the first request for others, and takes at most `max_batch_images` images (a request is
never split). This is what TensorFlow Serving, Triton and BentoML call dynamic batching.
With `max_batch_images=1` every request gets a model call of its own (batching off).

The model calls run one at a time on one thread of their own, so the event loop keeps
accepting requests meanwhile, and each model gets every thread it was loaded with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Predictor(Protocol):
    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...


@dataclass
class _Waiting:
    features: np.ndarray
    answer: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Classifies queued requests in batches with the model `current()` gives at the time.

    Args:
        current: the model to classify the next batch with; read once per batch, so a
            model switched meanwhile takes the next batch and a batch never mixes models.
        on_batch: told each batch's number of images (for the metrics).
    """

    def __init__(
        self,
        current: Callable[[], Predictor],
        max_batch_images: int,
        max_wait_seconds: float,
        on_batch: Callable[[int], None] = lambda images: None,
    ) -> None:
        if max_batch_images < 1 or max_wait_seconds < 0:
            raise ValueError(
                f"max_batch_images {max_batch_images} and max_wait_seconds {max_wait_seconds}: "
                "expected at least 1 image and a wait of 0 s or more"
            )
        self.current = current
        self.max_batch_images = max_batch_images
        self.max_wait_seconds = max_wait_seconds
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._carried: _Waiting | None = None  # took it, but it did not fit the last batch
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._worker: asyncio.Task | None = None

    async def predict(self, features: np.ndarray) -> tuple[Predictor, np.ndarray]:
        """The class probabilities of `features`, one row per image, and the model that
        gave them."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batcher is not running")
        waiting = _Waiting(features, asyncio.get_running_loop().create_future())
        await self._queue.put(waiting)
        return await waiting.answer

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._classify_forever())

    async def stop(self) -> None:
        """Stop once the batch in progress is classified; requests still queued fail."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for waiting in self._drain():
            waiting.answer.cancel()
        self._model_thread.shutdown(wait=True)

    async def _classify_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            model = self.current()
            features = np.concatenate([waiting.features for waiting in batch])
            try:
                probabilities = await asyncio.shield(
                    loop.run_in_executor(self._model_thread, model.predict_proba, features)
                )
            except asyncio.CancelledError:
                for waiting in batch:
                    waiting.answer.cancel()
                raise
            except Exception as exc:  # the requests of this batch fail, the server goes on
                for waiting in batch:
                    if not waiting.answer.done():
                        waiting.answer.set_exception(exc)
                continue
            self.on_batch(len(features))
            start = 0
            for waiting in batch:
                stop = start + len(waiting.features)
                if not waiting.answer.done():  # its client may have gone
                    waiting.answer.set_result((model, probabilities[start:stop]))
                start = stop

    async def _gather(self) -> list[_Waiting]:
        """The next batch: the first waiting request, and those that come within the wait
        while they fit."""
        first = self._carried or await self._queue.get()
        self._carried = None
        batch, images = [first], len(first.features)
        deadline = asyncio.get_running_loop().time() + self.max_wait_seconds
        while images < self.max_batch_images:
            left = deadline - asyncio.get_running_loop().time()
            try:
                waiting = (
                    self._queue.get_nowait()
                    if left <= 0 or not self._queue.empty()
                    else await asyncio.wait_for(self._queue.get(), left)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if images + len(waiting.features) > self.max_batch_images:
                self._carried = waiting
                break
            batch.append(waiting)
            images += len(waiting.features)
        return batch

    def _drain(self) -> list[_Waiting]:
        left = [self._carried] if self._carried else []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        return left
