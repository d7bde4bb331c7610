from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.data.images import BORDER_TOLERANCE, BlankImageError, to_fashion_mnist


def garment(height: int, width: int, value: int = 200) -> np.ndarray:
    """A filled block standing for a garment."""
    return np.full((height, width), value, dtype=np.uint8)


def on_canvas(block: np.ndarray, shape: tuple[int, int], at: tuple[int, int], background: int):
    canvas = np.full(shape, background, dtype=np.uint8)
    canvas[at[0] : at[0] + block.shape[0], at[1] : at[1] + block.shape[1]] = block
    return canvas


def test_a_28x28_grayscale_image_comes_out_exactly_as_it_went_in():
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    pixels[0, :] = 255  # a light border, as two of the training images have: not inverted
    image = Image.fromarray(pixels)
    converted = to_fashion_mnist(image)
    assert converted.dtype == np.uint8
    np.testing.assert_array_equal(converted, pixels)
    np.testing.assert_array_equal(np.asarray(image), pixels)  # the input is left as it was
    # the same image in three equal channels gives the same pixels
    rgb = Image.fromarray(np.repeat(pixels[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(to_fashion_mnist(rgb), pixels)


def test_a_tall_object_fills_the_height_keeps_its_aspect_ratio_and_is_centred():
    image = Image.fromarray(on_canvas(garment(100, 50), (300, 300), (20, 200), background=0))
    converted = to_fashion_mnist(image)
    rows, columns = np.nonzero(converted > 100)
    assert (rows.min(), rows.max()) == (0, 27)  # the longest edge fitted to 28 pixels
    assert (columns.min(), columns.max()) == (7, 20)  # 14 wide, centred: 7 on either side
    assert converted[:, :6].max() == 0
    assert converted[:, 22:].max() == 0


def test_a_wide_object_is_centred_vertically():
    converted = to_fashion_mnist(
        Image.fromarray(on_canvas(garment(30, 120), (200, 160), (0, 0), 0))
    )
    rows, columns = np.nonzero(converted > 100)
    assert (columns.min(), columns.max()) == (0, 27)
    assert (rows.min(), rows.max()) == (11, 17)  # 7 rows (28 * 30 / 120): 11 above, 10 below


def test_a_light_background_is_inverted_to_light_on_black():
    photo = on_canvas(garment(80, 40, value=30), (100, 100), (10, 30), background=250)
    converted = to_fashion_mnist(Image.fromarray(photo).convert("RGB"))
    assert converted[0, 0] == 0
    assert converted[14, 14] == 225
    dark = to_fashion_mnist(Image.fromarray(255 - photo))  # the same garment, light on black
    np.testing.assert_array_equal(converted, dark)


def test_the_border_within_the_tolerance_is_trimmed_and_the_object_kept_whole():
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, BORDER_TOLERANCE + 1, (120, 120)).astype(np.uint8)  # background
    framed = noisy.copy()
    framed[30:90, 45:75] = 180  # a 60 x 30 object off the centre line
    converted = to_fashion_mnist(Image.fromarray(framed))
    elsewhere = on_canvas(garment(60, 30, value=180), (200, 100), (5, 60), background=0)
    expected = to_fashion_mnist(Image.fromarray(elsewhere))
    np.testing.assert_array_equal(converted, expected)
    assert expected[:, 7:21].min() == 180
    assert expected[:, :7].max() == 0
    # a speck beyond the tolerance is part of the picture: the extent reaches down to it
    framed[110, 60] = int(np.median(noisy)) + BORDER_TOLERANCE + 8
    rows = np.flatnonzero((to_fashion_mnist(Image.fromarray(framed)) > 100).any(axis=1))
    assert rows.min() == 0
    assert rows.max() < 24


def test_transparent_parts_count_as_white_background():
    rgba = np.zeros((60, 60, 4), dtype=np.uint8)  # transparent everywhere ...
    rgba[10:50, 20:40] = (40, 40, 40, 255)  # ... but an opaque dark garment
    converted = to_fashion_mnist(Image.fromarray(rgba, mode="RGBA"))
    assert converted[0, 0] == 0
    assert converted[14, 14] == 215  # 255 - 40: the dark garment, inverted


def test_a_blank_image_is_refused_with_the_reason():
    with pytest.raises(BlankImageError, match=r"^blank image: no pixel differs from the "
                       r"background \(255\) by more than 13$"):  # fmt: skip
        to_fashion_mnist(Image.new("L", (40, 30), 255))
