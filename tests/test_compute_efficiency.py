from __future__ import annotations

import re

from benchmarks.compute_efficiency import main, multiply_adds
from tasks.training.models.cnn import SMALL_BLOCKS, CNNParams, build_cnn_network


def test_multiply_adds_count_each_convolution_and_dense_layer():
    network = build_cnn_network(CNNParams(conv_blocks=SMALL_BLOCKS), seed=0, classes=10)
    convolutions = (
        28 * 28 * 9 * 1 * 16  # (16) at 28 x 28, then pooled to 14 x 14
        + 14 * 14 * 9 * 16 * 32 + 14 * 14 * 9 * 32 * 32  # (32, 32), pooled to 7 x 7
        + 7 * 7 * 9 * 32 * 64  # (64), pooled to 3 x 3
    )  # fmt: skip
    dense = 3 * 3 * 64 * 256 + 256 * 10
    assert multiply_adds(network) == convolutions + dense == 3_875_584


def test_the_table_has_each_network_and_the_matrix_products_rate(tmp_path):
    output = tmp_path / "compute_efficiency.md"
    main(["--threads", "1", "--steps", "3", "--output", str(output)])
    page = output.read_text()
    assert re.search(r"the fastest of 10: \*\*\d+ GFLOP/s\*\*", page)
    rows = [line for line in page.splitlines() if line.startswith("| ") and "network" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| small ((16,), (32, 32), (64,))",
        "| middle ((16,), (48, 48), (96,))", "| wide ((32, 32), (64, 64))"]  # fmt: skip
    assert [row.split(" | ")[1] for row in rows] == ["3.88", "7.79", "19.09"]
