"""The comparison report's figures. Each `plot_` function returns a Figure;
`save_figures` writes those report.md shows."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tasks.core.contracts import LearningCurve
from tasks.evaluation.report.analysis import GALLERY_PER_PAIR, PARETO_COSTS, Findings
from tasks.evaluation.significance import percent

FIGURE_DPI = 100
GALLERY_FILE = "misclassified_chosen_model.png"
CONFUSION_GRID_FILE = "confusion_matrices_normalised.png"
LEARNING_CURVES_FILE = "learning_curves.png"
F1_HEATMAP_FILE = "f1_by_class.png"
# Up to this many classes, each cell of a class-by-class figure shows its value; beyond,
# the cells are too small for it.
MOST_LABELLED_CLASSES = 20


def save_figures(findings: Findings, test_images: np.ndarray, directory: Path) -> None:
    """Write the Pareto plots, F1 heatmap, confusion grid, learning curves and gallery.

    Args:
        test_images: the test images, scaled to [0, 1], for the gallery of mistakes.
    """
    for cost, label, figure_file in PARETO_COSTS:
        plot_pareto(findings, cost, label).savefig(directory / figure_file, dpi=FIGURE_DPI)
    plot_f1_heatmap(findings.f1).savefig(directory / F1_HEATMAP_FILE, dpi=FIGURE_DPI)
    grid = plot_confusion_grid(findings.confusions, findings.class_names)
    grid.savefig(directory / CONFUSION_GRID_FILE, dpi=FIGURE_DPI)
    if findings.curves:
        curves = plot_learning_curves(findings.curves)
        curves.savefig(directory / LEARNING_CURVES_FILE, dpi=FIGURE_DPI)
    if findings.gallery_model:
        mistakes = findings.mistakes
        captions = [
            f"{m.true} as\n{m.predicted} ({m.confidence:.0%})" for m in mistakes.itertuples()
        ]
        gallery = plot_misclassified(
            images=test_images[mistakes.position.to_numpy()],
            captions=captions,
            rows=-(-len(mistakes) // GALLERY_PER_PAIR),
            title=f"{findings.gallery_model}: its most confident mistakes on its most "
            "frequent confusions",
        )
        gallery.savefig(directory / GALLERY_FILE, dpi=FIGURE_DPI)


def class_font_size(classes: int, inches: float, largest: float) -> float:
    """Points for class names along an axis `inches` long: as large as they fit between
    their ticks, up to `largest`, and no smaller than 3 (100 classes stay legible)."""
    return min(largest, max(3.0, 0.6 * 72 * inches / classes))


def grown(base: float, classes: int, per_class: float, most: float) -> float:
    """A figure's side for `classes` classes: `base` up to ten, `per_class` inches more for
    each beyond, up to `most`."""
    return min(base + per_class * max(classes - 10, 0), most)


def png_bytes(figure: Figure, dpi: float) -> bytes:
    """The figure as a PNG file's bytes, for embedding rather than saving."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def plot_pareto(findings: Findings, cost: str, cost_label: str) -> Figure:
    """Test accuracy, with its confidence interval, against a cost on a log scale.

    Args:
        cost: the leaderboard column plotted on the x axis, one of `PARETO_COSTS`.
    """
    board, front = findings.leaderboard, findings.fronts[cost]
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    axes = figure.add_subplot()
    errors = [board.test_accuracy - board.accuracy_low, board.accuracy_high - board.test_accuracy]
    axes.errorbar(board[cost], board.test_accuracy, yerr=errors, fmt="none", ecolor="0.6")
    for on_front, style in ((False, {"color": "0.5"}), (True, {"color": "tab:blue"})):
        rows = board[front == on_front]
        label = "on the Pareto front" if on_front else "dominated"
        axes.scatter(rows[cost], rows.test_accuracy, label=label, zorder=3, **style)
    ordered = board[front].sort_values(cost)
    axes.plot(ordered[cost], ordered.test_accuracy, color="tab:blue", linewidth=1)
    for row in board.itertuples():
        axes.annotate(row.model, (getattr(row, cost), row.test_accuracy),
                      textcoords="offset points", xytext=(5, 5), fontsize=8)  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel(f"{cost_label} (log scale)")
    axes.set_ylabel(f"test accuracy ({percent(findings.confidence)} CI)")
    axes.set_title(f"Accuracy against {cost_label}")
    axes.legend(loc="lower right")
    return figure


