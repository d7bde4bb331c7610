from __future__ import annotations

import json
from dataclasses import replace

from tasks.evaluation.report.model_card import render_model_card
from tasks.evaluation.report.writer import write_report
from tests.support.samples import sample_evaluations, sample_split

CONTEXT = {
    "seed": 7,
    "config": {"profile": "full"},
    "data": {
        "source_dir": "/usr/share/datasets/fashion-mnist",
        "file_sha256": {"train-images-idx3-ubyte.gz": "c59f" + "0" * 60},
        "processed_sha256": {"x_train": "00d0" + "1" * 60, "y_train": "012e" + "2" * 60},
    },
}


def without_the_perfect_model(tmp_path):
    """`shirtless` (every Shirt taken for a T-shirt) ranks first, then `mixed`."""
    return [e for e in sample_evaluations(tmp_path) if e.name != "perfect"]


def test_the_report_has_the_chosen_models_card(tmp_path):
    evaluations = without_the_perfect_model(tmp_path)
    best = evaluations[1]
    (best.model_dir / "manifest.json").write_text(
        json.dumps({"model.joblib": "ab" * 32, "params.json": "cd" * 32})
    )
    report_dir = tmp_path / "reports" / "run-7"
    report = write_report(evaluations=evaluations, data=sample_split(tmp_path),
                          report_dir=report_dir, context=CONTEXT, seed=0)  # fmt: skip
    card = (report.directory / "model_card.md").read_text()
    board = report.findings.leaderboard
    assert board.model[0] == best.name == "shirtless"
    assert card.startswith(
        "# Model card: shirtless\n\nRun `run-7` chose this model of its 2 by the best "
        "selection accuracy, before the test set was read, so that its test accuracy is a fair "
        "estimate; it ranks 1 of 2 by test accuracy."
    )
    low, high = board.accuracy_low[0], board.accuracy_high[0]
    assert f"| test accuracy | 0.9000 (95% CI [{low:.4f}, {high:.4f}]) on 100 test images |" in card
    assert f"| `{best.model_dir / 'model.joblib'}` | `{'ab' * 32}` |" in card
    assert "params.json" not in card  # the model files only
    assert '```json\n{\n  "depth": 3\n}\n```' in card
    assert "profile `full`, seed 7" in card
    for name, digest in {
        **CONTEXT["data"]["file_sha256"],
        **CONTEXT["data"]["processed_sha256"],
    }.items():
        assert f"| `{name}` | `{digest}` |" in card
    assert "- Its weakest classes (test F1): Shirt (0.00), T-shirt/top (0.67)," in card
    assert "- Its most frequent mistakes: Shirt taken for T-shirt/top (10 test images)." in card
    assert "(mean recall): Shirt (0.000), T-shirt/top (0.850), Coat (0.900)." in card
    assert "confuse most: T-shirt/top / Shirt (23); Pullover / Coat (2)." in card
    assert f"python -m flows.predict --run {tmp_path}/reports/run-7 --model shirtless" in card


def test_an_ensembles_card_names_its_members_weights_and_their_files(tmp_path):
    mixed, shirtless = without_the_perfect_model(tmp_path)
    ensemble = replace(
        sample_evaluations(tmp_path / "more")[1], name="ensemble",
        params={"members": ["shirtless", "mixed"], "weights": [0.75, 0.25]},
    )  # fmt: skip
    for member, digest in ((shirtless, "11" * 32), (mixed, "22" * 32)):
        (member.model_dir / "manifest.json").write_text(json.dumps({"model.ubj": digest}))
    report = write_report(evaluations=[mixed, shirtless, ensemble], data=sample_split(tmp_path),
                          report_dir=tmp_path / "run-8", context={}, seed=0)  # fmt: skip
    card = render_model_card(report.findings, [mixed, shirtless, ensemble], {}, report.directory)
    assert card.startswith("# Model card: ensemble\n")
    assert "its members' class probabilities: shirtless (0.750), mixed (0.250)." in card
    assert f"| `{shirtless.model_dir / 'model.ubj'}` | `{'11' * 32}` |" in card
    assert f"| `{mixed.model_dir / 'model.ubj'}` | `{'22' * 32}` |" in card
    assert '`shirtless`:\n\n```json\n{"depth": 3}\n```' in card
    assert "## Training data\n\nNot recorded for this run.\n" in card
    assert card == (report.directory / "model_card.md").read_text()


def test_the_card_is_the_selection_splits_choice_not_the_test_sets(tmp_path):
    mixed, shirtless = without_the_perfect_model(tmp_path)
    mixed = replace(mixed, selection_accuracy=shirtless.selection_accuracy + 0.01)
    report = write_report(evaluations=[mixed, shirtless], data=sample_split(tmp_path),
                          report_dir=tmp_path / "run-9", context={}, seed=0)  # fmt: skip
    card = (report.directory / "model_card.md").read_text()
    assert report.findings.leaderboard.model.tolist() == ["shirtless", "mixed"]
    assert report.findings.chosen == "mixed"
    assert card.startswith("# Model card: mixed\n")
    assert "it ranks 2 of 2 by test accuracy" in card
    assert f"| test accuracy | {mixed.test_accuracy:.4f} (" in card
    assert json.loads((report.directory / "metrics.json").read_text())["chosen_model"] == "mixed"
    assert report.findings.gallery_model == "mixed"
    assert (
        f"The run chose **mixed** by its selection accuracy ({mixed.selection_accuracy:.4f}), "
        "before the test set was read, so its test accuracy is a fair estimate; it ranks 2 on "
        f"the test set ({mixed.test_accuracy:.4f})"
    ) in (report.directory / "report.md").read_text()
