"""Did-you-mean: the one place that finds the nearest valid name to a mistyped one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The valid name nearest to `word`, compared without case (`adamm` -> `Adam`), or None."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(str(choice).lower(), str(choice))
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'filters'?)' when a close match exists, else ''."""
    close = closest(word, choices)
    return f" (did you mean '{close}'?)" if close else ""
