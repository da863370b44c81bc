"""Stage 1: text -> a small frozen AST with source columns.

The grammar lives in ``grammar/einplan.lark`` (shipped inside the wheel as
``einplan/grammar/einplan.lark``).  Parsing is pure: it knows nothing about
tensors, sizes or the meaning of a repeated name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import lark

from .errors import PatternSyntaxError, at

REDUCERS = ("sum", "max", "min", "mean", "logsumexp", "argmax", "argmin", "prod", "any", "all")
MAX_PATTERN_LENGTH = 4096
MAX_NESTING = 32  # parentheses deeper than this are refused


# --- the AST -----------------------------------------------------------------


@dataclass(frozen=True)
class Name:
    """A named axis, possibly primed: ``n``, ``n'``, ``n''``."""

    name: str
    primes: int
    column: int

    @property
    def text(self) -> str:
        return self.name + "'" * self.primes


@dataclass(frozen=True)
class Literal:
    """An axis of fixed size, as in jaxtyping: ``3``; ``1`` may be added or dropped."""

    size: int
    column: int

    @property
    def text(self) -> str:
        return str(self.size)


@dataclass(frozen=True)
class Ellipsis_:
    """A group of broadcast dims: ``...`` (``name`` is None) or ``*batch``."""

    name: str | None
    column: int

    @property
    def text(self) -> str:
        return "..." if self.name is None else "*" + self.name


@dataclass(frozen=True)
class Group:
    """A composite axis ``(h d)``: one dim made of several; ``()`` is a dim of size 1."""

    items: tuple[Axis, ...]
    column: int

    @property
    def text(self) -> str:
        return "(" + " ".join(item.text for item in self.items) + ")"


Axis = Name | Literal | Ellipsis_ | Group


@dataclass(frozen=True)
class Operand:
    axes: tuple[Axis, ...]
    column: int

    @property
    def text(self) -> str:
        return " ".join(axis.text for axis in self.axes)


@dataclass(frozen=True)
class Clause:
    """A reduction applied after the sum-product: ``| max m n``, ``| mean ...``, ``| mean *r``."""

    reducer: str
    names: tuple[Name | Ellipsis_, ...]
    column: int

    @property
    def text(self) -> str:
        return self.reducer + " " + " ".join(n.text for n in self.names)


@dataclass(frozen=True)
class Pattern:
    source: str
    inputs: tuple[Operand, ...]
    output: Operand
    clauses: tuple[Clause, ...]

    @property
    def text(self) -> str:
        """The pattern, respelled with single spaces."""
        lhs = ", ".join(op.text for op in self.inputs)
        rhs = self.output.text
        tail = "".join(" | " + c.text for c in self.clauses)
        return f"{lhs} -> {rhs}{tail}".replace("  ", " ")


# --- the grammar ---------------------------------------------------------------


def grammar_text() -> str:
    """The .lark source: from the installed package, else from the source tree."""
    try:
        packaged = resources.files("einplan") / "grammar" / "einplan.lark"
        if packaged.is_file():
            return packaged.read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):  # pragma: no cover
        pass
    in_tree = Path(__file__).resolve().parents[2] / "grammar" / "einplan.lark"
    return in_tree.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
    )


# --- tree -> AST -----------------------------------------------------------------


def _token_column(token: Any) -> int:
    return token.start_pos or 0


def _name(token: Any) -> Name:
    """A name token, its primes counted."""
    text = str(token)
    bare = text.rstrip("'")
    return Name(bare, len(text) - len(bare), _token_column(token))


def _axis(tree: Any) -> Axis:
    """One axis of lark's tree (its nodes are untyped: ``Any`` at this boundary)."""
    kind = tree.data
    if kind == "group":
        items = tuple(_axis(child) for child in tree.children)
        return Group(items, tree.meta.start_pos)
    token = tree.children[0]
    column = _token_column(token)
    if kind == "name":
        return _name(token)
    if kind == "literal":
        return Literal(int(token), column)
    if kind == "ellipsis":
        return Ellipsis_(None, column)
    if kind == "named_ellipsis":
        return Ellipsis_(str(token)[1:], column)
    raise AssertionError(f"unknown axis node {kind}")  # pragma: no cover


def _operand(tree: Any, fallback_column: int) -> Operand:
    axes = tuple(_axis(child) for child in tree.children)
    column = axes[0].column if axes else fallback_column
    return Operand(axes, column)


def _clause(tree: Any) -> Clause:
    reducer, *trees = tree.children
    axes = tuple(_axis(a) for a in trees)
    names = tuple(a for a in axes if isinstance(a, (Name, Ellipsis_)))  # all of them: the grammar allows no other
    return Clause(str(reducer), names, _token_column(reducer))


