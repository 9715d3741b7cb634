"""The document model (headings, paragraphs, tables, figures) and its two renderings, Typst and Markdown.

The report's content is built once as a list of blocks and rendered twice, so the PDF and the Markdown
version cannot drift apart.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

FIGURE_DPI = 200
TEXT_WIDTH_CM, MAX_FIGURE_HEIGHT_CM = 21.0 - 2 * 1.8, 20.0  # A4 less the margins set in to_typst


@dataclass
class Heading:
    text: str
    level: int = 1


@dataclass
class Para:
    text: str
    strong: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list]
    widths: list[float | None] | None = None  # relative column widths (Typst fr units); None: as wide as its text
    size: float = 8.5  # font size in pt: wide tables get smaller type so they fit the page
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class PageBreak:
    pass


@dataclass
class Document:
    title: str
    subtitle: str
    blocks: list = field(default_factory=list)


def esc(text) -> str:
    """Escape a value for Typst markup (every markup character, so no value can start a list or comment)."""
    out = str(text)
    for ch in "\\#$*_@<>`[]~/-+=":
        out = out.replace(ch, "\\" + ch)
    return out


def _print_width(png: Path) -> float:
    """Width in cm at which a figure prints at its drawn size (fonts as designed), shrunk only to fit the page."""
    width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the PNG header (IHDR)
    natural = width / FIGURE_DPI * 2.54
    return min(natural, TEXT_WIDTH_CM, MAX_FIGURE_HEIGHT_CM * width / height)


def _typst_cell(value) -> str:
    return "[" + " \\ ".join(esc(line) for line in str(value).split("\n")) + "]"


def to_typst(doc: Document) -> str:
    out = [
        '#set page(paper: "a4", margin: (x: 1.8cm, y: 2cm), numbering: "1")',
        "#set text(size: 10pt)",
        '#set heading(numbering: "1.1")',
        "#set par(justify: false)",
        "#show figure.caption: set text(size: 9pt)",
        f'#align(center)[#text(size: 15pt, weight: "bold")[{esc(doc.title)}] \\ #text(size: 9pt)[{esc(doc.subtitle)}]]',
    ]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append("=" * b.level + " " + esc(b.text))
        elif isinstance(b, Para):
            out.append(f"*{esc(b.text)}*" if b.strong else esc(b.text))
        elif isinstance(b, Table):
            cols = (
                "(" + ", ".join(f"{w}fr" if w else "auto" for w in b.widths) + ")" if b.widths else str(len(b.header))
            )
            head = ", ".join(f"[*{esc(h)}*]" for h in b.header)
            body = ", ".join(_typst_cell(c) for r in b.rows for c in r)
            table = (
                f"#[#set text(size: {b.size}pt)\n#table(columns: {cols}, stroke: 0.4pt + gray, inset: 2.5pt, "
                f"align: left, table.header({head}), {body})]"
            )
            out.append(f"#figure(kind: table, caption: [{esc(b.caption)}])[{table}]" if b.caption else table)
        elif isinstance(b, Figure):
            out.append(
                f'#figure(image("{b.path.name}", width: {_print_width(b.path):.1f}cm), caption: [{esc(b.caption)}])'
            )
        elif isinstance(b, PageBreak):
            out.append("#pagebreak()")
    return "\n\n".join(out) + "\n"


def _md(text) -> str:
    out = str(text)
    for ch in "\\*_`|<>[]":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\n", "<br>")


def to_markdown(doc: Document, figures_from: Path) -> str:
    """Markdown of the same blocks; figure links are relative to ``figures_from`` (the .md file's folder)."""
    out = [f"# {_md(doc.title)}", f"_{_md(doc.subtitle)}_"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append("#" * (b.level + 1) + " " + _md(b.text))
        elif isinstance(b, Para):
            out.append(f"**{_md(b.text)}**" if b.strong else _md(b.text))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(_md(h) for h in b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in b.rows]
            out.append((f"_{_md(b.caption)}_\n\n" if b.caption else "") + "\n".join(lines))
        elif isinstance(b, Figure):
            out.append(f"![{_md(b.caption)}]({os.path.relpath(b.path, figures_from)})\n\n_{_md(b.caption)}_")
    return "\n\n".join(out) + "\n"
