"""The model registry: every model's spec, and building or loading a model by its name.

Adding a model is one module holding its spec and one line in `SPECS`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import create_model

from tasks.training.models.base import Classifier, HyperParameters, ModelSpec, TrainingContext
from tasks.training.models.cnn import CNN
from tasks.training.models.sklearn_models import LOGISTIC_REGRESSION, RANDOM_FOREST, SVM
from tasks.training.models.xgboost_model import XGBOOST

# The default training order, longest first (fit + predict on one thread, measured: cnn
# ~800 s, xgboost ~190 s, svm ~75 s, random forest ~65 s): the pool starts the slow
# models early and the short ones fill the gaps at the end instead of leaving a core idle.
SPECS: tuple[ModelSpec, ...] = (CNN, XGBOOST, SVM, RANDOM_FOREST, LOGISTIC_REGRESSION)
_BY_NAME = {spec.name: spec for spec in SPECS}

# The configuration's section of every model's hyper-parameters, in the order the Prefect
# form and the CLI list them: quickest model first.
ModelParams = create_model(
    "ModelParams",
    __base__=HyperParameters,
    __doc__="Hyper-parameters of every registered model; the field names are the model names.",
    **{spec.name: (spec.params, spec.params()) for spec in reversed(SPECS)},
)


def model_spec(name: str) -> ModelSpec:
    """The spec of a registered model.

    Raises:
        ValueError: for a name no spec has, listing the valid ones.
    """
    if name not in _BY_NAME:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def build_model(name: str, params: ModelParams, context: TrainingContext) -> Classifier:
    """An unfitted classifier for a registered model, with its section of `params`."""
    return model_spec(name).build(getattr(params, name), context)


def load_model(directory: Path, threads: int) -> Classifier:
    """A saved classifier, read back in its library's own format."""
    loaders = {spec.adapter.model_file: spec.adapter.load for spec in SPECS}
    for model_file, load in loaders.items():
        if (directory / model_file).is_file():
            return load(directory, threads)
    raise FileNotFoundError(f"{directory}: no saved model ({', '.join(loaders)})")