def _describe_expected(expected: set[str]) -> str:
    words = {
        "NAME": "an axis name",
        "INT": "a size",
        "ELLIPSIS": "'...'",
        "STAR_NAME": "'*name'",
        "LPAR": "'('",
        "RPAR": "')'",
        "COMMA": "','",
        "__ANON_0": "'->'",
        "VBAR": "'|'",
        "REDUCER": "a reducer (" + ", ".join(REDUCERS) + ")",
        "$END": "the end of the pattern",
    }
    named = sorted({words.get(e, repr(e)) for e in expected})
    return " or ".join(named)


def _word_at(pattern: str, column: int, extra: str = "_'") -> str:
    end = column
    while end < len(pattern) and (pattern[end].isalnum() or pattern[end] in extra):
        end += 1
    return pattern[column:end]


def _character_message(pattern: str, column: int) -> str:
    """What is wrong with the character at ``column``, and the einplan spelling where one exists."""
    char = pattern[column] if column < len(pattern) else ""
    if char == "-" and pattern[column : column + 2] != "->":
        return "expected '->'"
    if char == "*":
        word = "*" + _word_at(pattern, column + 1)
        if pattern[column + 1 : column + 2] in ("", " ", ","):
            return "'*' alone is einops' pack/unpack pattern: use einplan.pack / einplan.unpack; in a pattern, a named group is '*' then a name ('*batch')"
        return f"{word!r} is not a named group: write '*' then a name (a letter or '_' first, no primes)"
    if char == ".":
        word = _word_at(pattern, column, "_'.")
        return f"{word!r} is not an axis: an ellipsis is '...', separated by spaces"
    if char in "[]":
        return "brackets are einx's mark of a reduced axis: in einplan, leave the axis out of the output (summed) or name it in a clause, e.g. 'b n d -> b d | mean n'"
    if char.isalnum() or char in "_'":
        word = _word_at(pattern, column)
        return (
            f"{word!r} is not an axis: a name is a letter or '_' then letters, digits, '_' and trailing primes; separate axes with spaces"
        )
    return f"unexpected character {char!r}"


def _syntax_error(pattern: str, error: lark.exceptions.LarkError) -> PatternSyntaxError:
    column: int
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        column = error.pos_in_stream or 0
        message = _character_message(pattern, column)
    elif isinstance(error, lark.exceptions.UnexpectedEOF):
        column = len(pattern)
        message = "the pattern ends early: expected " + _describe_expected(set(error.expected))
    elif isinstance(error, lark.exceptions.UnexpectedToken):
        token = error.token
        column = len(pattern) if token.type == "$END" else (token.start_pos or 0)
        expected = _describe_expected(set(error.expected))
        if token.type == "$END" and "->" not in pattern:
            message = "a pattern needs '->' between the inputs and the output"
        elif token.type == "$END":
            message = "the pattern ends early: expected " + expected
        else:
            message = f"unexpected {str(token)!r}: expected {expected}"
        if error.expected == {"NAME", "ELLIPSIS", "STAR_NAME"}:
            message += " (a clause names what it reduces: '| sum n', '| mean ...')"
    else:  # pragma: no cover - lark's other errors are grammar bugs
        column, message = 0, str(error)
    return at(PatternSyntaxError, pattern, column, f"invalid einplan pattern: {message}")  # type: ignore[return-value]


def _check_nesting(pattern: str) -> None:
    depth = 0
    for column, char in enumerate(pattern):
        depth += (char == "(") - (char == ")")
        if depth > MAX_NESTING:
            raise at(
                PatternSyntaxError,
                pattern,
                column,
                f"invalid einplan pattern: composite axes nest deeper than {MAX_NESTING} levels",
            )


@functools.lru_cache(maxsize=2048)
def parse(pattern: str) -> Pattern:
    """Parse ``pattern`` into a :class:`Pattern`, or raise ``PatternSyntaxError``."""
    if not isinstance(pattern, str):
        raise TypeError(f"an einplan pattern is a str, not {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternSyntaxError(
            f"invalid einplan pattern: {len(pattern)} characters is longer than the limit of {MAX_PATTERN_LENGTH}: {pattern[:60]!r}..."
        )
    _check_nesting(pattern)
    try:
        tree: Any = _parser().parse(pattern)
    except lark.exceptions.LarkError as error:
        raise _syntax_error(pattern, error) from None
    inputs_tree, output_tree, *clause_trees = tree.children
    inputs = tuple(_operand(t, inputs_tree.meta.start_pos if not inputs_tree.meta.empty else 0) for t in inputs_tree.children)
    arrow = pattern.index("->")
    output = _operand(output_tree, arrow + 2)
    clauses = tuple(_clause(t) for t in clause_trees)
    return Pattern(pattern, inputs, output, clauses)
