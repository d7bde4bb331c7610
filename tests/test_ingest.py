from __future__ import annotations

import functools
import gzip
import http.server
import re
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import DatasetFileError
from tasks.ingest import (
    FASHION_MNIST_FILES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    checksum_mismatch,
    ingest_dataset,
    is_network_error,
    load_fashion_mnist,
    parse_idx,
    resolve_source,
)
from tasks.storage import CorruptArrayError
from tests.idx_files import idx_bytes, write_dataset, write_idx_gz

TRAIN_IMAGES = FASHION_MNIST_FILES["train_images"].name
TRAIN_LABELS = FASHION_MNIST_FILES["train_labels"].name


def test_parse_idx_reads_header_and_payload():
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    parsed = parse_idx(idx_bytes(images), IMAGES_MAGIC, "x.idx")
    np.testing.assert_array_equal(parsed, images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(labels), LABELS_MAGIC, "y.idx"), labels)


def test_load_returns_arrays_written(synthetic_dir):
    directory, files, arrays = synthetic_dir
    loaded = load_fashion_mnist(directory, files)
    for key, array in arrays.items():
        np.testing.assert_array_equal(loaded[key], array)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated gzip file"),
        (lambda p: p.write_bytes(b"plain bytes, not gzip"), "not a gzip file"),
        (lambda p: p.unlink(), "file not found"),
    ],
    ids=["truncated-gzip", "not-gzip", "missing"],
)
def test_unreadable_file_is_named(synthetic_dir, corrupt, message):
    directory, files, _ = synthetic_dir
    corrupt(directory / TRAIN_IMAGES)
    with pytest.raises(DatasetFileError, match=rf"{TRAIN_IMAGES}: {message}"):
        load_fashion_mnist(directory, files)


def test_wrong_magic_says_expected_and_found(synthetic_dir):
    directory, files, arrays = synthetic_dir
    # A labels file where the images should be: magic 2049 instead of 2051.
    write_idx_gz(directory / TRAIN_IMAGES, idx_bytes(arrays["train_labels"]))
    with pytest.raises(
        DatasetFileError, match=rf"{TRAIN_IMAGES}: bad magic number 2049; expected 2051 \(images\)"
    ):
        load_fashion_mnist(directory, files)


def test_payload_shorter_than_header_promises(synthetic_dir):
    directory, files, arrays = synthetic_dir
    content = idx_bytes(arrays["train_images"])[:-28]
    write_idx_gz(directory / TRAIN_IMAGES, content)
    with pytest.raises(
        DatasetFileError, match=r"payload has 235172 bytes; the header's 300 x 28 x 28 needs 235200"
    ):
        load_fashion_mnist(directory, files)


def test_count_mismatch_names_both_files(synthetic_dir):
    directory, files, arrays = synthetic_dir
    digest = write_idx_gz(directory / TRAIN_LABELS, idx_bytes(arrays["train_labels"][:-1]))
    files = {
        **files,
        "train_labels": files["train_labels"].__class__(TRAIN_LABELS, LABELS_MAGIC, digest),
    }
    with pytest.raises(
        DatasetFileError, match=rf"{TRAIN_IMAGES} has 300 images but {TRAIN_LABELS} has 299 labels"
    ):
        load_fashion_mnist(directory, files)


def test_wrong_image_size_is_rejected(synthetic_dir):
    directory, files, _ = synthetic_dir
    digest = write_idx_gz(directory / TRAIN_IMAGES, idx_bytes(np.zeros((300, 32, 32), np.uint8)))
    files = {
        **files,
        "train_images": files["train_images"].__class__(TRAIN_IMAGES, IMAGES_MAGIC, digest),
    }
    with pytest.raises(DatasetFileError, match=r"images are 32 x 32 pixels; expected 28 x 28"):
        load_fashion_mnist(directory, files)


def test_ingest_records_each_files_decompressed_checksum(tmp_path, synthetic_dir):
    directory, files, _ = synthetic_dir
    raw = ingest_dataset(directory, tmp_path / "data", files)
    assert raw.file_sha256 == {spec.name: spec.sha256 for spec in files.values()}
    # Parsing does not judge the content: files other than the published ones parse.
    assert raw.file_sha256[TRAIN_IMAGES] != FASHION_MNIST_FILES["train_images"].sha256


