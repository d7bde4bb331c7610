"""Bringing any picture of a garment to Fashion-MNIST's form: 28x28 grayscale, light on black.

The dataset's authors made its images from product photos on white by trimming the
edges close to the corner colour, fitting the longest edge to 28 pixels and negating
the intensities. `to_fashion_mnist` does the same, so photos of real products look to a
model like the images it was trained on:

1. **Grayscale.** The picture is turned upright by its EXIF orientation, transparent
   parts are laid on white (a cut-out product is a product on white), and the result is
   converted to 8-bit luminance (ITU-R 601-2; 16-bit images are scaled down).
2. **Already in the dataset's form?** A 28x28 image is taken as it is: it is not
   trimmed, resized or inverted, so an image exported from the dataset comes back
   unchanged. (Inverting it would be wrong: two of the 60,000 training images have a
   light border.)
3. **Trim the uniform border.** The background is the median of the outermost ring of
   pixels. Rows and columns at the edges whose every pixel is within `BORDER_TOLERANCE`
   (5 % of 255, the dataset's own tolerance) of it are cut off. A picture in which
   nothing differs from the background by more than that is refused.
4. **Light background: invert.** A background brighter than mid-gray (127.5) is a
   product photo on white: the image is negated, because Fashion-MNIST's garments are
   light on black.
5. **Fit and centre.** The longest edge is resized to 28 pixels (Lanczos, which
   averages when shrinking), keeping the aspect ratio, and the result is centred on a
   black 28x28 canvas, an odd margin's extra pixel above and to the left as in the dataset.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from tasks.core.contracts import IMAGE_SHAPE

BORDER_TOLERANCE = 13  # 5 % of the intensity range, as the dataset's trimming used
LIGHT_BACKGROUND = 127.5  # a background brighter than mid-gray is a photo on white


class BlankImageError(ValueError):
    """An image in which nothing stands out from the background."""


def to_fashion_mnist(image: Image.Image) -> np.ndarray:
    """The image as a (28, 28) uint8 array in Fashion-MNIST's form (see the module's steps).

    Raises:
        BlankImageError: when no pixel differs from the background by more than
            `BORDER_TOLERANCE`.
    """
    gray = grayscale(image)
    if gray.shape == IMAGE_SHAPE:
        return gray
    background = float(np.median(border_pixels(gray)))
    rows, columns = object_extent(gray, background, BORDER_TOLERANCE)
    trimmed = gray[rows, columns]
    if background > LIGHT_BACKGROUND:
        trimmed = 255 - trimmed
    return centred(fit_longest_edge(trimmed, max(IMAGE_SHAPE)))


def grayscale(image: Image.Image) -> np.ndarray:
    """8-bit luminance of an upright image, transparent parts laid on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        return np.round(np.asarray(image, dtype=np.float64) / 257).astype(np.uint8)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8).copy()


def border_pixels(gray: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels."""
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])


def object_extent(gray: np.ndarray, background: float, tolerance: float) -> tuple[slice, slice]:
    """The rows and columns left once the edges within `tolerance` of `background` are cut."""
    stands_out = np.abs(gray.astype(np.float64) - background) > tolerance
    rows, columns = np.flatnonzero(stands_out.any(axis=1)), np.flatnonzero(stands_out.any(axis=0))
    if not len(rows):
        raise BlankImageError(
            f"blank image: no pixel differs from the background ({background:.0f}) "
            f"by more than {tolerance}"
        )
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def fit_longest_edge(gray: np.ndarray, side: int) -> np.ndarray:
    """Resized so that the longest edge is `side` pixels, keeping the aspect ratio."""
    height, width = gray.shape
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS))


def centred(gray: np.ndarray) -> np.ndarray:
    """`gray` in the middle of a black canvas of the dataset's size; an odd margin leaves
    the extra pixel above and to the left, as in the dataset (half of its full-height
    training images have one more blank column on the left than on the right, none fewer)."""
    canvas = np.zeros(IMAGE_SHAPE, dtype=np.uint8)
    margins = (side - edge for side, edge in zip(IMAGE_SHAPE, gray.shape, strict=True))
    top, left = ((margin + 1) // 2 for margin in margins)
    canvas[top : top + gray.shape[0], left : left + gray.shape[1]] = gray
    return canvas
