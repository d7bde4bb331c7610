"""Model parameters small enough for the synthetic data's unit tests."""

from __future__ import annotations

from tasks.run.config import ModelParams
from tasks.training.models.cnn import CNNParams
from tasks.training.models.sklearn_models import RandomForestParams
from tasks.training.models.xgboost_model import XGBoostParams

SMALL = ModelParams(
    random_forest=RandomForestParams(n_estimators=20),
    xgboost=XGBoostParams(n_estimators=30, early_stopping_rounds=5),
    # Class k is a band of rows 2 apart, so shifting would blur the classes into each other.
    cnn=CNNParams(
        epochs=4, batch_size=32, conv_blocks=((8,), (16,)), dense_units=32, shift_pixels=0
    ),
)
