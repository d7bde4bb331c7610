"""Serve a run's model over HTTP, following the runs a schedule lands.

python -m flows.serve [--run reports/latest] [--model NAME] [--host 127.0.0.1] [--port 8000]

`POST /predict` takes image files (multipart field `files`) or JSON `{"instances": [...]}`
of 28 x 28 or 784 pixel values; `GET /health`, `GET /model` (the model card) and
`GET /metrics` (Prometheus) tell how it goes. With `--run reports/latest` the server
switches to each newer run's model once its files pass their manifest check. It binds
to loopback unless told otherwise, and elsewhere only with a bearer token. SIGTERM lets
the requests in flight finish, then exits 0.
Exit status: 1 when there is no model to serve (no run, unknown model, files failing
their manifest), 2 for a malformed command line or a missing token.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path

from flows.arguments import DEFAULT_RUN, OneLineErrorParser, non_negative_number, whole_number
from tasks.core.cpus import usable_cores
from tasks.core.errors import PredictionInputError
from tasks.serve.app import ServeSettings, create_app
from tasks.serve.slot import ModelSlot

TOKEN_VARIABLE = "FASHION_MNIST_SERVE_TOKEN"
DEFAULTS = ServeSettings()


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(
        prog="python -m flows.serve",
        description="Serve a run's model over HTTP: POST /predict, GET /health, /model, /metrics.",
    )
    count, number = whole_number(1), non_negative_number
    options = (  # flag, metavar, type, default, help
        ("--run", "DIR", str, str(DEFAULT_RUN),
         "the run's report directory; a link such as reports/latest is followed to newer runs"),
        ("--model", "NAME", str, None, "one of the run's models (default: the one the run chose)"),
        ("--host", "ADDRESS", str, "127.0.0.1",
         f"the address to bind; other than loopback needs --token or {TOKEN_VARIABLE}"),
        ("--port", "PORT", whole_number(0, 65535), 8000, "the port to bind; 0: any free one"),
        ("--token", "TOKEN", str, None, f"the bearer token requests must carry "
         f"(default: ${TOKEN_VARIABLE}; none on loopback when unset)"),
        ("--max-request-mb", "MB", number, DEFAULTS.max_request_bytes / 1e6,
         "larger request bodies are answered 413 before they are read whole"),
        ("--max-image-megapixels", "MP", number, DEFAULTS.max_image_pixels / 1e6,
         "larger images are refused from their header (decompression bombs)"),
        ("--max-batch-images", "N", count, DEFAULTS.max_batch_images,
         "most images gathered from several requests into one model call (a larger request "
         "is never split); 1 turns micro-batching off"),
        ("--batch-wait-ms", "MS", number, DEFAULTS.batch_wait_seconds * 1e3,
         "how long a request waits for others to be classified with it"),
        ("--poll-seconds", "S", number, DEFAULTS.poll_seconds,
         "how often to look for a newer run; 0: never"),
        ("--threads", "N", count, None, "threads for the model (default: every usable core)"),
    )  # fmt: skip
    for flag, metavar, kind, default, text in options:
        shown = "" if default is None else " (default: %(default)s)"
        parser.add_argument(flag, metavar=metavar, type=kind, default=default, help=text + shown)
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    args.token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if not is_loopback(args.host) and not args.token:
        parser.error(
            f"binding {args.host} exposes the model beyond this machine: set a bearer token "
            f"with --token or {TOKEN_VARIABLE}"
        )
    if args.token and not args.token.isascii():  # a header carries it as Latin-1 bytes
        parser.error(
            "the bearer token must be ASCII: clients put other characters in a header "
            "in different encodings"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # no CUDA notices on a CPU machine
    logging.basicConfig(level=logging.INFO, format="%(levelname)-9s %(message)s")
    threads = args.threads or usable_cores()
    try:
        slot = ModelSlot(Path(args.run), args.model, threads)
    except PredictionInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    settings = ServeSettings(
        token=args.token,
        max_request_bytes=int(args.max_request_mb * 1e6),
        max_image_pixels=int(args.max_image_megapixels * 1e6),
        max_batch_images=args.max_batch_images,
        batch_wait_seconds=args.batch_wait_ms / 1e3,
        poll_seconds=args.poll_seconds,
    )
    model = slot.model
    logging.getLogger("fashion_mnist.serve").info(
        "serving %s of run %s (test accuracy %.4f) on %d thread(s); micro-batching %s",
        model.name, model.run_id, model.test_accuracy, threads,
        f"up to {args.max_batch_images} images, {args.batch_wait_ms:g} ms wait"
        if args.max_batch_images > 1 else "off",
    )  # fmt: skip
    config = uvicorn.Config(
        create_app(slot, settings), host=args.host, port=args.port, access_log=args.access_log,
        timeout_graceful_shutdown=30, log_level="info",
    )  # fmt: skip
    # uvicorn drains the requests in flight on SIGTERM, then raises the signal again with
    # the handler it found: this one lets the process end with the status promised, 0.
    signal.signal(signal.SIGTERM, lambda number, frame: None)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
