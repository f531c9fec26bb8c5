"""YAML indentation mistakes told in words: which line, and what it fails to line up with.

PyYAML says `expected <block end>, but found '?'` or `mapping values are not allowed here`,
often at the line after the wrong one. Once it has refused a file, this module reads the
lines up to its mark as an outline (each line's indent, its `- ` markers, its key) and finds
the first line that lines up with nothing above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[^\s#'"\[\]{}:,][^:#]*?)\s*:(?:\s|$)""")
Found = tuple[int, int, str, str]  # line (from 1), column (from 0), what is wrong, the fix


@dataclass(frozen=True)
class _Line:
    number: int
    indent: int
    dashes: tuple[int, ...]  # the column of each `- ` that starts the line
    column: int  # where the content after the dashes starts
    key: str | None
    value: str  # after `key:` (comment removed), or the whole content

    @property
    def opens(self) -> bool:
        """True where deeper lines may follow: `key:` with no value, a bare `-`, `key: |`."""
        return self.value == "" or self.value.startswith(("|", ">", "&"))

    def name(self) -> str:
        return f"`{self.key}:` on line {self.number}" if self.key else f"line {self.number}"


def _read(number: int, text: str) -> _Line | None:
    stripped = text.lstrip(" ")
    if not stripped.strip() or stripped.startswith("#"):
        return None
    indent = column = len(text) - len(stripped)
    dashes = []
    rest = stripped
    while rest == "-" or rest.startswith("- "):
        dashes.append(column)
        after = rest[1:]
        column += 1 + len(after) - len(after.lstrip(" "))
        rest = after.lstrip(" ")
    match = _KEY.match(rest)
    value = rest[match.end() :] if match else rest
    value = re.sub(r"(^|\s)#.*$", "", value).strip()
    key = match.group(1).strip("'\"") if match else None
    return _Line(number, indent, tuple(dashes), column, key, value)


def _spaces(n: int) -> str:
    return f"{n} space" + ("" if n == 1 else "s")


def _first_misplaced(lines: list[str], last: int) -> Found | None:
    """The first line up to `last` whose indentation lines up with no block above it."""
    stack: list[tuple[int, _Line, bool]] = []  # open levels: (column, line, is a `-`)
    previous: _Line | None = None
    stack_first: _Line | None = None
    brackets, block = 0, None
    for number in range(1, min(last, len(lines)) + 1):
        text = lines[number - 1]
        line = _read(number, text)
        if line is None:
            continue
        if brackets > 0:  # inside a [ ... ] or { ... } written over several lines
            brackets += text.count("[") + text.count("{") - text.count("]") - text.count("}")
            continue
        if block is not None and line.indent > block:  # the text of a `key: |` block
            continue
        block, n = None, line.indent
        if previous is None:
            stack_first = line
        else:
            popped = [entry for entry in stack if entry[0] > n]
            stack = [entry for entry in stack if entry[0] <= n]
            top = stack[-1] if stack else None
            if top is None:  # the first line stood further right than this one
                first = stack_first
                return (
                    first.number,
                    first.indent,
                    f"line {first.number} is indented {_spaces(first.indent)}, more than the "
                    f"lines after it (line {number} has {n})",
                    "start the top-level keys at the beginning of their lines",
                )
            if popped and top[0] < n:
                above = min(reversed(popped), key=lambda entry: entry[0])  # the latest
                return _between(line, above, top)
            if not popped and n > previous.column and not previous.opens:
                return (
                    number,
                    n,
                    f"line {number} is indented more than {previous.name()}, "
                    + ("which already has a value" if previous.key else "which holds no block"),
                    f"indent it {_spaces(previous.column)}, like {previous.name()}",
                )
            same = [entry for entry in stack if entry[0] == n]
            compact = previous is same[-1][1] and previous.opens if same else False  # `key:\n- a`
            if line.dashes and same and not same[-1][2] and not compact:
                items = [e for e in popped if e[2]] or [e for e in reversed(stack) if e[2]]
                return (
                    number,
                    n,
                    f"line {number}'s `-` lines up with {same[-1][1].name()}, "
                    "not with the list items above it",
                    f"indent it {_spaces(items[0][0])}, like the `-` on line {items[0][1].number}"
                    if items
                    else "indent the list under the key it belongs to",
                )
            if same and not line.dashes and all(is_dash for _, _, is_dash in same):
                item = same[-1][1]
                return (
                    number,
                    n,
                    f"line {number} lines up with the `-` of the list item on line "
                    f"{item.number}, not with its keys",
                    f"indent it {_spaces(item.column)} to belong to that item, "
                    "or start a new item with `- `",
                )
        stack += [(dash, line, True) for dash in line.dashes] + [(line.column, line, False)]
        previous = line
        brackets = line.value.count("[") + line.value.count("{")
        brackets -= line.value.count("]") + line.value.count("}")
        block = n if line.value.startswith(("|", ">")) else None
    return None


