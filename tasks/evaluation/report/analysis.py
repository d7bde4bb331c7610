"""What the comparison finds: rankings, fronts, per-class results and plain findings.

`analyse` computes everything once into a `Findings` record; report.md, report.html,
metrics.json, the figures and the Prefect artifacts are all rendered from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from tasks.core.contracts import LearningCurve, ModelEvaluation, ModelFailure, TuningSummary
from tasks.evaluation.report.splits import chosen_model, chosen_sentence, held_out_gaps, split_roles
from tasks.evaluation.significance import (
    CONFIDENCE,
    accuracy_intervals,
    bootstrap_accuracies,
    describe_comparisons,
    percent,
    rank_comparisons,
)

LEADERBOARD_COLUMNS = [
    "rank", "model", "test_accuracy", "accuracy_low", "accuracy_high", "macro_f1", "log_loss",
    "calibration_error", "validation_accuracy", "selection_accuracy", "fit_seconds",
    "predict_seconds", "predict_ms_per_1000", "model_size_mb",
]  # fmt: skip
EVALUATION_COLUMNS = [c for c in LEADERBOARD_COLUMNS if c not in ("rank", "accuracy_low",
                                                                 "accuracy_high")]  # fmt: skip
TOP_PAIRS = 5
GALLERY_PAIRS = 3
GALLERY_PER_PAIR = 6
# Costs the accuracy is weighed against: (leaderboard column, label, figure file).
PARETO_COSTS = (
    ("fit_seconds", "fit time (s)", "pareto_fit_time.png"),
    ("predict_ms_per_1000", "prediction time per 1,000 images (ms)", "pareto_latency.png"),
)


@dataclass(frozen=True)
class Findings:
    """Everything the report shows about a run's models; frames list models by rank, and
    per-class results follow `class_names`, the data's classes."""

    class_names: tuple[str, ...]
    leaderboard: pd.DataFrame
    confidence: float  # level of the leaderboard's accuracy intervals
    comparisons: pd.DataFrame  # `rank_comparisons`
    fronts: dict[str, pd.Series]  # per `PARETO_COSTS` column, its `pareto_front` mask
    f1: pd.DataFrame  # `f1_by_class`
    confused_pairs: pd.DataFrame
    difficulty: pd.DataFrame  # `class_difficulty`
    analysis: list[str]  # plain-language findings, `write_analysis`
    strengths: list[str]  # `strengths_and_limitations`
    curves: dict[str, LearningCurve]
    confusions: dict[str, list[list[int]]]  # test confusion matrix per model
    chosen: str  # the model the run stands behind, chosen on the selection split
    mistakes: pd.DataFrame  # the chosen model's `misclassified_examples`
    tuning: tuple[TuningSummary, ...]
    test_images: int
    split_roles: pd.DataFrame  # `split_roles`: what each split decided
    gaps: pd.DataFrame  # `held_out_gaps`, by rank
    failures: tuple[ModelFailure, ...] = ()  # the models that are not on the leaderboard
    plan: dict | None = None  # the time budget's plan (`tasks.budget.plan_types.Plan.as_dict`)
    dataset: str | None = None  # what the data is called (`ValidationSummary.dataset`)
    data_warning: str = ""  # `ValidationSummary.warning`: not the data it looks like
    machine: str = ""  # the CPU and its usable cores (`machine_facts`' summary)
    since_last_run: tuple[str, ...] = ()  # sentences comparing with the previous run, if any

    @property
    def gallery_model(self) -> str | None:
        """The model whose mistakes the gallery shows: the chosen one, if it makes any."""
        return self.chosen if len(self.mistakes) else None


