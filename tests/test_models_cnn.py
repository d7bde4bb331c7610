from __future__ import annotations

import itertools
import json
import math
import time
import types
import zipfile
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from tasks.core.contracts import SPLIT_ARRAYS
from tasks.training.cores import CoreHandover
from tasks.training.models import keras_training
from tasks.training.models.base import TrainingContext
from tasks.training.models.deadline_schedule import CosineToDeadline
from tasks.training.models.keras_prediction import (
    predicted_over_views,
    prediction_views,
    view_count,
)
from tasks.training.models.keras_training import (
    PREDICT_BATCH,
    EpochProgress,
    augmented_batches,
    early_stopping,
    image_batches,
    one_hot,
    shift_and_mirror,
)
from tasks.training.models.tensorflow_runtime import start_tensorflow


@pytest.fixture
def keras():
    start_tensorflow(threads=1)  # as a fit does, before TensorFlow fixes its thread pools
    import keras

    return keras


def test_shift_and_mirror_moves_each_image_within_bounds():
    images = np.zeros((400, 28, 28, 1), dtype=np.float32)
    images[:, 10, 5] = 1.0  # one bright pixel, far enough from every edge
    shifted = shift_and_mirror(images, 2, mirror=True, rng=np.random.default_rng(0))
    again = shift_and_mirror(images, 2, mirror=True, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(shifted, again)
    assert images[:, 10, 5].all()  # the input is left as it was
    _, rows, columns, _ = np.nonzero(shifted)
    assert len(rows) == len(images)  # no pixel lost or duplicated
    assert set(rows) == set(range(8, 13))
    mirrored = columns > 13
    assert set(columns[~mirrored]) == set(range(3, 8))
    assert set(columns[mirrored]) == set(range(20, 25))  # column 27 - 5 = 22, shifted
    assert 0.4 < mirrored.mean() < 0.6
    unchanged = shift_and_mirror(images, 0, mirror=False, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(unchanged, images)


def bright_pixels(views) -> list[tuple[int, int]]:
    """Where each view's one bright pixel is: (row, column)."""
    return [tuple(int(i) for i in np.argwhere(view[0, :, :, 0])[0]) for view in views]


@pytest.mark.parametrize(
    ("shift_pixels", "mirror", "expected"),
    [
        (1, True, [(10, 5), (11, 5), (9, 5), (10, 6), (10, 4),
                   (10, 22), (11, 22), (9, 22), (10, 23), (10, 21)]),
        (2, False, [(10, 5), (12, 5), (8, 5), (10, 7), (10, 3)]),
        (0, True, [(10, 5), (10, 22)]),
        (0, False, [(10, 5)]),
    ],
)  # fmt: skip
def test_a_prediction_views_each_image_moved_each_way_and_mirrored(shift_pixels, mirror, expected):
    images = np.zeros((3, 28, 28, 1), dtype=np.float32)
    images[:, 10, 5] = 1.0
    views = list(prediction_views(images, shift_pixels, mirror))
    assert bright_pixels(views) == expected
    assert len(views) == view_count(shift_pixels, mirror)
    assert all(view.shape == images.shape and view.sum() == 3 for view in views)
    assert images.sum() == images[:, 10, 5].sum() == 3  # the input is left as it was


def test_an_image_moved_past_the_edge_leaves_background():
    images = np.zeros((1, 28, 28, 1), dtype=np.float32)
    images[0, 0, :] = 1.0  # the top row
    (_, down, up, _, _) = prediction_views(images, 1, mirror=False)
    assert down.sum() == down[0, 1, :].sum() == 28
    assert up.sum() == 0  # moved out of the image, not round to the bottom row


class RowTen:
    """A network whose "probabilities" are the first ten pixels of each image's row 10; it
    counts the steps it is called for."""

    def __init__(self) -> None:
        self.steps = 0

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        self.steps += 1
        return images[:, 10, :10, 0]


@pytest.mark.parametrize(("count", "steps"), [(2, 1), (30, 10), (300, 20)])
def test_the_prediction_is_the_mean_over_the_views(count, steps):
    images = np.zeros((count, 28, 28, 1), dtype=np.float32)
    images[:, 10, 5] = 1.0
    network = RowTen()
    probabilities = predicted_over_views(network, images, shift_pixels=1, mirror=True)
    # Of the ten views, the image itself and its copies moved left and right put the pixel
    # in columns 5, 4 and 6 of row 10; the others (moved up or down, mirrored) do not.
    expected = np.zeros(10)
    expected[[4, 5, 6]] = 0.1
    np.testing.assert_allclose(probabilities, np.tile(expected, (count, 1)))
    # A few images' views go in one step; more, a view at a time, in batches of at most
    # 256 images (300 images: 10 views of 2 batches each).
    assert network.steps == steps


def test_a_network_saved_before_shifted_views_predicts_as_it_was_evaluated(keras, tmp_path):
    from tasks.training.models.base import PARAMS_FILE
    from tasks.training.models.cnn import CNNParams, KerasCNN

    inputs = keras.Input(shape=(28, 28, 1))
    keras.Model(inputs, keras.layers.Flatten()(inputs)).save(tmp_path / KerasCNN.model_file)
    saved = CNNParams().model_dump(mode="json")
    assert saved.pop("test_shift_pixels") == 1  # the default now
    (tmp_path / PARAMS_FILE).write_text(json.dumps({"params": saved}))
    assert KerasCNN.load(tmp_path, threads=1).params.test_shift_pixels == 0
    (tmp_path / PARAMS_FILE).write_text(json.dumps({"params": saved | {"test_shift_pixels": 1}}))
    assert KerasCNN.load(tmp_path, threads=1).params.test_shift_pixels == 1


def _passes(dataset, count: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    return [[(x.numpy(), y.numpy()) for x, y in dataset] for _ in range(count)]


def test_each_pass_over_the_augmented_batches_is_the_next_epoch(keras):
    from tasks.training.models.cnn import CNNParams

    images = np.zeros((10, 28, 28, 1), dtype=np.float32)
    images[np.arange(10), 14, 14, 0] = np.arange(1, 11)  # each image told by its one pixel
    labels = np.arange(10) % 3
    params = CNNParams(batch_size=4, shift_pixels=0, mirror=False)
    first, second = _passes(augmented_batches(images, labels, params, seed=7, classes=3), 2)
    again = _passes(augmented_batches(images, labels, params, seed=7, classes=3), 1)[0]

    def order(epoch):
        return [int(v) - 1 for x, _ in epoch for v in x.max(axis=(1, 2, 3))]

    assert [len(x) for x, _ in first] == [4, 4, 2]
    assert sorted(order(first)) == list(range(10)) == sorted(order(second))
    assert order(first) != order(second)  # a new shuffle each epoch
    assert order(again) == order(first)  # the same seed, the same epochs
    for x, y in first:  # each image keeps its one-hot label
        np.testing.assert_array_equal(
            y.argmax(axis=1), labels[x.max(axis=(1, 2, 3)).astype(int) - 1]
        )


def test_image_batches_keep_the_order_with_tf_data_autotuning_off(keras):
    images = np.random.default_rng(0).random((2 * PREDICT_BATCH + 5, 28, 28, 1), np.float32)
    labels = np.eye(10, dtype=np.float32)[np.arange(len(images)) % 10]
    mirrored = image_batches(images[:, :, ::-1])
    batches = list(mirrored.as_numpy_iterator())
    assert [len(b) for b in batches] == [PREDICT_BATCH, PREDICT_BATCH, 5]
    np.testing.assert_array_equal(np.concatenate(batches), images[:, :, ::-1])
    labelled = list(image_batches(images, labels).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([y for _, y in labelled]), labels)
    # tf.data's autotuning thread holds up the end of each pass by seconds
    assert mirrored.options().autotune.enabled is False


@pytest.mark.parametrize("shape", [(16, 5, 5, 3), (16, 7)])
def test_fused_batch_normalisation_matches_keras(keras, shape):
    from tasks.training.models.keras_layers import FusedBatchNormalization

    x = np.random.default_rng(0).normal(2.0, 3.0, size=shape).astype(np.float32)
    fused, reference = (
        FusedBatchNormalization(momentum=0.9),
        keras.layers.BatchNormalization(momentum=0.9),
    )
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean, reference.moving_mean, rtol=1e-5)
    assert np.all(np.asarray(fused.moving_variance) > 1)  # moved from 1 towards the data's 9
    reference.moving_variance.assign(fused.moving_variance)
    np.testing.assert_allclose(fused(x), reference(x), atol=1e-5)  # inference statistics
    restored = FusedBatchNormalization.from_config(fused.get_config())
    assert (restored.momentum, restored.epsilon) == (0.9, 1e-3)


def test_networks_saved_when_the_layer_lived_in_tasks_keras_layers_still_load(keras, tmp_path):
    from tasks.training.models.keras_layers import FusedBatchNormalization

    inputs = keras.Input(shape=(4,))
    keras.Model(inputs, FusedBatchNormalization(momentum=0.8)(inputs)).save(tmp_path / "new.keras")
    # What a file saved before the move says about the layer: its old module, and the
    # name it was registered under, by which Keras finds the class.
    old_file = tmp_path / "old.keras"
    with zipfile.ZipFile(tmp_path / "new.keras") as new, zipfile.ZipFile(old_file, "w") as old:
        for item in new.infolist():
            content = new.read(item)
            if item.filename == "config.json":
                config = json.loads(content)
                layer = config["config"]["layers"][1]
                layer["module"] = "tasks.keras_layers"
                layer["registered_name"] = "fashion_mnist>FusedBatchNormalization"
                content = json.dumps(config)
            old.writestr(item, content)
    loaded = keras.models.load_model(old_file)
    assert isinstance(loaded.layers[1], FusedBatchNormalization)
    assert loaded.layers[1].momentum == 0.8


class FakeNetwork:
    """What the schedule touches on a Keras model."""

    def __init__(self) -> None:
        self.optimizer = types.SimpleNamespace(learning_rate=None)
        self.stop_training = False


class FakeClock:
    """The schedule's clock, moved on by the epochs `run_epoch` runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_epoch(
    schedule: CosineToDeadline,
    network: FakeNetwork,
    epoch: int,
    seconds: float,
    midway: Callable[[], None] = lambda: None,
    validation: float = 0.0,
):
    """One epoch of the schedule's hooks, taking `seconds` on its clock, the last
    `validation` of them after its batches, as Keras runs them: it stops after a batch
    when told to. `midway` happens after the first batch (the others done, say)."""
    rates = []
    schedule.on_epoch_begin(epoch)
    for batch in range(schedule.steps_per_epoch):
        schedule.on_train_batch_begin(batch)
        rates.append(network.optimizer.learning_rate)
        schedule.clock.now += (seconds - validation) / schedule.steps_per_epoch
        if batch == 0:
            midway()
        schedule.on_train_batch_end(batch)
        if network.stop_training:
            break
    schedule.clock.now += validation
    schedule.on_epoch_end(epoch)
    return rates


def train(schedule: CosineToDeadline, network: FakeNetwork, seconds: float, epochs: int):
    rates = []
    for epoch in range(epochs):
        rates += run_epoch(schedule, network, epoch, seconds)
        if network.stop_training:
            break
    return rates


def plateau_with_one_better_epoch(keras, stopping) -> tuple[int | None, float]:
    """30 epochs flat at 0.90 validation accuracy but for epoch 20's 0.91, each epoch's
    weights marked with its number: the epoch training stopped at (None: it ran all 30)
    and the epoch whose weights are kept."""
    network = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    network.stop_training = False  # as Keras' fit starts
    stopping.set_model(network)
    stopping.on_train_begin()
    stopped_at = None
    for epoch in range(30):
        network.layers[0].bias.assign([float(epoch)])
        stopping.on_epoch_end(epoch, {"val_accuracy": 0.91 if epoch == 20 else 0.90})
        if network.stop_training:
            stopped_at = epoch
            break
    stopping.on_train_end()
    return stopped_at, float(network.layers[0].bias[0])


def test_early_stopping_waits_for_the_last_third_of_the_planned_epochs(keras):
    """A plateau while the learning rate is still high does not end the fit; one in the
    last third does, and the best epoch's weights come back."""
    params = types.SimpleNamespace(epochs=30, early_stopping_patience=4)
    # Counting from epoch 20 (2/3 of 30), four without gain.
    assert plateau_with_one_better_epoch(keras, early_stopping(params)) == (24, 20.0)


def test_under_a_time_budget_the_fit_keeps_the_last_epochs_weights(processed):
    """Scored on validation labels moved one class on, the network gets worse on validation
    as it learns: early stopping would keep an earlier epoch; under a budget the last one's
    weights stay, whose learning rate decayed to zero."""
    from tasks.training.models.cnn import CNNParams, KerasCNN

    (x_train, y_train), (x_val, y_val) = (
        processed.load(*SPLIT_ARRAYS[split]) for split in ("train", "validation")
    )
    params = CNNParams(conv_blocks=((4,),), dense_units=8, epochs=6, test_shift_pixels=0)
    weights = []
    context = TrainingContext(
        seed=0, threads=1, classes=len(processed.class_names), deadline=time.time() + 3600,
        most_steps=6, report_validation=lambda epoch, accuracy: weights.append(
            [w.copy() for w in cnn.model.get_weights()]
        ),
    )  # fmt: skip
    cnn = KerasCNN(params, context)
    curve = cnn.fit(x_train, y_train, x_val, (y_val + 1) % len(processed.class_names))
    assert len(weights) == len(curve.validation_error) == 6
    kept = cnn.model.get_weights()
    assert all(np.array_equal(k, last) for k, last in zip(kept, weights[-1], strict=True))


def test_without_a_deadline_the_learning_rate_is_keras_cosine_decay():
    network = FakeNetwork()
    context = TrainingContext(seed=0, threads=1)
    schedule = CosineToDeadline(network, 0.002, 10, 3, context, clock=FakeClock())
    rates = train(schedule, network, seconds=50, epochs=3)
    expected = [0.001 * (1 + math.cos(math.pi * step / 30)) for step in range(30)]
    np.testing.assert_allclose(rates, expected)
    assert not network.stop_training


def test_a_warm_up_rises_linearly_to_the_peak_then_decays_to_zero_over_the_rest():
    network = FakeNetwork()
    context = TrainingContext(seed=0, threads=1)
    schedule = CosineToDeadline(network, 0.004, 10, 4, context, warmup_epochs=1, clock=FakeClock())
    rates = train(schedule, network, seconds=50, epochs=4)
    np.testing.assert_allclose(rates[:10], [0.0004 * (step + 1) for step in range(10)])
    expected = [0.002 * (1 + math.cos(math.pi * step / 30)) for step in range(30)]
    np.testing.assert_allclose(rates[10:], expected)


def test_epochs_slower_than_planned_after_a_warm_up_compress_only_the_decay():
    network = FakeNetwork()
    context = TrainingContext(seed=0, threads=1, deadline=300)
    schedule = CosineToDeadline(network, 0.004, 10, 10, context, warmup_epochs=1, clock=FakeClock())
    # 10 epochs planned; at 100 s an epoch 3 fit: the warm-up's, then a decay over two.
    rates = train(schedule, network, seconds=100, epochs=10)
    assert len(rates) == 30
    assert rates[9] == pytest.approx(0.004)  # the warm-up's end: the peak
    assert rates[10] == pytest.approx(0.004)  # the decay's start
    assert rates[-1] < 0.0001
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))


