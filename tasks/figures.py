"""The comparison report's figures. Each function returns a Figure; the caller saves it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def plot_pareto(board: pd.DataFrame, cost: str, cost_label: str, front: pd.Series) -> Figure:
    """Test accuracy (with its 95% interval) against a cost on a log scale.

    Args:
        cost: the leaderboard column plotted on the x axis.
        front: per row of `board`, whether the model is on the Pareto front.
    """
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
    axes.set_ylabel("test accuracy (95% CI)")
    axes.set_title(f"Accuracy against {cost_label}")
    axes.legend(loc="lower right")
    return figure


def plot_f1_heatmap(f1: pd.DataFrame) -> Figure:
    """Per-class F1 as a heatmap, models by classes, each cell labelled with its value."""
    figure = Figure(figsize=(10, 0.5 * len(f1) + 2.5), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(f1.to_numpy(), cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    figure.colorbar(image, ax=axes, label="F1 (colours clipped below 0.5)")
    axes.set_xticks(range(f1.shape[1]), f1.columns, rotation=45, ha="right")
    axes.set_yticks(range(f1.shape[0]), f1.index)
    for (row, column), value in np.ndenumerate(f1.to_numpy()):
        axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    axes.set_title("Per-class F1 on the test set")
    return figure
