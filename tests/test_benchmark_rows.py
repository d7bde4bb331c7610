"""The benchmarks' tables: each measurement's rows appended to its CSV as they come."""

import pandas as pd

from benchmarks.rows import appended


def test_rows_are_appended_to_the_table_and_all_of_them_returned(tmp_path):
    table = tmp_path / "runs.csv"
    first = appended(table, [{"budget": 5, "accuracy": 0.93}])
    assert first.to_dict("records") == [{"budget": 5, "accuracy": 0.93}]
    both = appended(table, pd.DataFrame([{"budget": 15, "accuracy": 0.945, "seed": 7}]))
    written = pd.read_csv(table)
    assert written.budget.tolist() == both.budget.tolist() == [5, 15]
    assert written.seed.isna().tolist() == [True, False]  # a new column: empty in older rows
