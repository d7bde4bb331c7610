"""Comparison: rank the models and write the run's report directory.

Everything is written into a hidden staging directory and renamed to
`<output_dir>/<run_id>` only when complete; `<output_dir>/latest` then points at it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.config import PipelineConfig
from tasks.contracts import (
    CLASS_NAMES,
    LearningCurve,
    ModelEvaluation,
    ProcessedDataset,
    RawDataset,
    TuningSummary,
    ValidationSummary,
)
from tasks.figures import (
    plot_confusion_grid,
    plot_f1_heatmap,
    plot_learning_curves,
    plot_misclassified,
    plot_pareto,
)
from tasks.report_html import render_html
from tasks.significance import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    bootstrap_accuracy_intervals,
    describe_comparisons,
    rank_comparisons,
)
from tasks.storage import write_new_directory
from tasks.tune import profile_text

LEADERBOARD_COLUMNS = [
    "rank", "model", "test_accuracy", "accuracy_low", "accuracy_high", "macro_f1", "log_loss",
    "calibration_error", "validation_accuracy", "fit_seconds", "predict_seconds",
    "predict_ms_per_1000", "model_size_mb",
]  # fmt: skip
# What the command line prints: the ranking and its uncertainty, and the time it cost.
CONSOLE_COLUMNS = [
    "rank", "model", "test_accuracy", "accuracy_low", "accuracy_high", "macro_f1",
    "fit_seconds", "predict_seconds",
]  # fmt: skip
EVALUATION_COLUMNS = [c for c in LEADERBOARD_COLUMNS if c not in ("rank", "accuracy_low",
                                                                 "accuracy_high")]  # fmt: skip
PACKAGES = ("prefect", "scikit-learn", "xgboost", "tensorflow", "keras", "numpy", "pandas",
            "pandera", "matplotlib")  # fmt: skip
TOP_PAIRS = 5
GALLERY_PAIRS = 3
GALLERY_PER_PAIR = 6
GALLERY_FILE = "misclassified_best_model.png"
CONFUSION_GRID_FILE = "confusion_matrices_normalised.png"
LEARNING_CURVES_FILE = "learning_curves.png"
F1_HEATMAP_FILE = "f1_by_class.png"
TUNING_DIR = "tuning"
TUNED_PROFILE_FILE = "tuned-profile.json"


def leaderboard(evaluations: list[ModelEvaluation], intervals: pd.DataFrame) -> pd.DataFrame:
    """One row per model, ranked by test accuracy (macro-F1 breaks ties).

    Args:
        intervals: `accuracy_low` and `accuracy_high` per model (the index).
    """
    frame = pd.DataFrame(
        [{column: getattr(e, column) for column in EVALUATION_COLUMNS if column != "model"}
         | {"model": e.name} for e in evaluations]
    )  # fmt: skip
    frame = frame.join(intervals, on="model")
    frame = frame.sort_values(["test_accuracy", "macro_f1"], ascending=False, ignore_index=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame[LEADERBOARD_COLUMNS]


# Costs the accuracy is weighed against: (leaderboard column, label, figure file).
PARETO_COSTS = (
    ("fit_seconds", "fit time (s)", "pareto_fit_time.png"),
    ("predict_ms_per_1000", "prediction time per 1,000 images (ms)", "pareto_latency.png"),
)


def pareto_front(board: pd.DataFrame, cost: str) -> pd.Series:
    """Whether each model is on the accuracy/cost front: no other model is at least as
    accurate and at most as costly, and strictly better in one of the two."""
    accuracy, price = board.test_accuracy.to_numpy(), board[cost].to_numpy()
    at_least_as_good = (accuracy[None, :] >= accuracy[:, None]) & (price[None, :] <= price[:, None])
    strictly_better = (accuracy[None, :] > accuracy[:, None]) | (price[None, :] < price[:, None])
    dominated = (at_least_as_good & strictly_better).any(axis=1)
    return pd.Series(~dominated, index=board.index)


def f1_by_class(evaluations: list[ModelEvaluation], models: list[str]) -> pd.DataFrame:
    """Per-class test F1, one row per model in `models` order, one column per class."""
    by_name = {e.name: e.f1 for e in evaluations}
    return pd.DataFrame([by_name[m] for m in models], index=models, columns=list(CLASS_NAMES))


def learning_curves(evaluations: list[ModelEvaluation]) -> dict[str, LearningCurve]:
    """The learning curves of the models whose training recorded one (XGBoost, CNN)."""
    return {e.name: e.curve for e in evaluations if e.curve}


def misclassified_examples(
    confusion: list[list[int]], predicted: np.ndarray, probabilities: np.ndarray,
    y_test: np.ndarray, pairs: int = GALLERY_PAIRS, per_pair: int = GALLERY_PER_PAIR,
) -> pd.DataFrame:  # fmt: skip
    """A model's most confident mistakes on its `pairs` most frequent (true, predicted)
    confusions: one row per test image, by position in the test arrays."""
    errors = np.asarray(confusion) * (1 - np.eye(len(CLASS_NAMES), dtype=int))
    most_frequent = np.argsort(errors, axis=None, kind="stable")[::-1][:pairs]
    confidence = probabilities.max(axis=1)
    rows = []
    for true, wrong in zip(*np.unravel_index(most_frequent, errors.shape), strict=True):
        if errors[true, wrong] == 0:
            break
        positions = np.flatnonzero((y_test == true) & (predicted == wrong))
        for position in positions[np.argsort(-confidence[positions], kind="stable")][:per_pair]:
            rows.append(
                {"position": int(position), "true": CLASS_NAMES[true],
                 "predicted": CLASS_NAMES[wrong], "confidence": float(confidence[position])}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=["position", "true", "predicted", "confidence"])


def strengths_and_limitations(
    f1: pd.DataFrame, predicted: dict[str, np.ndarray], y_test: np.ndarray
) -> list[str]:
    """Per model, the classes it handles best and worst; then where the models disagree.

    Args:
        f1: per-class F1, one row per model (`f1_by_class`).
        predicted: each model's test predictions.
    """
    sentences = []
    for model, scores in f1.iterrows():
        ordered = scores.sort_values()
        best = ", ".join(f"{name} ({value:.2f})" for name, value in ordered[::-1][:2].items())
        worst = ", ".join(f"{name} ({value:.2f})" for name, value in ordered[:2].items())
        sentences.append(f"**{model}** is strongest on {best} and weakest on {worst} (F1).")
    predictions = np.stack(list(predicted.values()))
    disagree = (predictions != predictions[0]).any(axis=0)
    by_class = pd.Series(
        [disagree[y_test == c].mean() for c in range(len(CLASS_NAMES))], index=list(CLASS_NAMES)
    ).sort_values(ascending=False)
    all_wrong = (predictions != y_test).all(axis=0)
    sentences.append(
        f"The {len(predicted)} models disagree on {disagree.mean():.1%} of the test images, "
        f"most on {by_class.index[0]} ({by_class.iloc[0]:.1%} of them) and "
        f"{by_class.index[1]} ({by_class.iloc[1]:.1%}); {all_wrong.sum()} images "
        f"({all_wrong.mean():.1%}) fool every model."
    )
    return sentences


def confused_pairs(evaluations: list[ModelEvaluation], top: int = TOP_PAIRS) -> pd.DataFrame:
    """Class pairs most often confused, in either direction, summed over all models."""
    total = np.sum([np.asarray(e.confusion) for e in evaluations], axis=0)
    rows = [
        {
            "class_a": CLASS_NAMES[a],
            "class_b": CLASS_NAMES[b],
            "a_as_b": int(total[a, b]),
            "b_as_a": int(total[b, a]),
            "total": int(total[a, b] + total[b, a]),
        }
        for a, b in combinations(range(len(CLASS_NAMES)), 2)
    ]
    frame = pd.DataFrame(rows).sort_values("total", ascending=False, ignore_index=True)
    return frame.head(top)


def class_difficulty(evaluations: list[ModelEvaluation]) -> pd.DataFrame:
    """Per class: recall and F1 averaged over models, and the models that do best and worst."""
    recall = pd.DataFrame({e.name: e.recall for e in evaluations}, index=list(CLASS_NAMES))
    f1 = pd.DataFrame({e.name: e.f1 for e in evaluations}, index=list(CLASS_NAMES))
    return (
        pd.DataFrame(
            {
                "mean_recall": recall.mean(axis=1),
                "mean_f1": f1.mean(axis=1),
                "best_model": recall.idxmax(axis=1),
                "best_recall": recall.max(axis=1),
                "worst_model": recall.idxmin(axis=1),
                "worst_recall": recall.min(axis=1),
            }
        )
        .rename_axis("class")
        .sort_values("mean_recall")
    )


def write_analysis(
    board: pd.DataFrame, comparisons: pd.DataFrame, pairs: pd.DataFrame, difficulty: pd.DataFrame
) -> list[str]:
    """Plain-language findings, each sentence computed from the numbers above it."""
    best = board.iloc[0]
    findings = [
        f"**{best.model}** ranks first with test accuracy {best.test_accuracy:.4f} "
        f"(95% CI [{best.accuracy_low:.4f}, {best.accuracy_high:.4f}]; macro-F1 "
        f"{best.macro_f1:.4f}; validation accuracy {best.validation_accuracy:.4f})."
    ]
    if len(board) > 1:
        runner_up = board.iloc[1]
        gap = 100 * (best.test_accuracy - runner_up.test_accuracy)
        lead = (
            f"It is {gap:.2f} points ahead of {runner_up.model}"
            if gap > 0
            else f"It ties with {runner_up.model}, which ranks second"
        )
        findings.append(
            f"{lead} ({runner_up.test_accuracy:.4f}); "
            f"the last, {board.iloc[-1].model}, reaches {board.iloc[-1].test_accuracy:.4f}."
        )
        findings.append(describe_comparisons(comparisons)[0])
        fastest = board.loc[board.fit_seconds.idxmin()]
        findings.append(
            f"The cheapest to train is {fastest.model} ({fastest.fit_seconds:.0f} s, "
            f"accuracy {fastest.test_accuracy:.4f}); {best.model} took "
            f"{best.fit_seconds:.0f} s to fit and {best.predict_seconds:.1f} s to predict "
            "the test set."
        )
    hardest, easiest = difficulty.iloc[0], difficulty.iloc[-1]
    findings.append(
        f"**{hardest.name}** is the hardest class: mean recall {hardest.mean_recall:.3f} across "
        f"models, from {hardest.worst_recall:.3f} ({hardest.worst_model}) to "
        f"{hardest.best_recall:.3f} ({hardest.best_model}). {easiest.name} is the easiest "
        f"(mean recall {easiest.mean_recall:.3f})."
    )
    if pairs.total.iloc[0] > 0:
        top = pairs.iloc[0]
        findings.append(
            f"The pair most often confused is **{top.class_a} / {top.class_b}**: {top.total} test "
            f"images over all models ({top.a_as_b} {top.class_a} taken for {top.class_b}, "
            f"{top.b_as_a} the other way)."
        )
    return findings


COLUMN_FORMATS = {
    "fit_seconds": ".1f", "predict_seconds": ".2f", "predict_ms_per_1000": ".1f",
    "model_size_mb": ".2f",
}  # fmt: skip


def markdown_table(frame: pd.DataFrame, floats: str = ".4f") -> str:
    """Floats with `floats` digits, except times and sizes, which need fewer."""
    formats = [COLUMN_FORMATS.get(column, floats) for column in frame.columns]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(formats)]
    for row in frame.itertuples(index=False):
        cells = [
            format(value, spec) if isinstance(value, float) else str(value)
            for value, spec in zip(row, formats, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readable_leaderboard(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with each accuracy interval in one `[low, high]` column."""
    shown = board.drop(columns=["accuracy_low", "accuracy_high"])
    intervals = [f"[{r.accuracy_low:.4f}, {r.accuracy_high:.4f}]" for r in board.itertuples()]
    shown.insert(shown.columns.get_loc("test_accuracy") + 1, "95% CI", intervals)
    return shown


