"""report.html: report.md rendered as one self-contained page, its figures embedded.

One file can be mailed, attached to a ticket or opened offline and still shows every
table and figure. Its Content-Security-Policy forbids loading anything from outside
the file, so a reference that escaped embedding shows up as a browser error.
"""

from __future__ import annotations

import base64
import html
import mimetypes
from pathlib import Path

from markdown_it import MarkdownIt

CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #1f2328; }
h1, h2, h3 { line-height: 1.25; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
table { border-collapse: collapse; margin: 1em 0; display: block; overflow-x: auto;
        font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: .25em .5em; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fafbfc; }
td:nth-child(-n+2), th:nth-child(-n+2) { text-align: left; }
img { max-width: 100%; height: auto; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 4px; }
"""


def data_uri(payload: bytes, media_type: str) -> str:
    """`payload` inline, as an image source that needs no file beside the page."""
    return f"data:{media_type};base64,{base64.b64encode(payload).decode('ascii')}"


def _figure_uri(path: Path) -> str:
    media_type, _ = mimetypes.guess_type(path.name)
    if media_type is None or not media_type.startswith("image/"):
        raise ValueError(f"{path}: the report refers to a figure of unknown type")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the report refers to this figure, which does not exist")
    return data_uri(path.read_bytes(), media_type)


def render_html(markdown: str, figures_dir: Path, title: str) -> str:
    """The page for `markdown`, whose images are file names in `figures_dir`.

    Raw HTML in the markdown is escaped, not passed through.
    """
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(markdown)
    for block in tokens:
        for token in block.children or []:
            if token.type == "image":
                token.attrSet("src", _figure_uri(figures_dir / str(token.attrGet("src"))))
    body = parser.renderer.render(tokens, parser.options, {})
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )
