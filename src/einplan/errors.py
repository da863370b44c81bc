"""One family of errors: every problem einplan reports is an ``EinplanError``.

``EinplanError`` subclasses ``ValueError`` so callers that already catch
``ValueError`` keep working.  A message that concerns a place in the pattern
quotes the pattern and puts a caret under the column.
"""

from __future__ import annotations


class EinplanError(ValueError):
    """Base class of everything einplan raises about patterns and tensors."""


class PatternSyntaxError(EinplanError):
    """The pattern is not in the language."""


class PatternError(EinplanError):
    """The pattern parses but means nothing (unknown output axis, bad clause...)."""


class ShapeError(EinplanError):
    """Tensor shapes disagree with the pattern or with each other."""


class UnsupportedError(EinplanError):
    """The pattern is valid but this combination is not implemented."""


def caret(pattern: str, column: int, message: str) -> str:
    """Format ``message`` with the pattern quoted and a caret under ``column``."""
    column = max(0, min(column, len(pattern)))
    shown = "".join(c if c.isprintable() else " " for c in pattern)
    return f"{message}\n    {shown}\n    {' ' * column}^"


def at(cls: type[EinplanError], pattern: str, column: int, message: str) -> EinplanError:
    """Build an error of class ``cls`` pointing at ``column`` of ``pattern``."""
    return cls(caret(pattern, column, message))
