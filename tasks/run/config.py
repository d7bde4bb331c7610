"""The typed configuration of one pipeline run, with the `quick` and `full` profiles.

`PipelineConfig` is the flow's single parameter: Prefect validates it and renders
it as a form in the UI, and every task receives only the fields it needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)

from tasks.budget.schedule import CoreSchedule, schedule_cores
from tasks.core.cpus import usable_cores
from tasks.core.devices import cnn_on_gpu, detect_devices
from tasks.data.preprocess import held_out_problem, held_out_sizes
from tasks.training.models.base import ONE_THREAD
from tasks.training.models.registry import SPECS, ModelParams, model_spec, own_lane_model

ProfileName = Literal["quick", "full"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MODEL_NAMES: tuple[str, ...] = tuple(ModelParams.model_fields)
DEFAULT_MODELS: tuple[str, ...] = tuple(spec.name for spec in SPECS)

# What the `quick` profile changes: a small stratified subset and short training, so a
# smoke run of every stage takes about a minute. Values given explicitly win.
QUICK_PROFILE: dict = {
    "time_budget_minutes": 3.0,
    "train_subset_size": 6000,
    "validation_size": 500,
    "test_subset_size": 2000,
    "params": {spec.name: dict(spec.quick) for spec in reversed(SPECS) if spec.quick},
}


class DataConfig(_Params):
    """Where the data is and what it must satisfy before anything is trained on it."""

    dir: Path | None = Field(
        None,
        description="Your data, used alone when given: a folder of four IDX files, Kaggle's "
        "fashion-mnist_train.csv and fashion-mnist_test.csv, or train/<class>/ image "
        "folders (and test/<class>/). Default: Fashion-MNIST from the cache, Debian's "
        "dataset-fashion-mnist package, or a download.",
    )
    test_fraction: float = Field(
        0.15, gt=0, lt=1, description="Image folders without test/: the stratified test share."
    )
    min_images_per_class: PositiveInt = Field(
        10, description="Data with fewer images of a class in a split is refused."
    )
    max_duplicate_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Test images also in train (identical pixels) are reported; above this "
        "share of the test split the data is refused.",
    )


class TuneConfig(_Params):
    """The optional tuning stage: a search on the validation split before training."""

    enabled: bool = Field(False, description="Tune every model's parameters before training.")
    budget_minutes: float = Field(
        5.0, gt=0, description="Trial time each model may use; trials run in parallel."
    )
    train_subset_size: PositiveInt | None = Field(
        15_000,
        description="Trials fit on this stratified subset of the training split (None: all).",
    )
    save_profile: Path | None = Field(
        None,
        description="Also write the best parameters to this file, for runs' profile_file.",
    )


def read_profile_file(path: Path) -> dict:
    """Configuration values saved as JSON, such as the parameters a tuning run found."""
    try:
        values = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"profile file {path}: cannot be read ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"profile file {path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"profile file {path}: holds {type(values).__name__}, not an object")
    return values


def _merge(defaults: dict, given: dict) -> dict:
    merged = dict(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class PipelineConfig(BaseModel):
    """Everything that defines a run; `full` defaults train every model on all the data."""

    model_config = ConfigDict(extra="forbid")

    profile: ProfileName = Field(
        "full", description="full: all data, all models; quick: a one-minute smoke run."
    )
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS), min_length=1)
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="Seed of the split and every model (0 to 2^32-1)."
    )
    data: DataConfig = DataConfig()
    cache_dir: Path = Field(Path("data"), description="Downloaded, parsed and processed data.")
    output_dir: Path = Field(Path("reports"), description="Where run reports are written.")
    validation_size: int | None = Field(
        None,
        ge=10,
        description="Validation images (early stopping, calibration, tuning), a stratified "
        "share of the training images; default: a twentieth (3,000 of Fashion-MNIST's 60,000).",
    )
    selection_size: int | None = Field(
        None,
        ge=10,
        description="Selection images (the ensemble's members and weights), a stratified "
        "share of the training images no model sees; default: as many as validation.",
    )
    train_subset_size: int | None = Field(
        None, ge=20, description="Stratified subset of the training images (before the split)."
    )
    test_subset_size: int | None = Field(
        None, ge=10, description="Stratified subset of the test images."
    )
    time_budget_minutes: float = Field(
        15.0,
        ge=0,
        description="Minutes the whole run may take, from start to report: the run measures "
        "what its models cost on this machine and plans epochs, rounds and which models fit. "
        "0: no budget, every model trains as configured.",
    )
    parallel_models: PositiveInt | None = Field(
        None,
        description="Models trained at the same time; default: planned from the usable "
        "cores and how each model scales with threads (one per core up to the number of "
        "models).",
    )
    threads_per_model: PositiveInt | None = Field(
        None,
        description="Threads each model may use; default: planned per model, the cores "
        "shared evenly where parallel_models is set.",
    )
    params: ModelParams = ModelParams()
    ensemble_size: int = Field(
        3,
        ge=0,
        description="Soft-vote the N models with the best selection accuracy; below 2: none.",
    )
    refresh: bool = Field(
        False, description="Rebuild every cached step instead of reusing verified results."
    )
    task_runner: Literal["threads", "processes", "dask"] = Field(
        "threads", description="How models are trained in parallel."
    )
    dask_address: str | None = Field(
        None, description="Scheduler of an existing Dask cluster (tcp://host:port)."
    )

    regression_tolerance: float = Field(
        0.01,
        ge=0,
        le=1,
        description="A model whose test accuracy drops by more than this since the champion "
        "run of the same profile, significantly (p < 0.05), has regressed.",
    )
    fail_on_regression: bool = Field(
        False, description="End the run Failed (exit status 4) when a model regressed."
    )
    baseline: str | None = Field(
        None,
        description="Compare with this earlier run of the profile and make it the champion "
        "(accepting it); default: the champion, the last run without a regression.",
    )

    profile_file: Path | None = Field(
        None,
        description="JSON of configuration values over the profile's defaults, such as "
        "tuned parameters; values given explicitly win.",
    )
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        defaults = QUICK_PROFILE if data.get("profile") == "quick" else {}
        if data.get("profile_file"):
            defaults = _merge(defaults, read_profile_file(Path(data["profile_file"])))
        return _merge(defaults, data)

    @field_validator("models")
    @classmethod
    def _known_unique_models(cls, models: list[str]) -> list[str]:
        unknown = [name for name in models if name not in MODEL_NAMES]
        if unknown:
            raise ValueError(
                f"unknown model {', '.join(map(repr, unknown))}; "
                f"valid models: {', '.join(MODEL_NAMES)}"
            )
        if len(set(models)) != len(models):
            raise ValueError(f"models listed more than once: {models}")
        return models

    @model_validator(mode="after")
    def _dask_address_needs_dask(self) -> PipelineConfig:
        if self.dask_address and self.task_runner != "dask":
            raise ValueError("dask_address is only used with task_runner 'dask'")
        return self

    @model_validator(mode="after")
    def _save_profile_needs_tuning(self) -> PipelineConfig:
        if self.tune.save_profile and not self.tune.enabled:
            raise ValueError("tune.save_profile is only written when tune.enabled (--tune)")
        return self

    @model_validator(mode="after")
    def _split_fits(self) -> PipelineConfig:
        if self.train_subset_size and (self.validation_size or self.selection_size):
            sizes = held_out_sizes(
                self.train_subset_size, self.validation_size, self.selection_size
            )
            if problem := held_out_problem(self.train_subset_size, sizes):
                raise ValueError(problem)
        return self

    def core_schedule(self, cores: int | None = None, gpu: bool | None = None) -> CoreSchedule:
        """Models trained at once and each one's threads, on `cores` (default: the usable
        cores here); `parallel_models` and `threads_per_model` override the plan. With a
        GPU (default: whether one is here), the CNN computes there: it keeps one thread
        to feed it, and no lane's cores are held for it."""
        gpu = cnn_on_gpu(detect_devices()) if gpu is None else gpu
        own_lane = own_lane_model()
        scalings = {name: model_spec(name).scaling for name in self.models}
        if gpu and own_lane in scalings:
            scalings[own_lane] = ONE_THREAD
        return schedule_cores(
            usable_cores() if cores is None else cores, scalings,
            None if gpu else own_lane, self.parallel_models, self.threads_per_model,
        )  # fmt: skip

    @property
    def lanes(self) -> int:
        """Models trained at the same time here (`core_schedule`)."""
        return self.core_schedule().lanes


def build_config(profile: ProfileName = "full", **overrides: object) -> PipelineConfig:
    """The named profile with `overrides` (None values ignored), validated as a whole."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return PipelineConfig.model_validate({"profile": profile, **given})