def analyse(
    evaluations: list[ModelEvaluation],
    class_names: Sequence[str],
    y_test: np.ndarray,
    predicted: dict[str, np.ndarray],
    probabilities: dict[str, np.ndarray],
    seed: int,
    split_images: dict[str, int],
    tuning: Sequence[TuningSummary] = (),
    failures: Sequence[ModelFailure] = (),
    plan: dict | None = None,
    dataset: str | None = None,
    data_warning: str = "",
    since_last_run: Sequence[str] = (),
    machine: str = "",
) -> Findings:
    """The findings of a run, computed once for every view of them.

    Args:
        class_names: the data's classes, indexed by label.
        predicted: each model's test predictions.
        probabilities: each model's test class probabilities.
        seed: seed of the bootstrap resamples.
        split_images: images in the train, validation, selection and test splits.
        tuning: the tuning stage's searches, when it ran.
        failures: the models that failed, named by every view.
        plan: the time budget's plan, when the run had one.
        dataset: what the data is called, when known.
        data_warning: why the data is not what it looks like, when it is not.
        since_last_run: what changed since the previous run, in sentences; none on a first run.
        machine: what the models trained on: the CPU and its usable cores.
    """
    correct = {name: labels == y_test for name, labels in predicted.items()}
    # One set of paired resamples for the intervals and the comparisons' differences.
    draws = bootstrap_accuracies(correct, seed)
    intervals = accuracy_intervals(draws, list(correct), CONFIDENCE)
    board = leaderboard(evaluations, intervals)
    ranked = list(board.model)
    resampled = dict(zip(correct, draws, strict=True))
    comparisons = rank_comparisons(ranked, correct, confidence=CONFIDENCE, resampled=resampled)
    f1 = f1_by_class(evaluations, ranked, class_names)
    pairs = confused_pairs(evaluations, class_names)
    difficulty = class_difficulty(evaluations, class_names)
    by_name = {e.name: e for e in evaluations}
    chosen = chosen_model(evaluations)
    mistakes = misclassified_examples(
        by_name[chosen].confusion, predicted[chosen], probabilities[chosen], y_test, class_names
    )
    return Findings(
        class_names=tuple(class_names),
        leaderboard=board,
        confidence=CONFIDENCE,
        comparisons=comparisons,
        fronts={cost: pareto_front(board, cost) for cost, _, _ in PARETO_COSTS},
        f1=f1,
        confused_pairs=pairs,
        difficulty=difficulty,
        analysis=write_analysis(board, chosen, comparisons, pairs, difficulty, CONFIDENCE),
        strengths=strengths_and_limitations(f1, {name: predicted[name] for name in ranked}, y_test),
        curves=learning_curves(evaluations),
        confusions={name: by_name[name].confusion for name in ranked},
        chosen=chosen,
        mistakes=mistakes,
        tuning=tuple(tuning),
        test_images=len(y_test),
        split_roles=split_roles(
            split_images, evaluations, [t.model for t in tuning], chosen, budgeted=plan is not None
        ),
        gaps=held_out_gaps(board),
        failures=tuple(failures),
        plan=plan,
        dataset=dataset,
        data_warning=data_warning,
        since_last_run=tuple(since_last_run),
        machine=machine,
    )


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


def pareto_front(board: pd.DataFrame, cost: str) -> pd.Series:
    """Whether each model is on the accuracy/cost front: no other model is at least as
    accurate and at most as costly, and strictly better in one of the two."""
    accuracy, price = board.test_accuracy.to_numpy(), board[cost].to_numpy()
    at_least_as_good = (accuracy[None, :] >= accuracy[:, None]) & (price[None, :] <= price[:, None])
    strictly_better = (accuracy[None, :] > accuracy[:, None]) | (price[None, :] < price[:, None])
    dominated = (at_least_as_good & strictly_better).any(axis=1)
    return pd.Series(~dominated, index=board.index)


def f1_by_class(
    evaluations: list[ModelEvaluation], models: list[str], class_names: Sequence[str]
) -> pd.DataFrame:
    """Per-class test F1, one row per model in `models` order, one column per class."""
    by_name = {e.name: e.f1 for e in evaluations}
    return pd.DataFrame([by_name[m] for m in models], index=models, columns=list(class_names))


def learning_curves(evaluations: list[ModelEvaluation]) -> dict[str, LearningCurve]:
    """The learning curves of the models whose training recorded one (XGBoost, CNN)."""
    return {e.name: e.curve for e in evaluations if e.curve}


def misclassified_examples(
    confusion: list[list[int]], predicted: np.ndarray, probabilities: np.ndarray,
    y_test: np.ndarray, class_names: Sequence[str], pairs: int = GALLERY_PAIRS,
    per_pair: int = GALLERY_PER_PAIR,
) -> pd.DataFrame:  # fmt: skip
    """A model's most confident mistakes on its `pairs` most frequent (true, predicted)
    confusions: one row per test image, by position in the test arrays."""
    errors = np.asarray(confusion) * (1 - np.eye(len(class_names), dtype=int))
    most_frequent = np.argsort(errors, axis=None, kind="stable")[::-1][:pairs]
    confidence = probabilities.max(axis=1)
    rows = []
    for true, wrong in zip(*np.unravel_index(most_frequent, errors.shape), strict=True):
        if errors[true, wrong] == 0:
            break
        positions = np.flatnonzero((y_test == true) & (predicted == wrong))
        for position in positions[np.argsort(-confidence[positions], kind="stable")][:per_pair]:
            rows.append(
                {"position": int(position), "true": class_names[true],
                 "predicted": class_names[wrong], "confidence": float(confidence[position])}
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
    named = 2 if f1.shape[1] >= 4 else 1  # with few classes, two of each would overlap
    for model, scores in f1.iterrows():
        ordered = scores.sort_values()
        best = ", ".join(f"{name} ({value:.2f})" for name, value in ordered[::-1][:named].items())
        worst = ", ".join(f"{name} ({value:.2f})" for name, value in ordered[:named].items())
        sentences.append(f"**{model}** is strongest on {best} and weakest on {worst} (F1).")
    predictions = np.stack(list(predicted.values()))
    disagree = (predictions != predictions[0]).any(axis=0)
    by_class = pd.Series(
        [disagree[y_test == c].mean() for c in range(f1.shape[1])], index=f1.columns
    ).sort_values(ascending=False)
    all_wrong = (predictions != y_test).all(axis=0)
    sentences.append(
        f"The {len(predicted)} models disagree on {disagree.mean():.1%} of the test images, "
        f"most on {by_class.index[0]} ({by_class.iloc[0]:.1%} of them) and "
        f"{by_class.index[1]} ({by_class.iloc[1]:.1%}); {all_wrong.sum()} images "
        f"({all_wrong.mean():.1%}) fool every model."
    )
    return sentences


def confused_pairs(
    evaluations: list[ModelEvaluation], class_names: Sequence[str], top: int = TOP_PAIRS
) -> pd.DataFrame:
    """Class pairs most often confused, in either direction, summed over all models."""
    total = np.sum([np.asarray(e.confusion) for e in evaluations], axis=0)
    rows = [
        {
            "class_a": class_names[a],
            "class_b": class_names[b],
            "a_as_b": int(total[a, b]),
            "b_as_a": int(total[b, a]),
            "total": int(total[a, b] + total[b, a]),
        }
        for a, b in combinations(range(len(class_names)), 2)
    ]
    frame = pd.DataFrame(rows).sort_values("total", ascending=False, ignore_index=True)
    return frame.head(top)


def class_difficulty(
    evaluations: list[ModelEvaluation], class_names: Sequence[str]
) -> pd.DataFrame:
    """Per class: recall and F1 averaged over models, and the models that do best and worst."""
    recall = pd.DataFrame({e.name: e.recall for e in evaluations}, index=list(class_names))
    f1 = pd.DataFrame({e.name: e.f1 for e in evaluations}, index=list(class_names))
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
    board: pd.DataFrame,
    chosen: str,
    comparisons: pd.DataFrame,
    pairs: pd.DataFrame,
    difficulty: pd.DataFrame,
    confidence: float,
) -> list[str]:
    """Plain-language findings, each sentence computed from the numbers above it.

    Args:
        chosen: the model the run stands behind (`chosen_model`).
        confidence: level of the leaderboard's accuracy intervals.
    """
    best = board.iloc[0]
    findings = [
        f"**{best.model}** ranks first with test accuracy {best.test_accuracy:.4f} "
        f"({percent(confidence)} CI [{best.accuracy_low:.4f}, {best.accuracy_high:.4f}]; macro-F1 "
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
        findings.append(describe_comparisons(comparisons, confidence)[0])
        fastest = board.loc[board.fit_seconds.idxmin()]
        findings.append(
            f"The cheapest to train is {fastest.model} ({fastest.fit_seconds:.0f} s, "
            f"accuracy {fastest.test_accuracy:.4f}); {best.model} took "
            f"{best.fit_seconds:.0f} s to fit and {best.predict_seconds:.1f} s to predict "
            "the test set."
        )
    findings.append(chosen_sentence(board, chosen))
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
