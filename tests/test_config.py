from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from tasks.run.config import MODEL_NAMES, ModelParams, PipelineConfig
from tasks.training.models.registry import SPECS
from tasks.training.models.svm import SVMParams


def test_model_params_built_from_the_specs_validate_like_a_written_class():
    # Quickest first: the order the Prefect form and the CLI's help list the models in.
    assert tuple(spec.name for spec in reversed(SPECS)) == MODEL_NAMES
    params = ModelParams(svm_rbf={"C": 3.0})
    assert params.svm_rbf == SVMParams(C=3.0)
    assert pickle.loads(pickle.dumps(params)) == params  # process and Dask runners send it
    with pytest.raises(ValidationError, match=r"svm\n  Extra inputs are not permitted"):
        ModelParams(svm={})
    with pytest.raises(ValidationError, match="Instance is frozen"):
        params.svm_rbf = SVMParams()


def test_quick_profile_shortens_the_iterative_models():
    quick = PipelineConfig(profile="quick").params
    assert (quick.xgboost.n_estimators, quick.xgboost.early_stopping_rounds) == (30, 5)
    assert (quick.cnn.epochs, quick.cnn.early_stopping_patience) == (2, 1)
    assert (quick.random_forest.n_estimators, quick.logistic_regression.max_iter) == (30, 100)
    assert quick.svm_rbf == SVMParams()


def test_held_out_splits_must_leave_training_images_before_anything_runs():
    config = PipelineConfig(train_subset_size=1000, validation_size=400)
    assert (config.validation_size, config.selection_size) == (400, None)
    with pytest.raises(ValidationError, match="validation_size 400 and selection_size 400 must"):
        PipelineConfig(train_subset_size=800, validation_size=400)
    with pytest.raises(ValidationError, match="validation_size 50 and selection_size 950 must"):
        PipelineConfig(train_subset_size=1000, selection_size=950)
