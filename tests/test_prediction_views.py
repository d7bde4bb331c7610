"""The prediction views benchmark: a network trained and scored with each set of views on
each held-out split, and its page's gains."""

import pandas as pd

from benchmarks.prediction_views import SCORED, VIEW_SETS, render, trained_rows
from tasks.core.contracts import SPLIT_ARRAYS


def test_a_network_is_scored_with_each_set_of_views_on_each_split(processed):
    rows = trained_rows("small:1:3", avx2=False, data=processed)
    assert [row["split"] for row in rows] == list(SCORED)
    for row in rows:
        assert row["network"] == "small, 1 epochs, seed 3"
        assert row["images"] == len(processed.load(SPLIT_ARRAYS[row["split"]][1])[0])
        assert all(0.0 <= row[name] <= 1.0 for name in VIEW_SETS)


def test_the_page_gives_each_rows_gain_and_the_mean_gain_by_split(tmp_path):
    rows = pd.DataFrame([
        {"network": n, "split": s, "images": 10, "image": 0.90, "and mirror image": m,
         "10 views": v, "cpu": "x", "commit": "c"}
        for n, s, m, v in [("a", "validation", 0.91, 0.92), ("a", "test", 0.93, 0.935),
                           ("b", "validation", 0.91, 0.90), ("b", "test", 0.93, 0.94)]
    ])  # fmt: skip
    render(rows, tmp_path / "prediction_views.md")
    page = (tmp_path / "prediction_views.md").read_text()
    assert "Mean gain, by split: validation +0.00, test +0.75." in page
    assert "| a | test | 10 | 0.9000 | 0.9300 | 0.9350 | +0.50 | x | c |" in page
    assert "| b | validation | 10 | 0.9000 | 0.9100 | 0.9000 | -1.00 | x | c |" in page