def tuning_table(tuning: list[TuningSummary]) -> pd.DataFrame:
    """One row per tuned model: its search, and the defaults' and best validation accuracy."""
    return pd.DataFrame(
        {
            "model": s.model,
            "trials": s.trials,
            "pruned": s.pruned,
            "minutes": f"{s.seconds / 60:.1f}",
            "default validation accuracy": s.default_accuracy,
            "best validation accuracy": s.best_accuracy,
            "gain": s.best_accuracy - s.default_accuracy,
            "best trial": s.best_trial,
            "best parameters": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in s.best_params.items()),
        }
        for s in tuning
    )  # fmt: skip


def render_markdown(
    run_id: str,
    board: pd.DataFrame,
    comparisons: pd.DataFrame,
    pairs: pd.DataFrame,
    difficulty: pd.DataFrame,
    findings: list[str],
    f1: pd.DataFrame,
    fronts: dict[str, pd.Series],
    test_images: int,
    models_with_curves: list[str],
    strengths: list[str],
    gallery_model: str | None,
    tuning: list[TuningSummary],
) -> str:
    """report.md; `fronts` maps each Pareto cost column to its `pareto_front` mask."""
    f1_table = f1.T.rename_axis("class").reset_index()
    front_sections = [
        f"Against {label}, the front is: {', '.join(board.model[fronts[cost]])}."
        f"\n\n![{label}]({figure_file})"
        for cost, label, figure_file in PARETO_COSTS
    ]
    sections = [
        f"# Fashion-MNIST model comparison — run `{run_id}`",
        f"{len(board)} models, ranked by accuracy on {test_images} held-out test images. "
        f"The 95% confidence intervals come from {BOOTSTRAP_RESAMPLES} paired bootstrap "
        "resamples of the test set.",
        "## Leaderboard",
        markdown_table(readable_leaderboard(board)),
        "## Analysis",
        "\n".join(f"- {finding}" for finding in findings),
        "## Which differences are real",
        "McNemar's exact test on the test images, for each model against the one ranked "
        f"just above it and against the best; significant means p < {ALPHA}.",
        "\n".join(f"- {sentence}" for sentence in describe_comparisons(comparisons)),
        markdown_table(comparisons, ".3g"),
        "## Cost and accuracy",
        "A model is on the Pareto front when no other model is at least as accurate and at "
        "most as costly. Bars are the 95% confidence intervals.",
        *front_sections,
        "## Strengths and limitations",
        "\n".join(f"- {sentence}" for sentence in strengths),
        "## Most confused class pairs (all models)",
        markdown_table(pairs),
        "## Hardest classes",
        markdown_table(difficulty.reset_index(), ".3f"),
        "## Per-class F1",
        f"![per-class F1]({F1_HEATMAP_FILE})",
        markdown_table(f1_table, ".3f"),
        "## Confusion matrices",
        "All models, each row scaled to its true class (the diagonal is recall):",
        f"![confusion matrices, row-normalised]({CONFUSION_GRID_FILE})",
        "Counts per model:",
        "\n\n".join(
            f"### {name}\n\n![{name} confusion matrix](confusion_matrix_{name}.png)"
            for name in board.model
        ),
    ]
    if gallery_model:
        sections += [
            f"## Mistakes of {gallery_model}",
            f"The test images {gallery_model} gets wrong with the most confidence, for each of "
            f"its {GALLERY_PAIRS} most frequent confusions (true class as predicted class, "
            "with the predicted class's probability).",
            f"![mistakes of {gallery_model}]({GALLERY_FILE})",
        ]
    if tuning:
        sections += [
            "## Tuning",
            "Each model's parameters were searched by Optuna (TPE sampler, median pruning of "
            f"XGBoost and CNN trials) before training. Trials fit on {tuning[0].train_images} "
            "training images, stratified by class, and are scored on the validation split "
            "only; trial 0 is the defaults. The models above were trained with the best "
            "parameters. Every trial is in "
            f"`{TUNING_DIR}/<model>-trials.csv`; the best parameters, as a profile file for "
            f"later runs, in `{TUNED_PROFILE_FILE}`.",
            markdown_table(tuning_table(tuning)),
        ]
    if models_with_curves:
        sections += [
            "## Learning curves",
            f"Training and validation error of {', '.join(models_with_curves)} per step; "
            "the dashed line marks the best validation error.",
            f"![learning curves]({LEARNING_CURVES_FILE})",
        ]
    return "\n\n".join(sections) + "\n"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def metrics_document(
    run_id: str,
    evaluations: list[ModelEvaluation],
    board: pd.DataFrame,
    comparisons: pd.DataFrame,
    context: dict,
) -> dict:
    ranked = board.set_index("model")
    models = {}
    for e in evaluations:
        record = asdict(e)
        per_class = {
            name: {metric: record[metric][i] for metric in ("precision", "recall", "f1", "support")}
            for i, name in enumerate(CLASS_NAMES)
        }
        models[e.name] = {
            "rank": int(ranked.loc[e.name, "rank"]),
            **{key: float(ranked.loc[e.name, key]) for key in LEADERBOARD_COLUMNS[2:]},
            "fit_cpu_seconds": e.fit_cpu_seconds,
            "predict_cpu_seconds": e.predict_cpu_seconds,
            "per_class": per_class,
            "confusion_matrix": e.confusion,
            "params": e.params,
            "model_dir": str(e.model_dir),
            "test_predictions_sha256": e.test_predictions.sha256,
        }
    return {
        "run_id": run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "class_names": list(CLASS_NAMES),
        **context,
        "packages": package_versions(),
        "models": models,
        "accuracy_interval": {"confidence": CONFIDENCE, "paired_bootstrap_resamples":
                              BOOTSTRAP_RESAMPLES},
        "mcnemar_exact": comparisons.to_dict(orient="records"),
    }  # fmt: skip


