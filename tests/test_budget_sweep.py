"""The budget sweep's records: which code, seed and memory each row measured, and the table
drawn from them."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from benchmarks import budget_sweep
from benchmarks.budget_sweep import (
    code_commit,
    cpu_instructions,
    cpu_name,
    newest_means,
    record,
    render,
)
from tests.support.figures import coloured, inked, read_png


def git(checkout, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args]
    return subprocess.run(command, cwd=checkout, capture_output=True, text=True, check=True).stdout


def test_a_row_names_the_cpu_by_its_fastest_instructions_for_the_cnn(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    for flags, instructions in [
        ("avx2 avx512_bf16 amx_bf16", "AMX BF16"),
        ("avx2 avx512_bf16", "AVX-512 BF16"),
        ("sse4_2 avx2", "AVX2"),
        ("sse4_2", "no AVX2"),
    ]:
        cpuinfo.write_text(f"model name\t: Intel(R) Xeon(R) Processor\nflags\t: {flags}\n")
        assert cpu_name(cpuinfo).startswith(f"Intel(R) Xeon(R) Processor ({instructions}, ")
        assert cpu_instructions(cpu_name(cpuinfo)) == instructions
    for cores, said in [(1, "1 usable core)"), (64, "64 usable cores)")]:
        monkeypatch.setattr(budget_sweep, "usable_cores", lambda cores=cores: cores)
        assert cpu_name(cpuinfo).endswith(f"(no AVX2, {said}")


def test_a_row_names_the_commit_measured_and_whether_it_had_changes(tmp_path):
    assert code_commit(tmp_path) == "unknown"  # not a git checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "flow.py").write_text("one\n")
    git(tmp_path, "add", "flow.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = git(tmp_path, "rev-parse", "--short", "HEAD").strip()
    assert code_commit(tmp_path) == head
    (tmp_path / "flow.py").write_text("two\n")
    assert code_commit(tmp_path) == f"{head}+changes"


def test_the_table_shows_each_rows_commit(tmp_path):
    row = {
        "budget_minutes": 15.0, "setting": "native", "wall_seconds": 583.1,
        "best_single_model": "cnn", "best_single_accuracy": 0.9262, "ensemble_accuracy": 0.9285,
        "cnn": "small network, 18 epochs planned, 18 trained", "left_out": None,
        "cpu_use_run": 0.951, "cpu_use_training": 0.977, "cpu": "AMD EPYC (AVX2, 2 cores)",
    }  # fmt: skip
    earlier = row | {"budget_minutes": 5.0, "wall_seconds": 277.2, "best_single_accuracy": 0.91}
    measured = row | {"commit": "3b148fa", "seed": 7, "peak_rss_gb": 1.934}
    faster = measured | {"cpu": "AMD EPYC (AVX-512 BF16, 2 usable cores)", "wall_seconds": 890}
    emulated = faster | {"setting": "AVX2 / float32", "best_single_accuracy": 0.9301}
    render(pd.DataFrame([measured, earlier, faster, emulated]), tmp_path)
    page = (tmp_path / "budget_sweep.md").read_text()
    table = page.partition("## Every run\n\n")[2].splitlines()
    # Rows are grouped by the CPU's instructions, then by setting, then by budget.
    assert "| 15 | AVX-512 BF16 | AVX2 / float32 | 14:50.0 | cnn 0.9301 |" in table[2]
    assert "| 15 | AVX-512 BF16 | native | 14:50.0 | cnn 0.9262 |" in table[3]
    assert "| 5 | AVX2 | native | 4:37.2 | cnn 0.9100 |" in table[4]
    assert "| 15 | AVX2 | native | 9:43.1 | cnn 0.9262 | 0.9285 |" in table[5]
    assert table[5].endswith("| — | 98% | 95% | 7 | 1.93 | 3b148fa |")
    # A row from before seeds, memory and commits were recorded: the default seed.
    assert table[4].endswith("| 42 | — | — |")
    assert "Measured on AMD EPYC (AVX-512 BF16, 2 usable cores), AMD EPYC (AVX2" in page
    pixels = read_png(tmp_path / "budget_sweep.png")
    assert pixels.shape == (400, 900, 3)  # 9 x 4 inches at 100 dpi
    # Axes, labels and the legend beside them alone ink 5.1 % and colour none of it; the
    # accuracy lines and their markers add the rest (5.9 % in all).
    assert inked(pixels) > 0.055
    assert coloured(pixels) > 0.005


def test_the_page_opens_with_the_latest_run_of_each_seed_per_cpu_setting_and_budget(tmp_path):
    run = {
        "budget_minutes": 15.0, "setting": "native", "wall_seconds": 880.0,
        "best_single_model": "cnn", "best_single_accuracy": 0.9400, "ensemble_accuracy": 0.9410,
        "cnn": "middle network", "left_out": None, "cpu_use_run": 0.9, "cpu_use_training": 0.9,
        "cpu": "AMD EPYC (AVX2, 2 usable cores)", "peak_rss_gb": 1.6,
    }  # fmt: skip
    rows = pd.DataFrame([
        run | {"commit": "old", "seed": 42, "best_single_accuracy": 0.9300},
        run | {"commit": "old", "seed": 7, "best_single_accuracy": 0.9350},
        run | {"commit": "new", "seed": 42, "best_single_accuracy": 0.9425},
        run | {"commit": "new", "budget_minutes": 5.0, "best_single_accuracy": 0.9321},
        run | {"commit": "new", "seed": 42, "setting": "AVX2 / float32"},
        run | {"commit": "older", "cpu": "Intel Xeon (AMX BF16, 2 usable cores)"},  # no seed
    ])  # fmt: skip
    render(rows, tmp_path)
    page = (tmp_path / "budget_sweep.md").read_text()
    latest = page.partition("## The latest run of each seed")[2].partition("![")[0]
    header, _, *cells = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in latest.splitlines()
        if line.startswith("|")
    ]
    columns = ["budget (min)", "CPU", "setting", "seed", "best single model", "commit"]
    assert [[row[header.index(c)] for c in columns] for row in cells] == [
        ["15", "AMX BF16", "native", "42", "cnn 0.9400", "older"],  # no seed: the default
        ["15", "AVX2", "AVX2 / float32", "42", "cnn 0.9400", "new"],
        ["5", "AVX2", "native", "42", "cnn 0.9321", "new"],
        ["15", "AVX2", "native", "7", "cnn 0.9350", "old"],
        ["15", "AVX2", "native", "42", "cnn 0.9425", "new"],  # the latest of two
    ]


def test_a_recorded_run_is_appended_to_the_table_and_shown(tmp_path):
    row = {
        "budget_minutes": 5.0, "setting": "native", "wall_seconds": 281.1,
        "best_single_model": "cnn", "best_single_accuracy": 0.9392, "ensemble_accuracy": 0.9402,
        "cnn": "small network", "left_out": None, "cpu_use_run": 0.9, "cpu_use_training": 0.9,
        "cpu": "AMD EPYC (AVX2, 2 usable cores)", "commit": "a554cc9", "seed": 42,
    }  # fmt: skip
    record(row, tmp_path)
    record(row | {"budget_minutes": 15.0, "best_single_accuracy": 0.9448}, tmp_path)
    rows = pd.read_csv(tmp_path / "budget_sweep.csv")
    assert rows[["budget_minutes", "best_single_accuracy"]].values.tolist() == [
        [5.0, 0.9392], [15.0, 0.9448]
    ]  # fmt: skip
    shown = (tmp_path / "budget_sweep.md").read_text()
    assert "| 15 | AVX2 | native | 4:41.1 | cnn 0.9448 |" in shown


def test_the_figures_lines_follow_the_newest_commits_runs():
    run = {"budget_minutes": 15.0, "setting": "native", "cpu": "AMD EPYC (AVX2, 2 cores)"}
    rows = pd.DataFrame([
        run | {"best_single_accuracy": 0.92, "ensemble_accuracy": 0.93, "commit": "old"},
        run | {"best_single_accuracy": 0.94, "ensemble_accuracy": 0.95, "commit": "new"},
        run | {"best_single_accuracy": 0.96, "ensemble_accuracy": 0.95, "commit": "new"},
        run | {"budget_minutes": 5.0, "best_single_accuracy": 0.90, "ensemble_accuracy": 0.91},
        run | {"setting": "AVX2 / float32", "best_single_accuracy": 0.8, "ensemble_accuracy": 0.8},
    ])  # fmt: skip
    means = newest_means(rows)
    assert set(means.instructions) == {"AVX2"}
    means = means.set_index(["setting", "budget_minutes"])[
        ["best_single_accuracy", "ensemble_accuracy"]
    ]
    assert means.loc[("native", 15.0)].tolist() == pytest.approx([0.95, 0.95])  # the "new" runs
    assert means.loc[("native", 5.0)].tolist() == [0.90, 0.91]  # a row without a commit
    assert means.loc[("AVX2 / float32", 15.0)].tolist() == [0.8, 0.8]
