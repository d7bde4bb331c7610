"""How close the CNN's training comes to what this CPU can compute: each network's
floating-point operations per epoch, the seconds its training steps take here, and that
rate against numpy's float32 matrix product on the same threads.

    python -m benchmarks.compute_efficiency [--threads N] [--steps 40]

A network far below the matrix product's rate has kernels to gain; one near it gets a
faster epoch only from fewer operations (a narrower network, fewer images).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.budget_sweep import code_commit, cpu_name
from tasks.core.contracts import IMAGE_SHAPE, N_CLASSES
from tasks.core.cpus import usable_cores
from tasks.data.preprocess import held_out_sizes
from tasks.data.published import PUBLISHED_ROWS
from tasks.evaluation.report.tables import markdown_table

REPO = Path(__file__).resolve().parents[1]
PAGE = "compute_efficiency.md"
# The default split's training images: Fashion-MNIST's, less the validation and selection ones.
TRAINING_IMAGES = PUBLISHED_ROWS["train"] - sum(held_out_sizes(PUBLISHED_ROWS["train"], None, None))
# The backward pass computes the gradients of each layer's inputs and of its weights, each
# as many multiply-adds as the forward pass.
TRAINING_PASSES = 3
MATMUL_REPEATS = 10
MATMUL_SIZE = 2048


def multiply_adds(network) -> int:
    """Multiply-adds per image of a Keras network's forward pass, over its layers with a
    kernel (convolutions and dense layers): the kernel's size at each output position."""
    total = 0
    for layer in network.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            positions = int(np.prod(layer.output.shape[1:-1]))
            total += positions * int(np.prod(kernel.shape))
    return total


def matmul_gflops(threads: int, size: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS) -> float:
    """numpy's float32 matrix product on `threads` threads, in GFLOP/s: the best of
    `repeats`."""
    from threadpoolctl import threadpool_limits

    a, b = (np.random.default_rng(seed).random((size, size), np.float32) for seed in (0, 1))
    best = float("inf")
    with threadpool_limits(threads):
        for _ in range(repeats + 1):  # the first warms up
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def network_row(name: str, blocks, threads: int, steps: int, peak: float) -> list:
    """One network's operations, an epoch's seconds at its median and at its fastest
    training step on `threads` threads (random images, shifted and mirrored as in
    training), and the rate at the fastest: the best case, as the matrix product's is."""
    from tasks.training.models.cnn import CNNParams, compiled_network, to_image_tensor
    from tasks.training.models.keras_training import (
        augmented_batches,
        batch_count,
        fit_step_seconds,
        steady_steps,
    )
    from tasks.training.models.tensorflow_runtime import start_tensorflow

    start_tensorflow(threads)
    params = CNNParams(conv_blocks=blocks, dropout=0.0)
    network = compiled_network(params, seed=0, classes=N_CLASSES)
    rng = np.random.default_rng(0)
    images = (steps + 2) * params.batch_size
    x = to_image_tensor(rng.random((images, int(np.prod(IMAGE_SHAPE))), np.float32))
    labels = rng.integers(0, N_CLASSES, images)
    batches = augmented_batches(x, labels, params, 0, N_CLASSES)
    timed = steady_steps(fit_step_seconds(network, batches, lambda: None))
    median, fastest = (float(f(timed)) * batch_count(TRAINING_IMAGES, params.batch_size)
                       for f in (np.median, np.min))  # fmt: skip
    operations = multiply_adds(network)
    flops = 2 * TRAINING_PASSES * operations * TRAINING_IMAGES
    rate = flops / fastest / 1e9
    return [name, f"{operations / 1e6:.2f}", f"{flops / 1e12:.2f}",
            f"{median:.1f}", f"{fastest:.1f}", f"{rate:.0f}", f"{rate / peak:.0%}"]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from tasks.training.models.cnn import MIDDLE_BLOCKS, SMALL_BLOCKS, WIDE_BLOCKS, CNNParams

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--steps", type=int, default=40, help="training steps timed per network")
    parser.add_argument("--output", type=Path, default=REPO / "docs/benchmark" / PAGE)
    args = parser.parse_args(argv)
    peak = matmul_gflops(args.threads)
    print(f"float32 matrix product: {peak:.0f} GFLOP/s on {args.threads} thread(s)", flush=True)
    networks = {"small": SMALL_BLOCKS, "middle": MIDDLE_BLOCKS, "wide": WIDE_BLOCKS}
    rows = []
    for name, blocks in networks.items():
        rows.append(network_row(f"{name} {blocks}", blocks, args.threads, args.steps, peak))
        print(*rows[-1], flush=True)
    header = ["network", "M multiply-adds per image", "TFLOP per epoch",
              "epoch at the median step (s)", "at the fastest step (s)", "GFLOP/s there",
              "of the matrix product's"]  # fmt: skip
    table = pd.DataFrame(rows, columns=header)
    args.output.write_text(
        "# The CNN's training against the CPU's arithmetic\n\n"
        f"Measured on {cpu_name()}, {args.threads} thread(s), code {code_commit(REPO)}, with "
        "`python -m benchmarks.compute_efficiency`. An epoch: the training steps over "
        f"{TRAINING_IMAGES:,} images in batches of {CNNParams().batch_size}, at the median "
        f"and at the fastest of {args.steps} steps on random images, shifted and mirrored as "
        "in training (no validation, no Keras epoch overhead). "
        f"Its operations: {TRAINING_PASSES} times the forward pass's multiply-adds "
        "(convolutions and dense layers; normalisation, activations and pooling not counted), "
        f"2 FLOP each. numpy's float32 matrix product of {MATMUL_SIZE} x {MATMUL_SIZE} on the "
        f"same threads, the fastest of {MATMUL_REPEATS}: **{peak:.0f} GFLOP/s**.\n\n"
        f"{markdown_table(table)}\n"
    )


if __name__ == "__main__":
    main()
