"""The settings reference, generated from :data:`deploy.settings.VARIABLES`.

``python -m deploy.settings_reference`` (run by ``make generate``) rewrites the block between
``<!-- table:settings -->`` and ``<!-- /table -->`` in ``docs/settings.md``; a test fails while
the checked-in copy is stale, as for the contract's tables.
"""

from __future__ import annotations

import re
from pathlib import Path

from deploy.settings import FIELD_DEFAULTS, VARIABLES, Variable

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
_TABLE = re.compile(r"(<!-- table:settings -->\n)(.*?)\n?<!-- /table -->", re.S)


def default_text(var: Variable) -> str:
    """What an unset ``var`` gives, as the reference shows it.

    >>> default_text(Variable("X", "x", "damr_budget")), default_text(Variable("Y", "y", "topic_prefix"))
    ('0.2', '`hap.`')
    """
    if var.default is not None:
        return var.default
    value = FIELD_DEFAULTS[var.field]
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    return f"`{value}`"


def markdown_table(variables: tuple[Variable, ...] = VARIABLES) -> str:
    """One row per variable: its name, default, the :class:`~deploy.settings.Settings` field it sets, meaning."""
    rows = ["| variable | default | `Settings` field | meaning |", "|---|---|---|---|"]
    for var in variables:
        secret = "**secret** (environment only, never printed): " if var.secret else ""
        rows.append(f"| `{var.name}` | {default_text(var)} | `{var.field}` | {secret}{var.meaning} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """``text`` with its settings table regenerated; ``ValueError`` when it has no table block."""
    if not _TABLE.search(text):
        raise ValueError("no <!-- table:settings --> block")
    return _TABLE.sub(lambda m: m.group(1) + markdown_table() + "\n<!-- /table -->", text)


# python -m deploy.settings_reference: regenerate the table of docs/settings.md
if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
    print(DOC)
