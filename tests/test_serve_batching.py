"""Micro-batching, driven in-process: which requests share a model call, and what a
failing or switched model does to them."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tasks.serve.batching import MicroBatcher


class Recorder:
    """A model that answers each image with its own first feature, and notes its calls."""

    def __init__(self, name: str = "a", fail: bool = False) -> None:
        self.name, self.fail, self.calls = name, fail, []

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        self.calls.append(len(features))
        if self.fail:
            raise RuntimeError("the model broke")
        return features[:, :2]


def images(*values: float) -> np.ndarray:
    return np.array([[v, -v] for v in values], dtype=np.float32)


async def ask_together(batcher: MicroBatcher, *requests: np.ndarray):
    """Queue every request before the batcher's worker runs, then collect the answers."""
    asked = [asyncio.ensure_future(batcher.predict(r)) for r in requests]
    return await asyncio.gather(*asked, return_exceptions=True)


def run(coroutine):
    return asyncio.run(coroutine)


def test_requests_waiting_together_share_one_call_and_get_their_own_rows():
    model = Recorder()

    async def scenario():
        batcher = MicroBatcher(lambda: model, max_batch_images=10, max_wait_seconds=0)
        batcher.start()
        answers = await ask_together(batcher, images(1), images(2, 3), images(4))
        await batcher.stop()
        return answers

    answers = run(scenario())
    assert model.calls == [4]
    for (answered_by, rows), expected in zip(answers, ([1], [2, 3], [4]), strict=True):
        assert answered_by is model
        np.testing.assert_array_equal(rows[:, 0], expected)


def test_a_batch_takes_whole_requests_up_to_the_limit_and_carries_the_next_over():
    model = Recorder()

    async def scenario():
        batcher = MicroBatcher(lambda: model, max_batch_images=3, max_wait_seconds=0)
        batcher.start()
        answers = await ask_together(
            batcher, images(1, 2), images(3, 4), images(5), images(6, 7, 8, 9)
        )
        await batcher.stop()
        return answers

    answers = run(scenario())
    assert model.calls == [2, 3, 4]  # a request over the limit still gets its call
    np.testing.assert_array_equal(answers[3][1][:, 0], [6, 7, 8, 9])


def test_with_batching_off_every_request_is_a_call_of_its_own():
    model = Recorder()

    async def scenario():
        batcher = MicroBatcher(lambda: model, max_batch_images=1, max_wait_seconds=0.05)
        batcher.start()
        await ask_together(batcher, images(1), images(2), images(3, 4))
        await batcher.stop()

    run(scenario())
    assert model.calls == [1, 1, 2]


def test_a_request_waits_for_others_within_the_wait():
    model = Recorder()

    async def scenario():
        batcher = MicroBatcher(lambda: model, max_batch_images=10, max_wait_seconds=5)
        batcher.start()
        first = asyncio.ensure_future(batcher.predict(images(1)))
        await asyncio.sleep(0)  # the worker takes the first and waits for more
        second = asyncio.ensure_future(batcher.predict(images(2)))
        third = asyncio.ensure_future(batcher.predict(images(3, 4, 5, 6, 7, 8, 9, 10)))
        await asyncio.gather(first, second, third)  # 10 images: the batch is full
        await batcher.stop()

    run(scenario())
    assert model.calls == [10]


def test_a_failing_model_fails_its_batch_only_and_a_switched_one_takes_the_next():
    broken, working = Recorder("broken", fail=True), Recorder("working")
    serving = [broken]

    async def scenario():
        batcher = MicroBatcher(lambda: serving[0], max_batch_images=10, max_wait_seconds=0)
        batcher.start()
        failed = await ask_together(batcher, images(1), images(2))
        serving[0] = working
        answered = await ask_together(batcher, images(3))
        assert batcher.running
        await batcher.stop()
        return failed, answered

    failed, answered = run(scenario())
    assert [str(f) for f in failed] == ["the model broke"] * 2
    assert answered[0][0] is working


def test_a_stopped_batcher_refuses_requests_and_bad_limits_are_refused():
    async def scenario():
        batcher = MicroBatcher(Recorder, max_batch_images=4, max_wait_seconds=0)
        with pytest.raises(RuntimeError, match="the batcher is not running"):
            await batcher.predict(images(1))

    run(scenario())
    with pytest.raises(ValueError, match="expected at least 1 image and a wait of 0 s or more"):
        MicroBatcher(Recorder, max_batch_images=0, max_wait_seconds=0)
