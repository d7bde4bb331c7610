"""The model registry: every model's spec, and building or loading a model by its name.

Adding a model is one module holding its spec and one line in `SPECS`: everything else
(the plan's drop order, the logs' step names, metrics.json's packages) is read off the specs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import create_model

from tasks.core.storage import MANIFEST_FILE
from tasks.training.models.base import Classifier, HyperParameters, ModelSpec, TrainingContext
from tasks.training.models.cnn import CNN
from tasks.training.models.sklearn_models import LOGISTIC_REGRESSION, RANDOM_FOREST
from tasks.training.models.svm import SVM
from tasks.training.models.xgboost_model import XGBOOST

# The default training order, longest first (fit + predict on one thread, measured: cnn
# ~800 s, xgboost ~190 s, svm ~75 s, random forest ~65 s): the pool starts the slow
# models early and the short ones fill the gaps at the end instead of leaving a core idle.
SPECS: tuple[ModelSpec, ...] = (CNN, XGBOOST, SVM, RANDOM_FOREST, LOGISTIC_REGRESSION)
# The specs in use: `SPECS`, and those `registered` for a while.
_specs: tuple[ModelSpec, ...] = SPECS


def params_model(specs: tuple[ModelSpec, ...]) -> type[HyperParameters]:
    """The configuration's section of the models' hyper-parameters, in the order the
    Prefect form and the CLI list them: quickest model first."""
    return create_model(
        "ModelParams",
        __base__=HyperParameters,
        __doc__="Hyper-parameters of every registered model; the field names are the models'.",
        **{spec.name: (spec.params, spec.params()) for spec in reversed(specs)},
    )


ModelParams = params_model(SPECS)


@contextmanager
def registered(*specs: ModelSpec) -> Iterator[type[HyperParameters]]:
    """`specs` registered beside the models within the block, to try a model without
    editing `SPECS` (the tests' throwaway one); yields the hyper-parameters class of all.

    Raises:
        ValueError: for a name already registered.
    """
    global _specs
    if taken := [spec.name for spec in specs if spec.name in _by_name()]:
        raise ValueError(f"models already registered: {', '.join(taken)}")
    before = _specs
    _specs = (*before, *specs)
    try:
        yield params_model(_specs)
    finally:
        _specs = before


def _by_name() -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in _specs}


def model_spec(name: str) -> ModelSpec:
    """The spec of a registered model.

    Raises:
        ValueError: for a name no spec has, listing the valid ones.
    """
    by_name = _by_name()
    if name not in by_name:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(by_name)}")
    return by_name[name]


def build_model(name: str, params: ModelParams, context: TrainingContext) -> Classifier:
    """An unfitted classifier for a registered model, with its section of `params`."""
    return model_spec(name).build(getattr(params, name), context)


def load_model(directory: Path, threads: int) -> Classifier:
    """A saved classifier, read back in its library's own format."""
    loaders = {spec.adapter.model_file: spec.adapter.load for spec in _specs}
    for model_file, load in loaders.items():
        if (directory / model_file).is_file():
            return load(directory, threads)
    raise FileNotFoundError(f"{directory}: no saved model ({', '.join(loaders)})")


def model_file_digests(directory: Path) -> dict[str, str] | None:
    """A model entry's saved model files (`model.*`) and their SHA-256, as its manifest
    records them; None without a readable manifest."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {name: digest for name, digest in manifest.items() if name.startswith("model.")}


def drop_order() -> tuple[str, ...]:
    """The models the planner leaves out first when not all fit: lowest `keep_priority`."""
    return tuple(spec.name for spec in sorted(_specs, key=lambda spec: spec.keep_priority))


def own_lane_model() -> str | None:
    """The model that trains on a lane of its own and gets every core once the others
    are done, if one asks to.

    Raises:
        ValueError: when more than one asks: the planner gives one lane away.
    """
    names = [spec.name for spec in _specs if spec.own_lane]
    if len(names) > 1:
        raise ValueError(f"models {', '.join(names)} each ask for a lane of their own; one may")
    return names[0] if names else None


def growing_models(names: Iterable[str]) -> list[str]:
    """Of `names`, the models that take the cores of the models done while they train,
    in the order they take them: the one with a lane of its own first."""
    by_name, own = _by_name(), own_lane_model()
    taking = [n for n in names if n == own or (n in by_name and by_name[n].takes_more_threads)]
    return sorted(taking, key=lambda name: name != own)


def step_name(name: str) -> str:
    """What the logs and the report call a model's steps (epochs, boosting rounds)."""
    return model_spec(name).step_name


def model_packages() -> tuple[str, ...]:
    """The Python packages the models need, once each, quickest model's first."""
    return tuple(dict.fromkeys(p for spec in reversed(_specs) for p in spec.packages))


def validation_uses(names: Iterable[str], budgeted: bool = False) -> dict[str, str]:
    """What the validation split decides in the training of each named model that reads
    it, in a run with a time budget or without; names of no registered model (the
    ensemble) are passed over."""
    specs = _by_name()
    uses = {name: specs[name].validation_use for name in names if name in specs}
    if budgeted:
        uses |= {
            name: use for name in uses if (use := specs[name].budgeted_validation_use) is not None
        }
    return {name: use for name, use in uses.items() if use}
