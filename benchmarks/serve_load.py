"""Load test of the HTTP server: concurrent clients sending single PNGs, on loopback.

    python -m benchmarks.serve_load [--run reports/latest] [--clients 16] [--seconds 60]
                                    [--output docs/benchmark]

For the run's fastest model (least `predict_ms_per_1000`) and its best-ranked one, with
micro-batching on (the defaults) and off (`--max-batch-images 1`), it starts
`python -m flows.serve` as a user would, lets `--clients` clients each send one test
image at a time for `--seconds` seconds (and at most `--most-requests` in all), and
writes `serve_load.md` and `serve_load.json` to `--output`: requests per second, p50 and
p99 latency, errors, images per model call, and the ratio to the model's own batch
throughput measured by the run (1,000 / `predict_ms_per_1000` images per millisecond).
The clients run on the same machine as the server, and share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.budget_sweep import code_commit, cpu_name
from tasks.evaluation.report.tables import markdown_table
from tasks.predict.inputs import read_idx_images

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
MODES = {"on": [], "off": ["--max-batch-images", "1"]}


@dataclass(frozen=True)
class LoadResult:
    model: str
    batching: str
    clients: int
    seconds: float
    requests: int
    errors: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    images_per_model_call: float
    model_images_per_second: float  # the run's own figure, predicting 10,000 at once
    ratio_to_model: float
    exit_status: int


def test_pngs(count: int) -> list[bytes]:
    pngs = []
    for image in read_idx_images(TEST_IMAGES, compressed=True)[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


async def send_for(url: str, pngs: list[bytes], clients: int, seconds: float, most: int):
    """Each client sends one PNG at a time until the time or the count is up; every
    request's latency in seconds, and the failures (status other than 200, or no answer)."""
    latencies, failures, sent = [], [], 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def one_client(number: int) -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < most:
                png = pngs[(sent + number) % len(pngs)]
                sent += 1
                began = time.perf_counter()
                try:
                    answer = await client.post("/predict", files={"files": ("x.png", png)})
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code}: {answer.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(one_client(n) for n in range(clients)))
    return np.array(latencies), failures


def batch_sizes(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    calls = samples.get("fashion_mnist_batch_images_count", 0)
    return samples.get("fashion_mnist_batch_images_sum", 0) / calls if calls else 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served(run: Path, model: str, mode: str) -> Iterator[tuple[str, list[int]]]:
    """`python -m flows.serve` for `model` with batching `mode`, once it answers; its URL,
    and after the block its exit status following SIGTERM."""
    port = free_port()
    command = [sys.executable, "-m", "flows.serve", "--run", str(run), "--model", model,
               "--port", str(port), "--poll-seconds", "0", *MODES[mode]]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO)}
    url, status = f"http://127.0.0.1:{port}", []
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                log.seek(0)
                raise RuntimeError(f"{model}: the server did not start: {log.read().decode()}")
            yield url, status
        finally:
            server.send_signal(signal.SIGTERM)
            status.append(server.wait(timeout=60))


def load_test(run: Path, model: str, mode: str, pngs: list[bytes], args, model_rate: float):
    with served(run, model, mode) as (url, status):
        asyncio.run(send_for(url, pngs[:50], args.clients, 3, 10**6))  # warm up
        began = time.perf_counter()
        latencies, failures = asyncio.run(
            send_for(url, pngs, args.clients, args.seconds, args.most_requests)
        )
        seconds = time.perf_counter() - began
        per_call = batch_sizes(url)
    rate = len(latencies) / seconds
    for failure in failures[:5]:
        print(f"  {model}, batching {mode}: {failure}", file=sys.stderr)
    return LoadResult(
        model=model, batching=mode, clients=args.clients, seconds=round(seconds, 1),
        requests=len(latencies), errors=len(failures), requests_per_second=rate,
        p50_ms=1e3 * float(np.percentile(latencies, 50)),
        p99_ms=1e3 * float(np.percentile(latencies, 99)),
        images_per_model_call=per_call, model_images_per_second=model_rate,
        ratio_to_model=rate / model_rate, exit_status=status[0],
    )  # fmt: skip


def chosen_models(run: Path) -> dict[str, float]:
    """The run's fastest and best-ranked models, and each one's images per second as the
    run measured them (predicting the test set in one call)."""
    board = pd.read_csv(run / "leaderboard.csv")
    board = board[board["rank"].notna()].sort_values("rank")
    fastest = board.sort_values("predict_ms_per_1000").model.iloc[0]
    rates = dict(zip(board.model, 1e6 / board.predict_ms_per_1000, strict=True))
    return {name: rates[name] for name in dict.fromkeys([fastest, board.model.iloc[0]])}


def render(results: list[LoadResult], run: Path, output: Path, args) -> str:
    frame = pd.DataFrame([asdict(r) for r in results])
    frame["ratio_to_model"] = frame.ratio_to_model.map("{:.1%}".format)
    shown = frame.drop(columns=["clients", "exit_status"])
    metrics = json.loads((run / "metrics.json").read_text())
    text = (
        f"# Serving under load\n\n"
        f"{args.clients} clients on loopback, each sending one PNG test image at a time for "
        f"{args.seconds:g} s, against `python -m flows.serve` serving run "
        f"{metrics.get('run_id', run.name)}. Measured on {cpu_name()}, commit "
        f"{code_commit(REPO)}; the clients share the server's cores. Micro-batching on: "
        f"the defaults (up to 256 images, 2 ms wait); off: `--max-batch-images 1`. "
        f"`model_images_per_second` is the run's own figure for predicting the test set "
        f"in one call; the ratio is requests per second over it.\n\n"
        f"{markdown_table(shown, floats='.1f')}\n\n"
        f"Reproduce: `python -m benchmarks.serve_load --run {run} --clients {args.clients} "
        f"--seconds {args.seconds:g}`\n"
    )
    output.mkdir(parents=True, exist_ok=True)
    (output / "serve_load.md").write_text(text)
    (output / "serve_load.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("reports/latest"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--most-requests", type=int, default=200_000)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmark")
    args = parser.parse_args(argv)
    run = args.run.resolve()
    pngs = test_pngs(1000)
    results = [
        load_test(run, model, mode, pngs, args, rate)
        for model, rate in chosen_models(run).items()
        for mode in MODES
    ]
    print(render(results, run, args.output, args))
    return 0 if all(r.errors == 0 and r.exit_status == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