def plot_f1_heatmap(f1: pd.DataFrame) -> Figure:
    """Per-class F1 as a heatmap, models by classes, each cell labelled with its value up
    to `MOST_LABELLED_CLASSES` classes."""
    classes = f1.shape[1]
    width = grown(10, classes, 0.1, 18)
    figure = Figure(figsize=(width, 0.5 * len(f1) + 2.5), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(f1.to_numpy(), cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    figure.colorbar(image, ax=axes, label="F1 (colours clipped below 0.5)")
    labelled, size = classes <= MOST_LABELLED_CLASSES, class_font_size(classes, width - 3, 10)
    axes.set_xticks(range(classes), f1.columns, rotation=45 if labelled else 90, ha="right",
                    rotation_mode="anchor", fontsize=size)  # fmt: skip
    axes.set_yticks(range(f1.shape[0]), f1.index)
    if labelled:
        for (row, column), value in np.ndenumerate(f1.to_numpy()):
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    axes.set_title("Per-class F1 on the test set")
    return figure


def plot_confusion_grid(
    confusions: dict[str, list[list[int]]],
    class_names: Sequence[str],
    labelled_classes: int = MOST_LABELLED_CLASSES,
) -> Figure:
    """Every model's confusion matrix, row-normalised (each true class sums to 1), side by side.

    Row normalisation shows recall per class and where each class's errors go, on one
    colour scale for all models. Panels grow with the classes; cells show their share up
    to `labelled_classes` classes.
    """
    columns = min(3, len(confusions))
    rows = -(-len(confusions) // columns)
    classes = len(class_names)
    side = grown(5.2, classes, 0.06, 10)
    figure = Figure(figsize=(side * columns, (side - 0.4) * rows), layout="constrained")
    size = class_font_size(classes, side - 1.8, 7)
    labelled = classes <= labelled_classes
    grid = figure.subplots(rows, columns, squeeze=False)
    image = None
    for axes, (name, confusion) in zip(grid.flat, confusions.items(), strict=False):
        counts = np.asarray(confusion, dtype=float)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ticks = range(classes)
        axes.set_xticks(ticks, class_names, rotation=60 if labelled else 90, ha="right",
                        rotation_mode="anchor", fontsize=size)  # fmt: skip
        axes.set_yticks(ticks, class_names, fontsize=size)
        axes.set_title(name)
        shown = np.argwhere(shares >= 0.01) if labelled else []
        for row, column in shown:
            color = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, f"{shares[row, column]:.2f}", ha="center", va="center",
                      fontsize=5, color=color)  # fmt: skip
    for axes in grid.flat[len(confusions) :]:
        axes.set_axis_off()
    figure.colorbar(image, ax=grid, shrink=0.6, label="share of the true class")
    figure.supxlabel("predicted class")
    figure.supylabel("true class")
    return figure


def plot_learning_curves(curves: dict[str, LearningCurve]) -> Figure:
    """Training and validation error per step, one panel per iteratively trained model."""
    figure = Figure(figsize=(6 * len(curves), 4.5), layout="constrained")
    for axes, (name, curve) in zip(
        figure.subplots(1, len(curves), squeeze=False).flat, curves.items(), strict=True
    ):
        train, validation = curve.train_error, curve.validation_error
        steps = np.arange(1, len(train) + 1)
        axes.plot(steps, train, label="training")
        axes.plot(steps, validation, label="validation")
        best = int(np.argmin(validation))
        axes.axvline(best + 1, color="0.6", linestyle="--", label=f"best validation ({best + 1})")
        axes.set_xlabel(curve.step)
        axes.set_ylabel("error rate")
        axes.set_title(name)
        axes.legend()
    return figure


def plot_misclassified(images: np.ndarray, captions: list[str], rows: int, title: str) -> Figure:
    """A gallery of test images, `rows` rows of equal length, each with its caption."""
    columns = -(-len(images) // rows)
    figure = Figure(figsize=(1.6 * columns, 1.9 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat:
        axes.set_axis_off()
    for axes, image, caption in zip(grid.flat, images, captions, strict=False):
        axes.imshow(image.reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
        axes.set_title(caption, fontsize=7)
    figure.suptitle(title)
    return figure
