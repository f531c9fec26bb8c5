"""Names from files reach the screen and CSV files as data, never as commands.

A class name or file name may hold terminal escape sequences (ESC, OSC: they can
retitle a window or recolour the screen), Rich markup (`[link=...]`), or, in a
spreadsheet, a formula (`=HYPERLINK(...)`). These helpers show them as text.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP "CSV injection"


def safe_text(value: Any) -> str:
    """`value` as one printable line: control characters shown escaped (`\\x1b`, `\\n`)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def safe(value: Any, style: str = "") -> Text:
    """A Rich `Text` of `value`: control characters escaped, `[markup]` shown, not interpreted."""
    return Text(safe_text(value), style=style)


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: formulas get a leading `'` (OWASP), control
    characters are escaped (CSV goes to terminals too: an OSC sequence retitles one); numbers
    pass."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_START):
        value = "'" + value
    return safe_text(value) if isinstance(value, str) else value
