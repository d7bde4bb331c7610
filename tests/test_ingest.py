from __future__ import annotations

import errno
import functools
import gzip
import http.server
import os
import pickle
import re
import socket
import struct
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prefect import flow

from tasks.core.errors import DatasetFileError, StorageError
from tasks.core.storage import CorruptArrayError
from tasks.data.ingest import (
    FASHION_MNIST_FILES,
    NoDataSourceError,
    check_data_source,
    checksum_mismatch,
    fashion_mnist_dir,
    ingest_dataset,
    is_network_error,
    network_cause,
    resolve_error,
)
from tasks.data.sources.idx import IMAGES_MAGIC, LABELS_MAGIC, load_idx, read_idx
from tasks.data.stages import ingest_task
from tests.support.idx_files import idx_bytes, write_dataset, write_idx_gz

TRAIN_IMAGES = FASHION_MNIST_FILES["train_images"].name
TRAIN_LABELS = FASHION_MNIST_FILES["train_labels"].name


@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "plain"])
def test_read_idx_reads_header_and_payload(tmp_path, compressed):
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    for name, array, magic in (("x", images, IMAGES_MAGIC), ("y", labels, LABELS_MAGIC)):
        content = idx_bytes(array)
        path = tmp_path / name
        path.write_bytes(gzip.compress(content) if compressed else content)
        np.testing.assert_array_equal(read_idx(path, magic, compressed).array, array)


def test_load_returns_arrays_written(synthetic_dir):
    directory, files, arrays = synthetic_dir
    loaded = load_idx(directory, files).arrays
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
        load_idx(directory, files)


def test_wrong_magic_says_expected_and_found(synthetic_dir):
    directory, files, arrays = synthetic_dir
    # A labels file where the images should be: magic 2049 instead of 2051.
    write_idx_gz(directory / TRAIN_IMAGES, idx_bytes(arrays["train_labels"]))
    with pytest.raises(
        DatasetFileError, match=rf"{TRAIN_IMAGES}: bad magic number 2049; expected 2051 \(images\)"
    ):
        load_idx(directory, files)


def test_payload_shorter_than_header_promises(synthetic_dir):
    directory, files, arrays = synthetic_dir
    content = idx_bytes(arrays["train_images"])[:-28]
    write_idx_gz(directory / TRAIN_IMAGES, content)
    with pytest.raises(
        DatasetFileError, match=r"payload has 235172 bytes; the header's 300 x 28 x 28 needs 235200"
    ):
        load_idx(directory, files)


def test_a_wrong_header_fails_before_the_rest_is_inflated(tmp_path):
    # A labels header, then a compressed stream cut short: read whole first, the file
    # would fail as a truncated gzip; read header first, it fails on its magic number.
    path = tmp_path / TRAIN_IMAGES
    compressed = gzip.compress(idx_bytes(np.zeros(3, np.uint8)) + os.urandom(4 << 20))
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DatasetFileError, match=r"bad magic number 2049; expected 2051"):
        read_idx(path, IMAGES_MAGIC)


@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "plain"])
def test_a_header_promising_more_than_the_file_holds_reads_what_it_holds(tmp_path, compressed):
    content = struct.pack(">IIII", IMAGES_MAGIC, 4_000_000_000, 28, 28) + bytes(784)
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(gzip.compress(content) if compressed else content)
    with pytest.raises(
        DatasetFileError,
        match=r"payload has 784 bytes; the header's 4000000000 x 28 x 28 needs 3136000000000",
    ):
        read_idx(path, IMAGES_MAGIC, compressed)


def test_a_longer_payload_and_the_checksum_of_a_good_file(tmp_path):
    labels = np.array([3, 1, 4], dtype=np.uint8)
    path = tmp_path / TRAIN_LABELS
    digest = write_idx_gz(path, idx_bytes(labels))
    content = read_idx(path, LABELS_MAGIC)
    np.testing.assert_array_equal(content.array, labels)
    assert content.sha256 == digest
    write_idx_gz(path, idx_bytes(labels) + b"\x05")
    with pytest.raises(
        DatasetFileError, match=r"payload is longer than the 3 bytes the header's 3 needs"
    ):
        read_idx(path, LABELS_MAGIC)


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
        load_idx(directory, files)


