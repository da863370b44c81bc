"""Stage 2b: a resolved pattern and shapes -> a Bound pattern (every axis sized)."""

from .semantics import Bound, BoundOperand  # noqa: F401  (moves here from semantics)