def test_epochs_slower_than_planned_compress_the_decay_into_those_that_fit():
    network = FakeNetwork()
    context = TrainingContext(seed=0, threads=1, deadline=200)
    schedule = CosineToDeadline(network, 0.002, 10, 10, context, clock=FakeClock())
    # 10 epochs planned, but at 80 s an epoch only 2 fit in the 200 s; the 40 s they leave
    # hold 4 batches of a third at 8.4 s each (5 % over the 8 s they take).
    rates = train(schedule, network, seconds=80, epochs=10)
    assert len(rates) == 24
    assert 190 < schedule.clock.now <= 200
    assert network.stop_training
    assert rates[0] == pytest.approx(0.002)
    assert rates[-1] < 0.00005  # decayed, not cut off half-way
    assert all(a >= b for a, b in itertools.pairwise(rates))


def test_epochs_faster_than_planned_stretch_the_decay_up_to_the_most_allowed():
    network = FakeNetwork()
    context = TrainingContext(seed=0, threads=1, deadline=400, most_steps=6)
    schedule = CosineToDeadline(network, 0.002, 10, 3, context, clock=FakeClock())
    rates = train(schedule, network, seconds=50, epochs=6)  # 8 would fit; 6 are allowed
    assert len(rates) == 60
    assert network.stop_training
    assert rates[-1] < 0.00005
    assert all(a >= b for a, b in itertools.pairwise(rates))


