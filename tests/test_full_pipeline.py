"""The flow and its command line, end to end under a Prefect test server."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.settings import PREFECT_API_URL
from sklearn.metrics import log_loss
from statsmodels.stats.multitest import multipletests

from benchmarks.selection_split import ensembles_by_chooser
from flows.full_pipeline import full_pipeline, main
from tasks.core.contracts import HELD_OUT, SPLIT_ARRAYS
from tasks.core.cpus import cpu_model, usable_cores
from tasks.data.ingest import FASHION_MNIST_FILES
from tasks.evaluation.ensemble import choose_weights
from tasks.run.config import DEFAULT_MODELS, build_config
from tasks.training.models.registry import load_model
from tests.support.data import QUICK_ARGS, REAL_DATA_DIR
from tests.support.figures import coloured, inked, read_png
from tests.support.servers import REPO
from tests.support.waiting import wait_until

# One xdist worker runs the tests that share the quick run (conftest), in file order.
pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.xdist_group("quick-run")]


@pytest.mark.slow
def check_holm_and_paired_differences(tests: list[dict], predictions: pd.DataFrame) -> None:
    """The family's Holm-adjusted p-values as statsmodels computes them, and each paired
    difference's bootstrap interval beside the normal approximation's, on real predictions."""
    holm = multipletests([t["p_value"] for t in tests], method="holm")[1]
    assert [t["p_holm"] for t in tests] == pytest.approx(holm.tolist(), rel=1e-12)
    assert [t["significant"] for t in tests] == (holm < 0.05).tolist()
    n = len(predictions)
    for test in tests:
        right = predictions[[test["compared_to"], test["model"]]].eq(predictions.true_label, axis=0)
        difference = right.iloc[:, 0].mean() - right.iloc[:, 1].mean()
        discordant = (right.iloc[:, 0] != right.iloc[:, 1]).sum()
        error = np.sqrt(discordant - n * difference**2) / n
        wald = 100 * (difference + np.array([-1.96, 1.96]) * error)
        assert test["difference"] == pytest.approx(100 * difference)
        # 2,000 resamples of 2,000 images: Monte Carlo error of about 0.1 points.
        assert [test["difference_low"], test["difference_high"]] == pytest.approx(wald, abs=0.35)


def test_quick_profile_on_real_data(quick_run):
    workdir, report_dir, printed = quick_run
    real_data_dir = workdir / "fashion"
    assert f"report: reports/{report_dir.name}/report.md" in printed
    assert "-quick-" in report_dir.name
    board = pd.read_csv(report_dir / "leaderboard.csv")
    assert sorted(board.model) == sorted([*DEFAULT_MODELS, "ensemble"])
    assert board["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert board.test_accuracy.is_monotonic_decreasing
    assert (board.test_accuracy > 0.7).all(), board
    assert (board.fit_seconds > 0).all()
    for model in board.model:
        assert model in printed

    predictions = pd.read_csv(report_dir / "test_predictions.csv")
    assert len(predictions) == 2000
    assert predictions["index"].is_unique
    assert predictions["index"].between(0, 9999).all()
    with gzip.open(real_data_dir / FASHION_MNIST_FILES["test_labels"].name) as stream:
        real_labels = np.frombuffer(stream.read(), np.uint8, offset=8)
    np.testing.assert_array_equal(predictions.true_label, real_labels[predictions["index"]])
    assert np.bincount(predictions.true_label).tolist() == [200] * 10
    for row in board.itertuples():
        recomputed = (predictions[row.model] == predictions.true_label).mean()
        assert row.test_accuracy == pytest.approx(recomputed, abs=1e-9)

    with np.load(report_dir / "test_probabilities.npz") as npz:
        probabilities = {model: npz[model] for model in npz.files}
    for row in board.itertuples():
        np.testing.assert_array_equal(
            probabilities[row.model].argmax(axis=1), predictions[row.model]
        )
        recomputed = log_loss(predictions.true_label, probabilities[row.model], labels=range(10))
        assert row.log_loss == pytest.approx(recomputed, abs=1e-4)
        assert 0 <= row.calibration_error < 0.2
        assert row.model_size_mb > 0
    assert (board.accuracy_low < board.test_accuracy).all()
    assert (board.test_accuracy < board.accuracy_high).all()

    metrics = json.loads((report_dir / "metrics.json").read_text())
    for test in metrics["mcnemar_exact"]:
        right = predictions[[test["model"], test["compared_to"]]].eq(predictions.true_label, axis=0)
        only_model = int((right.iloc[:, 0] & ~right.iloc[:, 1]).sum())
        only_other = int((~right.iloc[:, 0] & right.iloc[:, 1]).sum())
        assert (test["only_model_right"], test["only_other_right"]) == (only_model, only_other)
    assert len(metrics["mcnemar_exact"]) == 2 * len(board) - 3  # next above, and the best
    check_holm_and_paired_differences(metrics["mcnemar_exact"], predictions)
    ensemble = metrics["models"]["ensemble"]["params"]
    by_selection = board[board.model != "ensemble"].sort_values(
        ["selection_accuracy", "model"], ascending=[False, True]
    )  # ties on selection accuracy go by name
    assert sorted(ensemble["members"]) == sorted(by_selection.model.head(3))
    assert sum(ensemble["weights"]) == pytest.approx(1)
    chosen = metrics["chosen_model"]
    assert board.set_index("model").selection_accuracy[chosen] == board.selection_accuracy.max()
    assert f"chosen: {chosen} (best selection accuracy" in printed
    assert (report_dir / "model_card.md").read_text().startswith(f"# Model card: {chosen}\n")
    assert metrics["seed"] == 7
    assert metrics["config"]["profile"] == "quick"
    assert metrics["data"]["file_sha256"] == {
        s.name: s.sha256 for s in FASHION_MNIST_FILES.values()
    }
    assert metrics["validation"]["class_counts"]["train"] == [6000] * 10
    assert metrics["validation"]["gates"]["checksums"].startswith("passed: the 4 files match")
    assert metrics["validation"]["gates"]["schema"].startswith("passed: 784 uint8 pixels")
    for model, record in metrics["models"].items():
        assert sum(map(sum, record["confusion_matrix"])) == 2000
        assert (workdir / record["model_dir"]).is_dir(), model
        (png,) = report_dir.glob(f"confusion_matrix_{model}.png")
        pixels = read_png(png)
        assert pixels.shape == (700, 800, 3), model  # 8 x 7 inches at 100 dpi
        # Drawn, not a blank canvas: the matrix inks about a fifth of it and its diagonal's
        # dark cells colour 7 %; axes, labels, colour bar and a single dark cell ink 6 %
        # and colour 2 %.
        assert inked(pixels) > 0.15, model
        assert coloured(pixels) > 0.05, model
    assert "## Most confused class pairs" in (report_dir / "report.md").read_text()

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["fashion-mnist-leaderboard"])
            ),
        )
    # Other tests' runs publish theirs on the same server: this run's flow run id ends
    # its report directory's name.
    (artifact,) = [a for a in artifacts if str(a.flow_run_id).startswith(report_dir.name[-8:])]
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert [row["model"] for row in table] == board.model.tolist()
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-cnn"])), limit=1
        )
    assert [(a.type, a.data) for a in progress] == [("progress", 100.0)]
    with get_client(sync_client=True) as client:
        task_runs = {run.id: run for run in client.read_task_runs(limit=200)}
    evaluations = [run for run in task_runs.values() if run.name.startswith("evaluate-")]
    assert {run.name for run in evaluations} >= {f"evaluate-{m}" for m in DEFAULT_MODELS}
    for run in evaluations:  # Prefect records which training each evaluation waited for
        upstream = {task_runs[i.id].name for i in run.task_inputs["wait_for"] if i.id in task_runs}
        assert upstream == {run.name.replace("evaluate-", "train-")}, run.task_inputs


@pytest.mark.slow
def test_html_report_renders_in_headless_chromium(quick_run):
    from playwright.sync_api import sync_playwright

    _, report_dir, _ = quick_run
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("no chromium on PATH: apt-get install chromium (.ci/run does)")
    page_file = report_dir / "report.html"
    board = pd.read_csv(report_dir / "leaderboard.csv")
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", (report_dir / "report.md").read_text())
    problems, requested = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_context(offline=True).new_page()  # readable with no network
        page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
        page.on("request", lambda request: requested.append(request.url))
        page.goto(page_file.as_uri(), wait_until="load")
        images = page.eval_on_selector_all(
            "img", "all => all.map(i => [i.complete, i.naturalWidth, i.width])"
        )
        leaderboard_rows = page.eval_on_selector(
            "table", "t => [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.innerText))"
        )
        headings = page.eval_on_selector_all("h2", "all => all.map(h => h.innerText)")
        browser.close()

    assert problems == []
    assert [url for url in requested if not url.startswith("data:")] == [page_file.as_uri()]
    assert len(images) == len(figures) >= 10
    assert all(complete for complete, _, _ in images)
    assert min(min(natural, shown) for _, natural, shown in images) > 300  # pixels wide
    assert [row[1] for row in leaderboard_rows] == board.model.tolist()
    assert [row[2] for row in leaderboard_rows] == [f"{a:.4f}" for a in board.test_accuracy]
    assert headings[:3] == ["Leaderboard", "Analysis", "Which differences are real"]

    with get_client(sync_client=True) as client:  # the server keeps other runs' summaries too
        summaries = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fashion-mnist-summary"])),
            sort=ArtifactSort.CREATED_DESC,
        )
    (summary,) = [s for s in summaries if s.data.startswith(f"# Run {report_dir.name}\n")]
    assert f"[report.html]({page_file.as_uri()})" in summary.data


def cache_entries(workdir: Path) -> dict[str, list[Path]]:
    models = workdir / "data" / "models"
    return (
        {m.name: sorted(m.iterdir()) for m in sorted(models.iterdir())} if models.is_dir() else {}
    )


@pytest.mark.slow
def test_unchanged_rerun_reuses_every_step(quick_run):
    workdir, first_report, _ = quick_run
    entries = cache_entries(workdir)
    with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):
        assert main(QUICK_ARGS) == 0
    second_report = (workdir / "reports" / "latest").resolve()
    assert second_report != first_report
    # Fit and predict times are measured once: equal floats mean nothing was redone.
    first = pd.read_csv(first_report / "leaderboard.csv")
    pd.testing.assert_frame_equal(pd.read_csv(second_report / "leaderboard.csv"), first)
    assert cache_entries(workdir) == entries


@pytest.mark.slow
def test_changed_hyperparameter_retrains_only_that_model(quick_run):
    workdir, first_report, _ = quick_run
    before = cache_entries(workdir)
    config = build_config(
        "quick",
        data={"dir": Path("fashion")},
        seed=7,
        params={"random_forest": {"n_estimators": 31}},
    )
    with contextlib.chdir(workdir):
        report_dir = full_pipeline(config)
        after = cache_entries(workdir)
    assert len(after["random_forest"]) == len(before["random_forest"]) + 1
    assert {name: entries for name, entries in after.items() if name != "random_forest"} == {
        name: entries for name, entries in before.items() if name != "random_forest"
    }
    first = pd.read_csv(first_report / "leaderboard.csv").set_index("model")
    second = pd.read_csv(workdir / report_dir / "leaderboard.csv").set_index("model")
    others = [m for m in first.index if m not in ("random_forest", "ensemble")]
    pd.testing.assert_series_equal(first.fit_seconds[others], second.fit_seconds[others])
    assert first.fit_seconds["random_forest"] != second.fit_seconds["random_forest"]


@pytest.mark.slow
def test_the_selection_split_chose_the_ensemble_and_the_report_says_what_each_split_decided(
    quick_run,
):
    workdir, report_dir, _ = quick_run
    metrics = json.loads((report_dir / "metrics.json").read_text())
    decided = {row["split"]: row for row in metrics["splits"]["decided"]}
    # The quick profile: 6,000 training images, 500 for validation and 500 for selection.
    assert {split: row["images"] for split, row in decided.items()} == {
        "train": 5000, "validation": 500, "selection": 500, "test": 2000,
    }  # fmt: skip
    # The quick profile's 3-minute budget: the CNN keeps its last epoch, XGBoost its rounds.
    assert "cnn's" not in decided["validation"]["decided"]
    assert "xgboost's early stopping" in decided["validation"]["decided"]
    assert "svm_rbf's temperature scaling" in decided["validation"]["decided"]
    assert "the ensemble's members and weights" not in decided["validation"]["decided"]
    assert decided["selection"]["decided"].startswith("the ensemble's members and weights (")
    assert decided["test"]["decided"].startswith("nothing")

    processed = Path(metrics["data"]["processed_dir"])
    processed = processed if processed.is_absolute() else workdir / processed
    held_out = {
        split: tuple(np.load(processed / f"{array}.npy") for array in SPLIT_ARRAYS[split])
        for split in HELD_OUT
    }
    gaps = {row["model"]: row for row in metrics["splits"]["held_out_gaps"]}
    selection_probabilities = {}
    for model, record in metrics["models"].items():
        if model == "ensemble":
            continue
        classifier = load_model(workdir / record["model_dir"], threads=2)
        for split, (images, labels) in held_out.items():
            probabilities = classifier.predict_proba(images)
            accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
            assert record[f"{split}_accuracy"] == pytest.approx(accuracy, abs=0.002), model
            assert gaps[model][f"{split}_gap"] == pytest.approx(
                100 * (record[f"{split}_accuracy"] - record["test_accuracy"]), abs=1e-6
            )
        selection_probabilities[model] = probabilities
    ensemble = metrics["models"]["ensemble"]["params"]
    weights = choose_weights(
        [selection_probabilities[m] for m in ensemble["members"]], held_out["selection"][1]
    )
    np.testing.assert_allclose(ensemble["weights"], weights, atol=0.01)
    report = (report_dir / "report.md").read_text()
    section = report.split("## Which split decided what")[1].split("\n## ")[0]
    assert "| selection | 500 | the ensemble's members and weights (" in section
    assert "The ensemble scores" in section


def test_the_report_names_the_cpu_and_the_cores_the_run_could_use(quick_run):
    _, report_dir, _ = quick_run
    machine = json.loads((report_dir / "metrics.json").read_text())["machine"]
    assert (machine["usable_cores"], machine["host_cpus"]) == (usable_cores(), os.cpu_count())
    assert machine["cpu"] == cpu_model()
    summary = f"{cpu_model()}, {usable_cores()} of {os.cpu_count()} cores usable"
    assert machine["summary"].startswith(summary)
    assert f"**Machine:** {machine['summary']}." in (report_dir / "report.md").read_text()


def test_the_selection_benchmark_rebuilds_the_runs_ensemble_from_the_cache(quick_run):
    workdir, report_dir, _ = quick_run
    table = ensembles_by_chooser(report_dir, workdir).set_index("chosen on")
    assert table.images.to_dict() == {
        "validation": 500, "selection": 500, "validation+selection": 1000,
    }  # fmt: skip
    metrics = json.loads((report_dir / "metrics.json").read_text())
    ensemble = metrics["models"]["ensemble"]
    members, weights = ensemble["params"]["members"], ensemble["params"]["weights"]
    assert table.loc["selection", "members (weights)"] == ", ".join(
        f"{m} {w:.3f}" for m, w in zip(members, weights, strict=True)
    )
    # The run stores the mix in float32: a near tie may fall the other way (2 of 2,000 images).
    assert table.loc["selection", "test_accuracy"] == pytest.approx(
        ensemble["test_accuracy"], abs=0.001
    )
    assert table.loc["selection", "accuracy there"] == pytest.approx(
        ensemble["selection_accuracy"], abs=0.004
    )


def test_tuning_searches_on_validation_and_saves_a_profile_later_runs_use(quick_run):
    workdir, _, _ = quick_run
    models = ["logistic_regression", "xgboost"]  # the CNN's trials: tests/test_tune.py
    args = [*QUICK_ARGS, "--models", ",".join(models), "--task-runner", "processes"]
    # 36 s of trials a model: its defaults' trial and at least one more, even while the
    # other test worker trains on the same two cores.
    tuning = ["--tune", "--tune-budget", "0.6", "--save-profile", "profiles/tuned.json"]
    with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, *tuning]) == 0
    report_dir = (workdir / "reports" / "latest").resolve()
    metrics = json.loads((report_dir / "metrics.json").read_text())
    summaries = {summary["model"]: summary for summary in metrics["tuning"]}
    assert sorted(summaries) == sorted(models)
    defaults = build_config("quick").params
    trial_runs = 0
    for model, summary in summaries.items():
        trials = pd.read_csv(report_dir / "tuning" / f"{model}-trials.csv")
        assert len(trials) == summary["trials"] >= 2
        trial_runs += len(trials)
        first = trials.iloc[0]  # the defaults, scored like every other trial
        for name, value in summary["best_params"].items():
            assert first[f"params_{name}"] == getattr(getattr(defaults, model), name)
            # The models in the report were trained with the best parameters.
            assert metrics["models"][model]["params"][name] == value
        assert summary["default_accuracy"] == first.value
        assert summary["best_accuracy"] == trials.value.max() >= summary["default_accuracy"]
        assert summary["train_images"] == 5000  # the quick profile's whole training split
    report = (report_dir / "report.md").read_text()
    assert "## Tuning" in report
    assert "| xgboost |" in report.split("## Tuning")[1]
    saved = json.loads((workdir / "profiles" / "tuned.json").read_text())
    assert saved == json.loads((report_dir / "tuned-profile.json").read_text())
    assert saved == {"params": {m: s["best_params"] for m, s in summaries.items()}}
    # A rerun resumes the search: each model's budget is used, so no trial is left to run.
    with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, *tuning]) == 0
    rerun = json.loads(((workdir / "reports" / "latest").resolve() / "metrics.json").read_text())
    assert rerun["run_id"] != metrics["run_id"]
    assert rerun["tuning"] == metrics["tuning"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="tune-")), limit=200
        )
    assert len({run.id for run in runs}) >= trial_runs  # every trial went through Prefect

    # A scheduled run with the saved profile trains the tuned models without searching:
    # it reuses the very models the tuning run trained.
    entries = cache_entries(workdir)
    with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--profile-file", "profiles/tuned.json"]) == 0
    assert cache_entries(workdir) == entries
    rerun = (workdir / "reports" / "latest").resolve()
    assert "## Tuning" not in (rerun / "report.md").read_text()
    pd.testing.assert_frame_equal(
        pd.read_csv(report_dir / "leaderboard.csv"), pd.read_csv(rerun / "leaderboard.csv")
    )


@pytest.mark.slow
def test_dask_cluster_gives_the_threaded_leaderboard(quick_run, tmp_path):
    _, threaded_report, _ = quick_run
    deterministic = ["logistic_regression", "random_forest", "svm_rbf", "xgboost"]
    shutil.copytree(REAL_DATA_DIR, tmp_path / "fashion")
    args = [*QUICK_ARGS, "--task-runner", "dask", "--models", ",".join(deterministic)]
    with contextlib.chdir(tmp_path), contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0  # a fresh cache: every model trains on the Dask workers
    dask_board = pd.read_csv(tmp_path / "reports" / "latest" / "leaderboard.csv")
    dask_board = dask_board[dask_board.model.isin(deterministic)]
    threaded = pd.read_csv(threaded_report / "leaderboard.csv")
    threaded = threaded[threaded.model.isin(deterministic)]
    columns = ["model", "test_accuracy", "macro_f1", "validation_accuracy"]
    pd.testing.assert_frame_equal(
        dask_board[columns].reset_index(drop=True), threaded[columns].reset_index(drop=True)
    )
    assert sorted(p.name for p in (tmp_path / "data" / "models").iterdir()) == sorted(deterministic)


@pytest.mark.slow
def test_killed_run_resumes_without_retraining(tmp_path, prefect_harness):
    shutil.copytree(REAL_DATA_DIR, tmp_path / "fashion")
    args = [*QUICK_ARGS, "--models", "cnn,random_forest,logistic_regression"]
    run = subprocess.Popen(
        [sys.executable, "-m", "flows.full_pipeline", *args],
        cwd=tmp_path,
        # The test server, not a temporary one of its own: tests/test_worker_api.py runs those.
        env=os.environ | {"PYTHONPATH": str(REPO), "PREFECT_API_URL": PREFECT_API_URL.value()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the kill reaches every process of the run
    )

    def a_model_finished() -> list[Path]:
        assert run.poll() is None, "the run ended before any model finished"
        return [  # published entries: a staging directory has its manifest too
            manifest
            for manifest in (tmp_path / "data" / "models").glob("*/*/manifest.json")
            if not manifest.parent.name.startswith(".")
        ]

    try:
        # Without a finished model the resume below would prove nothing.
        finished = wait_until(a_model_finished, 180, "a model to finish before the kill")
        os.killpg(run.pid, signal.SIGKILL)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    done_before_kill = {p.parent for p in finished}
    assert "cnn" not in {entry.parent.name for entry in done_before_kill}
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())
    stamps = {entry: entry.stat().st_mtime_ns for entry in done_before_kill}

    with contextlib.chdir(tmp_path), contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    assert {entry: entry.stat().st_mtime_ns for entry in done_before_kill} == stamps
    board = pd.read_csv(tmp_path / "reports" / "latest" / "leaderboard.csv")
    trained = ["cnn", "logistic_regression", "random_forest"]
    assert sorted(board.model) == sorted([*trained, "ensemble"])
    assert sorted(p.name for p in (tmp_path / "data" / "models").iterdir()) == trained
