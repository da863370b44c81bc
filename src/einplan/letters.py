"""torch.einsum's language, read into einplan's: ``'bhqd,bhkd->bhqk'`` -> ``'b h q d, b h k d -> b h q k'``.

``einplan.einsum`` (and ``explain``, ``code``, ``kernel`` with ``einsum=True``) take
torch.einsum's equations: single letters a-z and A-Z, spaces ignored, ``...`` for
broadcast dims, an implicit output when there is no ``->`` (``...`` first if any
operand has one, then the letters that occur exactly once, sorted), and a letter
repeated inside one operand is always a diagonal.  :func:`read` checks an equation
(errors quote it, with a caret) and :meth:`Equation.text` spells it as an einplan
pattern, one axis per letter, which :func:`einplan.resolve.resolve` reads with
``chains=False`` (torch's reading).  :func:`spelling` checks the operands' shapes
against the equation as torch does, and spells a letter of size 1 beside a larger
size as ``1`` (torch broadcasts it; einplan's named axes do not).

:func:`spaced_hint` is what a dim-count error of ``bl`` adds when its pattern is
a letter string such as ``'bhqd,bhkd->bhqk'``: einplan separates axes by spaces.
"""

from __future__ import annotations

import functools
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import EinplanError, PatternError, PatternSyntaxError, ShapeError, at
from .parse import MAX_PATTERN_LENGTH

LETTERS = frozenset(string.ascii_letters)
ELLIPSIS = "..."
READING = "torch.einsum's reading: a repeated letter is a diagonal"
BROADCAST = "a letter of size 1 beside a larger size is spelled 1: torch.einsum broadcasts it"
SUBLIST_RANGE = 52  # torch's sublist form: 0-25 are A-Z, 26-51 are a-z


@dataclass(frozen=True)
class Equation:
    """A checked torch.einsum equation: each operand's subscripts (letters and ``...``) and the output's."""

    source: str
    inputs: tuple[tuple[str, ...], ...]
    output: tuple[str, ...]

    def operand(self, index: int) -> str:
        """``operand 1 ('xip')``: an input as messages name it."""
        return f"operand {index} ('{''.join(self.inputs[index])}')"

    def text(self, ones: frozenset[tuple[int, int]] = frozenset()) -> str:
        """The einplan pattern, one axis per letter; ``ones``: (operand, position) pairs spelled ``1``."""
        spelled = (" ".join("1" if (k, p) in ones else s for p, s in enumerate(subs)) for k, subs in enumerate(self.inputs))
        return (", ".join(spelled) + " -> " + " ".join(self.output)).rstrip()

    @property
    def diagonals(self) -> tuple[tuple[int, str], ...]:
        """(operand, letter) for each letter repeated inside one operand."""
        return tuple((k, s) for k, subs in enumerate(self.inputs) for s, n in Counter(subs).items() if n > 1 and s != ELLIPSIS)


def _syntax(equation: str, column: int, message: str) -> EinplanError:
    return at(PatternSyntaxError, equation, column, f"invalid torch.einsum equation: {message}")


def _scan(equation: str) -> tuple[list[list[tuple[str, int]]], list[tuple[str, int]] | None]:
    """Each operand's subscripts with their columns, and the output's (None: no ``->``)."""
    operands: list[list[tuple[str, int]]] = [[]]
    output: list[tuple[str, int]] | None = None
    current = operands[0]
    i = 0
    while i < len(equation):
        c = equation[i]
        if c == " ":
            i += 1
        elif c in LETTERS:
            current.append((c, i))
            i += 1
        elif c == ".":
            if equation[i : i + 3] != ELLIPSIS:
                raise _syntax(equation, i, "'.' that is not part of an ellipsis '...'")
            if any(s == ELLIPSIS for s, _ in current):
                raise _syntax(equation, i, "a second '...' in one subscript list (torch.einsum allows one)")
            current.append((ELLIPSIS, i))
            i += 3
        elif c == "," and output is None:
            operands.append([])
            current = operands[-1]
            i += 1
        elif c == "-" and equation[i + 1 : i + 2] == ">" and output is None:
            output = current = []
            i += 2
        elif c == ",":  # after the '->'
            raise _syntax(equation, i, "',' in the output (the output is one subscript list)")
        elif equation[i : i + 2] == "->":
            raise _syntax(equation, i, "a second '->'")
        else:
            raise _syntax(equation, i, f"{c!r} is not a subscript: subscripts are single letters a-z, A-Z (spaces are ignored)")
    return operands, output


