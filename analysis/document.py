"""A tiny document model rendered to Markdown and to self-contained HTML (figures embedded).

A document is a title and a list of blocks: Text, Bullets, Table (a DataFrame) and
FigureRef (a PNG saved beside the report). Both renderers walk the same blocks, so the two
reports always say the same thing.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame
    table_id: str


@dataclass(frozen=True)
class FigureRef:
    name: str  # PNG file name (without extension) in the output folder
    caption: str


Block = Heading | Text | Bullets | Table | FigureRef
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;font-size:12px;margin:1em 0}th,td{border:1px solid #ccc;
padding:3px 6px;text-align:left}th{background:#eee}figure{margin:1.5em 0}
img{max-width:100%}.PASS{background:#d8f5d0}.FAIL{background:#f8d4d4}
.INSUFFICIENT{background:#f3efc8}figcaption{font-size:13px;color:#333}"""


def cell_text(value) -> str:
    """A table cell: floats to 4 significant digits, NaN/None blank."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(title: str, blocks: list[Block]) -> str:
    """The document as Markdown; figures link to their PNG files."""
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += [f"## {b.text}", ""]
        elif isinstance(b, Text):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            cols = list(b.frame.columns)
            if not cols:  # a check with no cell in this folder: no header-only table
                out += ["_none_", ""]
                continue
            out.append("| " + " | ".join(cols) + " |")
            out.append("|" + "---|" * len(cols))
            for row in b.frame.itertuples(index=False):
                out.append("| " + " | ".join(cell_text(v).replace("|", "/") for v in row) + " |")
            out.append("")
        elif isinstance(b, FigureRef):
            out += [f"![{b.caption}]({b.name}.png)", "", f"*{b.caption}* ([SVG]({b.name}.svg))",
                    ""]
    return "\n".join(out)


def html_table(frame: pd.DataFrame, table_id: str) -> str:
    """An HTML table; a 'verdict' column's cells get the verdict as their class."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for col, v in zip(frame.columns, row, strict=True):
            cls = f' class="{html.escape(str(v))}"' if col in ("verdict", "expected") else ""
            cells.append(f"<td{cls}>{html.escape(cell_text(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def to_html(title: str, blocks: list[Block], folder: Path) -> str:
    """The document as one HTML file with every PNG embedded as a base64 data URI."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h2>{html.escape(b.text)}</h2>")
        elif isinstance(b, Text):
            body.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Bullets):
            items = "".join(f"<li>{html.escape(i)}</li>" for i in b.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(b, Table):
            body.append(html_table(b.frame, b.table_id))
        elif isinstance(b, FigureRef):
            data = base64.b64encode((folder / f"{b.name}.png").read_bytes()).decode()
            body.append(f'<figure id="{b.name}"><img alt="{html.escape(b.caption)}" '
                        f'src="data:image/png;base64,{data}"><figcaption>'
                        f"{html.escape(b.caption)}</figcaption></figure>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
