"""model_card.md: the chosen model's card. What it is and which files hold it, what it was
trained on, how accurate it is, where it fails, and how to predict with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.contracts import ModelEvaluation
from tasks.evaluation.report.analysis import Findings
from tasks.evaluation.significance import percent
from tasks.training.models.registry import model_file_digests

WEAKEST = 3  # classes, confusions and pairs listed as known weaknesses


def render_model_card(
    findings: Findings, evaluations: list[ModelEvaluation], context: dict, report_dir: Path
) -> str:
    """The card of the model the run chose (`Findings.chosen`, the ensemble included).

    Args:
        context: `run_context`'s facts about the run: its config and data hashes.
        report_dir: where the run's report is published.
    """
    board = findings.leaderboard
    row = board.set_index("model").loc[findings.chosen]
    by_name = {e.name: e for e in evaluations}
    model = by_name[findings.chosen]
    members = model.params.get("members", [model.name])
    ci = f"{percent(findings.confidence)} CI [{row.accuracy_low:.4f}, {row.accuracy_high:.4f}]"
    lines = [
        f"# Model card: {model.name}",
        "",
        f"Run `{report_dir.name}` chose this model of its {len(board)} by the best selection "
        "accuracy, before the test set was read, so that its test accuracy is a fair estimate; "
        f"it ranks {int(row['rank'])} of {len(board)} by test accuracy. Every figure here is "
        "also in the run's `metrics.json` and `report.md`.",
        "",
        "| | |",
        "|---|---|",
        f"| test accuracy | {row.test_accuracy:.4f} ({ci}) on {findings.test_images:,} "
        "test images |",
        f"| macro-F1 | {row.macro_f1:.4f} |",
        f"| validation, selection accuracy | {row.validation_accuracy:.4f}, "
        f"{row.selection_accuracy:.4f} |",
        f"| log-loss, calibration error | {row.log_loss:.4f}, {row.calibration_error:.4f} |",
        f"| prediction time | {row.predict_seconds:.2f} s for the test images "
        f"({row.predict_ms_per_1000:.0f} ms per 1,000) |",
        f"| size on disk | {row.model_size_mb:.1f} MB |",
        "",
        "## Model files",
        "",
        "What `python -m flows.predict` loads; it refuses a file that no longer has this hash.",
        "",
        "| file | SHA-256 |",
        "|---|---|",
        *(f"| `{path}` | `{digest}` |" for m in members
          for path, digest in model_files(by_name[m].model_dir).items()),
        "",
        "## Parameters",
        "",
        *parameters(model, members, by_name),
        "## Training data",
        "",
        *training_data(context, findings),
        "## Known weaknesses",
        "",
        *weaknesses(findings, model.name),
        "## How to predict",
        "",
        "```bash",
        f"python -m flows.predict --run {report_dir} --model {model.name} IMAGE_OR_FOLDER ...",
        "```",
        "",
        "Images are brought to Fashion-MNIST's form first (`tasks.data.images.to_fashion_mnist`: "
        "grayscale, uniform border trimmed, longest edge fitted to 28 pixels and centred, "
        "inverted when the background is light). The CSV lists each image's top classes with "
        "their probabilities; `predictions.provenance.json` beside it names this run, model "
        "and files.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def model_files(directory: Path) -> dict[str, str]:
    """A model entry's saved model files and their SHA-256, as its manifest records them."""
    digests = model_file_digests(directory)
    if digests is None:
        return {str(directory): "not recorded (no readable manifest)"}
    return {str(directory / name): digest for name, digest in digests.items()}


def parameters(model: ModelEvaluation, members: list[str], by_name: dict) -> list[str]:
    if members == [model.name]:
        return ["```json", json.dumps(model.params, indent=2), "```", ""]
    weights = ", ".join(
        f"{m} ({w:.3f})" for m, w in zip(members, model.params["weights"], strict=True)
    )
    lines = [f"A weighted average of its members' class probabilities: {weights}.", ""]
    for member in members:
        lines += [f"`{member}`:", "", "```json", json.dumps(by_name[member].params), "```", ""]
    return lines


def training_data(context: dict, findings: Findings) -> list[str]:
    classes = f"Its {len(findings.class_names)} classes: {', '.join(findings.class_names)}."
    data = context.get("data")
    if not data:
        return ["Not recorded for this run.", "", classes, ""]
    config = context.get("config", {})
    lines = [
        f"Trained on {findings.dataset or 'data'} read from `{data['source_dir']}`, profile "
        f"`{config.get('profile', '?')}`, seed {context.get('seed', '?')}. {classes}",
        "",
        "SHA-256 of the source files' decompressed content and of the processed arrays "
        "(features scaled to [0, 1]) the model was trained, validated and tested on:",
        "",
        "| file or array | SHA-256 |",
        "|---|---|",
    ]
    hashes = data["file_sha256"] | data["processed_sha256"]
    return [*lines, *(f"| `{name}` | `{digest}` |" for name, digest in hashes.items()), ""]


def weaknesses(findings: Findings, name: str) -> list[str]:
    weakest = findings.f1.loc[name].sort_values()[:WEAKEST]
    names = findings.class_names
    errors = np.asarray(findings.confusions[name]) * (1 - np.eye(len(names), dtype=int))
    confusions = pd.Series(
        {(names[t], names[p]): errors[t, p] for t, p in np.argwhere(errors > 0)},
        dtype=int,
    ).sort_values(ascending=False, kind="stable")[:WEAKEST]
    hardest = findings.difficulty.head(WEAKEST)
    pairs = findings.confused_pairs.head(WEAKEST)
    pairs = pairs[pairs.total > 0]
    return [
        "- Its weakest classes (test F1): "
        + ", ".join(f"{c} ({f1:.2f})" for c, f1 in weakest.items()) + ".",
        "- Its most frequent mistakes: "
        + ("; ".join(f"{t} taken for {p} ({n} test images)" for (t, p), n in confusions.items())
           or "none") + ".",
        "- The hardest classes for all the run's models (mean recall): "
        + ", ".join(f"{c} ({r:.3f})" for c, r in hardest.mean_recall.items()) + ".",
        "- The class pairs all the run's models confuse most: "
        + ("; ".join(f"{r.class_a} / {r.class_b} ({r.total})" for r in pairs.itertuples())
           or "none") + ".",
        "- It has only seen single items, centred and light on black at 28x28 pixels, of "
        "its classes: photos with clutter, several items or a person wearing them are "
        "outside its data, and it gives every image one of its classes.",
        "",
    ]  # fmt: skip
