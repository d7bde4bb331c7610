from __future__ import annotations

import numpy as np
import pytest
from skimage.feature import hog

from tasks.training.models import hog as hog_module
from tasks.training.models.hog import PIXELS, HOGLayout, HOGProjection, hog_features


def _reference(images: np.ndarray) -> np.ndarray:
    return np.stack(
        [
            hog(image, orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2))
            for image in images
        ]
    )


def test_the_batched_hog_is_scikit_images_hog():
    rng = np.random.default_rng(0)
    noise = rng.random((20, 28, 28))
    # Edges along the axes and the diagonals: orientations on the bins' boundaries.
    shapes = np.zeros((4, 28, 28))
    shapes[0, 8:20, 8:20] = 1
    shapes[1][np.tril_indices(28)] = 1
    shapes[2, :, 14:] = 0.5
    shapes[3, 5:23, 5:23] = rng.random((18, 18)) > 0.5
    images = np.concatenate([noise, shapes])

    ours = hog_features(images)

    assert ours.shape == (24, HOGLayout().feature_count()) == (24, 1296)
    np.testing.assert_allclose(ours, _reference(images), atol=1e-6)
    assert np.abs(ours[20:]).max() > 0.1  # the shapes' edges fill histograms


def test_a_blank_image_has_no_gradients_and_all_zero_features():
    assert not hog_features(np.full((2, 28, 28), 0.7)).any()


def test_the_projection_works_in_chunks_and_fits_on_a_sample(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.random((300, PIXELS)).astype(np.float32)
    monkeypatch.setattr(hog_module, "PCA_FIT_IMAGES", 100)
    projection = HOGProjection(components=16, seed=3).fit(x)
    whole = projection.transform(x)

    monkeypatch.setattr(hog_module, "CHUNK", 7)
    chunked = projection.transform(x)

    assert projection.pca_.n_samples_ == 100
    assert whole.shape == (300, 16)
    assert whole.dtype == np.float32
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    features = np.hstack([hog_features(x.reshape(-1, 28, 28)), x])
    np.testing.assert_allclose(whole, projection.pca_.transform(features), atol=1e-4)
    assert projection.transform(x[:0]).shape == (0, 16)


def test_without_components_the_features_are_the_hog_and_the_pixels():
    x = np.random.default_rng(2).random((5, PIXELS)).astype(np.float32)
    features = HOGProjection(components=None).fit(x).transform(x)
    assert features.shape == (5, 1296 + PIXELS)
    np.testing.assert_array_equal(features[:, 1296:], x)
    np.testing.assert_allclose(features[:, :1296], hog_features(x.reshape(-1, 28, 28)), atol=1e-6)


def test_fitted_on_fewer_images_than_components_it_keeps_one_per_image():
    x = np.random.default_rng(5).random((30, PIXELS)).astype(np.float32)
    projection = HOGProjection(components=192).fit(x)
    assert projection.transform(x).shape == (30, 30)
    assert projection.transform(x[:0]).shape == (0, 30)


@pytest.mark.parametrize("components", [16, None])
def test_the_projection_is_the_same_after_pickling(components, tmp_path):
    import joblib

    x = np.random.default_rng(4).random((40, PIXELS)).astype(np.float32)
    projection = HOGProjection(components=components).fit(x)
    joblib.dump(projection, tmp_path / "p.joblib")
    np.testing.assert_allclose(
        joblib.load(tmp_path / "p.joblib").transform(x), projection.transform(x), atol=1e-5
    )
