"""The study report: the verdict, its methods, results, costs and provenance, as PDF (Typst) and Markdown.

A package a reader can find things in by name:

- ``document``: the document model (headings, paragraphs, tables, figures) and its two renderings, so the PDF
  and the Markdown version cannot drift apart;
- ``results``: everything the report shows, computed once from the run table (``Results``), and how arms and
  numbers are written;
- ``curves``: per run, the learning curve and reliability diagram, read from the run folders;
- ``figures``: one function per figure (``figures.PER_PART``, ``figures.WITH_CURVES``, ``figures.WHOLE``);
- ``sections``: one function per section, its prose in ``templates/<section>.j2`` (``prose``).

Every number comes from the run table, the resolved config and, where given, the shift table and the plan; the
statistics come from ``scaleaudit.stats``, the costs from ``scaleaudit.ledger``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .. import adaptive, verify
from ..files import atomic_path, read_json, write_text
from ..records import TEXT_COLUMNS, read_runs
from . import curves
from .document import Document, Figure, Heading, PageBreak, Para, Table, esc, to_markdown, to_typst
from .results import NOT_PUBLISHED, Results, arm_labels, data_efficiency, missing_runs
from .sections import document, verdict_sentence

__all__ = [
    "NOT_PUBLISHED",
    "TEXT_COLUMNS",
    "Document",
    "Figure",
    "Heading",
    "PageBreak",
    "Para",
    "Results",
    "Table",
    "arm_labels",
    "build",
    "data_efficiency",
    "document",
    "esc",
    "missing_runs",
    "read_runs",
    "to_markdown",
    "to_typst",
    "verdict_sentence",
]


def build(
    runs_csv: str | os.PathLike,
    config_json: str | os.PathLike,
    out_pdf: str | os.PathLike,
    assets: str | os.PathLike | None = None,
    metrics: list[str | os.PathLike] | None = None,
    shift_csv: str | os.PathLike | None = None,
    plan_json: str | os.PathLike | None = None,
) -> None:
    """Write the PDF and, next to it, the same report as Markdown (``.md``); figures go to ``assets``. With the
    runs' ``metrics`` files, the report adds their learning curves and reliability diagrams; with the shift table
    (runs_shift.csv), the robustness section; with the plan ``scaleaudit plan`` wrote before the study (of this
    study), the estimate against the measured cost."""
    import typst

    from .figures import figures  # matplotlib and seaborn only where figures are drawn

    runs = read_runs(runs_csv)
    config = read_json(config_json)
    verify.scores(runs, runs_csv)
    verify.seeds(adaptive.designed(runs, config), runs_csv)
    verify.rows(runs, metrics or [], runs_csv)
    out_pdf = Path(out_pdf)
    assets = Path(assets) if assets else out_pdf.with_suffix("")
    assets.mkdir(parents=True, exist_ok=True)
    res = Results.of(
        runs,
        config,
        curves=curves.load(metrics, runs, config["verdict"]["metric"]) if metrics else None,
        shift_table=pd.read_csv(shift_csv) if shift_csv else None,
        estimate=verify.plan(plan_json) if plan_json else None,
        verified=True,
    )
    doc = document(res, figures(res, assets))
    source = assets / "report.typ"
    write_text(source, to_typst(doc))
    with atomic_path(out_pdf) as tmp:
        typst.compile(str(source), output=str(tmp), root=str(assets), format="pdf")
    md = out_pdf.with_suffix(".md")
    write_text(md, to_markdown(doc, md.parent))
