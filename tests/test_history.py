"""The run history and `since_previous_run`, on tiny synthetic data sets in tmp_path."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats.proportion import proportions_ztest

from tasks.core.contracts import CLASS_NAMES
from tasks.core.errors import RegressionError, RunEnvironmentError, UsageError
from tasks.evaluation.significance import two_proportion_z_test
from tasks.history.changes import MCNEMAR, Z_TEST, regressions
from tasks.history.db import (
    KEEP_IMAGE_DATA_RUNS,
    LAST_RUN,
    champion_run,
    check_known_run,
    history_path,
    record_snapshot,
)
from tasks.history.runs import PINNED, WITHOUT_REGRESSION, regression_error
from tasks.history.snapshots import snapshot_run
from tasks.history.stages import record_run_task, since_previous_run_task
from tests.support.history_runs import PULLOVER, TRAIN_PER_CLASS, TROUSER, Run, make_arrays

REPO = Path(__file__).resolve().parents[1]


def test_a_first_run_has_nothing_to_compare_with(tmp_path):
    run = Run(tmp_path / "run", make_arrays()).evaluate("svm", wrong=30)
    assert run.since(tmp_path / "reports") is None
    assert not history_path(tmp_path / "reports").exists()


def test_an_unchanged_run_reports_no_change(tmp_path):
    output = tmp_path / "reports"
    Run(tmp_path / "a", make_arrays()).evaluate("svm", 30).evaluate("cnn", 10).record(output, "a")
    run = Run(tmp_path / "b", make_arrays()).evaluate("svm", 30).evaluate("cnn", 10)
    since = run.since(output, "b")
    assert since["previous_run_id"] == "a"
    assert since["same_test_images"]
    assert since["data"]["changed"] is False
    for split in since["data"]["splits"].values():
        assert (split["added"], split["removed"], split["relabelled"]) == (0, 0, 0)
        assert all(
            c["change"] == 0 and c["drift"]["p_value"] == 1.0 for c in split["classes"].values()
        )
    assert {m["test"] for m in since["models"].values()} == {MCNEMAR}
    assert not any(m["significant"] for m in since["models"].values())
    assert since["summary"] == ["The data is unchanged.", "No model changed significantly."]


def test_relabelled_images_are_counted_and_named(tmp_path):
    output = tmp_path / "reports"
    Run(tmp_path / "a", make_arrays()).evaluate("svm", 30).record(output, "a")
    arrays = make_arrays()
    trousers = np.flatnonzero(arrays["train_labels"] == TROUSER)
    arrays["train_labels"][trousers[: TRAIN_PER_CLASS * 3 // 10]] = PULLOVER  # 30 %
    since = Run(tmp_path / "b", arrays).evaluate("svm", 30).since(output)
    train = since["data"]["splits"]["train"]
    assert (train["added"], train["removed"], train["relabelled"]) == (0, 0, 30)
    assert train["relabellings"] == [{"from": "Trouser", "to": "Pullover", "images": 30}]
    assert train["classes"]["Trouser"] | {"drift": None} == {
        "previous": 100, "current": 70, "change": -30, "drift": None
    }  # fmt: skip
    assert train["classes"]["Pullover"]["change"] == 30
    assert train["classes"]["Pullover"]["drift"]["significant"]  # darker trousers joined
    assert since["data"]["splits"]["test"]["relabelled"] == 0
    summary = " ".join(since["summary"])
    assert "The training data changed: Trouser 100 → 70 (\N{MINUS SIGN}30)" in summary
    assert "Pullover 100 → 130 (+30)" in summary
    assert "30 relabelled (30 from Trouser to Pullover)" in summary
    assert "Mean pixel intensity drifted in Pullover (training" in summary


def test_images_added_and_removed_are_counted(tmp_path):
    output = tmp_path / "reports"
    Run(tmp_path / "a", make_arrays()).record(output, "a")
    arrays = make_arrays()
    arrays["train_images"][:5] = 255 - arrays["train_images"][:5]  # 5 images replaced
    arrays["train_images"][10] = arrays["train_images"][11]  # one now held twice
    since = Run(tmp_path / "b", arrays).since(output)
    train = since["data"]["splits"]["train"]
    assert (train["added"], train["removed"], train["relabelled"]) == (6, 6, 0)
    assert "6 images added, 6 removed, 0 relabelled" in " ".join(since["summary"])


# A drop of 20 points: beyond a 1-point tolerance, not beyond one of exactly 20 or 25 points.
@pytest.mark.parametrize(("tolerance", "regression"), [(0.01, True), (0.2, False), (0.25, False)])
def test_a_significant_drop_beyond_the_tolerance_is_a_regression(tmp_path, tolerance, regression):
    output = tmp_path / "reports"
    Run(tmp_path / "a", make_arrays()).evaluate("svm", 30).evaluate("cnn", 3).record(output, "a")
    run = Run(tmp_path / "b", make_arrays()).evaluate("svm", 90).evaluate("cnn", 3)
    since = run.since(output, tolerance=tolerance)
    svm = since["models"]["svm"]
    assert svm["previous_accuracy"] == 0.9
    assert svm["accuracy"] == 0.7
    assert svm["change"] == pytest.approx(-0.2)
    assert svm["test"] == MCNEMAR
    assert svm["p_value"] == pytest.approx(2 * 0.5**60)  # 60 images only the old one got
    assert svm["significant"]
    assert svm["regression"] is regression
    assert since["models"]["cnn"]["p_value"] == 1.0
    change = "0.900 → 0.700 (\N{MINUS SIGN}20.0 points, McNemar p < 0.001)"
    if regression:
        assert since["summary"][0] == f"svm got worse: {change}, a regression."
        assert [row["model"] for row in regressions(since)] == ["svm"]
    else:
        within = (
            f"svm got slightly worse: {change}, within the {100 * tolerance:g}-point tolerance."
        )
        assert within in since["summary"]
        assert regressions(since) == []
    assert since["summary"][-1] == "No other model changed significantly."


def test_other_test_images_are_compared_with_a_two_proportion_test(tmp_path):
    output = tmp_path / "reports"
    Run(tmp_path / "a", make_arrays()).evaluate("svm", 30).record(output, "a")
    arrays = make_arrays()
    arrays["test_images"] = make_arrays(seed=1)["test_images"]
    since = Run(tmp_path / "b", arrays).evaluate("svm", 120).since(output)
    svm = since["models"]["svm"]
    assert not since["same_test_images"]
    assert svm["test"] == Z_TEST
    _, reference = proportions_ztest([270, 180], [300, 300])
    assert svm["p_value"] == pytest.approx(reference)
    assert svm["regression"]
    assert since["data"]["splits"]["test"]["added"] == 300
    assert "compared unpaired (two-proportion z-test)" in since["summary"][-1]


@pytest.mark.parametrize("counts", [(90, 100, 80, 100), (0, 50, 3, 50), (50, 50, 50, 50)])
def test_the_z_test_matches_statsmodels(counts):
    a, n_a, b, n_b = counts
    _, reference = proportions_ztest([a, b], [n_a, n_b]) if a + b < n_a + n_b else (0, 1.0)
    z, p_value = two_proportion_z_test(a, n_a, b, n_b)
    assert p_value == pytest.approx(reference)
    assert np.sign(z) == np.sign(b / n_b - a / n_a)


@pytest.mark.parametrize("n_classes", [10, 3])
def test_other_class_names_are_compared_by_name(tmp_path, n_classes):
    output = tmp_path / "reports"
    Run(tmp_path / "a", make_arrays()).evaluate("svm", 30).record(output, "a")
    names = ("T-shirt/top", "Pants", *CLASS_NAMES[2:n_classes])
    since = Run(tmp_path / "b", make_arrays(n_classes=n_classes), names).since(output)
    data = since["data"]
    assert data["classes_added"] == ["Pants"]
    assert data["classes_removed"] == [c for c in CLASS_NAMES if c not in names]
    train = data["splits"]["train"]
    no_drift = {"drift": None}  # the class is in one run only
    assert train["classes"]["Pants"] == {"previous": 0, "current": 100, "change": 100} | no_drift
    assert train["classes"]["Trouser"] == {"previous": 100, "current": 0, "change": -100} | no_drift
    assert train["classes"]["T-shirt/top"]["drift"]["p_value"] == 1.0
    # The same images under another name: relabelled, not added.
    assert train["relabellings"][0] == {"from": "Trouser", "to": "Pants", "images": 100}
    assert since["summary"][0].startswith("The classes changed; new classes: Pants;")


def test_without_a_champion_the_last_completed_run_of_the_same_profile_counts(tmp_path):
    output = tmp_path / "reports"
    run = Run(tmp_path / "a", make_arrays()).evaluate("svm", 30)
    for run_id, profile in [("a", "quick"), ("b", "quick"), ("c", "full"), ("now", "quick")]:
        run.record(output, run_id, profile, regressed=True)  # none becomes a champion

    def compared_with(profile: str, run_id: str) -> tuple[str, str]:
        snapshot, chosen = champion_run(history_path(output), profile, run_id)
        return snapshot.run_id, chosen

    assert compared_with("quick", "now") == ("b", LAST_RUN)
    assert compared_with("full", "now") == ("c", LAST_RUN)
    assert compared_with("quick", "later") == ("now", LAST_RUN)


def test_a_recorded_run_reads_back_as_it_was(tmp_path):
    output = tmp_path / "reports"
    run = Run(tmp_path / "a", make_arrays()).evaluate("svm", 7)
    recorded = snapshot_run("a", "quick", run.raw, run.data, run.evaluations)
    record_snapshot(history_path(output), recorded)
    read, _ = champion_run(history_path(output), "quick", "now")
    assert replace(read, splits={}, models={}) == replace(recorded, splits={}, models={})
    for split, images in recorded.splits.items():
        for field in ("hashes", "labels", "mean_intensity"):
            assert np.array_equal(getattr(read.splits[split], field), getattr(images, field))
    np.testing.assert_array_equal(read.models["svm"].correct, recorded.models["svm"].correct)
    assert read.models["svm"].accuracy == recorded.models["svm"].accuracy
    with sqlite3.connect(history_path(output)) as db:
        counts = db.execute("SELECT split, SUM(images) FROM class_counts GROUP BY split").fetchall()
    assert sorted(counts) == [("test", 300), ("train", 1000)]


def test_only_the_newest_runs_keep_their_images(tmp_path):
    output = tmp_path / "reports"
    run = Run(tmp_path / "a", make_arrays())
    run.record(output, "full-0", "full")
    run_ids = [f"quick-{number}" for number in range(KEEP_IMAGE_DATA_RUNS + 2)]
    for run_id in run_ids:
        run.record(output, run_id, "quick")
    with sqlite3.connect(history_path(output)) as db:
        kept = {row[0] for row in db.execute("SELECT DISTINCT run_id FROM split_images")}
        runs = {row[0] for row in db.execute("SELECT run_id FROM runs")}
    assert kept == {"full-0", *run_ids[-KEEP_IMAGE_DATA_RUNS:]}
    assert runs == {"full-0", *run_ids}


# Each process records runs of its own into the same history at the same time.
WRITER = """
import sys
from pathlib import Path
import numpy as np
from tasks.history.db import record_snapshot
from tasks.history.snapshots import ModelOutcome, RunSnapshot, split_images

