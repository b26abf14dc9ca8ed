"""One exception hierarchy for every user-facing failure.

Each message names the problem *and* the fix, on one line. The CLI maps any
:class:`AblagenError` to that line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations


class AblagenError(Exception):
    """A user error: bad input, not a bug. ``str(err)`` is the one-line message."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem)

    def __str__(self) -> str:
        line = self.problem if not self.fix else f"{self.problem}; {self.fix}"
        return " ".join(line.split())  # always exactly one line


class ModelFileError(AblagenError):
    """The model file is missing, unreadable, or fails to import."""


class ModelNotFoundError(AblagenError):
    """No (or more than one) model could be found in the model file."""


class InputShapeError(AblagenError):
    """The example input is missing, malformed, or does not fit the model."""


class ComponentError(AblagenError):
    """An unknown component id, kind or method, or a method a component cannot take."""


class TemplateError(AblagenError):
    """A template is missing, broken, or uses an undefined variable."""


class StudyError(AblagenError):
    """A study directory is missing, stale, corrupt or not a study."""


class OutputError(AblagenError):
    """An output location cannot be written."""


class ConfigError(AblagenError):
    """A bad option value (seeds, epochs, noise settings, ...)."""


class BackendError(AblagenError):
    """An execution backend is unavailable (e.g. Ray not installed or unreachable)."""