def test_wrong_image_size_is_rejected(synthetic_dir):
    directory, files, _ = synthetic_dir
    digest = write_idx_gz(directory / TRAIN_IMAGES, idx_bytes(np.zeros((300, 32, 32), np.uint8)))
    files = {
        **files,
        "train_images": files["train_images"].__class__(TRAIN_IMAGES, IMAGES_MAGIC, digest),
    }
    with pytest.raises(DatasetFileError, match=r"images are 32 x 32 pixels; expected 28 x 28"):
        load_idx(directory, files)


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
    system, files, _ = synthetic_dir  # a complete source that must not be fallen back to
    with pytest.raises(DatasetFileError, match=r"nowhere: data directory does not exist$"):
        ingest_dataset(tmp_path / "nowhere", tmp_path / "cache", files, system_dir=system)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / TRAIN_IMAGES).write_bytes((system / TRAIN_IMAGES).read_bytes())
    with pytest.raises(DatasetFileError, match=rf"{partial}: missing {TRAIN_LABELS}, t10k"):
        ingest_dataset(partial, tmp_path / "cache", files, system_dir=system)


def test_cache_comes_before_system_directory(tmp_path):
    files, _ = write_dataset(tmp_path / "cache" / "raw")
    write_dataset(tmp_path / "system")
    system = tmp_path / "system"
    assert fashion_mnist_dir(tmp_path / "cache", files, system) == tmp_path / "cache" / "raw"
    assert fashion_mnist_dir(tmp_path / "empty", files, system) == system


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


