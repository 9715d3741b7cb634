"""The report's prose: paragraphs and captions are Jinja2 macros in ``templates/<section>.j2``, one macro per
paragraph, named for what it says; the code passes them numbers and names, never sentences."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, autoescape=False
    )
    env.filters["f"] = format  # {{ x|f("+.3f") }}: a number in a format spec
    return env


def text(template: str, paragraph: str, **values) -> str:
    """The paragraph ``paragraph`` of ``templates/<template>.j2`` with ``values``, as one line (templates wrap
    their lines freely: every run of white space becomes one space)."""
    macro = getattr(_environment().get_template(f"{template}.j2").module, paragraph)
    return " ".join(str(macro(**values)).split())