SCORES = {"loss": 0.5, "accuracy": 0.8, "val_accuracy": 0.8}


def reporting_schedule(deadline: float, most: int, planned: int):
    """A schedule of `planned` epochs under `deadline`, at most `most`, with the progress
    hook Keras calls after it; returns the network, the schedule, the hook and what it
    reported."""
    network, reported = FakeNetwork(), []
    context = TrainingContext(
        seed=0, threads=1, deadline=deadline, most_steps=most, report_progress=reported.append
    )
    schedule = CosineToDeadline(network, 0.002, 10, planned, context, clock=FakeClock())
    return network, schedule, EpochProgress(lambda: schedule.last_epoch, context), reported


def test_progress_counts_against_the_epochs_planned_now_and_ends_at_one():
    network, schedule, progress, reported = reporting_schedule(400, most=6, planned=3)
    for epoch in range(6):  # 3 planned, stretched to the 6 allowed
        run_epoch(schedule, network, epoch, seconds=50)
        progress(epoch, SCORES)  # Keras calls it after the schedule's end-of-epoch hook
    assert reported == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])


def test_epochs_that_speed_up_part_way_are_planned_from_the_latest():
    """The CNN's epochs speed up when the other models are done and it gets their cores:
    the epochs re-planned come from the latest epochs' time, not all of them."""
    network = FakeNetwork()
    context = TrainingContext(seed=0, threads=1, deadline=1020, most_steps=30)
    schedule = CosineToDeadline(network, 0.002, 10, 5, context, clock=FakeClock())
    rates = []
    for epoch, seconds in enumerate([100] * 8 + [40] * 30):
        rates += run_epoch(schedule, network, epoch, seconds)
        if network.stop_training:
            break
    # 800 s for the first 8 epochs, then the 220 s left hold 5 at 40 s, even 5 % slower.
    # The median of all the epochs would still be 100 s after the 11th, 920 s in: it would
    # plan a 12th only, which ends 960 s in, and leave the last 60 s unused. The 20 s the
    # 13 leave go to 4 batches of a 14th.
    assert len(rates) == 134
    assert 1010 < schedule.clock.now <= 1020
    assert rates[-1] < 0.00005
    assert all(a >= b for a, b in itertools.pairwise(rates))


