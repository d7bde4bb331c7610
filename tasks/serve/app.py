"""The HTTP application: `POST /predict`, `GET /health`, `GET /model`, `GET /metrics`.

Answers name the run and model that classified them. Inputs are read off the event loop
(images are decoded in worker threads), classified by the micro-batcher, and a bad input
gets its own `error` while the others in the same request are classified.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from tasks.serve.batching import MicroBatcher
from tasks.serve.guards import ASGIApp, BearerToken, BodyLimit, CountRequests
from tasks.serve.inputs import RequestInput, RequestShapeError, read_instances, read_upload
from tasks.serve.metrics import ServeMetrics
from tasks.serve.slot import ModelSlot

logger = logging.getLogger("fashion_mnist.serve")
PATHS = frozenset({"/predict", "/health", "/model", "/metrics"})
DEFAULT_TOP_K = 3


class UnsupportedContentType(ValueError):
    """A prediction request that is neither a multipart form nor JSON."""


@dataclass(frozen=True)
class ServeSettings:
    """How the server answers; `flows/serve.py` documents each as a command-line option.

    Attributes:
        token: the bearer token requests must carry; None: none required (loopback).
        poll_seconds: how often to look for a newer run; 0: never.
    """

    token: str | None = None
    max_request_bytes: int = 20_000_000
    max_image_pixels: int = 25_000_000
    max_batch_images: int = 256
    batch_wait_seconds: float = 0.002
    poll_seconds: float = 5.0
    decode_threads: int = 2


def prediction(
    item: RequestInput, probabilities: np.ndarray | None, top_k: int, classes: Sequence[str]
) -> dict:
    """One input's entry in the answer: its class, probability and top-k, or its error."""
    if probabilities is None:
        return {"input": item.name, "predicted_class": None, "predicted_label": None,
                "probability": None, "top_k": [], "error": item.error}  # fmt: skip
    ranked = np.argsort(-probabilities, kind="stable")[:top_k]  # ties: the lower label first
    best = int(ranked[0])
    return {
        "input": item.name, "predicted_class": classes[best], "predicted_label": best,
        "probability": float(probabilities[best]),
        "top_k": [{"class": classes[i], "probability": float(probabilities[i])} for i in ranked],
        "error": None,
    }  # fmt: skip


def create_app(slot: ModelSlot, settings: ServeSettings) -> ASGIApp:
    """The application serving `slot`'s model, inside its guards (token, body limit,
    counting)."""
    metrics = ServeMetrics()
    metrics.serving(slot.model.run_id, slot.model.name)
    batcher = MicroBatcher(
        lambda: slot.model, settings.max_batch_images, settings.batch_wait_seconds,
        metrics.batch_images.observe,
    )  # fmt: skip
    decoding = anyio.CapacityLimiter(settings.decode_threads)

    async def follow_runs() -> None:
        while True:
            await asyncio.sleep(settings.poll_seconds)
            try:
                switch = await anyio.to_thread.run_sync(slot.switch_if_newer)
            except Exception:  # the next check tries again; the model being served stays
                logger.exception("checking %s for a newer run failed", slot.run)
                continue
            if switch:
                metrics.switches.labels(outcome="switched" if switch.switched else "refused").inc()
                metrics.serving(slot.model.run_id, slot.model.name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        follower = asyncio.create_task(follow_runs()) if settings.poll_seconds > 0 else None
        yield
        if follower:
            follower.cancel()
        await batcher.stop()  # uvicorn has let the requests in flight finish by now

    app = FastAPI(title="Fashion-MNIST classifier", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip

    @app.get("/health")
    def health() -> JSONResponse:
        model, refused = slot.model, slot.refused
        state = {
            "status": "serving" if batcher.running else "not serving",
            "run": model.run_id, "run_dir": str(model.run_dir), "model": model.name,
            "since": slot.since, "switches": slot.switches,
            "refused": refused and {"run_dir": refused.run_dir, "reason": refused.reason,
                                    "at": refused.at},
        }  # fmt: skip
        return JSONResponse(state, status_code=200 if batcher.running else 503)

    @app.get("/model")
    def model_card() -> dict:
        model = slot.model
        return model.provenance() | {"classes": list(model.class_names), "since": slot.since}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/predict")
    async def predict(request: Request, top_k: int = Query(DEFAULT_TOP_K, ge=1)):
        classes = len(slot.model.class_names)
        if top_k > classes:
            return _refuse(f"top_k {top_k} is out of range: expected 1 to {classes}")
        try:
            inputs = await _read_inputs(request, settings.max_image_pixels, decoding)
        except UnsupportedContentType as exc:
            return _refuse(str(exc), 415)
        except RequestShapeError as exc:
            return _refuse(str(exc))
        readable = [item for item in inputs if not item.error]
        metrics.inputs.labels(outcome="unreadable").inc(len(inputs) - len(readable))
        if not readable:
            return _refuse("no readable input", errors=[{"input": i.name, "error": i.error}
                                                        for i in inputs])  # fmt: skip
        try:
            model, probabilities = await batcher.predict(np.stack([i.features for i in readable]))
        except Exception as exc:  # this batch's requests fail; the server goes on
            logger.exception("classifying %d images failed", len(readable))
            return _refuse(f"the model failed: {exc.__class__.__name__}: {exc}", 500)
        metrics.inputs.labels(outcome="classified").inc(len(readable))
        rows = iter(probabilities)
        answers = [
            prediction(i, None if i.error else next(rows), top_k, model.class_names) for i in inputs
        ]
        return {"model": model.name, "run": model.run_id, "predictions": answers}

    return CountRequests(
        BearerToken(BodyLimit(app, settings.max_request_bytes), settings.token), metrics, PATHS
    )


async def _read_inputs(
    request: Request, max_pixels: int, decoding: anyio.CapacityLimiter
) -> list[RequestInput]:
    """A request's inputs: the files of a multipart form's `files` field, or JSON instances.

    Raises:
        RequestShapeError: no files in the form, or JSON that is no prediction request.
        UnsupportedContentType: neither a form nor JSON.
    """
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media == "multipart/form-data":
        async with request.form() as form:
            files = form.getlist("files")
            if not files:
                raise RequestShapeError("no files: send images in the multipart field `files`")
            named = [
                (f.filename or str(i), await f.read() if isinstance(f, UploadFile) else None)
                for i, f in enumerate(files)
            ]

        def decode() -> list[RequestInput]:
            return [
                read_upload(name, content, max_pixels) if content is not None
                else RequestInput(name, error="a text field, not a file")
                for name, content in named
            ]  # fmt: skip

        return await anyio.to_thread.run_sync(decode, limiter=decoding)
    if media == "application/json":
        body = await request.body()
        return await anyio.to_thread.run_sync(_read_json, body, limiter=decoding)
    found = f"content type {media!r}" if media else "no content type"
    raise UnsupportedContentType(
        f"{found}: expected multipart/form-data (files) or application/json (instances)"
    )


def _read_json(body: bytes) -> list[RequestInput]:
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested past Python's limit
        raise RequestShapeError(f"not valid JSON: {exc}") from None
    return read_instances(document)


def _refuse(detail: str, status: int = 422, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)
