"""The CNN's epochs kept for a rerun: a fit stopped part-way is taken up at its last whole
epoch and ends where a fit in one go ends; what cannot be taken up is passed over."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

import numpy as np
import pytest

from tasks.core.contracts import SPLIT_ARRAYS
from tasks.core.stopping import RunStopped
from tasks.training.models.base import TrainingContext
from tasks.training.models.cnn import CNNParams, KerasCNN
from tasks.training.models.keras_resume import STATE_FILE, WEIGHTS_FILE
from tasks.training.train import train_model
from tests.support.cache import entries
from tests.support.params import SMALL

TINY = CNNParams(
    epochs=6, batch_size=32, conv_blocks=((4,),), dense_units=8, dropout=0.2, shift_pixels=1,
    test_shift_pixels=0,
)  # fmt: skip


def stopped_after(epochs: int, scores: list[int]):
    """A context's `report_validation` and `check_stop`: the run is stopped as the fit's
    next batch starts once `epochs` epochs have ended (after their progress is kept)."""

    def check_stop() -> None:
        if len(scores) >= epochs:
            raise RunStopped(None)

    return (lambda epoch, accuracy: scores.append(epoch)), check_stop


def fit(processed, context: TrainingContext, params: CNNParams = TINY):
    (x_train, y_train), (x_val, y_val) = (
        processed.load(*SPLIT_ARRAYS[split]) for split in ("train", "validation")
    )
    cnn = KerasCNN(params, replace(context, classes=len(processed.class_names)))
    return cnn, cnn.fit(x_train, y_train, x_val, y_val)


@pytest.mark.parametrize("budgeted", [False, True], ids=["no budget", "under a deadline"])
def test_a_fit_stopped_part_way_is_taken_up_there_and_ends_as_one_fit_in_one_go(
    processed, tmp_path, budgeted
):
    deadline = {"deadline": time.time() + 3600, "most_steps": 6} if budgeted else {}
    context = TrainingContext(seed=0, threads=1, resume_dir=tmp_path / "kept", **deadline)
    # Without a budget, only the epochs before early stopping watches (from the 4th of 6).
    scores = []
    report, check_stop = stopped_after(4 if budgeted else 3, scores)
    with pytest.raises(RunStopped):
        fit(processed, replace(context, report_validation=report, check_stop=check_stop))
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert kept == (["epoch-0004"] if budgeted else ["epoch-0003"])  # the latest only

    scores.clear()
    resumed, curve = fit(processed, replace(context, report_validation=report))
    assert scores == ([5, 6] if budgeted else [4, 5, 6])  # only the epochs not yet trained
    assert len(curve.validation_error) == len(curve.train_error) == 6  # the earlier's too
    in_one_go, whole_curve = fit(processed, replace(context, resume_dir=None))
    assert curve == whole_curve
    for taken_up, whole in zip(
        resumed.model.get_weights(), in_one_go.model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(taken_up, whole, rtol=1e-4, atol=1e-5)


def test_the_training_stage_takes_up_a_stopped_fit_counts_its_seconds_and_clears_what_it_kept(
    processed, tmp_path, caplog
):
    params = SMALL.model_copy(update={"cnn": TINY})
    scores = []
    report, check_stop = stopped_after(2, scores)
    context = TrainingContext(seed=0, threads=1, report_validation=report, check_stop=check_stop)
    with pytest.raises(RunStopped):
        train_model("cnn", params, processed, tmp_path, context)
    (resume_dir,) = (tmp_path / "models" / "cnn").glob(".*.resume")
    assert entries(tmp_path) == {}  # no model published
    earlier = json.loads((resume_dir / "epoch-0002" / STATE_FILE).read_text())["seconds"]

    scores.clear()
    started = time.perf_counter()
    with caplog.at_level(logging.INFO):
        trained = train_model(
            "cnn", params, processed, tmp_path, replace(context, check_stop=lambda: None)
        )
    assert scores == [3, 4, 5, 6]
    assert "cnn: takes up the fit after epoch 2, kept by an earlier run that trained for " in (
        caplog.text
    )
    assert resume_dir.name == f".{trained.directory.name}.resume"
    assert not resume_dir.exists()  # published: nothing left to take up
    assert earlier < trained.fit_seconds < earlier + time.perf_counter() - started
    assert len(trained.curve.validation_error) == 6


@pytest.mark.parametrize(
    ("kept_epoch", "warning"),
    [("altered on disk", "fit.weights.h5 does not match its recorded hash"),
     ("of another network", "objects could not be loaded")],
)  # fmt: skip
def test_a_kept_epoch_that_cannot_be_taken_up_is_removed_and_the_fit_starts_afresh(
    processed, tmp_path, caplog, kept_epoch, warning
):
    context = TrainingContext(seed=0, threads=1, resume_dir=tmp_path / "kept")
    scores = []
    report, check_stop = stopped_after(2, scores)
    stopped = replace(context, report_validation=report, check_stop=check_stop)
    kept = tmp_path / "kept" / "epoch-0002"
    if kept_epoch == "altered on disk":
        with pytest.raises(RunStopped):
            fit(processed, stopped)
        altered = bytearray((kept / WEIGHTS_FILE).read_bytes())
        altered[len(altered) // 2] ^= 0xFF
        (kept / WEIGHTS_FILE).write_bytes(altered)
    else:  # whole and true to its manifest, but its weights do not fit this network
        with pytest.raises(RunStopped):
            fit(processed, stopped, TINY.model_copy(update={"dense_units": 16}))

    scores.clear()
    with caplog.at_level(logging.INFO):
        _, curve = fit(processed, replace(context, report_validation=report))
    assert f"cnn: cannot take up {kept} (" in caplog.text
    assert warning in caplog.text
    assert "); removed it" in caplog.text
    assert "takes up" not in caplog.text
    assert scores == [1, 2, 3, 4, 5, 6]
    assert curve == fit(processed, replace(context, resume_dir=None))[1]