def test_checksum_mismatch_names_file_and_both_hashes(synthetic_dir):
    directory, files, _ = synthetic_dir
    spec = FASHION_MNIST_FILES["train_images"]
    assert checksum_mismatch(directory / TRAIN_IMAGES, spec.sha256, spec) is None
    message = checksum_mismatch(directory / TRAIN_IMAGES, files["train_images"].sha256, spec)
    assert re.fullmatch(
        rf"{directory / TRAIN_IMAGES}: checksum mismatch: decompressed content has SHA-256 "
        rf"{files['train_images'].sha256[:16]}…, expected c59f468a2f672dc8… "
        r"\(not the published Fashion-MNIST file\)",
        message,
    )


def test_user_directory_is_used_alone(tmp_path, synthetic_dir):
    _, files, _ = synthetic_dir
    system = synthetic_dir[0]  # a complete source that must not be fallen back to
    with pytest.raises(DatasetFileError, match=r"data directory does not exist"):
        resolve_source(tmp_path / "nowhere", tmp_path / "cache", files, system_dir=system)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / TRAIN_IMAGES).write_bytes((system / TRAIN_IMAGES).read_bytes())
    with pytest.raises(DatasetFileError, match=rf"{partial}: missing {TRAIN_LABELS}, t10k"):
        resolve_source(partial, tmp_path / "cache", files, system_dir=system)


def test_cache_comes_before_system_directory(tmp_path):
    files, _ = write_dataset(tmp_path / "cache" / "raw")
    write_dataset(tmp_path / "system")
    assert (
        resolve_source(None, tmp_path / "cache", files, tmp_path / "system")
        == tmp_path / "cache" / "raw"
    )
    assert (
        resolve_source(None, tmp_path / "empty", files, tmp_path / "system") == tmp_path / "system"
    )


@pytest.fixture
def mirror(tmp_path):
    """A real HTTP server on loopback serving `tmp_path / "mirror"`."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def test_download_when_no_source_has_the_files(tmp_path, mirror):
    root, url = mirror
    files, arrays = write_dataset(root)
    cache = tmp_path / "cache"
    source = resolve_source(None, cache, files, tmp_path / "no-system", url)
    assert source == cache / "raw"
    assert sorted(p.name for p in source.iterdir()) == sorted(s.name for s in files.values())
    np.testing.assert_array_equal(
        load_fashion_mnist(source, files)["test_labels"], arrays["test_labels"]
    )


def test_bad_download_leaves_no_file_behind(tmp_path, mirror):
    root, url = mirror
    files, _ = write_dataset(root)
    (root / TRAIN_IMAGES).write_bytes(gzip.compress(b"\0\0\x08\x03" + b"\0" * 50)[:-10])
    with pytest.raises(
        DatasetFileError, match=rf"{re.escape(url)}{TRAIN_IMAGES}: downloaded file is bad"
    ):
        resolve_source(None, tmp_path / "cache", files, tmp_path / "no-system", url)
    assert not any(
        p.name.startswith(f".{TRAIN_IMAGES}") or p.name == TRAIN_IMAGES
        for p in (tmp_path / "cache" / "raw").iterdir()
    )


def test_unreachable_mirror_is_a_retryable_network_error(tmp_path, mirror):
    _, url = mirror
    files, _ = write_dataset(tmp_path / "elsewhere")
    with pytest.raises(urllib.error.HTTPError) as raised:  # 404: the mirror lacks the files
        resolve_source(None, tmp_path / "cache", files, tmp_path / "no-system", url)
    assert is_network_error(raised.value)
    assert not is_network_error(DatasetFileError("bad file"))
    assert list((tmp_path / "cache" / "raw").iterdir()) == []


def test_ingest_publishes_arrays_by_reference(tmp_path, synthetic_dir):
    directory, files, arrays = synthetic_dir
    raw = ingest_dataset(directory, tmp_path / "data", files)
    assert raw.source_dir == directory
    assert raw.arrays["train_images"].path.parent.parent == tmp_path / "data" / "interim"
    for key, ref in raw.arrays.items():
        np.testing.assert_array_equal(ref.load(), arrays[key])
    again = ingest_dataset(directory, tmp_path / "data", files)
    assert again.arrays == raw.arrays


def test_changed_array_file_is_detected(tmp_path, synthetic_dir):
    directory, files, _ = synthetic_dir
    ref = ingest_dataset(directory, tmp_path / "data", files).arrays["train_labels"]
    content = bytearray(ref.path.read_bytes())
    content[-1] ^= 0xFF
    Path(ref.path).write_bytes(bytes(content))
    with pytest.raises(
        CorruptArrayError, match=r"train_labels.npy: content hash .* does not match"
    ):
        ref.load()
