from __future__ import annotations

import re
import subprocess
import sys

import pytest
from optuna.distributions import CategoricalDistribution

from tasks.core.storage import PROJECT_PACKAGE, _module_file, _project_imports
from tasks.run.config import DEFAULT_MODELS, MODEL_NAMES, QUICK_PROFILE, ModelParams
from tasks.training.models.base import TrainingContext
from tasks.training.models.registry import SPECS, build_model


def test_registry_covers_every_configured_model():
    assert sorted(spec.name for spec in SPECS) == sorted(MODEL_NAMES)
    assert tuple(spec.name for spec in SPECS) == DEFAULT_MODELS
    for spec in SPECS:
        assert type(getattr(ModelParams(), spec.name)) is spec.params
        assert QUICK_PROFILE["params"].get(spec.name, {}) == spec.quick


def test_unknown_model_lists_the_valid_ones():
    valid = ", ".join(spec.name for spec in SPECS)
    with pytest.raises(ValueError, match=rf"unknown model 'svm'; valid models: {valid}$"):
        build_model("svm", ModelParams(), TrainingContext(seed=0, threads=1))


# The models package's modules that every model shares; its other modules are models'.
SHARED_MODEL_MODULES = {"__init__.py", "base.py", "measuring.py", "registry.py"}


def test_only_a_models_own_modules_name_it():
    """Adding a model is its module and a line in the registry: no other code lists it."""
    root, models_dir = PROJECT_PACKAGE.parent, PROJECT_PACKAGE / "training" / "models"
    names = "|".join(re.escape(spec.name) for spec in SPECS)
    quoted = re.compile(rf"""(["'])({names})\1""")
    found = []
    for path in sorted(
        p for d in ("tasks", "flows", "benchmarks") for p in (root / d).rglob("*.py")
    ):
        if path.parent == models_dir and path.name not in SHARED_MODEL_MODULES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if quoted.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert found == []


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_search_space_names_config_fields_and_holds_the_defaults(spec):
    defaults = spec.params()
    for name, distribution in spec.search_space.items():
        value = getattr(defaults, name)
        if isinstance(distribution, CategoricalDistribution):
            assert value in distribution.choices, (spec.name, name)
        else:
            assert distribution.low <= value <= distribution.high, (spec.name, name)


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_model_module_imports_neither_the_registry_nor_other_models(spec):
    """Else its trained models' cache key would cover every model's code."""
    imported = _project_imports(spec.module, PROJECT_PACKAGE)
    others = {_module_file(other.module, PROJECT_PACKAGE) for other in SPECS} - {
        _module_file(spec.module, PROJECT_PACKAGE)
    }
    assert PROJECT_PACKAGE / "training" / "models" / "registry.py" not in imported
    assert imported.isdisjoint(others)


def test_tensorflow_is_imported_only_to_fit_or_load_a_cnn():
    # A fresh interpreter: this one may have imported TensorFlow for another test.
    imports = (
        "import sys, tasks.run.config, tasks.training.train, tasks.training.tune; "
        "print(sorted(sys.modules))"
    )
    modules = subprocess.run(
        [sys.executable, "-c", imports], capture_output=True, text=True, check=True
    ).stdout
    assert "'tensorflow'" not in modules
    assert "'keras'" not in modules
    assert "'tasks.training.models.cnn'" in modules  # the CNN's module is loaded; only Keras waits
