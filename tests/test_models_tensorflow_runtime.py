from __future__ import annotations

import os
import threading

from tasks.training.models import tensorflow_runtime
from tasks.training.models.tensorflow_runtime import (
    TENSORFLOW_STARTUP_NOISE,
    compute_dtype_policy,
    configure_tensorflow_threads,
    native_stderr_without,
    start_tensorflow,
    tensorflow_device,
)


def test_stderr_filter_drops_native_notices_and_passes_the_rest(capfd):
    with native_stderr_without(TENSORFLOW_STARTUP_NOISE):
        os.write(2, b"I0000 00:00:1795 port.cc:153] oneDNN custom operations are on.\n")
        writer = threading.Thread(target=os.write, args=(2, b"worker log line\n"))
        writer.start()
        writer.join()
        os.write(2, b"To enable the following instructions: AVX2 FMA\n")
        os.write(2, b"E0000 00:00:1795 real native error\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "worker log line\nE0000 00:00:1795 real native error\nafter\n"


def test_thread_pools_fixed_before_are_a_warning_naming_both_counts(caplog):
    start_tensorflow(threads=1)
    import tensorflow as tf

    tf.constant(1.0) + 1  # an operation: from here on the pools are fixed
    kept = tf.config.threading.get_intra_op_parallelism_threads()
    with caplog.at_level("WARNING", logger="tasks.training.models.tensorflow_runtime"):
        configure_tensorflow_threads(kept + 2)
    assert f"asked for {kept + 2} thread(s), it keeps {kept or 'its default'}" in caplog.text
    assert tf.config.threading.get_intra_op_parallelism_threads() == kept


def test_auto_precision_is_bfloat16_only_for_a_cnn_on_a_cpu_that_computes_it(monkeypatch):
    start_tensorflow(threads=1)
    import tensorflow as tf

    monkeypatch.setattr(tensorflow_runtime, "cpu_computes_bfloat16", lambda: True)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    assert compute_dtype_policy("auto") == "mixed_bfloat16"
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    assert compute_dtype_policy("auto") == "float32"  # a GPU, whatever the CPU
    assert compute_dtype_policy("bfloat16") == "mixed_bfloat16"  # asked for: kept


def test_the_cnn_log_names_where_tensorflow_computes(monkeypatch):
    start_tensorflow(threads=1)
    import tensorflow as tf

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    assert tensorflow_device() == "the CPU"
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    assert tensorflow_device() == "1 GPU(s) (memory growth, deterministic ops)"
