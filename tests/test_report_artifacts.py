"""The Prefect summary artifact: the run at a glance, its key figures inline."""

from __future__ import annotations

import base64
import re
from dataclasses import replace

import numpy as np
import pytest

from tasks.core.contracts import CLASS_NAMES
from tasks.evaluation.report import artifacts as artifacts_module
from tasks.evaluation.report.analysis import analyse
from tasks.evaluation.report.artifacts import publish_artifacts, summary_markdown
from tests.support.samples import Y_TEST, sample_evaluations

INLINE_PNG = re.compile(r"!\[([^]]*)\]\(data:image/png;base64,([^)]+)\)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE_BOUND = 350_000  # bytes of markdown; a full run makes 200-280 KB


@pytest.fixture
def findings(tmp_path):
    evaluations = sample_evaluations(tmp_path)
    return analyse(
        evaluations=evaluations,
        class_names=CLASS_NAMES,
        y_test=Y_TEST,
        predicted={e.name: e.test_predictions.load() for e in evaluations},
        probabilities={e.name: e.test_probabilities.load() for e in evaluations},
        seed=0,
        split_images={"train": 400, "validation": 50, "selection": 50, "test": 100},
    )


def test_summary_shows_the_confusion_grid_and_the_fit_time_plot_inline(findings, tmp_path):
    report_dir = tmp_path / "reports" / "run-1"
    markdown = summary_markdown(findings, report_dir)

    images = INLINE_PNG.findall(markdown)
    assert [alt for alt, _ in images] == ["confusion matrices, row-normalised", "fit time (s)"]
    for _, payload in images:
        assert base64.b64decode(payload, validate=True)[:8] == PNG_SIGNATURE
    assert markdown.startswith("# Run run-1")
    assert markdown.index("| 1 | perfect |") < markdown.index("| 3 | mixed |")
    assert all(f"- {finding}" in markdown for finding in findings.analysis)
    page = (report_dir.resolve() / "report.html").as_uri()
    assert f"[report.html]({page})" in markdown
    assert len(markdown.encode()) < SIZE_BOUND


def test_summary_of_a_full_run_stays_small(findings, tmp_path):
    # Six models and the ensemble, every cell of their confusion matrices labelled:
    # the largest grid a run draws.
    rng = np.random.default_rng(0)
    confusions = {
        f"model_{k}": (rng.integers(10, 40, (10, 10)) + 700 * np.eye(10, dtype=int)).tolist()
        for k in range(7)
    }
    markdown = summary_markdown(replace(findings, confusions=confusions), tmp_path)
    assert len(INLINE_PNG.findall(markdown)) == 2
    assert len(markdown.encode()) < SIZE_BOUND


@pytest.mark.parametrize("classes", [20, 100])
def test_a_summary_of_many_classes_stays_as_small(findings, tmp_path, classes):
    rng = np.random.default_rng(0)
    confusions = {
        f"model_{k}": (
            rng.integers(10, 40, (classes, classes)) + 700 * np.eye(classes, dtype=int)
        ).tolist()
        for k in range(7)
    }
    names = tuple(f"class number {k}" for k in range(classes))
    many = replace(findings, confusions=confusions, class_names=names)
    markdown = summary_markdown(many, tmp_path)
    assert "Classes: class number 0, " in markdown
    assert len(markdown.encode()) < SIZE_BOUND


def test_published_summary_is_the_rendered_one(findings, tmp_path, monkeypatch):
    published = {}

    def record(key, **artifact):
        published[key] = artifact

    monkeypatch.setattr(artifacts_module, "create_table_artifact", record)
    monkeypatch.setattr(artifacts_module, "create_markdown_artifact", record)
    publish_artifacts(findings, tmp_path / "run-1")

    table = published["fashion-mnist-leaderboard"]["table"]
    assert [row["model"] for row in table] == ["perfect", "shirtless", "mixed"]
    summary = published["fashion-mnist-summary"]["markdown"]
    assert summary == summary_markdown(findings, tmp_path / "run-1")
