from __future__ import annotations

import base64
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from tasks.evaluation.report.html import CONTENT_SECURITY_POLICY, render_html

MARKDOWN = """# Run `r1`

| rank | model | test_accuracy |
|---|---|---|
| 1 | cnn | 0.9300 |
| 2 | svm_rbf | 0.8986 |

- **cnn** ranks first <script>alert(1)</script>

![pareto](pareto.png)
"""


@pytest.fixture
def figure_dir(tmp_path):
    figure, axes = plt.subplots(figsize=(2, 2))
    axes.plot([0, 1], [1, 0])
    figure.savefig(tmp_path / "pareto.png")
    plt.close(figure)
    return tmp_path


def test_page_embeds_figures_and_renders_tables(figure_dir):
    page = render_html(MARKDOWN, figure_dir, "run <r1>")

    (source,) = re.findall(r'<img src="([^"]+)" alt="pareto"', page)
    media, payload = source.split(",", 1)
    assert media == "data:image/png;base64"
    assert base64.b64decode(payload) == (figure_dir / "pareto.png").read_bytes()
    assert "<title>run &lt;r1&gt;</title>" in page
    assert f'content="{CONTENT_SECURITY_POLICY}"' in page
    rows = re.findall(r"<tr>\s*<td>(\d)</td>\s*<td>(\w+)</td>", page)
    assert rows == [("1", "cnn"), ("2", "svm_rbf")]
    assert "<strong>cnn</strong>" in page
    # Raw HTML in the text is shown, never run.
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_missing_figure_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pareto\.png: the report refers to this figure"):
        render_html(MARKDOWN, tmp_path, "r1")