def run_to_the_deadline(epoch_seconds: list[float], deadline: float, most: int = 30):
    """A schedule of 8 epochs of 10 batches, at most `most`, the epochs taking
    `epoch_seconds` in turn (its last value for every epoch after), the last 2 s of each
    validating; the rates it set, the schedule, what it reported as progress and what it
    logged."""
    network, schedule, progress, reported = reporting_schedule(deadline, most, planned=8)
    logged = []
    schedule.context = replace(
        schedule.context, logger=types.SimpleNamespace(info=lambda *args: logged.append(args))
    )
    rates = []
    for epoch in range(most):
        seconds = epoch_seconds[min(epoch, len(epoch_seconds) - 1)]
        rates += run_epoch(schedule, network, epoch, seconds, validation=2)
        progress(epoch, SCORES)
        if network.stop_training:
            break
    return rates, schedule, reported, logged


def test_the_seconds_whole_epochs_leave_go_to_a_last_partial_epoch_that_ends_the_decay():
    """As the 5-minute run on the AVX2 EPYC (dee0fe2): 8 epochs of 27 s fit, a 9th did not
    fit the 19 s they left, and the run ended 8 % inside its budget. Planned at the end of
    the 7th, 189 s in: after the 8th at 28.35 s (5 % over) and a validation of 2.1 s, 15.55 s
    hold 5 batches at 2.625 s."""
    rates, schedule, reported, logged = run_to_the_deadline([27], deadline=8 * 27 + 19)
    assert len(rates) == 8 * 10 + 5
    assert schedule.clock.now == pytest.approx(8 * 27 + 5 * 2.5 + 2)  # 230.5 of 235 s
    assert rates[-1] < 0.00005  # decayed to its end with the 5th batch
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert reported[-1] == 1.0
    assert len(reported) == 9
    assert [args[1:5] for args in logged] == [(5, 10, 8, "")]