def _between(line: _Line, above: tuple, below: tuple | None) -> Found:
    def named(entry: tuple) -> str:
        column, other, is_dash = entry
        what = f"the `-` on line {other.number}" if is_dash else other.name()
        return f"{what} ({column})"

    between = f"between {named(above)} and {named(below)}" if below else f"less than {named(above)}"
    fix = f" or {_spaces(below[0])} (like line {below[1].number})" if below else ""
    return (
        line.number,
        line.indent,
        f"line {line.number} is indented {_spaces(line.indent)}, {between}: "
        "it lines up with no line above it",
        f"indent it {_spaces(above[0])} (like line {above[1].number}){fix}",
    )


def _unclosed(lines: list[str], line: int, opener: str, closer: str) -> Found | None:
    """The line whose `[` (or `{`) is still open where PyYAML met the next key."""
    depth = 0
    for number in range(min(line, len(lines)), 0, -1):
        text = lines[number - 1]
        depth += text.count(closer) - text.count(opener)
        if depth < 0:
            return (
                number,
                text.rindex(opener),
                f"the `{opener}` on line {number} is not closed",
                f"close it with `{closer}` (a list or mapping written inline stays on its line)",
            )
    return None


def in_words(
    lines: list[str], problem: str, line: int, column: int, context_line: int | None = None
) -> Found | None:
    """What PyYAML's `problem` at `line` (from 1), `column` (from 0) means, or None.

    `context_line`: where PyYAML began the thing it failed to finish (a key without its colon).
    """
    if "'\\t'" in problem:
        return (
            line,
            column,
            f"line {line} is indented with a tab; YAML indents with spaces only",
            "replace the tab with spaces (2 for each level, as in configs/)",
        )
    closing = re.match(r"expected ',' or '([\]}])'", problem)
    if closing:
        return _unclosed(lines, line, "[" if closing.group(1) == "]" else "{", closing.group(1))
    if problem == "could not find expected ':'" and context_line:
        found = _first_misplaced(lines, context_line - 1)
        return found or _no_colon(_read(context_line, lines[context_line - 1]))
    if not (
        problem.startswith(("expected <block end>", "expected '<document start>'"))
        or "mapping values" in problem
    ):
        return None
    found = _first_misplaced(lines, line)
    token = re.search(r"but found '([\[\]{}])'", problem)
    if not found and token and line <= len(lines):
        return (
            line,
            column,
            f"line {line} goes on after its value: `{token.group(1)}` where the line should end",
            "remove it, or put the whole value in quotes",
        )
    if found or "mapping values" not in problem or line > len(lines):
        return found
    here = _read(line, lines[line - 1])
    if here and here.key and lines[line - 1].index(":", here.column) < column:
        return (
            line,
            column,
            f"line {line} has a second `: ` in the value of `{here.key}:`",
            f'put the value in quotes: {here.key}: "..."',
        )
    before = next(
        (_read(n, lines[n - 1]) for n in range(line - 1, 0, -1) if _read(n, lines[n - 1])), None
    )
    if before and not before.key and here and before.column == here.column:
        return _no_colon(before)
    return None


def _no_colon(line: _Line | None) -> Found | None:
    if line is None or line.key:
        return None
    return (
        line.number,
        line.column,
        f"line {line.number} has no colon: '{line.value}' is not `key: value`",
        "write a colon and a space after the key",
    )
