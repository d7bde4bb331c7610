from __future__ import annotations

import gzip
import re
import struct
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from tasks.core.errors import PredictionInputError
from tasks.data.preprocess import scale_images
from tasks.predict.inputs import find_inputs, read_input
from tasks.serve.inputs import read_upload
from tests.support.idx_files import idx_bytes, make_images

IMAGES = make_images(np.arange(6) % 10, seed=3)  # (6, 28, 28) uint8


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_28x28_png_is_read_as_it_is(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(IMAGES[0]))
    block = read_input(tmp_path / "a.png")
    assert (block.error, len(block), block.row_name(0)) == ("", 1, str(tmp_path / "a.png"))
    np.testing.assert_array_equal(block.pixels[0], IMAGES[0])
    np.testing.assert_array_equal(block.features(0, 1), scale_images(IMAGES[:1]))


def test_a_jpeg_photo_is_brought_to_the_dataset_form(tmp_path):
    photo = np.full((90, 60, 3), 255, dtype=np.uint8)
    photo[10:80, 15:45] = (20, 30, 40)  # a dark garment on white
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    block = read_input(tmp_path / "photo.jpg")
    assert block.error == ""
    assert block.pixels.shape == (1, 28, 28)
    assert block.pixels[0, 0, 0] < 10
    assert block.pixels[0, 14, 14] > 200


@pytest.mark.parametrize("compressed", [True, False])
def test_an_idx_images_file_gives_one_named_row_per_image(tmp_path, compressed):
    content = idx_bytes(IMAGES)
    path = tmp_path / ("images-idx3-ubyte.gz" if compressed else "images-idx3-ubyte")
    path.write_bytes(gzip.compress(content) if compressed else content)
    block = read_input(path)
    assert block.error == ""
    np.testing.assert_array_equal(block.pixels, IMAGES)
    assert [block.row_name(i) for i in (0, 5)] == [f"{path}[0]", f"{path}[5]"]
    np.testing.assert_array_equal(block.features(2, 4), scale_images(IMAGES[2:4]))


@pytest.mark.parametrize(
    "array",
    [IMAGES, IMAGES.reshape(6, 784), scale_images(IMAGES), IMAGES.astype(np.float64),
     IMAGES.astype(np.int64)],
    ids=["pixels", "flat-pixels", "features", "float-pixels", "int64-pixels"],
)  # fmt: skip
def test_npy_arrays_of_both_shapes_give_the_models_features(tmp_path, array):
    np.save(tmp_path / "x.npy", array)
    block = read_input(tmp_path / "x.npy")
    assert block.error == ""
    assert len(block) == 6
    assert block.row_name(3) == f"{tmp_path}/x.npy[3]"
    np.testing.assert_array_equal(block.features(0, 6), scale_images(IMAGES))


def truncated_png(path):
    whole = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    path.write_bytes(whole[: len(whole) // 2])


@pytest.mark.parametrize(
    ("name", "write", "reason"),
    [
        ("cut.png", truncated_png,
         r"unreadable image \(truncated or corrupt\): image file is truncated"),
        ("empty.png", lambda p: p.write_bytes(b""), r"empty file \(0 bytes\)"),
        ("notes.png", lambda p: p.write_text("not a picture\n"),
         r"not an image: Pillow recognises no image format in it"),
        ("wrong.npy", lambda p: np.save(p, np.zeros((3, 5))),
         r"array of shape \(3, 5\); expected \(n, 28, 28\) or \(n, 784\)"),
        ("big.npy", lambda p: np.save(p, np.full((2, 784), 300)),
         r"values from 300 to 300; expected pixels in 0-255"),
        ("none.npy", lambda p: np.save(p, np.zeros((0, 784), np.uint8)),
         r"holds no images \(0 rows\)"),
        ("labels.gz", lambda p: p.write_bytes(gzip.compress(idx_bytes(np.arange(4)))),
         r"bad magic number 2049; expected 2051 \(images\)"),
        ("blank.png", lambda p: Image.new("L", (40, 40), 255).save(p),
         r"blank image: no pixel differs from the background \(255\) by more than 13"),
    ],
    ids=["truncated", "empty", "text", "npy-shape", "npy-range", "npy-empty", "idx-labels",
         "blank"],
)  # fmt: skip
def test_an_unreadable_input_gives_the_reason_and_no_images(tmp_path, name, write, reason):
    write(tmp_path / name)
    block = read_input(tmp_path / name)
    assert block.pixels is None
    assert len(block) == 0
    assert re.fullmatch(reason, block.error), block.error


def test_a_decoder_failing_its_own_way_gives_that_file_s_reason_on_both_paths(tmp_path):
    """Pillow's DDS plugin raises NotImplementedError on pixel-format flags it does not know
    (found by mutating images): a row saying so, not a traceback ending the batch."""
    buffer = BytesIO()
    Image.fromarray(np.dstack([IMAGES[0]] * 3)).save(buffer, format="DDS")
    odd = bytearray(buffer.getvalue())
    odd[80:84] = struct.pack("<I", 18)  # the pixel format's flags
    (tmp_path / "odd.dds").write_bytes(odd)
    reason = "unreadable (NotImplementedError: Unknown pixel format flags 18)"
    assert read_input(tmp_path / "odd.dds").error == reason
    assert read_upload("odd.dds", bytes(odd), max_pixels=1_000_000).error == reason


def test_folders_are_searched_recursively_in_name_order(tmp_path):
    for relative in ("b/2.png", "b/c/1.jpeg", "a.npy", "b/t10k-images-idx3-ubyte", ".hidden/x.png",
                     "b/.DS_Store", "b/labels.csv", "b/notes.txt"):  # fmt: skip
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    single = tmp_path / "elsewhere.bin"
    single.write_bytes(b"x")
    files, skipped = find_inputs([single, tmp_path / "b", tmp_path / "a.npy"])
    assert files == [single, tmp_path / "b/2.png", tmp_path / "b/t10k-images-idx3-ubyte",
                     tmp_path / "b/c/1.jpeg", tmp_path / "a.npy"]  # fmt: skip
    assert skipped == 3  # .DS_Store, labels.csv, notes.txt; a named file is always read
    everything, _ = find_inputs([tmp_path])
    assert tmp_path / ".hidden/x.png" not in everything


def test_a_missing_path_or_no_inputs_at_all_is_an_error(tmp_path):
    with pytest.raises(PredictionInputError, match=r"^.*/nowhere.png: no such file or directory$"):
        find_inputs([tmp_path / "nowhere.png"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing to see")
    with pytest.raises(PredictionInputError, match=r"^no inputs: .*/empty holds no image or array"):
        find_inputs([tmp_path / "empty"])
