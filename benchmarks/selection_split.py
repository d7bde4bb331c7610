"""What the selection split costs or gains: a run's ensemble rebuilt from the same models,
its members and weights chosen on each held-out split in turn, scored on the test set.

    python -m benchmarks.selection_split [--run reports/latest] [--workdir .]

`--workdir` is where the run was started (its cache directory is relative to it). The
run's stored probabilities are read back from the evaluation cache, so nothing is
predicted again. Choosing on `validation` is how the ensemble was chosen before the
selection split: on the images that also stopped and calibrated the models;
`validation+selection` pools both, as many images as the old validation split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.budget_sweep import code_commit, cpu_name
from tasks.core.contracts import ENSEMBLE_NAME, HELD_OUT, SPLIT_ARRAYS
from tasks.evaluation.ensemble import choose_weights
from tasks.evaluation.report.tables import markdown_table

REPO = Path(__file__).resolve().parents[1]
CHOOSERS = {
    "validation": ("validation",),
    "selection": ("selection",),
    "validation+selection": ("validation", "selection"),
}


def stored_probabilities(cache_dir: Path, model: str, test_predictions_sha256: str) -> Path:
    """The evaluation cache entry of `model` whose test predictions are the run's."""
    for manifest in sorted((cache_dir / "evaluations" / model).glob("*/manifest.json")):
        if json.loads(manifest.read_text()).get("test_predictions.npy") == test_predictions_sha256:
            return manifest.parent
    raise FileNotFoundError(f"{cache_dir}/evaluations/{model}: no entry of this run's model")


def ensembles_by_chooser(run: Path, workdir: Path) -> pd.DataFrame:
    """One row per chooser split: the members and weights it picks among the run's
    models, and the mix's accuracy on the chooser and on the test set."""
    metrics = json.loads((run / "metrics.json").read_text())
    cache_dir = workdir / metrics["config"]["cache_dir"]
    processed = workdir / metrics["data"]["processed_dir"]
    labels = {
        split: np.load(processed / f"{SPLIT_ARRAYS[split][1]}.npy") for split in (*HELD_OUT, "test")
    }
    entries = {
        model: stored_probabilities(cache_dir, model, record["test_predictions_sha256"])
        for model, record in metrics["models"].items()
        if model != ENSEMBLE_NAME
    }
    probabilities = {
        model: {split: np.load(entry / f"{split}_probabilities.npy") for split in labels}
        for model, entry in entries.items()
    }
    size = metrics["config"]["ensemble_size"]

    def pooled(model: str, splits: tuple[str, ...]) -> np.ndarray:
        return np.concatenate([probabilities[model][split] for split in splits])

    def mixed(members: list[str], weights: np.ndarray, splits: tuple[str, ...]) -> np.ndarray:
        return np.tensordot(weights, np.stack([pooled(m, splits) for m in members]), axes=1)

    rows = []
    for chooser, splits in CHOOSERS.items():
        chosen_on = np.concatenate([labels[split] for split in splits])
        accuracy = {m: np.mean(pooled(m, splits).argmax(1) == chosen_on) for m in probabilities}
        members = sorted(accuracy, key=lambda m: (-accuracy[m], m))[:size]
        weights = choose_weights([pooled(m, splits) for m in members], chosen_on)
        there = mixed(members, weights, splits).argmax(1)
        test = mixed(members, weights, ("test",)).argmax(1)
        shown = zip(members, weights, strict=True)
        rows.append(
            {
                "chosen on": chooser,
                "images": len(chosen_on),
                "members (weights)": ", ".join(f"{m} {w:.3f}" for m, w in shown),
                "accuracy there": float(np.mean(there == chosen_on)),
                "test_accuracy": float(np.mean(test == labels["test"])),
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("reports/latest"))
    parser.add_argument("--workdir", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    run = (args.run if args.run.is_absolute() else args.workdir / args.run).resolve()
    table = ensembles_by_chooser(run, args.workdir)
    print(f"run {run.name}, code {code_commit(REPO)}, {cpu_name()}")
    print(markdown_table(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
