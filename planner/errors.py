"""User-facing errors: each carries one line that says what is wrong and where.

The CLI prints `str(err)` alone and exits 2; anything else reaching the CLI is
a bug and keeps its traceback.
"""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (another library's error inside
    one of ours); its type's name when it has no message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class UserError(Exception):
    """Bad input from the user (a spec, a plan, a flag, a file)."""


class SpecError(UserError):
    """A spec problem, located as `FILE:LINE FIELD.PATH: message`."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.format())

    def format(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f" {self.field}"
        # One line, always: a key or name with a newline in it must not break it.
        return f"{where}: {self.message}".replace("\r", "\\r").replace("\n", "\\n")


class PlanError(UserError):
    """A plan that cannot be loaded or does not fit its spec or cluster."""