def test_a_last_whole_epoch_slower_than_planned_shrinks_the_partial_one_after_it():
    """The same, but the 8th epoch takes 33 s: 222 s in, the 13 s left hold 3 batches of
    3.255 s (5 % over the slowest epoch's) after a validation, not 5."""
    rates, schedule, _, logged = run_to_the_deadline([27] * 7 + [33], deadline=8 * 27 + 19)
    assert len(rates) == 8 * 10 + 3
    assert schedule.clock.now == pytest.approx(222 + 3 * 3.1 + 2)
    assert rates[-1] < 0.00005
    assert [args[1:5] for args in logged] == [(5, 10, 8, ""), (3, 10, 8, ", not 5")]


def test_no_partial_epoch_past_the_most_epochs_allowed():
    rates, _, _, logged = run_to_the_deadline([27], deadline=8 * 27 + 19, most=8)
    assert len(rates) == 8 * 10
    assert logged == []


def test_keras_ends_the_partial_epoch_after_its_batches_and_validates_it(keras):
    """In a real fit over the training batches: 2 epochs of 8 batches planned, a second
    a batch on the clock, 21 s to the deadline. The 5 s the two leave hold 4 batches of a
    third (1.05 s each, 5 % over): Keras stops after them, validates, and ends the fit."""
    rng = np.random.default_rng(0)
    images, labels = rng.random((64, 28, 28, 1), dtype=np.float32), rng.integers(0, 2, 64)
    recipe = types.SimpleNamespace(batch_size=8, shift_pixels=1, mirror=True)
    network = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(2, "softmax")]
    )
    network.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    clock = FakeClock()
    context = TrainingContext(seed=0, threads=1, deadline=21, most_steps=3)
    schedule = CosineToDeadline(network, 0.01, 8, 2, context, clock=clock)
    history = network.fit(
        augmented_batches(images, labels, recipe, seed=0, classes=2),
        epochs=3,
        validation_data=image_batches(images, one_hot(labels, 2)),
        callbacks=[
            keras.callbacks.LambdaCallback(
                on_train_batch_end=lambda batch, logs: setattr(clock, "now", clock.now + 1)
            ),
            keras.callbacks.LambdaCallback(
                on_epoch_begin=schedule.on_epoch_begin,
                on_train_batch_begin=schedule.on_train_batch_begin,
                on_train_batch_end=schedule.on_train_batch_end,
                on_epoch_end=schedule.on_epoch_end,
            ),
        ],
        verbose=0,
    )
    assert int(network.optimizer.iterations) == 2 * 8 + 4
    assert len(history.history["val_accuracy"]) == 3
    assert clock.now == 20
    assert float(network.optimizer.learning_rate) < 1e-3  # the decay's last step


