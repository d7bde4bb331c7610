"""The layouts of the user's own data: IDX files, Kaggle's CSV files and image folders."""

from __future__ import annotations

import gzip
import io
import re
import struct

import numpy as np
import pytest
from PIL import Image

from benchmarks.export_layouts import export_csv, export_image_folders, numbered_folders
from tasks.core.contracts import CLASS_NAMES, UnreadableFile
from tasks.core.errors import DatasetFileError, UsageError
from tasks.data.ingest import ingest_dataset
from tasks.data.sources import LAYOUTS_LOOKED_FOR, detect_layout
from tasks.data.sources.base import class_names_for
from tasks.data.sources.folders import folders_fingerprint, load_folders
from tasks.data.sources.idx import load_idx
from tasks.data.sources.kaggle_csv import COLUMNS, load_csv
from tests.support.idx_files import make_images


def write_png(path, pixels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


def garment(value: int) -> np.ndarray:
    """A 28x28 image told apart by `value`, taken as it is by the conversion."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 8:20] = value
    return image


def csv_line(label, pixels) -> str:
    return ",".join(map(str, [label, *pixels]))


# IDX


def test_uncompressed_idx_files_read_as_the_gzipped_ones(tmp_path, synthetic_dir):
    directory, files, arrays = synthetic_dir
    plain = tmp_path / "plain"
    plain.mkdir()
    for spec in files.values():
        with gzip.open(directory / spec.name) as stream:
            (plain / spec.name.removesuffix(".gz")).write_bytes(stream.read())
    gzipped, uncompressed = load_idx(directory, files), load_idx(plain, files)
    for key, array in arrays.items():
        np.testing.assert_array_equal(uncompressed.arrays[key], array)
    # Keyed by the published names: the checksums are of the content either way.
    assert uncompressed.file_sha256 == gzipped.file_sha256
    assert uncompressed.split_files == {
        "train": "train-images-idx3-ubyte",
        "test": "t10k-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }


def test_class_names_from_classes_txt_else_the_defaults(tmp_path):
    assert class_names_for(tmp_path, [np.array([0, 9], np.uint8)]) == CLASS_NAMES
    assert class_names_for(tmp_path, [np.array([0, 2], np.uint8)]) == ("0", "1", "2")
    assert class_names_for(tmp_path, [np.array([0, 11], np.uint8)]) == tuple(
        str(label) for label in range(12)
    )
    (tmp_path / "classes.txt").write_text("sandal\n\n  sneaker \nboot\n")
    assert class_names_for(tmp_path, [np.array([0, 11], np.uint8)]) == (
        "sandal",
        "sneaker",
        "boot",
    )
    (tmp_path / "classes.txt").write_text("sandal\nboot\nsandal\n")
    with pytest.raises(
        DatasetFileError, match=r"classes.txt: class names listed more than once: sandal$"
    ):
        class_names_for(tmp_path, [])


# Detection


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, f"{{d}}: no data found; expected {LAYOUTS_LOOKED_FOR}"),
        (lambda d: (d / "fashion-mnist_train.csv").write_text("label\n"),
         "{d}: missing fashion-mnist_test.csv"),
        (lambda d: (d / "t10k-images-idx3-ubyte").write_bytes(b""),
         "{d}: missing train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
         "t10k-labels-idx1-ubyte.gz"),
        (lambda d: (d / "test" / "Coat").mkdir(parents=True), "{d}: missing train/"),
        (lambda d: (d / "train").mkdir(),
         "{d}/train: no class folders; expected train/<class>/<image>"),
        (lambda d: [(d / s / c).mkdir(parents=True) for s, c in [("train", "a"), ("test", "b")]],
         "{d}/test: class folders not in train/: b"),
    ],
    ids=["nothing", "one-csv", "one-idx", "test-only", "no-class-folders", "extra-test-class"],
)  # fmt: skip
def test_a_directory_without_one_whole_layout_is_refused(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DatasetFileError, match=f"^{re.escape(message.format(d=tmp_path))}$"):
        detect_layout(tmp_path)


def test_a_file_or_two_layouts_are_refused(tmp_path, synthetic_dir):
    directory, files, arrays = synthetic_dir
    assert detect_layout(directory, files) == "idx"
    with pytest.raises(
        UsageError, match=r"train-images-idx3-ubyte.gz: is a file, not a directory$"
    ):
        detect_layout(directory / "train-images-idx3-ubyte.gz")
    export_csv(arrays, directory)
    with pytest.raises(
        DatasetFileError,
        match=r"idx: holds both IDX files and Kaggle CSV files; point --data-dir at a "
        r"directory with one$",
    ):
        detect_layout(directory, files)


# Kaggle CSV


def test_csv_rows_come_back_as_written(tmp_path, synthetic_dir):
    _, _, arrays = synthetic_dir
    export_csv(arrays, tmp_path / "csv")
    assert detect_layout(tmp_path / "csv") == "csv"
    parsed = load_csv(tmp_path / "csv")
    for key, array in arrays.items():
        np.testing.assert_array_equal(parsed.arrays[key], array)
    assert parsed.unreadable == ()
    assert parsed.class_names == CLASS_NAMES


def test_malformed_csv_rows_are_left_out_and_recorded(tmp_path):
    good = [7] * 784
    rows = [
        csv_line(1, good),
        csv_line(2, good[:-1]),
        csv_line(3, ["x", *good[1:]]),
        csv_line(4, [*good[:99], 256, *good[100:]]),
        csv_line(300, good),
        csv_line(5, [-1, *good[1:]]),
        " " + csv_line(6, good),  # readable after all
        csv_line(7, good),
    ]
    header = ",".join(COLUMNS)
    (tmp_path / "fashion-mnist_train.csv").write_text("\n".join([header, *rows, "", ""]))
    (tmp_path / "fashion-mnist_test.csv").write_text(f"{header}\r\n{csv_line(0, good)}\r\n")
    parsed = load_csv(tmp_path)
    assert parsed.arrays["train_labels"].tolist() == [1, 6, 7]
    assert parsed.arrays["test_labels"].tolist() == [0]
    assert parsed.arrays["train_images"].shape == (3, 28, 28)
    name = "fashion-mnist_train.csv"
    assert parsed.unreadable == (
        UnreadableFile(f"{name} row 2", "783 pixel values; expected 784"),
        UnreadableFile(f"{name} row 3", "pixel1 is 'x', not an integer"),
        UnreadableFile(f"{name} row 4", "pixel100 is 256; expected 0-255"),
        UnreadableFile(f"{name} row 5", "label is 300; expected 0-255"),
        UnreadableFile(f"{name} row 6", "pixel1 is -1; expected 0-255"),
    )
    # The rows kept are named by their place in the file, not in the array.
    assert parsed.origins == {"train": [f"{name} row {n}" for n in (1, 7, 8)],
                              "test": ["fashion-mnist_test.csv row 1"]}  # fmt: skip


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (csv_line(1, [0] * 784), r"no header line \(the first line is data\); expected label,"),
        ("label,pixel1,pixel2", r"header has 3 columns; expected 785 \(label,pixel1,…,pixel784\)"),
        (",".join(["label", "pixel0", *COLUMNS[2:]]),
         r"header column 2 is 'pixel0'; expected 'pixel1'"),
    ],
    ids=["missing", "too-short", "wrong-name"],
)  # fmt: skip
def test_a_csv_without_kaggles_header_is_refused_naming_it(tmp_path, header, message):
    (tmp_path / "fashion-mnist_train.csv").write_text(f"{header}\n")
    (tmp_path / "fashion-mnist_test.csv").write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(DatasetFileError, match=rf"fashion-mnist_train.csv: {message}"):
        load_csv(tmp_path)


# Image folders


def test_rows_follow_file_names_then_class_folders(tmp_path):
    for name, value in [("b/10.png", 1), ("a/2.png", 2), ("b/1.png", 3), ("a/10.png", 4)]:
        write_png(tmp_path / "train" / name, garment(value * 40))
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    write_png(tmp_path / "train" / "a" / ".hidden.png", garment(200))
    write_png(tmp_path / "test" / "a" / "sub" / "0.PNG", garment(220))
    parsed = load_folders(tmp_path, test_fraction=0.5, seed=0)
    assert parsed.class_names == ("a", "b")
    assert parsed.origins == {
        "train": ["train/b/1.png", "train/a/2.png", "train/a/10.png", "train/b/10.png"],
        "test": ["test/a/sub/0.PNG"],
    }
    assert parsed.arrays["train_labels"].tolist() == [1, 0, 0, 1]
    assert [int(image.max()) for image in parsed.arrays["train_images"]] == [120, 80, 160, 40]


def test_a_linked_folder_is_read_once_and_a_link_loop_ends(tmp_path):
    write_png(tmp_path / "train" / "a" / "0.png", garment(100))
    write_png(tmp_path / "shared" / "1.png", garment(120))
    (tmp_path / "train" / "a" / "again").symlink_to(".", target_is_directory=True)  # a loop
    (tmp_path / "train" / "a" / "shared").symlink_to(tmp_path / "shared")
    (tmp_path / "train" / "a" / "same").symlink_to(tmp_path / "shared")
    parsed = load_folders(tmp_path, test_fraction=0.5, seed=0)
    found = parsed.origins["train"] + parsed.origins["test"]
    assert sorted(found) == ["train/a/0.png", "train/a/same/1.png"]  # the first link by name
    assert parsed.unreadable == ()


def test_unreadable_images_are_left_out_and_recorded(tmp_path):
    write_png(tmp_path / "train" / "a" / "0.png", garment(100))
    buffer = io.BytesIO()
    Image.fromarray(make_images(np.array([1]), seed=0)[0]).save(buffer, format="PNG")
    (tmp_path / "train" / "a" / "1.png").write_bytes(buffer.getvalue()[:60])
    (tmp_path / "train" / "a" / "2.png").write_text("not a picture")
    write_png(tmp_path / "train" / "a" / "3.png", np.full((40, 40), 90))
    (tmp_path / "train" / "a" / "4.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "test" / "a").mkdir(parents=True)
    parsed = load_folders(tmp_path, test_fraction=0.5, seed=0)
    assert parsed.class_names == ("a", "empty")  # kept, with no images
    assert parsed.origins == {"train": ["train/a/0.png"], "test": []}
    assert parsed.arrays["test_images"].shape == (0, 28, 28)
    files = [entry.file for entry in parsed.unreadable]
    assert files == ["train/a/1.png", "train/a/2.png", "train/a/3.png", "train/a/4.png"]
    assert parsed.unreadable[3].problem.startswith("cannot be read: [Errno 2]")
    assert folders_fingerprint(tmp_path)  # its cache key: the broken link hashed as such
    problems = [entry.problem for entry in parsed.unreadable]
    assert problems[0].startswith("cannot be read: ")
    assert problems[1] == "not an image file Pillow can read"
    assert problems[2].startswith("blank image: no pixel differs from the background (90)")


def test_an_image_a_decoder_fails_on_in_its_own_way_is_recorded_as_unreadable(tmp_path):
    """Pillow reads a file by its content: a DDS image named .png whose pixel-format flags
    its plugin does not know raises NotImplementedError, which ended the ingestion."""
    write_png(tmp_path / "train" / "a" / "0.png", garment(100))
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([garment(100)] * 3)).save(buffer, format="DDS")
    odd = bytearray(buffer.getvalue())
    odd[80:84] = struct.pack("<I", 18)  # the pixel format's flags
    (tmp_path / "train" / "a" / "1.png").write_bytes(odd)
    (tmp_path / "test" / "a").mkdir(parents=True)
    parsed = load_folders(tmp_path, test_fraction=0.5, seed=0)
    assert parsed.unreadable == (
        UnreadableFile("train/a/1.png", "cannot be read: Unknown pixel format flags 18"),
    )


def test_without_test_folder_a_stratified_seeded_split_keeps_the_order(tmp_path):
    for row in range(60):
        write_png(tmp_path / "train" / "abc"[row % 3] / f"{row}.png", garment(row + 20))
    parsed = load_folders(tmp_path, test_fraction=0.25, seed=7)
    assert np.bincount(parsed.arrays["test_labels"]).tolist() == [5, 5, 5]
    assert np.bincount(parsed.arrays["train_labels"]).tolist() == [15, 15, 15]
    for split, files in parsed.origins.items():
        positions = [int(file.rsplit("/", 1)[1].removesuffix(".png")) for file in files]
        assert positions == sorted(positions)
        assert [int(image.max()) - 20 for image in parsed.arrays[f"{split}_images"]] == positions
    assert set(parsed.origins["train"]).isdisjoint(parsed.origins["test"])
    assert load_folders(tmp_path, 0.25, seed=7).origins == parsed.origins
    assert load_folders(tmp_path, 0.25, seed=8).origins != parsed.origins
    write_png(tmp_path / "train" / "d" / "single.png", garment(5))
    with pytest.raises(DatasetFileError, match=r"train: cannot split off a stratified test set"):
        load_folders(tmp_path, 0.25, seed=7)


# Ingestion of each layout


def test_the_same_images_in_every_layout_give_identical_arrays(tmp_path, synthetic_dir):
    directory, files, arrays = synthetic_dir
    export_csv(arrays, tmp_path / "csv")
    folders = numbered_folders(CLASS_NAMES)
    export_image_folders(arrays, folders, tmp_path / "png")
    assert folders[0] == "0-T-shirt-top"
    cache = tmp_path / "cache"
    raws = {
        "idx": ingest_dataset(directory, cache, files),
        "csv": ingest_dataset(tmp_path / "csv", cache),
        "image-folder": ingest_dataset(tmp_path / "png", cache),
    }
    for layout, raw in raws.items():
        assert raw.layout == layout
        assert {k: r.sha256 for k, r in raw.arrays.items()} == {
            k: r.sha256 for k, r in raws["idx"].arrays.items()
        }
    assert raws["csv"].class_names == raws["idx"].class_names == CLASS_NAMES
    assert raws["image-folder"].class_names == tuple(folders)
    label = arrays["test_labels"][4]
    assert [raw.origin("test", 4) for raw in raws.values()] == [
        "t10k-images-idx3-ubyte.gz row 5",
        "fashion-mnist_test.csv row 5",
        f"test/{folders[label]}/04.png",
    ]
    assert raws["idx"].file_sha256 == {spec.name: spec.sha256 for spec in files.values()}
    assert raws["csv"].file_sha256 == raws["image-folder"].file_sha256 == {}


def test_image_folder_entry_is_keyed_by_the_images_and_the_split(tmp_path):
    for row in range(12):
        write_png(tmp_path / "data" / "train" / "ab"[row % 2] / f"{row}.png", garment(row + 9))
    data, cache = tmp_path / "data", tmp_path / "cache"
    first = ingest_dataset(data, cache, test_fraction=0.5, seed=1)
    assert ingest_dataset(data, cache, test_fraction=0.5, seed=1).arrays == first.arrays
    assert ingest_dataset(data, cache, test_fraction=0.5, seed=2).arrays != first.arrays
    write_png(data / "train" / "a" / "0.png", garment(200))
    changed = ingest_dataset(data, cache, test_fraction=0.5, seed=1)
    assert changed.arrays["train_images"].path.parent != first.arrays["train_images"].path.parent
    assert first.origins.parent == first.arrays["train_images"].path.parent
    assert first.unreadable == ()


@pytest.mark.slow
def test_the_real_data_in_every_layout_gives_the_idx_arrays(tmp_path, real_data_dir):
    cache = tmp_path / "cache"
    idx = ingest_dataset(real_data_dir, cache)
    # The first 6,000 training and 1,000 test images, every class among them: real
    # images in each layout, at a tenth of the writing and reading of all 70,000.
    arrays = {key: ref.load()[: 6000 if key.startswith("train") else 1000]
              for key, ref in idx.arrays.items()}  # fmt: skip
    assert all(len(np.unique(arrays[f"{split}_labels"])) == 10 for split in ("train", "test"))
    export_csv(arrays, tmp_path / "csv")
    export_image_folders(arrays, numbered_folders(idx.class_names), tmp_path / "png")
    for directory in (tmp_path / "csv", tmp_path / "png"):
        raw = ingest_dataset(directory, cache)
        assert raw.unreadable == ()
        assert sorted(raw.arrays) == sorted(arrays)
        for key, ref in raw.arrays.items():
            loaded = ref.load()
            assert loaded.dtype == arrays[key].dtype, (directory, key)
            np.testing.assert_array_equal(loaded, arrays[key], err_msg=f"{directory}: {key}")
