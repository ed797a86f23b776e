"""A small document model (headings, paragraphs, tables, figures, code) rendered as Markdown or self-contained HTML.

The report is built once as a list of blocks and written twice: ``report.md`` links
the figure files by relative path, ``report.html`` embeds the PNG figures as base64
data so that it is a single file.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class BulletList:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Code:
    text: str
    language: str = ""
    #: When set, the code is folded under this summary line (an HTML details element).
    summary: str = ""


Block = Heading | Paragraph | BulletList | Table | Figure | Code

_HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { font-style: italic; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def render_markdown(blocks: Sequence[Block], *, document_dir: Path) -> str:
    """Render blocks as GitHub-flavoured Markdown; figure links are relative to ``document_dir``."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, BulletList):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            parts.append(_markdown_table(block))
        elif isinstance(block, Figure):
            link = Path(os.path.relpath(block.path, document_dir)).as_posix()
            parts.append(f"![{block.caption}]({link})\n\n*{block.caption}*")
        elif isinstance(block, Code):
            fenced = f"```{block.language}\n{block.text}\n```"
            if block.summary:
                fenced = f"<details><summary>{html.escape(block.summary)}</summary>\n\n{fenced}\n\n</details>"
            parts.append(fenced)
    return "\n\n".join(parts) + "\n"


def render_html(blocks: Sequence[Block], *, title: str) -> str:
    """Render blocks as one HTML page with the PNG figures embedded as base64 data URIs."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_HTML_STYLE}</style></head><body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, BulletList):
            items = "".join(f"<li>{_inline_html(item)}</li>" for item in block.items)
            parts.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            parts.append(_html_table(block))
        elif isinstance(block, Figure):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, Code):
            code = f"<pre><code>{html.escape(block.text)}</code></pre>"
            if block.summary:
                code = f"<details><summary>{html.escape(block.summary)}</summary>{code}</details>"
            parts.append(code)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown_table(table: Table) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    lines = [f"*{table.caption}*", ""] if table.caption else []
    lines.append(row(table.columns))
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines.extend(row(cells) for cells in table.rows)
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    header = "".join(f"<th>{html.escape(column)}</th>" for column in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_inline_html(cell)}</td>" for cell in cells) + "</tr>" for cells in table.rows
    )
    return f"<table>{caption}<thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _inline_html(text: str) -> str:
    """Escape text and turn Markdown `code` and **bold** spans into HTML."""
    escaped = html.escape(text)
    pieces = escaped.split("`")
    for i in range(1, len(pieces), 2):
        pieces[i] = f"<code>{pieces[i]}</code>"
    escaped = "".join(pieces)
    pieces = escaped.split("**")
    for i in range(1, len(pieces), 2):
        pieces[i] = f"<strong>{pieces[i]}</strong>"
    return "".join(pieces)
