"""The HTTP server as a user starts it: `python -m flows.serve` in a subprocess on a free
loopback port, and what the tests send it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import REPO, free_loopback_port, healthy, start, stop
from tests.support.waiting import wait_until


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def serving(cwd: Path, *options: str, env: dict | None = None) -> Iterator[Served]:
    """`python -m flows.serve` started in `cwd` with `options`, once `/health` answers;
    stopped with SIGTERM afterwards (its exit status is then in `process.returncode`)."""
    port = free_loopback_port()
    log = cwd / f"serve-{port}.log"
    environment = os.environ | {"PYTHONPATH": str(REPO)} | (env or {})
    command = [sys.executable, "-m", "flows.serve", "--port", str(port), *options]
    process = start(command, environment, log, cwd=cwd)
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until(
            lambda: healthy(served.url) or process.poll() is not None, 120, "the server to start"
        )
        assert process.poll() is None, f"the server exited: {served.output()}"
        yield served
    finally:
        stop(process)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A valid black grayscale PNG of `width` x `height` pixels, a few hundred KB on disk:
    the decompression bomb a server must refuse from its header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    packer, row = zlib.compressobj(9), bytes(width + 1)  # filter byte 0, then black pixels
    compressed = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed) + chunk(
        b"IEND", b"")  # fmt: skip


def metric_samples(url: str, headers: dict | None = None) -> dict[tuple, float]:
    """`/metrics` parsed: (sample name, sorted labels) -> value."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def post_files(url: str, files: dict[str, bytes], **params) -> httpx.Response:
    parts = [("files", (name, content, "image/png")) for name, content in files.items()]
    return httpx.post(f"{url}/predict", files=parts, params=params, timeout=60)
