"""Prediction: classify new images with a model a run trained.

`inputs` reads image files, folders, IDX files and .npy arrays; `model` loads a run's
model once, after checking its files against their manifests; `batch` predicts in
batches and writes the CSV, its provenance record and the summary.
"""

from tasks.predict.batch import (
    BATCH_SIZE,
    DEFAULT_TOP_K,
    PredictionSummary,
    csv_header,
    describe_summary,
    predict_images,
)
from tasks.predict.inputs import find_inputs, read_input
from tasks.predict.model import RunModel, load_run_model

__all__ = [
    "BATCH_SIZE",
    "DEFAULT_TOP_K",
    "PredictionSummary",
    "RunModel",
    "csv_header",
    "describe_summary",
    "find_inputs",
    "load_run_model",
    "predict_images",
    "read_input",
]
