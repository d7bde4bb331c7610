"""The kept-epoch benchmark: the weights early stopping restores against the last epoch's,
on the same training, and its page's gain."""

import pandas as pd

from benchmarks.kept_epoch import budgeted_params, kept_epochs_compared, render


def test_budgeted_params_take_dropout_off_the_middle_and_small_networks_only():
    assert budgeted_params("small", 9, avx2=False).dropout == 0.0
    assert budgeted_params("middle", 9, avx2=True).precision == "float32"
    assert budgeted_params("wide", 9, avx2=False).dropout == 0.2


def test_each_watched_epoch_is_scored_and_the_restored_weights_are_the_kept_epochs(processed):
    # Of 4 epochs, early stopping watches the last two (from 2 * 4 // 3 = 2).
    row = kept_epochs_compared(budgeted_params("small", 4, avx2=False), seed=3, data=processed)
    validations = [float(v) for v in row["validation_by_epoch"].split()]
    tests = [float(t) for t in row["test_by_epoch"].split()]
    assert len(validations) == len(tests) == 2
    assert row["validation_last"] == validations[-1]
    assert row["test_last"] == tests[-1]
    # The restored weights score as their epoch did; ties go to the first, and the last.
    assert row["kept_epoch"] == 3 + validations.index(max(validations))
    assert row["validation_kept"] == max(validations)
    assert row["test_kept"] == tests[row["kept_epoch"] - 3]
    assert row["last_of_equals_epoch"] == 4 - validations[::-1].index(max(validations))
    assert row["test_last_of_equals"] == tests[row["last_of_equals_epoch"] - 3]
    assert 0.0 <= row["test_last_three_averaged"] <= 1.0


def test_the_page_gives_each_seeds_gains_and_their_means(tmp_path):
    new = {"last_of_equals_epoch": 9, "test_last_of_equals": 0.9280,
           "test_last_three_averaged": 0.9310, "validation_by_epoch": "0.9300 0.9300",
           "test_by_epoch": "0.9200 0.9280"}  # fmt: skip
    rows = pd.DataFrame([
        {"network": "small", "epochs": 9, "seed": s, "kept_epoch": k, "validation_kept": 0.93,
         "validation_last": 0.93, "test_kept": tk, "test_last": tl, "cpu": "x", "commit": "c"}
        | extra
        for s, k, tk, tl, extra in [(1, 8, 0.9200, 0.9250, new), (2, 9, 0.9300, 0.9300, {})]
    ])  # fmt: skip
    render(rows, tmp_path / "kept_epoch.md")
    page = (tmp_path / "kept_epoch.md").read_text()
    assert (
        "mean last +0.25 over 2 rows; last of equals +0.80 over 1 rows; last three averaged "
        "+1.10 over 1 rows; the last epoch restored in 1 of 2."
    ) in page
    assert (
        "| small | 9 | 1 | 8 | 0.9300 | 0.9300 | 0.9200 | 0.9250 | 9 | 0.9280 | 0.9310 | +0.50 "
        "| +0.80 | +1.10 | x | c |"
    ) in page
    assert (
        "| small | 9 | 2 | 9 | 0.9300 | 0.9300 | 0.9300 | 0.9300 |  |  |  | +0.00 |  |  | x | c |"
        in page
    )
