"""report.md: the findings as one markdown document, its figures beside it."""

from __future__ import annotations

from collections.abc import Sequence

from tasks.budget.planner import MOST_STEPS_GIVEN_UP
from tasks.core.contracts import TuningSummary
from tasks.evaluation.report.analysis import GALLERY_PAIRS, PARETO_COSTS, Findings
from tasks.evaluation.report.figures import (
    CONFUSION_GRID_FILE,
    F1_HEATMAP_FILE,
    GALLERY_FILE,
    LEARNING_CURVES_FILE,
)
from tasks.evaluation.report.splits import describe_gaps
from tasks.evaluation.report.tables import (
    budget_table,
    data_line,
    failure_lines,
    markdown_table,
    readable_leaderboard,
    since_last_run_section,
    tuning_table,
)
from tasks.evaluation.significance import ALPHA, BOOTSTRAP_RESAMPLES, describe_comparisons, percent
from tasks.training.models.registry import model_spec, step_name
from tasks.training.tuned_profile import TUNED_PROFILE_FILE, TUNING_DIR


def render_markdown(findings: Findings, run_id: str) -> str:
    """report.md, whose figures are file names in the report's directory; it opens with
    the data and what changed since the last run."""
    board, level = findings.leaderboard, percent(findings.confidence)
    comparisons = findings.comparisons
    f1_table = findings.f1.T.rename_axis("class").reset_index()
    front_sections = [
        f"Against {label}, the front is: {', '.join(board.model[findings.fronts[cost]])}."
        f"\n\n![{label}]({figure_file})"
        for cost, label, figure_file in PARETO_COSTS
    ]
    sections = [
        f"# Model comparison — run `{run_id}`",
        data_line(findings),
        f"{len(board)} models, ranked by accuracy on {findings.test_images} held-out test "
        f"images. The {level} confidence intervals come from {BOOTSTRAP_RESAMPLES} paired "
        "bootstrap resamples of the test set.",
        *since_last_run_section(findings),
        "## Leaderboard",
        markdown_table(readable_leaderboard(board, findings.confidence)),
        *_failed_section(findings),
        "## Analysis",
        "\n".join(f"- {finding}" for finding in findings.analysis),
        "## Which differences are real",
        "McNemar's exact test on the test images, for each model against the one ranked "
        f"just above it and against the best. With {len(comparisons)} tests, some "
        "would pass p < 0.05 by chance alone, so their p-values are Holm-adjusted for the "
        f"family (`p_holm`); significant means p_holm < {ALPHA}, and tied the opposite. "
        "`difference` is the accuracy of `compared_to` minus the model's, in points, with "
        f"its {level} interval from the same paired bootstrap resamples as the leaderboard's.",
        "\n".join(f"- {line}" for line in describe_comparisons(comparisons, findings.confidence)),
        markdown_table(comparisons, ".3g"),
        "## Which split decided what",
        "Each split carved out of the training images decides one thing, so that no "
        "choice is scored on the data that made it; the test images decide nothing.",
        markdown_table(findings.split_roles),
        "Each model's accuracy on the held-out splits beside its test accuracy; a gap is "
        "the held-out accuracy minus the test accuracy, in points. "
        + " ".join(describe_gaps(findings.gaps, findings.split_roles, findings.plan is not None)),
        markdown_table(findings.gaps, ".4f"),
        "## Cost and accuracy",
        "A model is on the Pareto front when no other model is at least as accurate and at "
        f"most as costly. Bars are the {level} confidence intervals.",
        *front_sections,
        "## Strengths and limitations",
        "\n".join(f"- {sentence}" for sentence in findings.strengths),
        "## Most confused class pairs (all models)",
        markdown_table(findings.confused_pairs),
        "## Hardest classes",
        markdown_table(findings.difficulty.reset_index(), ".3f"),
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
    return "\n\n".join(sections + _optional_sections(findings)) + "\n"


def _failed_section(findings: Findings) -> list[str]:
    if not findings.failures:
        return []
    return [
        "These models failed and are not ranked; a rerun retrains only them, and reuses "
        "the models above:",
        "\n".join(failure_lines(findings)),
    ]


def _optional_sections(findings: Findings) -> list[str]:
    """The gallery, tuning and learning-curve sections, for runs that have them."""
    sections = []
    if model := findings.gallery_model:
        sections += [
            f"## Mistakes of {model}",
            f"The test images {model} gets wrong with the most confidence, for each of "
            f"its {GALLERY_PAIRS} most frequent confusions (true class as predicted class, "
            "with the predicted class's probability).",
            f"![mistakes of {model}]({GALLERY_FILE})",
        ]
    if tuning := findings.tuning:
        sections += [
            "## Tuning",
            "Each model's parameters were searched by Optuna (TPE sampler, "
            f"{_pruning(tuning)}) before training. Trials fit on {tuning[0].train_images} "
            "training images, stratified by class, and are scored on the validation split "
            "only; trial 0 is the defaults. The models above were trained with the best "
            "parameters. Every trial is in "
            f"`{TUNING_DIR}/<model>-trials.csv`; the best parameters, as a profile file for "
            f"later runs, in `{TUNED_PROFILE_FILE}`.",
            markdown_table(tuning_table(tuning)),
        ]
    if plan := findings.plan:
        sections += [
            "## Time budget",
            f"The run had {plan['budget_seconds'] / 60:.1f} minutes. After "
            f"{plan['elapsed_seconds']:.0f} s of data preparation and measuring what each "
            f"model costs on this machine, and with {plan['reserve_seconds']:.0f} s kept for "
            f"this report, the plan gave training {plan['window_seconds']:.0f} s on "
            f"{plan['lanes']} lane(s).{_room(plan)} {_steps(plan)}",
            markdown_table(budget_table(findings)),
            *[f"- {model} was left out: {why}." for model, why in plan["dropped"].items()],
        ]
    if findings.curves:
        sections += [
            "## Learning curves",
            f"Training and validation error of {', '.join(sorted(findings.curves))} per step; "
            "the dashed line marks the best validation error.",
            f"![learning curves]({LEARNING_CURVES_FILE})",
        ]
    return sections


def _pruning(tuning: Sequence[TuningSummary]) -> str:
    """Which models' trials the search may prune: those that report steps."""
    pruned = [t.model for t in tuning if model_spec(t.model).pruning_warmup_steps]
    return f"median pruning of {' and '.join(pruned)} trials" if pruned else "no pruning"


def _steps(plan: dict) -> str:
    """What the budget table's steps are, for each planned model trained in steps."""
    stepped = [f"{step_name(m['model'])} for {m['model']}" for m in plan["models"] if m["steps"]]
    if not stepped:
        return "Seconds are fit and prediction."
    return (
        f"Steps are {' and '.join(stepped)}, which stop at the deadline if they run late; "
        "seconds are fit and prediction."
    )


def _room(plan: dict) -> str:
    """How long the models beside the one with a lane of its own could hold theirs, where
    the plan held them to less than the window."""
    own = plan.get("own_lane")
    if plan.get("room_beside") is None or own is None:
        return ""
    return (
        f" The models beside {own} held their lanes for at most {plan['room_beside']:.0f} s: "
        f"longer would have cost {own} over {MOST_STEPS_GIVEN_UP:.0%} of the "
        f"{step_name(own)} it trains with every core."
    )
