from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from tasks.core.contracts import CLASS_NAMES, LearningCurve
from tasks.evaluation.report.analysis import (
    class_difficulty,
    confused_pairs,
    leaderboard,
    learning_curves,
    misclassified_examples,
    pareto_front,
)
from tasks.evaluation.report.artifacts import summary_markdown
from tasks.evaluation.report.splits import (
    chosen_model,
    describe_gaps,
    held_out_gaps,
    split_roles,
)
from tasks.evaluation.report.writer import write_report
from tests.support.samples import TEST_INDEX, Y_TEST, evaluation, sample_evaluations, sample_split


@pytest.fixture
def data(tmp_path):
    return sample_split(tmp_path)


@pytest.fixture
def evaluations(tmp_path):
    return sample_evaluations(tmp_path)


def test_leaderboard_ranks_by_accuracy(evaluations):
    intervals = pd.DataFrame(
        {"accuracy_low": [0.8, 0.9, 0.7], "accuracy_high": [0.9, 1.0, 0.8]},
        index=["shirtless", "perfect", "mixed"],
    )
    board = leaderboard(evaluations, intervals)
    assert board.model.tolist() == ["perfect", "shirtless", "mixed"]
    assert board["rank"].tolist() == [1, 2, 3]
    assert board.test_accuracy.tolist() == pytest.approx([1.0, 0.9, 0.85])
    assert board.columns.tolist() == [
        "rank", "model", "test_accuracy", "accuracy_low", "accuracy_high", "macro_f1", "log_loss",
        "calibration_error", "validation_accuracy", "selection_accuracy", "fit_seconds",
        "predict_seconds", "predict_ms_per_1000", "model_size_mb",
    ]  # fmt: skip
    assert board.accuracy_low.tolist() == [0.9, 0.8, 0.7]


def test_confused_pairs_sum_both_directions_over_models(evaluations):
    pairs = confused_pairs(evaluations, CLASS_NAMES)
    top = pairs.iloc[0]
    assert (top.class_a, top.class_b) == ("T-shirt/top", "Shirt")
    assert (top.a_as_b, top.b_as_a, top.total) == (3, 20, 23)
    assert (pairs.iloc[1].class_a, pairs.iloc[1].class_b, pairs.iloc[1].total) == (
        "Pullover",
        "Coat",
        2,
    )


def test_hardest_class_is_shirt(evaluations):
    difficulty = class_difficulty(evaluations, CLASS_NAMES)
    assert difficulty.index[0] == "Shirt"
    assert difficulty.iloc[0].mean_recall == pytest.approx(1 / 3)
    assert difficulty.iloc[0].best_model == "perfect"


