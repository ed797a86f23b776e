"""Markdown and HTML rendering of the report's document blocks."""

from __future__ import annotations

import base64

from repro_lits.report_document import (
    BulletList,
    Code,
    Figure,
    Heading,
    Paragraph,
    Table,
    render_html,
    render_markdown,
)

# A valid 1x1 RGBA PNG image, as raw bytes.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def blocks(tmp_path):
    figure = tmp_path / "figures" / "plot.png"
    figure.parent.mkdir()
    figure.write_bytes(PIXEL)
    return [
        Heading(1, "Report <1>"),
        Paragraph("Uses `code` and **bold** & more."),
        BulletList(("first", "second")),
        Table(("a", "b|c"), (("1", "x|y"),), caption="numbers"),
        Figure(figure, "a plot"),
        Code('{"key": "<value>"}', "json", summary="Config"),
    ]


def test_markdown_rendering(tmp_path):
    document_dir = tmp_path / "results" / "tiny"
    text = render_markdown(blocks(tmp_path), document_dir=document_dir)
    assert text.startswith("# Report <1>\n")
    assert "- first\n- second" in text
    assert "| a | b\\|c |" in text
    assert "| 1 | x\\|y |" in text
    assert "![a plot](../../figures/plot.png)" in text
    assert "<details><summary>Config</summary>" in text
    assert '```json\n{"key": "<value>"}\n```' in text


def test_html_rendering_escapes_and_embeds(tmp_path):
    page = render_html(blocks(tmp_path), title="Report")
    assert "<h1>Report &lt;1&gt;</h1>" in page
    assert "<p>Uses <code>code</code> and <strong>bold</strong> &amp; more.</p>" in page
    assert "<caption>numbers</caption>" in page
    assert f'src="data:image/png;base64,{base64.b64encode(PIXEL).decode()}"' in page
    assert "&lt;value&gt;" in page
    assert "<details><summary>Config</summary>" in page
