"""Which split decided what, and how far each held-out split's accuracy is from the test's.

A split that made a choice scores it optimistically. The validation split stopped,
calibrated and tuned the models, so their validation accuracy flatters them; the
selection split, which no model saw, chose the ensemble, so only the ensemble's selection
accuracy is flattered. The same split chooses the model the run stands behind, the one
predictions and the server use unless told otherwise. The test set decided nothing: it is
the only unbiased score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from tasks.core.contracts import ENSEMBLE_NAME, HELD_OUT, ModelEvaluation
from tasks.training.models.registry import validation_uses

GAP_COLUMNS = ["model", "validation_accuracy", "selection_accuracy", "test_accuracy"]


def chosen_model(evaluations: Sequence[ModelEvaluation]) -> str:
    """The model the run stands behind: the best selection accuracy, the ensemble first on
    a tie, then the best validation accuracy, then the name.

    Chosen by test accuracy, the chosen model's test accuracy would flatter it; the
    selection split is the one no model was fitted, stopped or tuned on. That split also
    chose the ensemble's weights, which flatters the ensemble's selection accuracy a little,
    so the ensemble wins the close calls.
    """
    best = min(
        evaluations,
        key=lambda e: (-e.selection_accuracy, e.name != ENSEMBLE_NAME, -e.validation_accuracy,
                       e.name),
    )  # fmt: skip
    return best.name


def chosen_sentence(board: pd.DataFrame, chosen: str) -> str:
    """Which model the run chose, on what, and where it ranks on the test set."""
    row = board.set_index("model").loc[chosen]
    why = (
        f"The run chose **{chosen}** by its selection accuracy ({row.selection_accuracy:.4f}), "
        "before the test set was read, so its test accuracy is a fair estimate"
    )
    if row["rank"] == 1:
        return f"{why}; it is the model predictions and the server use unless told otherwise."
    return (
        f"{why}; it ranks {int(row['rank'])} on the test set ({row.test_accuracy:.4f}), and is the "
        "model predictions and the server use unless told otherwise."
    )


def split_roles(
    split_images: dict[str, int],
    evaluations: Sequence[ModelEvaluation],
    tuned: Sequence[str],
    chosen: str,
    budgeted: bool = False,
) -> pd.DataFrame:
    """One row per split: its images and what it decided in this run.

    Args:
        split_images: images in the train, validation, selection and test splits.
        tuned: the models whose parameters a search chose on the validation split.
        chosen: the model the run stands behind (`chosen_model`).
        budgeted: the run had a time budget.
    """
    models = [e for e in evaluations if e.name != ENSEMBLE_NAME]
    read = validation_uses((e.name for e in models), budgeted)
    uses = [f"{name}'s {use}" for name, use in read.items()]
    if tuned:
        uses.append(f"the tuning trials' scores ({', '.join(tuned)})")
    selected = [f"the model the run chose ({chosen})"]
    if ensemble := next((e for e in evaluations if e.name == ENSEMBLE_NAME), None):
        mix = zip(ensemble.params["members"], ensemble.params["weights"], strict=True)
        selected.insert(
            0, f"the ensemble's members and weights ({', '.join(f'{m} {w:.3f}' for m, w in mix)})"
        )
    decided = {
        "train": f"each model's fit ({len(models)} model{'s' if len(models) != 1 else ''})",
        "validation": "; ".join(uses) or "nothing: no model here reads it",
        "selection": "; ".join(selected),
        "test": "nothing: it only scores the models (the ranking, intervals and tests)",
    }
    return pd.DataFrame(
        {"split": split, "images": split_images[split], "decided": what}
        for split, what in decided.items()
    )


def held_out_gaps(board: pd.DataFrame) -> pd.DataFrame:
    """Per ranked model, its validation and selection accuracy minus its test accuracy,
    in points: how much each held-out split overstates (or understates) it."""
    gaps = board[GAP_COLUMNS].copy()
    for split in HELD_OUT:
        gaps[f"{split}_gap"] = 100 * (gaps[f"{split}_accuracy"] - gaps.test_accuracy)
    return gaps


def describe_gaps(gaps: pd.DataFrame, roles: pd.DataFrame, budgeted: bool = False) -> list[str]:
    """The gaps in sentences: the models' mean gap on each held-out split, how much of the
    validation split's is bias (against the selection split, drawn from the same images),
    how large a gap chance alone makes at these sizes, then the ensemble's gap. `budgeted`:
    the run had a time budget, which changes what some models read (`validation_uses`)."""
    models = gaps[gaps.model != ENSEMBLE_NAME]
    if not len(models):
        return []
    sentences = [
        f"On average over the {len(models)} models, the validation accuracy is "
        f"{_points(models.validation_gap.mean())} the test accuracy, and the selection "
        f"accuracy {_points(models.selection_gap.mean())} it."
    ]
    reads = models.model.isin(list(validation_uses(models.model, budgeted)))
    if reads.any():
        bias = (models.validation_gap - models.selection_gap)[reads].mean()
        sentences.append(
            f"Both splits are drawn alike from the training images, so for the models whose "
            f"training read the validation split ({', '.join(models.model[reads])}), what it "
            f"adds is their validation accuracy minus their selection accuracy: "
            f"{bias:+.2f} points on average."
        )
    images = roles.set_index("split").images
    accuracy = models.test_accuracy.mean()
    errors = [100 * math.sqrt(accuracy * (1 - accuracy) / images[s]) for s in HELD_OUT]
    sentences.append(
        f"At an accuracy near {accuracy:.2f}, one standard error is {errors[0]:.1f} points on "
        f"the {images['validation']} validation images and {errors[1]:.1f} on the "
        f"{images['selection']} selection images: a smaller gap is chance."
    )
    for row in gaps[gaps.model == ENSEMBLE_NAME].itertuples():
        sentences.append(
            f"The ensemble scores {row.selection_accuracy:.4f} on the selection split that "
            f"chose its members and weights and {row.test_accuracy:.4f} on the test set "
            f"({_points(row.selection_gap)} its test accuracy)."
        )
    return sentences


def _points(gap: float) -> str:
    if abs(gap) < 0.005:
        return "level with"
    return f"{abs(gap):.2f} points {'above' if gap > 0 else 'below'}"