@pytest.fixture
def resetting_mirror():
    """(url, connections): a loopback server that resets each connection once it has read
    the request, as a dropped network does."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def serve():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections.append(connection)
            connection.recv(65536)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()  # with a zero linger time: a reset

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/", connections
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()


def test_download_when_no_source_has_the_files(tmp_path, mirror):
    root, url = mirror
    files, arrays = write_dataset(root)
    cache = tmp_path / "cache"
    source = fashion_mnist_dir(cache, files, tmp_path / "no-system", url)
    assert source == cache / "raw"
    assert sorted(p.name for p in source.iterdir()) == sorted(s.name for s in files.values())
    test_labels = load_idx(source, files).arrays["test_labels"]
    np.testing.assert_array_equal(test_labels, arrays["test_labels"])


def test_bad_download_leaves_no_file_behind(tmp_path, mirror):
    root, url = mirror
    files, _ = write_dataset(root)
    (root / TRAIN_IMAGES).write_bytes(gzip.compress(b"\0\0\x08\x03" + b"\0" * 50)[:-10])
    with pytest.raises(
        DatasetFileError, match=rf"{re.escape(url)}{TRAIN_IMAGES}: downloaded file is bad"
    ):
        fashion_mnist_dir(tmp_path / "cache", files, tmp_path / "no-system", url)
    assert not any(
        p.name.startswith(f".{TRAIN_IMAGES}") or p.name == TRAIN_IMAGES
        for p in (tmp_path / "cache" / "raw").iterdir()
    )


def test_a_download_the_disk_has_no_room_for_is_a_storage_error_and_leaves_nothing(
    tmp_path, mirror, monkeypatch
):
    root, url = mirror
    files, _ = write_dataset(root)

    def disk_full(response, sink):
        sink.write(response.read(100))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("tasks.data.ingest.shutil.copyfileobj", disk_full)
    raw = tmp_path / "cache" / "raw"
    with pytest.raises(StorageError) as raised:
        fashion_mnist_dir(tmp_path / "cache", files, tmp_path / "no-system", url)
    assert raised.value.disk_full
    assert re.fullmatch(rf"{re.escape(str(raw))}/[\w-]+\.gz: no space left on device",
                        str(raised.value))  # fmt: skip
    assert not is_network_error(raised.value)  # not retried: the disk is full a minute later
    assert list(raw.iterdir()) == []  # nothing half-written for the rerun to trust


FIXES = (
    "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
    "or give your own data with --data-dir PATH"
)


def test_a_name_that_does_not_resolve_is_no_data_at_once(tmp_path):
    system = tmp_path / "system"
    system.mkdir()
    (system / TRAIN_IMAGES).write_bytes(b"")
    url = "http://fashion-mnist.invalid/"
    with pytest.raises(NoDataSourceError) as raised:
        fashion_mnist_dir(tmp_path / "cache", FASHION_MNIST_FILES, system, url)
    assert str(raised.value) == (
        f"no data found: tried {tmp_path}/cache/raw (no such directory), {system} "
        f"(3 of 4 files missing) and {url} (name does not resolve); {FIXES}"
    )
    assert not is_network_error(raised.value)  # a minute later it still won't resolve
    assert not (tmp_path / "cache").exists()


def test_a_mirror_without_the_files_is_no_data_not_retried(tmp_path, mirror):
    _, url = mirror
    (tmp_path / "cache" / "raw").mkdir(parents=True)
    with pytest.raises(
        NoDataSourceError,
        match=rf"raw \(no data files\), .* and {re.escape(url)} \(HTTP 404 File not found\); ",
    ) as raised:
        fashion_mnist_dir(tmp_path / "cache", FASHION_MNIST_FILES, tmp_path / "no-system", url)
    assert not is_network_error(raised.value)
    assert not is_network_error(DatasetFileError("bad file"))


def test_a_connection_reset_is_no_data_worth_a_retry(tmp_path, resetting_mirror):
    url, _ = resetting_mirror
    with pytest.raises(
        NoDataSourceError, match=rf"and {re.escape(url)} \(connection reset by peer\); install"
    ) as raised:
        fashion_mnist_dir(tmp_path / "cache", FASHION_MNIST_FILES, tmp_path / "no-system", url)
    assert is_network_error(raised.value)
    assert is_network_error(pickle.loads(pickle.dumps(raised.value)))  # as Prefect may keep it


def test_the_check_before_the_run_names_a_missing_source_at_once(
    tmp_path, monkeypatch, synthetic_dir
):
    monkeypatch.setattr("tasks.data.ingest.SYSTEM_DATA_DIR", tmp_path / "no-system")
    monkeypatch.setattr("tasks.data.ingest.MIRROR_URL", "http://fashion-mnist.invalid/")
    with pytest.raises(NoDataSourceError) as raised:
        check_data_source(None, tmp_path / "cache")
    assert str(raised.value) == (
        f"no data found: tried {tmp_path}/cache/raw (no such directory), {tmp_path}/no-system "
        f"(no such directory) and http://fashion-mnist.invalid/ (name does not resolve); {FIXES}"
    )
    check_data_source(synthetic_dir[0], tmp_path / "cache")  # the user's own data
    monkeypatch.setattr("tasks.data.ingest.SYSTEM_DATA_DIR", synthetic_dir[0])
    check_data_source(None, tmp_path / "cache")  # Debian's package


@pytest.mark.usefixtures("prefect_harness")
def test_the_task_retries_a_reset_but_not_a_name_that_does_not_resolve(
    tmp_path, monkeypatch, resetting_mirror
):
    url, connections = resetting_mirror
    monkeypatch.setattr("tasks.data.ingest.SYSTEM_DATA_DIR", tmp_path / "no-system")
    monkeypatch.setattr("tasks.data.ingest.MIRROR_URL", url)
    task = ingest_task.with_options(retry_delay_seconds=0)

    @flow
    def ingest_only() -> None:
        task(None, tmp_path / "cache", 0.15, 0, False)

    with pytest.raises(NoDataSourceError, match=r"connection reset by peer"):
        ingest_only()
    assert len(connections) == 4  # the first try and three retries
    calls = []
    urlopen = urllib.request.urlopen

    def counting_urlopen(*args, **kwargs):
        calls.append(args)
        return urlopen(*args, **kwargs)

    monkeypatch.setattr("tasks.data.ingest.MIRROR_URL", "http://fashion-mnist.invalid/")
    monkeypatch.setattr(urllib.request, "urlopen", counting_urlopen)
    with pytest.raises(NoDataSourceError, match=r"name does not resolve"):
        ingest_only()
    assert len(calls) == 1


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


def test_a_resolver_that_does_not_answer_is_no_data_after_a_few_seconds(monkeypatch):
    answer = threading.Event()
    monkeypatch.setattr("socket.getaddrinfo", lambda *args: answer.wait(30))
    started = time.monotonic()
    error = resolve_error("fashion-mnist.example", seconds=0.5)
    answer.set()
    assert isinstance(error, TimeoutError)
    assert time.monotonic() - started < 5
    assert network_cause(error) == "timed out"