def handing_over(tmp_path, after: float, deadline: float):
    """A schedule of 25 epochs up to 40, whose cores the others hand over `after` seconds
    with a speed-up of 2, as the planner plans it; its network and handover."""
    network = FakeNetwork()
    handover = CoreHandover(after=after, speedup=2.0, planned_at=0.0, directory=tmp_path)
    context = TrainingContext(
        seed=0, threads=2, deadline=deadline, most_steps=40, handover=handover
    )
    schedule = CosineToDeadline(network, 0.002, 10, 25, context, clock=FakeClock())
    return network, handover, schedule


def test_a_plan_counting_on_every_core_later_is_kept_while_the_cores_are_shared(tmp_path):
    """Planned as the planner does: 5 epochs of 40 s sharing the cores for 200 s, then 20
    epochs of 20 s with every core. Slow epochs before then are no reason to compress."""
    network, handover, schedule = handing_over(tmp_path, after=200, deadline=600)
    rates, planned = [], []
    for epoch in range(40):
        seconds = 20 if handover.released else 40
        rates += run_epoch(schedule, network, epoch, seconds)
        planned.append(schedule.whole_epochs)
        if epoch + 1 >= 5:  # the others are done after 200 s
            handover.release()
        if network.stop_training:
            break
    assert planned == [25] * 25
    assert len(rates) == 250
    assert all(a >= b for a, b in itertools.pairwise(rates))


def test_others_done_later_than_the_plan_expected_drop_epochs_without_adding_them_first(
    tmp_path,
):
    """As on the 2-core AVX2 EPYC at 15 minutes (1e202cd): the epochs beside the others ran
    faster than planned, so the plan added one, counting on every core when it expected the
    others done; they were done two minutes late, and it went 21, 22, 21, 22, 21, 20, 19.
    Planned as the planner does: 5 epochs of 40 s sharing the cores, then 20 of 20 s with
    every core. The epochs take 36 s, and the others are done after 324 s, not 200."""
    network, handover, schedule = handing_over(tmp_path, after=200, deadline=600)
    planned = []
    for epoch in range(40):
        run_epoch(schedule, network, epoch, 18 if handover.released else 36)
        planned.append(schedule.whole_epochs)
        if epoch + 1 == 9:  # 324 s in
            handover.release()
        if network.stop_training:
            break
    assert planned == [25] * 8 + [24] * 17  # one move, down, once the others ran late
    assert 590 < schedule.clock.now <= 600  # the 20 s left after the 24th: 2 batches of a 25th


def test_a_speed_up_smaller_than_measured_drops_epochs_without_adding_them_first(tmp_path):
    """As on the 2-core AVX2 EPYC at 15 minutes (87df1fa): the others were done during an
    epoch, so no epoch with every core was timed yet, and the plan added one counting on
    the measured speed-up; the next epoch, with every core, was slower than that, and it
    went 20, 21, 18, 19. Planned as the planner does: 10 epochs of 40 s sharing the cores,
    then 15 of 20 s with every core. The epochs take 36 s, the others are done during the
    11th, and then the epochs take 30 s: a speed-up of 1.2, not 2."""
    network, handover, schedule = handing_over(tmp_path, after=400, deadline=700)
    planned = []
    for epoch in range(40):
        seconds = 30 if handover.released else 36
        release = handover.release if epoch == 10 else lambda: None
        run_epoch(schedule, network, epoch, seconds, midway=release)
        planned.append(schedule.whole_epochs)
        if network.stop_training:
            break
    assert planned == [25] * 11 + [21] * 10  # one move, down, once timed with every core
    assert schedule.clock.now <= 700