def test_report_directory_is_complete_and_consistent(tmp_path, evaluations, data):
    report = write_report(
        evaluations=evaluations,
        data=data,
        report_dir=tmp_path / "reports" / "run-1",
        context={"seed": 5},
        seed=5,
    )
    out = report.directory
    assert report.findings.leaderboard.model.tolist() == ["perfect", "shirtless", "mixed"]
    assert out == tmp_path / "reports" / "run-1"
    assert (tmp_path / "reports" / "latest").resolve() == out.resolve()
    assert out.stat().st_mode & 0o777 == 0o755
    expected = {"leaderboard.csv", "metrics.json", "test_predictions.csv", "report.md"}
    expected |= {"report.html", "model_card.md"}
    expected |= {"test_probabilities.npz", "pareto_fit_time.png", "pareto_latency.png"}
    expected |= {"f1_by_class.png", "confusion_matrices_normalised.png"}
    expected |= {f"confusion_matrix_{e.name}.png" for e in evaluations}
    assert {p.name for p in out.iterdir()} == expected
    for e in evaluations:
        assert (out / f"confusion_matrix_{e.name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with np.load(out / "test_probabilities.npz") as probabilities:
        assert sorted(probabilities.files) == ["mixed", "perfect", "shirtless"]
        for e in evaluations:
            np.testing.assert_array_equal(probabilities[e.name], e.test_probabilities.load())
    predictions = pd.read_csv(out / "test_predictions.csv")
    assert predictions.columns.tolist() == ["index", "true_label", "perfect", "shirtless", "mixed"]
    assert predictions["index"].tolist() == TEST_INDEX.tolist()
    board = pd.read_csv(out / "leaderboard.csv")
    for row in board.itertuples():
        recomputed = (predictions[row.model] == predictions.true_label).mean()
        assert row.test_accuracy == pytest.approx(recomputed)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 5
    assert metrics["models"]["shirtless"]["per_class"]["Shirt"]["recall"] == 0.0
    assert metrics["models"]["mixed"]["confusion_matrix"][6][0] == 10
    assert "scikit-learn" in metrics["packages"]
    report = (out / "report.md").read_text()
    assert "**Shirt** is the hardest class" in report
    assert "**T-shirt/top / Shirt**: 23 test images" in report
    assert "![perfect confusion matrix](confusion_matrix_perfect.png)" in report
    # Equal costs: only the most accurate model is on either front.
    assert "Against fit time (s), the front is: perfect." in report
    figures = ["pareto_fit_time.png", "pareto_latency.png", "f1_by_class.png"]
    for figure in [*figures, "confusion_matrices_normalised.png"]:
        assert f"]({figure})" in report
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.index("| 1 | perfect |") < report.index("| 3 | mixed |")
    page = (out / "report.html").read_text()
    figure_links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert len(figure_links) == 7
    assert page.count('<img src="data:image/png;base64,') == len(figure_links)
    assert "<td>perfect</td>" in page


def test_failed_write_leaves_no_report_and_keeps_latest(tmp_path, evaluations, data):
    reports = tmp_path / "reports"
    first = write_report(
        evaluations=evaluations, data=data, report_dir=reports / "run-1", context={}, seed=0
    ).directory
    broken = evaluations[0]
    broken.test_predictions.path.write_bytes(b"changed")  # its hash no longer matches
    with pytest.raises(RuntimeError, match=r"content hash"):
        write_report(
            evaluations=evaluations, data=data, report_dir=reports / "run-2", context={}, seed=0
        )
    assert sorted(p.name for p in reports.iterdir()) == ["latest", "run-1"]
    assert (reports / "latest").resolve() == first.resolve()


def test_existing_run_is_never_overwritten(tmp_path, evaluations, data):
    run = tmp_path / "run-1"
    write_report(evaluations=evaluations, data=data, report_dir=run, context={}, seed=0)
    with pytest.raises(FileExistsError, match=r"run-1: already exists"):
        write_report(evaluations=evaluations, data=data, report_dir=run, context={}, seed=0)


def test_report_says_which_differences_are_significant(tmp_path, evaluations, data):
    out = write_report(
        evaluations=evaluations, data=data, report_dir=tmp_path / "run-1", context={}, seed=1
    )
    board = pd.read_csv(out.directory / "leaderboard.csv")
    assert (board.accuracy_low <= board.test_accuracy).all()
    assert (board.test_accuracy <= board.accuracy_high).all()
    assert board.loc[
        board.model == "perfect", ["accuracy_low", "accuracy_high"]
    ].values.tolist() == [[1.0, 1.0]]
    metrics = json.loads((out.directory / "metrics.json").read_text())
    tests = {(t["model"], t["compared_to"]): t for t in metrics["mcnemar_exact"]}
    # 10 Shirts only `perfect` gets right: p = 2 * 0.5**10.
    assert tests["shirtless", "perfect"]["p_value"] == pytest.approx(2 * 0.5**10)
    assert tests["shirtless", "perfect"]["significant"] is True
    # 3 T-shirts and 2 Coats separate `mixed` from `shirtless`: p = 2 * 0.5**5.
    assert tests["mixed", "shirtless"]["p_value"] == pytest.approx(2 * 0.5**5)
    assert tests["mixed", "shirtless"]["significant"] is False
    report = (out.directory / "report.md").read_text()
    rows = metrics["mcnemar_exact"]
    holm = multipletests([t["p_value"] for t in rows], method="holm")[1]
    assert [t["p_holm"] for t in rows] == pytest.approx(holm.tolist())
    assert [t["significant"] for t in rows] == (holm < 0.05).tolist()
    shirtless = tests["shirtless", "perfect"]
    n = len(data.load("y_test")[0])
    assert shirtless["difference"] == pytest.approx(100 * 10 / n)  # the 10 Shirts
    assert shirtless["difference_low"] <= shirtless["difference"] <= shirtless["difference_high"]
    sentence = (
        f"perfect is significantly more accurate than shirtless ({shirtless['difference']:+.2f} "
        f"points for perfect (95% CI [{shirtless['difference_low']:+.2f}, "
        f"{shirtless['difference_high']:+.2f}]); McNemar exact p = 0.00195, Holm-adjusted over "
        f"{len(rows)} tests p = {shirtless['p_holm']:.3g};"
    )
    assert sentence in report
    assert "shirtless and mixed are statistically tied at the 5% level" in report
    assert "Holm-adjusted for the family (`p_holm`)" in report


def test_pareto_front_keeps_the_models_nothing_beats_on_both_counts():
    board = pd.DataFrame(
        {
            "model": ["slow_best", "fast_good", "slow_worse", "fast_tied", "cheapest"],
            "test_accuracy": [0.93, 0.90, 0.89, 0.90, 0.84],
            "fit_seconds": [500.0, 60.0, 300.0, 60.0, 15.0],
        }
    )
    front = pareto_front(board, "fit_seconds")
    # slow_worse loses to fast_good on both; the two identical models both stay.
    assert board.model[front].tolist() == ["slow_best", "fast_good", "fast_tied", "cheapest"]


def test_learning_curves_come_from_the_trained_models(tmp_path, evaluations, data):
    boosted, trained_in_epochs, untracked = evaluations
    rounds = LearningCurve("boosting round", [0.3, 0.2, 0.1], [0.35, 0.3, 0.32])
    epochs = LearningCurve("epoch", [0.3, 0.1], [0.25, 0.2])
    evaluations = [
        replace(boosted, curve=rounds),
        replace(trained_in_epochs, curve=epochs),
        untracked,
    ]

    assert learning_curves(evaluations) == {"mixed": rounds, "perfect": epochs}

    out = write_report(
        evaluations=evaluations, data=data, report_dir=tmp_path / "r" / "run-1", context={}, seed=0
    )
    assert (out.directory / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out.directory / "report.md").read_text()
    assert "Training and validation error of mixed, perfect per step" in report


def test_best_models_confident_mistakes_and_each_models_strengths(tmp_path, evaluations, data):
    mixed, _, shirtless = evaluations  # the best of these two is `shirtless`
    mistakes = misclassified_examples(
        confusion=shirtless.confusion,
        predicted=shirtless.test_predictions.load(),
        probabilities=shirtless.test_probabilities.load(),
        y_test=Y_TEST,
        class_names=CLASS_NAMES,
    )
    # Its only confusion: all 10 Shirts (positions 60-69) taken for T-shirts.
    assert set(mistakes.position) == set(range(60, 66))  # 6 per pair at most
    assert set(zip(mistakes.true, mistakes.predicted, strict=True)) == {("Shirt", "T-shirt/top")}

    out = write_report(
        evaluations=[mixed, shirtless], data=data, report_dir=tmp_path / "run-1", context={}, seed=0
    ).directory
    assert (out / "misclassified_chosen_model.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Mistakes of shirtless" in report
    assert "**shirtless** is strongest on " in report
    assert "and weakest on Shirt (0.00)" in report
    # mixed and shirtless differ on 3 T-shirts and 2 Coats: 5 of 100 images.
    assert "The 2 models disagree on 5.0% of the test images" in report


def test_lead_of_the_best_model_is_its_gap_or_a_tie(tmp_path, evaluations, data):
    out = write_report(
        evaluations=evaluations, data=data, report_dir=tmp_path / "run-1", context={}, seed=1
    )
    assert "It is 10.00 points ahead of shirtless (0.9000)" in out.findings.analysis[1]
    twin = evaluation("twin", Y_TEST.copy(), tmp_path)
    tied = write_report(
        evaluations=[*evaluations, twin],
        data=data,
        report_dir=tmp_path / "run-2",
        context={},
        seed=1,
    )
    assert tied.findings.analysis[1].startswith("It ties with twin, which ranks second (1.0000)")


def test_a_data_warning_opens_the_report_and_the_summary(tmp_path, evaluations, data):
    warning = "named and shaped like Fashion-MNIST, but 1 image of x.gz differs"
    out = write_report(evaluations=evaluations, data=data, report_dir=tmp_path / "run-1",
                       context={"validation": {"warning": warning}}, seed=0)  # fmt: skip
    report = (out.directory / "report.md").read_text()
    assert f"**Warning:** {warning}." in report.split("## Leaderboard")[0]
    assert f"**Warning:** {warning}." in summary_markdown(out.findings, out.directory)
    assert f"{warning}." in (out.directory / "report.html").read_text()


def test_the_chosen_model_has_the_best_selection_accuracy_whatever_its_test_accuracy(
    tmp_path,
):
    def scored(name, selection, validation, test_mistakes):
        predicted = Y_TEST.copy()
        predicted[:test_mistakes] = (predicted[:test_mistakes] + 1) % 10
        return replace(evaluation(name, predicted, tmp_path), selection_accuracy=selection,
                       validation_accuracy=validation)  # fmt: skip

    best_on_test = scored("cnn", 0.93, 0.95, 0)
    svm = scored("svm_rbf", 0.94, 0.90, 5)
    assert chosen_model([best_on_test, svm]) == "svm_rbf"
    # A tie goes to the ensemble, whose weights are the split's own choice, then to the
    # better validation accuracy, then to the name.
    ensemble = scored("ensemble", 0.94, 0.91, 8)
    assert chosen_model([best_on_test, svm, ensemble]) == "ensemble"
    assert chosen_model([scored("xgboost", 0.94, 0.92, 9), svm]) == "xgboost"
    assert chosen_model([scored("a_twin", 0.94, 0.90, 9), svm]) == "a_twin"


def test_held_out_gaps_are_in_points_and_say_what_the_validation_split_adds():
    board = pd.DataFrame({
        "model": ["ensemble", "cnn", "logistic_regression", "svm_rbf"],
        "validation_accuracy": [0.95, 0.93, 0.85, 0.80],
        "selection_accuracy": [0.96, 0.91, 0.85, 0.79],
        "test_accuracy": [0.94, 0.90, 0.84, 0.78],
    })  # fmt: skip
    gaps = held_out_gaps(board)
    assert gaps.validation_gap.tolist() == pytest.approx([1.0, 3.0, 1.0, 2.0])
    assert gaps.selection_gap.tolist() == pytest.approx([2.0, 1.0, 1.0, 1.0])
    roles = pd.DataFrame({"split": ["validation", "selection"], "images": [500, 2000]})
    means, added, chance, ensemble = describe_gaps(gaps, roles)
    assert means == (
        "On average over the 3 models, the validation accuracy is 2.00 points above the test "
        "accuracy, and the selection accuracy 1.00 points above it."
    )
    # cnn and svm_rbf read the validation split (early stopping, temperature scaling).
    assert added.endswith(
        "the validation split (cnn, svm_rbf), what it adds is their validation accuracy "
        "minus their selection accuracy: +1.50 points on average."
    )
    # Mean test accuracy 0.84: sqrt(0.84 * 0.16 / n) is 1.64 points at 500, 0.82 at 2,000.
    assert chance == (
        "At an accuracy near 0.84, one standard error is 1.6 points on the 500 validation "
        "images and 0.8 on the 2000 selection images: a smaller gap is chance."
    )
    assert ensemble == (
        "The ensemble scores 0.9600 on the selection split that chose its members and "
        "weights and 0.9400 on the test set (2.00 points above its test accuracy)."
    )
    # Under a time budget the CNN keeps its last epoch: the validation split decided
    # nothing in its training, and the bias is the SVM's alone.
    _, added, _, _ = describe_gaps(gaps, roles, budgeted=True)
    assert added.endswith(
        "the validation split (svm_rbf), what it adds is their validation accuracy minus "
        "their selection accuracy: +1.00 points on average."
    )


def test_the_report_says_what_the_validation_split_decided_with_a_budget_and_without(tmp_path):
    evaluations = [evaluation(name, Y_TEST, tmp_path) for name in ("cnn", "svm_rbf")]
    images = {"train": 5000, "validation": 500, "selection": 500, "test": 2000}
    unbudgeted, budgeted = (
        split_roles(images, evaluations, [], "cnn", budgeted=b).set_index("split").decided
        for b in (False, True)
    )
    assert unbudgeted["validation"] == (
        "cnn's early stopping: the epoch whose weights are kept; svm_rbf's temperature "
        "scaling: its soft pairwise votes turned into probabilities"
    )
    assert budgeted["validation"] == (
        "svm_rbf's temperature scaling: its soft pairwise votes turned into probabilities"
    )
