"""What every request passes before the application reads it: the bearer token, the body
size limit, and the counting for `/metrics`. Plain ASGI middleware, so that a refused
request is answered before its body is read at all."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tasks.serve.metrics import ServeMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})  # liveness probes carry no token


async def answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None):
    """A JSON error response `{"detail": ...}`, sent without reading the request's body."""
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
                    *extra],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class BearerToken:
    """Refuses, with 401, requests without `Authorization: Bearer <token>` (when a token
    is set), except on `OPEN_PATHS`."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self.token.encode()):
            return await self.app(scope, receive, send)
        reason = "a bearer token is required" if not given else "the bearer token is wrong"
        await answer(
            send, 401, f"{reason}: send the header `Authorization: Bearer <token>`",
            {"WWW-Authenticate": 'Bearer realm="fashion-mnist"'},
        )  # fmt: skip


class BodyLimit:
    """Refuses, with 413, a body over `max_bytes`: at once when its declared length is,
    else as soon as what arrived is; the application then gets the body read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send, f"of {int(declared):,} bytes refused")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send, f"refused after {size:,} bytes")
            if not message.get("more_body"):
                break
        whole = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, found: str) -> None:
        limit = f"{self.max_bytes / 1e6:g} MB (--max-request-mb)"
        await answer(send, 413, f"request body {found}: the limit is {limit}")


class CountRequests:
    """Counts every answer by path and status, and times it, for `/metrics`; paths the
    application does not have are counted together, so a scan cannot grow the series."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, paths: frozenset[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in self.paths else "other"
        started, status = time.perf_counter(), 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_flight = self.metrics.in_flight.labels(path=path)
        in_flight.inc()
        try:
            await self.app(scope, receive, noting_status)
        finally:
            in_flight.dec()
            self.metrics.requests.labels(path=path, status=str(status)).inc()
            self.metrics.latency.labels(path=path).observe(time.perf_counter() - started)