def test_a_fit_is_past_its_deadline_by_the_clock_it_is_given():
    context = TrainingContext(seed=0, threads=1, deadline=100)
    assert not context.past_deadline(clock=lambda: 99.5)
    assert context.past_deadline(clock=lambda: 100)
    assert not TrainingContext(seed=0, threads=1).past_deadline(clock=lambda: 1e12)


def test_epoch_times_wavering_around_the_plan_change_it_once_not_back_and_forth():
    """Epochs of 31 s and 29 s in turn, where 30 s fits the 10 planned exactly: the plan
    drops to 9 once the first epoch runs slow, and adds the 10th back only once it fits at
    the slowest of the latest epochs, which it never does."""
    network, schedule, progress, reported = reporting_schedule(300, most=12, planned=10)
    planned = []
    for epoch in range(12):
        run_epoch(schedule, network, epoch, seconds=31 if epoch % 2 == 0 else 29)
        progress(epoch, SCORES)
        planned.append(schedule.whole_epochs)
        if network.stop_training:
            break
    assert planned == [9] * 10  # and 8 batches of a 10th in the 30 s the 9 leave
    assert 290 < schedule.clock.now <= 300
    assert reported[-1] == 1.0
    assert all(a < b for a, b in itertools.pairwise(reported))  # never back, never past 1


def test_epochs_wavering_more_than_a_tenth_do_not_move_the_plan_up_and_down():
    """As on the 2-core AVX-512 EPYC at 15 minutes: epochs of 29 s and 33 s in turn. The
    median of the latest three swings between them; planning more epochs on the median
    too had the plan at 22, 19, 22, 20, 22, 20, 21, 20, ... to the end."""
    network, schedule, progress, reported = reporting_schedule(650, most=30, planned=18)
    planned = []
    for epoch in range(30):
        run_epoch(schedule, network, epoch, seconds=(29, 33)[epoch % 2])
        progress(epoch, SCORES)
        planned.append(schedule.whole_epochs)
        if network.stop_training:
            break
    moves = [b - a for a, b in itertools.pairwise(planned) if a != b]
    assert moves == [-2, 1]  # the first epoch's speed overshot once, then one more fit
    assert 650 - 33 < schedule.clock.now <= 650
    assert reported[-1] == 1.0
    assert all(a < b for a, b in itertools.pairwise(reported))