@dataclass(frozen=True)
class Report:
    directory: Path
    leaderboard: pd.DataFrame
    findings: list[str]


def write_report(
    evaluations: list[ModelEvaluation],
    y_test: np.ndarray,
    test_index: np.ndarray,
    output_dir: Path,
    run_id: str,
    context: dict,
    seed: int,
    test_images: np.ndarray,
    tuning: list[TuningSummary] = (),
) -> Report:
    """Write the complete report for a run and point `<output_dir>/latest` at it.

    Args:
        context: JSON-ready facts about the run (config, seed, data hashes, validation).
        seed: seed of the bootstrap resamples.
        test_images: the test images, scaled to [0, 1], for the gallery of mistakes.
        tuning: the tuning stage's searches, when it ran.
    """
    target = output_dir / run_id
    by_name = {e.name: e for e in evaluations}
    # Each stored array is read (and its hash checked) once.
    predicted = {e.name: e.test_predictions.load() for e in evaluations}
    probabilities = {e.name: e.test_probabilities.load() for e in evaluations}
    correct = {name: labels == y_test for name, labels in predicted.items()}
    board = leaderboard(evaluations, bootstrap_accuracy_intervals(correct, seed))
    ranked = list(board.model)
    comparisons = rank_comparisons(ranked, correct)
    fronts = {cost: pareto_front(board, cost) for cost, _, _ in PARETO_COSTS}
    f1 = f1_by_class(evaluations, ranked)
    pairs = confused_pairs(evaluations)
    difficulty = class_difficulty(evaluations)
    findings = write_analysis(board, comparisons, pairs, difficulty)
    curves = learning_curves(evaluations)
    best = ranked[0]
    mistakes = misclassified_examples(
        by_name[best].confusion, predicted[best], probabilities[best], y_test
    )
    strengths = strengths_and_limitations(f1, {name: predicted[name] for name in ranked}, y_test)

    def write(staging: Path) -> None:
        board.to_csv(staging / "leaderboard.csv", index=False, float_format="%.6f")
        predictions = pd.DataFrame({"index": test_index, "true_label": y_test})
        for name in ranked:
            predictions[name] = predicted[name]
        predictions.to_csv(staging / "test_predictions.csv", index=False)
        np.savez_compressed(
            staging / "test_probabilities.npz", **{name: probabilities[name] for name in ranked}
        )
        document = metrics_document(run_id, evaluations, board, comparisons, context)
        document["tuning"] = [asdict(summary) for summary in tuning]
        if tuning:
            (staging / TUNING_DIR).mkdir()
            for summary in tuning:
                trials_file = summary.trials_file
                shutil.copyfile(trials_file, staging / TUNING_DIR / trials_file.name)
            (staging / TUNED_PROFILE_FILE).write_text(profile_text(tuning))
        (staging / "metrics.json").write_text(json.dumps(document, indent=2, default=str))
        for e in evaluations:
            shutil.copyfile(e.confusion_figure, staging / f"confusion_matrix_{e.name}.png")
        for cost, label, figure_file in PARETO_COSTS:
            figure = plot_pareto(board, cost, label, fronts[cost])
            figure.savefig(staging / figure_file, dpi=100)
        plot_f1_heatmap(f1).savefig(staging / F1_HEATMAP_FILE, dpi=100)
        confusions = {name: by_name[name].confusion for name in ranked}
        grid = plot_confusion_grid(confusions, list(CLASS_NAMES))
        grid.savefig(staging / CONFUSION_GRID_FILE, dpi=100)
        if curves:
            plot_learning_curves(curves).savefig(staging / LEARNING_CURVES_FILE, dpi=100)
        if len(mistakes):
            captions = [
                f"{m.true} as\n{m.predicted} ({m.confidence:.0%})" for m in mistakes.itertuples()
            ]
            rows = -(-len(mistakes) // GALLERY_PER_PAIR)
            title = f"{best}: its most confident mistakes on its most frequent confusions"
            gallery = plot_misclassified(
                test_images[mistakes.position.to_numpy()], captions, rows, title
            )
            gallery.savefig(staging / GALLERY_FILE, dpi=100)
        markdown = render_markdown(
            run_id, board, comparisons, pairs, difficulty, findings, f1, fronts, len(y_test),
            sorted(curves), strengths, best if len(mistakes) else None, tuning,
        )  # fmt: skip
        (staging / "report.md").write_text(markdown)
        page = render_html(markdown, staging, f"Fashion-MNIST model comparison, run {run_id}")
        (staging / "report.html").write_text(page)

    write_new_directory(target, write)
    point_latest_at(target)
    return Report(target, board, findings)


def point_latest_at(report_dir: Path) -> None:
    """Swap `latest` to `report_dir` in one rename, so it never points at nothing."""
    latest = report_dir.parent / "latest"
    staging = report_dir.parent / f".latest.{uuid.uuid4().hex}"
    staging.symlink_to(report_dir.name, target_is_directory=True)
    os.replace(staging, latest)


def run_context(
    config: PipelineConfig, raw: RawDataset, validation: ValidationSummary, data: ProcessedDataset
) -> dict:
    """What metrics.json records about a run besides the models: enough to reproduce it."""
    return {
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        "data": {
            "source_dir": str(raw.source_dir),
            "file_sha256": raw.file_sha256,
            "processed_dir": str(data.directory),
            "processed_sha256": {name: ref.sha256 for name, ref in data.arrays.items()},
        },
        "validation": asdict(validation),
    }


@task(name="compare-models")
def report_task(
    evaluations: list[ModelEvaluation],
    data: ProcessedDataset,
    output_dir: Path,
    run_id: str,
    context: dict,
    seed: int,
    tuning: list[TuningSummary],
) -> Path:
    y_test, test_index, x_test = data.load("y_test", "test_index", "x_test")
    report = write_report(
        evaluations, y_test, test_index, output_dir, run_id, context, seed, x_test, tuning
    )
    html_report = report.directory.resolve() / "report.html"
    create_table_artifact(
        key="fashion-mnist-leaderboard",
        table=report.leaderboard.round(4).to_dict(orient="records"),
        description=f"Models ranked by test accuracy, run {run_id}",
    )
    summary = [
        f"# Run {run_id}",
        markdown_table(readable_leaderboard(report.leaderboard)),
        *[f"- {finding}" for finding in report.findings],
        f"Full report, one self-contained page: [report.html]({html_report.as_uri()}) "
        f"(`{html_report}`; the same as markdown beside it in `report.md`)",
    ]
    create_markdown_artifact(
        key="fashion-mnist-summary",
        markdown="\n\n".join(summary),
        description="Leaderboard and findings",
    )
    return report.directory
