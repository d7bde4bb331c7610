"""Classify new images with a model a run trained, and write one CSV row per image.

python -m flows.predict PATH [PATH ...] [--run DIR] [--model NAME] [--output FILE] [--top-k K]

The same work is the Prefect flow `batch-predict`, which prefect.yaml deploys. The command
line calls it directly, without starting a temporary Prefect server (about 6 s).
Exit status: 0 when every input was classified, 3 when some could not be read (their
rows say why), 1 when prediction cannot start (no run, unknown model, a top-k beyond the
run's classes, model files failing their manifest or retrained since, no inputs, an --output
that is a directory or cannot be written) or the CSV cannot be written (a full disk), 2 for a
malformed command line (an --output inside a file among them).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from pydantic import Field

from flows.arguments import DEFAULT_RUN, OneLineErrorParser, whole_number
from tasks.core.contracts import MAX_CLASSES
from tasks.core.errors import PipelineError
from tasks.predict.batch import DEFAULT_TOP_K, PredictionSummary, describe_summary, predict_images

EXIT_UNREADABLE = 3
DEFAULT_OUTPUT = Path("predictions.csv")


@task(name="predict-images")
def predict_task(
    paths: list[Path], run: Path, model: str | None, output: Path, top_k: int
) -> PredictionSummary:
    return predict_images(paths, run, model, output, top_k)


@flow(name="batch-predict")
def batch_predict(
    paths: list[Path],
    run: Path = DEFAULT_RUN,
    model: str | None = None,
    output: Path = DEFAULT_OUTPUT,
    # The run's classes bound it too, checked once the run is read.
    top_k: Annotated[int, Field(ge=1, le=MAX_CLASSES)] = DEFAULT_TOP_K,
) -> PredictionSummary:
    """Classify image files, folders of them, IDX files and .npy arrays with a run's model.

    Args:
        paths: relative paths start from the directory the flow runs in.
        run: a run's report directory.
        model: one of the run's models; empty: the one the run chose.
        output: the CSV to write; its provenance record goes beside it.
        top_k: classes listed per image, most probable first; at most the run's classes.
    """
    summary = predict_task(paths, run, model, output, top_k)
    text = describe_summary(summary)
    logger = get_run_logger()
    logger.info("%s", text)
    if summary.unreadable:
        logger.warning("%d inputs could not be read; see `error` in %s",
                       len(summary.unreadable), summary.output)  # fmt: skip
    create_markdown_artifact(
        key="batch-predictions", markdown=f"```\n{text}\n```", description="batch prediction"
    )
    return summary


# The run's classes bound --top-k too, checked once the run is read: it is not known here.
parse_top_k, parse_threads = whole_number(1, MAX_CLASSES), whole_number(1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(
        prog="python -m flows.predict",
        description="Classify images with a model a run trained; write one CSV row per image.",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH",
        help="image files (PNG, JPEG, anything Pillow reads), folders of them (searched "
        "recursively), IDX images files (gzipped or not), .npy arrays of shape (n, 28, 28) "
        "or (n, 784)",
    )  # fmt: skip
    options = (  # flag, metavar, type, default, help
        ("--run", "DIR", Path, DEFAULT_RUN, "the run's report directory"),
        ("--model", "NAME", str, None, "one of the run's models (default: the one the run chose)"),
        ("--output", "FILE", Path, DEFAULT_OUTPUT, "the CSV to write"),
        ("--top-k", "K", parse_top_k, DEFAULT_TOP_K, "classes per image, most probable first"),
        ("--threads", "N", parse_threads, None, "threads for the model (default: every core)"),
    )
    for flag, metavar, kind, default, text in options:
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(flag, metavar=metavar, type=kind, default=default, help=text + shown)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # no CUDA notices on a CPU machine
    try:
        summary = predict_images(
            args.paths, args.run, args.model, args.output, args.top_k, args.threads
        )
    except PipelineError as error:  # nothing to predict with, or nowhere to write
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    print(describe_summary(summary))
    return EXIT_UNREADABLE if summary.unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