db, name = Path(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(abs(hash(name)) % 1000)
for number in range(8):
    images = rng.integers(0, 256, (20000, 28, 28), dtype=np.uint8)
    labels = (np.arange(20000) % 10).astype(np.uint8)
    record_snapshot(db, RunSnapshot(
        f"{name}-{number}", f"2026-01-01T00:00:{number:02d}.000000+00:00", name,
        tuple("abcdefghij"), "data", "test", {"train": split_images(images, labels)},
        {"svm": ModelOutcome(0.5, rng.random(1000) < 0.5)},
    ))
"""


def test_runs_recording_at_once_do_not_corrupt_the_history(tmp_path):
    db = history_path(tmp_path / "reports")
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), f"writer{number}"],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for number in range(3)
    ]
    errors = [writer.communicate(timeout=120)[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0, 0], errors
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        runs = connection.execute("SELECT profile, COUNT(*) FROM runs GROUP BY profile")
        assert sorted(runs) == [("writer0", 8), ("writer1", 8), ("writer2", 8)]
    for number in range(3):
        assert champion_run(db, f"writer{number}", "now")[0].run_id == f"writer{number}-7"


def test_a_history_that_cannot_be_read_is_one_line(tmp_path):
    newer, garbled = history_path(tmp_path / "newer"), history_path(tmp_path / "garbled")
    newer.parent.mkdir()
    with sqlite3.connect(newer) as connection:
        connection.execute("PRAGMA user_version = 7")
    garbled.parent.mkdir()
    garbled.write_text("not a database " * 100)
    expected = "schema version 7; this pipeline reads version 2"
    with pytest.raises(RunEnvironmentError, match=expected):
        champion_run(newer, "quick", "now")
    with pytest.raises(RunEnvironmentError, match=r"history.sqlite: run history failed \(file is"):
        champion_run(garbled, "quick", "now")


def test_the_regression_error_names_models_accuracies_and_p_values(tmp_path):
    output = tmp_path / "reports"
    Run(tmp_path / "a", make_arrays()).evaluate("svm", 30).evaluate("cnn", 0).record(output, "a")
    run = Run(tmp_path / "b", make_arrays()).evaluate("svm", 90).evaluate("cnn", 30)
    error = regression_error(run.since(output), tmp_path / "report")
    assert isinstance(error, RegressionError)
    assert error.exit_status == 4
    assert error.report_dir == tmp_path / "report"
    assert str(error) == (
        "2 models regressed since run a (accuracy down more than 0.01, p < 0.05): "
        "svm 0.900 → 0.700 (\N{MINUS SIGN}20.0 points, McNemar p < 0.001); "
        "cnn 1.000 → 0.900 (\N{MINUS SIGN}10.0 points, McNemar p < 0.001)"
    )


def test_the_tasks_compare_then_record(tmp_path):
    output = tmp_path / "reports"
    run = Run(tmp_path / "a", make_arrays()).evaluate("svm", 30)
    common = {"output_dir": output, "profile": "quick", "raw": run.raw, "data": run.data}
    common["evaluations"] = run.evaluations
    assert since_previous_run_task.fn(run_id="a", regression_tolerance=0.01, **common) is None
    assert record_run_task.fn(run_id="a", **common) == output / "history.sqlite"
    since = since_previous_run_task.fn(run_id="b", regression_tolerance=0.01, **common)
    assert since["previous_run_id"] == "a"
    (output / "history.sqlite").write_bytes(b"not a database")  # the report still comes
    assert since_previous_run_task.fn(run_id="c", regression_tolerance=0.01, **common) is None


def test_a_regression_keeps_alerting_against_the_champion_until_a_baseline_accepts_it(tmp_path):
    output = tmp_path / "reports"
    good = Run(tmp_path / "a", make_arrays()).evaluate("svm", 30).evaluate("cnn", 3)
    good.record(output, "a")

    def worse(name: str) -> Run:
        return Run(tmp_path / name, make_arrays()).evaluate("svm", 90).evaluate("cnn", 3)

    b, c, d = worse("b"), worse("c"), worse("d")
    first = b.since(output, "b")
    assert (first["previous_run_id"], first["previous_chosen"]) == ("a", WITHOUT_REGRESSION)
    assert [row["model"] for row in regressions(first)] == ["svm"]
    b.record(output, "b", regressed=True)  # the champion stays run a

    second = c.since(output, "c")
    assert second["previous_run_id"] == "a"  # against run b, nothing would have changed
    assert [row["model"] for row in regressions(second)] == ["svm"]
    c.record(output, "c", regressed=True)

    accepted = d.since(output, "d", baseline="b")
    assert (accepted["previous_run_id"], accepted["previous_chosen"]) == ("b", PINNED)
    assert regressions(accepted) == []
    d.record(output, "d")  # no regression: the champion now

    without_cnn = Run(tmp_path / "e", make_arrays()).evaluate("svm", 90).since(output, "e")
    assert without_cnn["previous_run_id"] == "d"
    assert without_cnn["missing_models"] == ["cnn"]
    assert "cnn ran in run d but not in this one (failed or left out)." in without_cnn["summary"]


def test_an_unknown_baseline_is_refused_naming_the_latest_runs(tmp_path):
    output = tmp_path / "reports"
    with pytest.raises(UsageError, match=r"--baseline x: no run history in .*history.sqlite yet"):
        check_known_run(history_path(output), "quick", "x")
    Run(tmp_path / "a", make_arrays()).evaluate("svm", 30).record(output, "a")
    Run(tmp_path / "b", make_arrays()).evaluate("svm", 30).record(output, "b")
    with pytest.raises(UsageError, match=r"--baseline x: no quick run of that id in .*; its "
                       r"latest: b, a$"):  # fmt: skip
        Run(tmp_path / "c", make_arrays()).since(output, "c", baseline="x")


def test_the_champion_keeps_its_image_data_beyond_the_newest_runs(tmp_path):
    output = tmp_path / "reports"
    Run(tmp_path / "a", make_arrays()).evaluate("svm", 30).record(output, "a")
    for number in range(KEEP_IMAGE_DATA_RUNS + 1):
        run = Run(tmp_path / f"r{number}", make_arrays()).evaluate("svm", 90)
        run.record(output, f"r{number}", regressed=True)
    since = Run(tmp_path / "now", make_arrays()).evaluate("svm", 30).since(output)
    assert since["previous_run_id"] == "a"
    assert since["data"]["splits"]["train"]["added"] == 0  # compared image by image


def test_a_version_1_history_gains_its_champions(tmp_path):
    output = tmp_path / "reports"
    Run(tmp_path / "a", make_arrays()).evaluate("svm", 30).record(output, "a")
    with sqlite3.connect(history_path(output)) as db:
        db.execute("DROP TABLE champions")
        db.execute("PRAGMA user_version = 1")
    since = Run(tmp_path / "b", make_arrays()).evaluate("svm", 30).since(output, "b")
    assert (since["previous_run_id"], since["previous_chosen"]) == ("a", "the last run")
