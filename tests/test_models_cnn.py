from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from tasks.models.cnn import shift_and_mirror
from tasks.models.tensorflow_runtime import start_tensorflow


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


@pytest.mark.parametrize("shape", [(16, 5, 5, 3), (16, 7)])
def test_fused_batch_normalisation_matches_keras(keras, shape):
    from tasks.models.keras_layers import FusedBatchNormalization

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
    from tasks.models.keras_layers import FusedBatchNormalization

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
