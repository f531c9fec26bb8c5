"""The errors cnnctl shows to people, and the exit code each one ends with.

Every error a user can cause is a `CnnctlError`: Click prints its message on
stderr (never a traceback) and exits with its code. The commands in `cli.py`
hold no try/except of their own.
"""

from __future__ import annotations

import errno

import click


class CnnctlError(click.ClickException):
    """A problem the user can fix: shown as one or two lines, exit code 2."""

    exit_code = 2

    def __init__(
        self, message: str, hint: str | None = None, excerpt: tuple[int, str, int] | None = None
    ) -> None:
        super().__init__(message)
        self.hint = hint
        self.excerpt = excerpt  # (line number, the line's text, column from 0): shown with a caret

    def format_message(self) -> str:
        lines = [_one_line(self.message), *_caret(self.excerpt)]
        lines += [f"  hint: {_one_line(self.hint)}"] if self.hint else []
        return "\n".join(lines)


def _caret(excerpt: tuple[int, str, int] | None) -> list[str]:
    """The user's line and a caret under the spot, as compilers show it (two lines, or none)."""
    if excerpt is None:
        return []
    number, text, column = excerpt
    gutter = " " * len(str(number))
    shown = _one_line(text.rstrip("\n"))
    return [
        f"  {number} | {shown}",
        f"  {gutter} | {' ' * len(_one_line(text[:column]))}^",
    ]


def _one_line(text: str) -> str:
    """Control characters shown escaped, so a message stays one line.

    They come from a user's file or argument.
    """
    from cnnctl.escape import safe_text

    return safe_text(text)


class ConfigError(CnnctlError):
    """The config file, or a `--set` override, is wrong."""


class PathError(ConfigError):
    """A dotted path (`--set`, a `tune:` parameter) that leads nowhere in the config; the
    caller puts the place it came from in front of the message."""


class DataError(CnnctlError):
    """A dataset or an input image cannot be found or read."""


class ModelFileError(CnnctlError):
    """A model file is missing, unreadable or unsafe to load."""


class RunError(CnnctlError):
    """A run folder is missing or unusable."""


class TrainingFailed(CnnctlError):
    """Training started but could not finish (exit code 1)."""

    exit_code = 1


class WorkerLost(TrainingFailed):
    """A worker of a multi-worker run died or stopped answering; the others stop (exit code 1)."""


class Interrupted(CnnctlError):
    """The user stopped the work with Ctrl-C or SIGTERM (exit code 130).

    Asked for, so not shown as an error: `stopped; ...` and how to go on.
    """

    exit_code = 130

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True, file=file)


class InternalError(CnnctlError):
    """A bug in cnnctl, not the user's mistake (exit code 1)."""

    exit_code = 1


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, or its type's name.

    Libraries' messages run long; a longer line is cut between words, and says so with "…".
    """
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    line = lines[0]
    if len(line) <= limit:
        return line
    space = line.rfind(" ", limit // 2, limit - 1)
    return line[: space if space > 0 else limit - 1].rstrip(" ,;:([{") + "…"


def explain(error: BaseException) -> CnnctlError:
    """The one place that decides how any exception reaches the user: message, hint, exit code."""
    if isinstance(error, CnnctlError):
        return error
    if isinstance(error, KeyboardInterrupt):
        return Interrupted("interrupted")
    if isinstance(error, MemoryError) or type(error).__name__ == "ResourceExhaustedError":
        return TrainingFailed(
            "out of memory", "lower train.batch_size, the image size or the model's size"
        )
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return TrainingFailed(
            f"{error.filename or 'disk'}: no space left", "free some disk space and try again"
        )
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CnnctlError(
            f"{error.filename or 'file'}: {error.strerror}", "choose a folder you can write to"
        )
    return InternalError(
        f"internal error: {type(error).__name__}: {first_line(error, 300)}",
        "run again with --debug for the traceback, and report it",
    )
