"""Serving: a run's model behind HTTP, following the scheduled runs.

`inputs` turns uploaded files and JSON instances into the models' features, one reason
per input that cannot be read; `batching` classifies requests that arrive together in
one model call; `slot` holds the model being served and switches to a newer run's once
its files pass their manifest check; `guards` answers 401 and 413 before a body is
read; `metrics` counts for Prometheus; `app` is the FastAPI application around them,
and `flows/serve.py` the command that starts it.
"""
