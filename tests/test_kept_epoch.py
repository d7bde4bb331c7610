"""The kept-epoch benchmark: the weights early stopping restores against the last epoch's,
on the same training, and its page's gain."""

import pandas as pd

from benchmarks.kept_epoch import budgeted_params, kept_and_last, render


def test_budgeted_params_take_dropout_off_the_middle_and_small_networks_only():
    assert budgeted_params("small", 9, avx2=False).dropout == 0.0
    assert budgeted_params("middle", 9, avx2=True).precision == "float32"
    assert budgeted_params("wide", 9, avx2=False).dropout == 0.2


def test_with_one_epoch_in_the_last_third_the_kept_weights_are_the_last(processed):
    # Of 2 epochs, early stopping watches the second only (from 2 * 2 // 3 = 1).
    row = kept_and_last(budgeted_params("small", 2, avx2=False), seed=3, data=processed)
    assert row["kept_epoch"] == 2
    assert row["validation_kept"] == row["validation_last"]
    assert row["test_kept"] == row["test_last"]
    assert 0.0 <= row["test_last"] <= 1.0


def test_the_page_gives_each_seeds_gain_and_the_mean(tmp_path):
    rows = pd.DataFrame([
        {"network": "small", "epochs": 9, "seed": s, "kept_epoch": k, "validation_kept": 0.93,
         "validation_last": 0.93, "test_kept": tk, "test_last": tl, "cpu": "x", "commit": "c"}
        for s, k, tk, tl in [(1, 7, 0.9200, 0.9250), (2, 9, 0.9300, 0.9300)]
    ])  # fmt: skip
    render(rows, tmp_path / "kept_epoch.md")
    page = (tmp_path / "kept_epoch.md").read_text()
    assert "mean +0.25 over 2 rows, the last epoch kept in 1." in page
    assert "| small | 9 | 1 | 7 | 0.9300 | 0.9300 | 0.9200 | 0.9250 | +0.50 | x | c |" in page