def test_epochs_wavering_a_few_percent_for_a_few_epochs_at_a_time_move_the_plan_once():
    """As a 30-minute --avx2 run's on the AVX-512 BF16 EPYC: three epochs of 49 s, three
    of 51 s, and so on, where 31 fit at 50 s with 50 s to spare. Adding epochs where the
    slowest fit exactly had the plan at 32, 31, 32, 31, ... eleven moves in all, the
    learning rate's decay stretched and compressed with each, for a 32nd epoch that ended
    2 s short of the deadline."""
    network, schedule, progress, reported = reporting_schedule(1600, most=60, planned=30)
    planned = []
    for epoch in range(60):
        run_epoch(schedule, network, epoch, seconds=(49, 51)[epoch // 3 % 2])
        progress(epoch, SCORES)
        planned.append(schedule.whole_epochs)
        if network.stop_training:
            break
    assert planned == [31] * 32  # and 8 batches of a 32nd in the 50 s the 31 leave
    assert 1600 - 15 < schedule.clock.now <= 1600
    assert all(a < b for a, b in itertools.pairwise(reported))


def test_a_busy_moment_on_every_core_does_not_make_the_speed_up_look_smaller(keras, monkeypatch):
    """The handover times the steps on the lane's cores, then on every core; there a busy
    moment stalls four of the six timed steps by a second each. The speed-up is read from
    the fastest steps, so the epoch with every core stays about the lane's (the fake
    handover does not widen), not twenty times longer. The clock is the test's: every
    reading 10 ms after the one before (the suite's other work moves real steps by half),
    and each of `busy_readings` a second more."""
    from tasks.training.models import cnn

    class BusyOnEveryCore:
        """The handover, and the clock measuring reads."""

        bound = True
        busy_readings = 0
        late = 0.0
        now = 0.0

        def perf_counter(self) -> float:
            if self.busy_readings:
                self.busy_readings -= 1
                self.late += 1.0
            self.now += 0.01
            return self.now + self.late

        def on_lane_then_every_core(self, timed, check_stop):
            on_lane = timed()
            self.busy_readings = 7  # the epoch's start, its first 2 steps, then 4 more
            return on_lane, timed()

    busy = BusyOnEveryCore()
    monkeypatch.setattr(cnn, "time", busy)
    monkeypatch.setattr(keras_training, "time", busy)
    cost = cnn.measure_cnn(*tiny_measurement(), TrainingContext(0, 1, handover=busy))
    assert busy.late == 7.0  # the busy moment came
    assert cost.per_step_alone < 1.5 * cost.per_step


def tiny_measurement():
    """A network of one 4-filter block, and 200 random images to measure it on: 13 steps
    an epoch."""
    from tasks.training.models import cnn
    from tasks.training.models.base import ProbeData

    rng = np.random.default_rng(0)
    pixels = rng.random((200, 784), dtype=np.float32)
    labels = np.arange(200) % 10
    probe = ProbeData(pixels, labels, pixels[:50], labels[:50], scored_images=50)
    return cnn.CNNParams(conv_blocks=((4,),), dense_units=8, batch_size=16), probe


def test_steps_slowed_beside_the_others_measuring_are_timed_again_on_the_lane(keras, monkeypatch):
    """Beside the others' measuring, in threads of one process, the CNN's steps wait for
    the GIL: here each reading of the clock is half a second late until the others are
    measured. The epoch then comes from the steps timed on the lane afterwards, not 13
    steps of half a second."""
    import time

    from tasks.training.models import cnn

    class OthersMeasuring:
        """The handover (`bound`: with a lane to time on), and the clock the steps read."""

        def __init__(self, bound: bool) -> None:
            self.bound, self.measured, self.late = bound, False, 0.0

        def perf_counter(self) -> float:
            self.late += 0.0 if self.measured else 0.5
            return time.perf_counter() + self.late

        def on_lane_then_every_core(self, timed, check_stop):
            if not self.bound:
                return None
            self.measured = True
            return timed(), timed()

    for bound in (True, False):
        others = OthersMeasuring(bound)
        monkeypatch.setattr(keras_training, "time", others)
        cost = cnn.measure_cnn(*tiny_measurement(), TrainingContext(0, 1, handover=others))
        assert others.late > 4.0  # the first fit's steps were slowed
        if bound:
            assert 0 < cost.per_step < 13 * 0.5 / 4
            assert 0 < cost.per_step_alone < 13 * 0.5 / 4
        else:  # no lane to time on: the slowed steps are all there is
            assert cost.per_step >= 13 * 0.5


def test_the_epoch_with_every_core_is_scaled_by_the_fastest_steps_timed_there(keras):
    """Steps of 0.1 and 0.2 ms on the lane (their median, faster than the first fit's,
    counts) and at best 0.05 ms with every core, twice as fast as the lane's best: the
    epoch's 13 steps take half as long with every core; predicting the validation images
    costs the same in both."""
    from tasks.training.models import cnn

    class Timed:
        bound = True

        def on_lane_then_every_core(self, timed, check_stop):
            timed(), timed()  # the fits run; their times are replaced
            return np.array([1e-4, 2e-4]), np.array([5e-5, 3e-4])

    cost = cnn.measure_cnn(*tiny_measurement(), TrainingContext(0, 1, handover=Timed()))
    assert cost.per_step - cost.per_step_alone == pytest.approx(13 * 1.5e-4 / 2)
    # Predicting 10 views of the 50 validation and 50 scored images comes after the last
    # epoch; an epoch predicts the validation images' one view.
    validation_per_image = (cost.per_step - 13 * 1.5e-4) / 50
    assert cost.closing == pytest.approx(10 * 100 * validation_per_image)
    assert 0 < cost.closing < cost.fixed


def test_a_training_split_of_two_batches_is_measured_on_its_last_step(keras):
    """Too few images for steps after the first two (which set up and warm up): the last
    step's seconds stand for an epoch's, on the lane and with every core."""
    from tasks.training.models import cnn

    params, probe = tiny_measurement()
    two_batches = replace(probe, x_train=probe.x_train[:32], y_train=probe.y_train[:32])

    class Timed:
        bound = True

        def on_lane_then_every_core(self, timed, check_stop):
            self.on_lane, self.every_core = timed(), timed()
            return self.on_lane, self.every_core

    timed = Timed()
    cost = cnn.measure_cnn(params, two_batches, TrainingContext(0, 1, handover=timed))
    assert len(timed.on_lane) == len(timed.every_core) == 1
    assert cost.per_step > 0
    assert cost.per_step_alone > 0
