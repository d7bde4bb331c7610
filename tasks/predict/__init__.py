"""Prediction: classify new images with a model a run trained.

`inputs` reads image files, folders, IDX files and .npy arrays; `model` loads a run's
model once, after checking its files against their manifests; `batch` predicts in
batches and writes the CSV, its provenance record and the summary.
"""