def _implicit(inputs: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """torch's output for an equation without ``->``: ``...`` if any operand has it, then the letters
    that occur exactly once, sorted (A-Z before a-z)."""
    counts = Counter(s for subs in inputs for s in subs if s != ELLIPSIS)
    ellipsis = (ELLIPSIS,) if any(ELLIPSIS in subs for subs in inputs) else ()
    return ellipsis + tuple(sorted(s for s, n in counts.items() if n == 1))


@functools.lru_cache(maxsize=2048)
def read(equation: str) -> Equation:
    """Check a torch.einsum equation and read it (cached: equations recur)."""
    if not isinstance(equation, str):
        raise TypeError(f"a torch.einsum equation is a str, not {type(equation).__name__}")
    if len(equation) > MAX_PATTERN_LENGTH // 2:
        raise PatternSyntaxError(
            f"a torch.einsum equation may have at most {MAX_PATTERN_LENGTH // 2} characters, this one has {len(equation)}"
        )
    operands, output = _scan(equation)
    inputs = tuple(tuple(s for s, _ in subs) for subs in operands)
    if output is None:
        return Equation(equation, inputs, _implicit(inputs))
    present = {s for subs in inputs for s in subs}
    seen: set[str] = set()
    for s, column in output:
        if s in seen:
            raise at(PatternError, equation, column, f"output subscript {s!r} appears more than once in the output")
        if s != ELLIPSIS and s not in present:
            raise at(PatternError, equation, column, f"output subscript {s!r} is in no input operand")
        seen.add(s)
    return Equation(equation, inputs, tuple(s for s, _ in output))


def _dims(equation: Equation, index: int, shape: Sequence[int]) -> list[tuple[int, int]]:
    """(position, size) of each letter of one operand, after a check of its dim count."""
    subs = equation.inputs[index]
    letters = len(subs) - (ELLIPSIS in subs)
    where = f"{equation.operand(index)} of '{equation.source}'"
    if ELLIPSIS not in subs and len(shape) != letters:
        raise ShapeError(f"{where} has {letters} subscript(s) but the tensor has {len(shape)} dims, shape {tuple(shape)}, and no '...'")
    if len(shape) < letters:
        raise ShapeError(f"{where} needs at least {letters} dims but the tensor has {len(shape)}, shape {tuple(shape)}")
    found = []
    dim = 0
    for position, s in enumerate(subs):
        if s == ELLIPSIS:
            dim += len(shape) - letters
            continue
        found.append((position, shape[dim]))
        dim += 1
    return found


def _ellipsis_dims(equation: Equation, index: int, shape: Sequence[int]) -> tuple[int, ...]:
    subs = equation.inputs[index]
    if ELLIPSIS not in subs:
        return ()
    start = subs.index(ELLIPSIS)
    return tuple(shape[start : start + len(shape) - len(subs) + 1])


def _check_broadcast(equation: Equation, shapes: Sequence[Sequence[int]]) -> None:
    """The dims that ``...`` covers broadcast (right-aligned) across the operands, as in torch."""
    seen: dict[int, tuple[int, int]] = {}  # dim from the right -> (size, operand)
    for k, shape in enumerate(shapes):
        dims = _ellipsis_dims(equation, k, shape)
        for back, size in enumerate(reversed(dims)):
            other = seen.get(back)
            if other is not None and size != 1 and other[0] != 1 and size != other[0]:
                raise ShapeError(
                    f"dim {len(dims) - 1 - back} covered by '...' in {equation.operand(k)} has size {size}, which does not broadcast "
                    f"with size {other[0]} in {equation.operand(other[1])} (in '{equation.source}')"
                )
            if other is None or other[0] == 1:
                seen[back] = (size, k)


def spelling(equation: str, shapes: Sequence[Sequence[int]]) -> str:
    """The einplan pattern for ``equation`` at these shapes, after torch's checks of them: as many
    operands as subscript lists, each one's dim count, equal sizes along a diagonal, and sizes of
    one letter equal or 1 (a 1 beside a larger size is spelled ``1``: torch broadcasts it)."""
    read_ = read(equation)
    if len(shapes) != len(read_.inputs):
        raise ShapeError(f"'{equation}' has {len(read_.inputs)} operand(s), but {len(shapes)} tensor(s) were given")
    sizes: dict[str, list[tuple[int, int, int]]] = {}  # letter -> (size, operand, position)
    for k, shape in enumerate(shapes):
        mine: dict[str, int] = {}
        for position, size in _dims(read_, k, shape):
            s = read_.inputs[k][position]
            if mine.setdefault(s, size) != size:
                raise ShapeError(
                    f"subscript {s!r} is repeated in {read_.operand(k)} of '{equation}' with sizes {mine[s]} and {size}: "
                    f"a diagonal needs equal sizes (shape {tuple(shape)})"
                )
            sizes.setdefault(s, []).append((size, k, position))
    ones: set[tuple[int, int]] = set()
    for s, seen in sizes.items():
        larger = list(dict.fromkeys(size for size, _, _ in seen if size != 1))
        if len(larger) > 1:
            first, second = (next(k for size, k, _ in seen if size == n) for n in larger[:2])
            raise ShapeError(
                f"subscript {s!r} has size {larger[0]} in {read_.operand(first)} and {larger[1]} in {read_.operand(second)} "
                f"of '{equation}': sizes of one subscript must be equal or 1"
            )
        if larger:
            ones.update((k, position) for size, k, position in seen if size == 1)
    _check_broadcast(read_, shapes)
    return read_.text(frozenset(ones))


def from_sublists(arguments: Sequence) -> tuple[str, list]:
    """torch.einsum's sublist form ``(x, [0, 1], y, [1, 2], [0, 2])`` -> (equation, operands)."""

    def subscripts(sublist, k: int) -> str:
        if not isinstance(sublist, (list, tuple)):
            raise TypeError(f"torch.einsum's sublist form: argument {k} should be a list of subscripts, got {type(sublist).__name__}")
        found = []
        for s in sublist:
            if s is Ellipsis:
                found.append(ELLIPSIS)
            elif isinstance(s, int) and not isinstance(s, bool) and 0 <= s < SUBLIST_RANGE:
                found.append(string.ascii_uppercase[s] if s < 26 else string.ascii_lowercase[s - 26])
            else:
                raise PatternError(f"subscript {s!r} in argument {k} is not an int in [0, {SUBLIST_RANGE}) or Ellipsis")
        return "".join(found)

    operands = list(arguments[0::2][: len(arguments) // 2])
    lhs = ",".join(subscripts(arguments[2 * k + 1], 2 * k + 1) for k in range(len(operands)))
    rhs = "->" + subscripts(arguments[-1], len(arguments) - 1) if len(arguments) % 2 else ""
    return lhs + rhs, operands


# --- a letter string given to bl ------------------------------------------------------------------


def _letter_words(pattern: str) -> list[str] | None:
    """The comma-separated words of a pattern that looks like einsum letters: no space inside a word,
    only letters and '...', and a word of two or more letters ('bhqd,bhkd->bhqk') or no '->' ('ij,jk');
    None otherwise."""
    if not isinstance(pattern, str):
        return None
    lhs, arrow, rhs = pattern.partition("->")
    words = [w.strip(" ") for w in lhs.split(",")] + ([rhs.strip(" ")] if arrow else [])
    for word in words:
        rest = word.replace(ELLIPSIS, "", 1)
        if rest and not (rest.isascii() and rest.isalpha()):
            return None
    return words if not arrow or any(len(w.replace(ELLIPSIS, "")) > 1 for w in words) else None


def spaced_hint(pattern: str) -> str:
    """What a dim-count error adds when ``pattern`` is einsum letters: how to spell it for einplan,
    and where torch.einsum's reading of a repeated letter differs from bl's; '' otherwise."""
    words = _letter_words(pattern)
    if words is None:
        return ""
    try:
        equation = read(pattern)
    except EinplanError:
        return ""
    word = next((w.replace(ELLIPSIS, "") for w in words if len(w.replace(ELLIPSIS, "")) > 1), None)
    lines = [
        ("einplan separates axes by spaces" + (f": '{word}' is one axis here" if word else " and needs '->' with the output"))
        + f". If these are torch.einsum letters, spell them '{equation.text()}' (one axis per letter), "
        f"or call einplan.einsum('{pattern}', ...) for torch.einsum's language and meaning"
    ]
    for k, s in equation.diagonals:
        others = [j for j, subs in enumerate(equation.inputs) if j != k and s in subs]
        if others:
            own = " ".join(equation.inputs[k])
            lines.append(
                f"in torch.einsum '{''.join(equation.inputs[k])}' is a diagonal; spelled '{own}' for bl it would be a "
                f"matrix-chain link, since {equation.operand(others[0])} has '{s}' too; einplan.einsum keeps torch's meaning"
            )
    return "".join("\n    " + line for line in lines)
