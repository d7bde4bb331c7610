"""The server's counters in Prometheus' text format: requests, errors, latency, batches.

Each application has a registry of its own, so that two servers in one process (tests)
never count into each other.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class ServeMetrics:
    """What `/metrics` reports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fashion_mnist_requests", "HTTP requests answered, by path and status code",
            ["path", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "fashion_mnist_request_seconds", "Time to answer a request, by path",
            ["path"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "fashion_mnist_requests_in_flight", "Requests being answered now, by path",
            ["path"], registry=self.registry,
        )  # fmt: skip
        self.inputs = Counter(
            "fashion_mnist_inputs", "Inputs of prediction requests: classified, or unreadable",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.batch_images = Histogram(
            "fashion_mnist_batch_images", "Images per model call (micro-batching)",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.switches = Counter(
            "fashion_mnist_model_switches", "Newer runs seen: switched to, or refused",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.served = Gauge(
            "fashion_mnist_model_served", "1 for the run and model being served",
            ["run", "model"], registry=self.registry,
        )  # fmt: skip

    def serving(self, run: str, model: str) -> None:
        self.served.clear()
        self.served.labels(run=run, model=model).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
