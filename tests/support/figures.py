"""What a saved figure shows: its pixels, read back from the PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread


def read_png(path: Path) -> np.ndarray:
    """The figure's RGB pixels (height x width x 3, 0 to 1); fails if it is not a PNG."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return imread(path)[..., :3]


def inked(pixels: np.ndarray) -> float:
    """The share of the pixels that are not white: what was drawn, text and axes included."""
    return float((pixels < 0.95).any(axis=-1).mean())


def coloured(pixels: np.ndarray) -> float:
    """The share of the pixels in a colour, not a grey: lines, markers, coloured cells."""
    return float((pixels.max(axis=-1) - pixels.min(axis=-1) > 0.2).mean())
