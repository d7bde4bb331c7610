"""Starting TensorFlow in this process: quietly, with a fixed number of threads, its GPUs
ready to share, and with the compute precision its device runs fastest.

TensorFlow is imported only when a CNN is fitted or loaded, so runs whose CNN is
cached never pay its start-up (seconds, and most of a gigabyte).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from tasks.core.cpus import read_cpuinfo
from tasks.core.devices import Devices, cnn_on_gpu, detect_devices

logger = logging.getLogger(__name__)

# TensorFlow's native start-up notices (oneDNN, CUDA probing, CPU features) are written
# straight to file descriptor 2 before any log setting applies. Warnings and errors pass.
TENSORFLOW_STARTUP_NOISE = re.compile(
    rb"^(?:I\d{4} |WARNING: All log messages before absl::InitializeLog|To enable the following)"
)
_tensorflow_start = threading.Lock()


@contextlib.contextmanager
def native_stderr_without(noise: re.Pattern[bytes]) -> Iterator[None]:
    """Route file descriptor 2 through a pipe that drops the lines matching `noise`.

    Native libraries bypass Python's logging, so only the descriptor can filter them;
    everything else written meanwhile, by any thread, is passed on in order.
    """
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not noise.match(line):
                    os.write(original, line)

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the forwarder drains and ends
        forwarder.join(timeout=5)
        if not forwarder.is_alive():  # else a child process still holds the pipe open
            os.close(original)


def start_tensorflow(threads: int) -> None:
    """Import TensorFlow on first use, without its start-up notices, with `threads` threads
    and its GPUs prepared before any model."""
    with _tensorflow_start:
        if "tensorflow" in sys.modules:
            configure_tensorflow_threads(threads)
            return
        # TensorFlow enables oneDNN by itself only on AVX-512 VNNI/BF16 and AMX CPUs; on an
        # AVX2 EPYC it halved the CNN epoch on one thread (288 s against 139 s for the wide
        # network, 61 s against 35 s for the small one).
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
        with native_stderr_without(TENSORFLOW_STARTUP_NOISE):
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            prepare_gpus(tf.config, gpus)
            configure_tensorflow_threads(threads)
            tf.config.list_logical_devices()  # device probing prints its own notices
        if note := missing_gpu_note(gpus, detect_devices()):
            logger.warning("%s", note)


def prepare_gpus(config: Any, gpus: Sequence[Any]) -> None:
    """Memory growth on every GPU, and deterministic ops where there is one; `config` is
    `tf.config`, the GPUs its physical devices. Both must come before any model.

    Without memory growth TensorFlow takes nearly all of a GPU's memory at its first
    operation, so XGBoost, or a second process that starts TensorFlow (the processes and
    Dask runners, tuning trials), runs out of it. The README promises deterministic fits
    (a failed model is not retried; a rerun reuses what the same inputs made), and on a
    GPU cuDNN picks algorithms that add in any order unless told not to; that costs some
    speed, so a CPU keeps the kernels its costs were measured with. Keras compiles the
    model without XLA then, whose GPU max-pooling gradient has no deterministic form.
    """
    for gpu in gpus:
        config.experimental.set_memory_growth(gpu, True)
    if gpus:
        config.experimental.enable_op_determinism()


def missing_gpu_note(gpus: Sequence[Any], devices: Devices) -> str:
    """Why the CNN trains on the CPU though the driver shows a GPU; "" where it does not."""
    if gpus or not cnn_on_gpu(devices):
        return ""
    return (
        f"TensorFlow lists no GPU, though the driver shows {', '.join(devices.gpus)}: the CNN "
        "trains on the CPU (TensorFlow without its CUDA libraries? pip install "
        "'tensorflow[and-cuda]')"
    )


def tensorflow_device() -> str:
    """Where TensorFlow computes, for the CNN's log; once it is started."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU(s) (memory growth, deterministic ops)" if gpus else "the CPU"


def configure_tensorflow_threads(threads: int) -> None:
    """Size TensorFlow's thread pools, or warn that they are fixed at another size.

    The pools are process-wide and fixed once TensorFlow has run an operation: a second
    model in the same process with another thread count keeps the first one's.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        kept = tf.config.threading.get_intra_op_parallelism_threads()
        logger.warning(
            "TensorFlow's thread pools were already initialised in this process: asked for "
            "%d thread(s), it keeps %s",
            threads, kept or "its default of one per core",
        )  # fmt: skip


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has native bfloat16 instructions, which oneDNN uses for convolutions."""
    return bool(read_cpuinfo().bfloat16_flags)


def compute_dtype_policy(precision: str) -> str:
    """Keras dtype policy: bfloat16 compute with float32 weights, or float32 throughout.

    "auto" is bfloat16 only where the CNN trains on a CPU that computes it natively: a
    GPU keeps float32 whatever the CPU (bfloat16 convolutions need an Ampere or newer
    GPU, and none was here to measure). Called once TensorFlow is started.
    """
    if precision == "auto":
        import tensorflow as tf

        on_gpu = bool(tf.config.list_physical_devices("GPU"))
        precision = "bfloat16" if cpu_computes_bfloat16() and not on_gpu else "float32"
    return "mixed_bfloat16" if precision == "bfloat16" else "float32"
