"""Stage 2: what a pattern means, before any shape is known.

``resolve`` turns every name into an *axis id*: primes are kept (``n'`` is its
own axis), and a name repeated inside one operand is read either as einsum's
diagonal (no other input has the name) or as a matrix-chain link, which opens
fresh primed ids left to right.  The result spells the *primed form* that
``explain`` shows.  Sizes come later (:mod:`einplan.bind`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import PatternError, UnsupportedError, at
from .parse import Ellipsis_, Group, Literal, Name, Operand, Pattern, parse

# --- resolved (shape-free) axes ------------------------------------------------


@dataclass(frozen=True)
class Ax:
    """One axis: ``id`` is the primed name (``n''``) or a fixed size (``3``)."""

    id: str
    base: str  # the name without primes: all ids of one base share one size
    column: int


@dataclass(frozen=True)
class One:
    """A literal ``1``: dropped from inputs, added to outputs."""

    column: int


@dataclass(frozen=True)
class Ell:
    """An ellipsis group: ``...`` (group ``"..."``) or ``*batch`` (group ``"*batch"``)."""

    group: str
    column: int


@dataclass(frozen=True)
class Comp:
    """A composite axis ``(h d)``, ``(b ...)``; nested groups are flattened."""

    parts: tuple[Ax | One | Ell, ...]
    column: int


Item = Ax | One | Ell | Comp


@dataclass(frozen=True)
class Resolved:
    pattern: Pattern
    inputs: tuple[tuple[Item, ...], ...]
    output: tuple[Item, ...]
    clauses: tuple[tuple[str, tuple[str, ...]], ...]
    chains: bool = True  # False: torch.einsum's reading, a repeated name is always a diagonal

    @property
    def created(self) -> tuple[str, ...]:
        """Output axes in no input (einops' ``repeat``): sized by a keyword or a literal, broadcast."""
        inputs = {a.id for items in self.inputs for a in axes_of(items)}
        return tuple(a.id for a in axes_of(self.output) if a.id not in inputs)

    @property
    def primed(self) -> str:
        """The pattern with primes and chains resolved (the canonical form)."""
        lhs = ", ".join(spell(items) for items in self.inputs)
        text = f"{lhs} -> {spell(self.output)}".rstrip()
        for reducer, ids in self.clauses:
            text += f" | {reducer} {' '.join(ids)}"
        return text

    @property
    def names(self) -> tuple[str, ...]:
        """The inputs' axis names (primes dropped, fixed sizes left out), in order of appearance."""
        found = (a.base for items in self.inputs for a in axes_of(items) if not a.base.isdigit())
        return tuple(dict.fromkeys(found))

    @property
    def groups(self) -> tuple[str, ...]:
        """The inputs' ellipsis groups (``...``, ``*batch``), in order of appearance."""
        return tuple(dict.fromkeys(e.group for items in self.inputs for e in ellipses_of(items)))

    def operand(self, index: int) -> str:
        """``operand 1 ('n n')``: an input as messages name it."""
        return f"operand {index} ('{self.pattern.inputs[index].text}')"


def spell_item(item: Item) -> str:
    if isinstance(item, Ax):
        return item.id
    if isinstance(item, One):
        return "1"
    if isinstance(item, Ell):
        return item.group
    return "(" + " ".join(spell_item(p) for p in item.parts) + ")"


def spell(items: Iterable[Item]) -> str:
    return " ".join(spell_item(i) for i in items)


def _error(cls, pattern: Pattern, column: int, message: str):
    return at(cls, pattern.source, column, message)


# --- resolve -----------------------------------------------------------------------


def _flat_names(axes: Iterable) -> list:
    """Names and literals of an operand, in order, looking inside groups."""
    found = []
    for axis in axes:
        if isinstance(axis, Group):
            found.extend(_flat_names(axis.items))
        elif isinstance(axis, (Name, Literal)):
            if not (isinstance(axis, Literal) and axis.size == 1):
                found.append(axis)
    return found


def _text(axis) -> str:
    return axis.text


def _base(axis) -> str:
    return axis.name if isinstance(axis, Name) else str(axis.size)


class _Primes:
    """Hands out primed spellings of a base name that the pattern does not use yet."""

    def __init__(self, used: set[str]):
        self.used = set(used)

    def fresh(self, base: str) -> str:
        primes = 1
        while base + "'" * primes in self.used:
            primes += 1
        text = base + "'" * primes
        self.used.add(text)
        return text


def _check_repeated_literals(pattern: Pattern, per_operand, counts, chains) -> None:
    """A size repeated inside one operand that no other input has would be a diagonal here, but two
    independent anonymous axes in einops (``(h 2) (w 2)``): refused, with both spellings."""
    for occurrences, count in zip(per_operand, counts, strict=True):
        for axis in occurrences:
            if isinstance(axis, Literal) and count[_text(axis)] >= 2 and _text(axis) not in chains:
                second = [a for a in occurrences if _text(a) == _text(axis)][1]
                raise _error(
                    PatternError,
                    pattern,
                    second.column,
                    f"the size {axis.size} appears twice in one operand: einplan would read it as one axis (a diagonal), "
                    f"einops as two anonymous axes; name them instead: 'n n' for a diagonal, or two names with "
                    f"keyword sizes ('(h h2) (w w2)' with h2={axis.size}, w2={axis.size}) for independent axes",
                )


def _chain_ids(pattern: Pattern, chains_on: bool = True) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Axis ids of each input occurrence, and for each chain name its ids in order.

    With ``chains_on`` False (torch.einsum's reading) no name is a chain: a name repeated
    inside one operand is always a diagonal."""
    per_operand = [_flat_names(op.axes) for op in pattern.inputs]
    counts: list[dict[str, int]] = [{} for _ in per_operand]
    for occurrences, count in zip(per_operand, counts, strict=True):
        for axis in occurrences:
            count[_text(axis)] = count.get(_text(axis), 0) + 1
    texts = {t for count in counts for t in count}
    chains = {t for t in texts if any(c.get(t, 0) >= 2 for c in counts) and sum(1 for c in counts if t in c) >= 2}
    if not chains_on:
        chains = set()
    _check_repeated_literals(pattern, per_operand, counts, chains)
    used = texts | {_text(a) for a in _flat_names(pattern.output.axes)}
    for clause in pattern.clauses:
        used |= {n.text for n in clause.names}
    primes = _Primes(used)
    current = {t: t for t in chains}
    created: dict[str, list[str]] = {t: [t] for t in chains}
    ids: list[list[str]] = []
    for occurrences in per_operand:
        seen: set[str] = set()
        operand_ids = []
        for axis in occurrences:
            t = _text(axis)
            if t in chains and t in seen:
                current[t] = primes.fresh(_base(axis))
                created[t].append(current[t])
            seen.add(t)
            operand_ids.append(current.get(t, t))
        ids.append(operand_ids)
    return ids, created


def _rebuild(axes, ids: Iterator[str], pattern: Pattern) -> tuple[Item, ...]:
    """Resolved items of an operand, taking axis ids from ``ids`` in order."""
    items: list[Item] = []
    for axis in axes:
        if isinstance(axis, Group) and not axis.items:
            items.append(One(axis.column))  # einops' anonymous axis "()"
        elif isinstance(axis, Group):
            parts = _rebuild(axis.items, ids, pattern)
            flat: list = []
            for part in parts:
                flat.extend(part.parts if isinstance(part, Comp) else (part,))
            items.append(Comp(tuple(flat), axis.column))
        elif isinstance(axis, Ellipsis_):
            items.append(Ell(axis.text, axis.column))
        elif isinstance(axis, Literal) and axis.size == 1:
            items.append(One(axis.column))
        else:
            items.append(Ax(next(ids), _base(axis), axis.column))
    return tuple(items)


def ellipses_of(items: Iterable[Item]) -> list[Ell]:
    """The ellipsis groups of resolved items, looking inside composites."""
    return _parts_of(items, Ell)


def is_group(axis_id: str) -> bool:
    """Whether a clause's id names an ellipsis group (``...``, ``*r``) rather than one axis."""
    return axis_id == "..." or axis_id.startswith("*")


def axes_of(items: Iterable[Item]) -> list[Ax]:
    """The named axes of resolved items, looking inside composites."""
    return _parts_of(items, Ax)


def _parts_of(items: Iterable[Item], kind):
    found = []
    for item in items:
        if isinstance(item, kind):
            found.append(item)
        elif isinstance(item, Comp):
            found.extend(p for p in item.parts if isinstance(p, kind))
    return found


def _resolve_output(pattern: Pattern, chains: dict[str, list[str]], input_ids: list[list[str]]):
    """Axis ids for output and clause names: chain names take the single-input ids."""
    operands_of: dict[str, int] = {}
    for operand_ids in input_ids:
        for i in set(operand_ids):
            operands_of[i] = operands_of.get(i, 0) + 1
    singles = {t: [i for i in created if operands_of.get(i) == 1] for t, created in chains.items()}
    output_names = _flat_names(pattern.output.axes)
    wanted: dict[str, int] = {}
    for axis in output_names:
        wanted[_text(axis)] = wanted.get(_text(axis), 0) + 1
    for t, count in wanted.items():
        if t in chains and count != len(singles[t]):
            primed = _primed_inputs(pattern, input_ids)
            column = next(a.column for a in output_names if _text(a) == t)
            raise _error(
                PatternError,
                pattern,
                column,
                f"the output names {t!r} {count} time(s), but the chain reading "
                f"'{primed}' leaves {len(singles[t])} index(es) of {t!r} in one input "
                f"({', '.join(singles[t]) or 'none'}); write the primes explicitly",
            )
    queue = {t: list(singles[t]) for t in chains}
    output_ids: list[str] = []
    in_inputs = {i for operand_ids in input_ids for i in operand_ids}
    for axis in output_names:
        t = _text(axis)
        if isinstance(axis, Literal) and t not in in_inputs:  # created, as einops' anonymous axes: each its own
            t += "'" * sum(1 for i in output_ids if i.rstrip("'") == t)
        output_ids.append(queue[t].pop(0) if t in chains else t)
    clause_ids = []
    groups = _input_groups(pattern)
    names = {_text(a) for op in pattern.inputs for a in _flat_names(op.axes)}
    for clause in pattern.clauses:
        ids = []
        for name in clause.names:
            t = name.text
            if isinstance(name, Ellipsis_):
                ids.append(t)
            elif t not in names and "*" + t in groups:  # "| mean r" for the group "*r"
                ids.append("*" + t)
            elif t in chains:
                if not queue[t]:
                    raise _error(
                        PatternError,
                        pattern,
                        name.column,
                        f"clause axis {t!r} is a chain name with no index left to reduce; "
                        f"write the primes explicitly ('{_primed_inputs(pattern, input_ids)}')",
                    )
                ids.append(queue[t].pop(0))
            else:
                ids.append(t)
        clause_ids.append(ids)
    return output_ids, clause_ids


def _group_axes(axes) -> list[Ellipsis_]:
    """The ellipsis groups of parsed axes, looking inside composites."""
    found: list[Ellipsis_] = []
    for axis in axes:
        if isinstance(axis, Group):
            found.extend(_group_axes(axis.items))
        elif isinstance(axis, Ellipsis_):
            found.append(axis)
    return found


def _input_groups(pattern: Pattern) -> set[str]:
    return {e.text for op in pattern.inputs for e in _group_axes(op.axes)}


def _primed_inputs(pattern: Pattern, input_ids: list[list[str]]) -> str:
    return ", ".join(spell(_rebuild(op.axes, iter(ids), pattern)) for op, ids in zip(pattern.inputs, input_ids, strict=True)) + " -> ..."


def _check_ellipses(pattern: Pattern, operand: Operand, where: str) -> None:
    seen: set[str] = set()
    for axis in _group_axes(operand.axes):
        if axis.text in seen:
            raise _error(PatternError, pattern, axis.column, f"{axis.text!r} appears twice in {where}")
        if seen and where == "one operand":
            raise _error(
                UnsupportedError,
                pattern,
                axis.column,
                "an operand may have one variadic group: with two, their lengths are ambiguous",
            )
        seen.add(axis.text)


def _check_groups(pattern: Pattern, items: Iterable[Item]) -> None:
    for item in items:
        if isinstance(item, Comp):
            seen: set[str] = set()
            for part in item.parts:
                if isinstance(part, Ax) and part.id in seen:
                    raise _error(
                        PatternError,
                        pattern,
                        part.column,
                        f"axis {part.id!r} appears twice in one composite axis",
                    )
                if isinstance(part, Ax):
                    seen.add(part.id)


def _validate_output(pattern: Pattern, inputs, output) -> set[str]:
    """Output axes appear once, output groups come from an input; returns the output's axis ids."""
    input_groups = {e.group for items in inputs for e in ellipses_of(items)}
    seen_out: set[str] = set()
    for axis in axes_of(output):
        if axis.id in seen_out:
            raise _error(PatternError, pattern, axis.column, f"output axis {axis.id!r} appears twice")
        seen_out.add(axis.id)
    for item in ellipses_of(output):
        if item.group != "..." and item.group not in input_groups:
            raise _error(PatternError, pattern, item.column, f"output group {item.group!r} is in no input")
    return seen_out


def _validate_clause_axis(pattern: Pattern, axis_id: str, name, inputs, output) -> None:
    """A clause reduces an input's axis (or group) that the output drops."""
    if is_group(axis_id):
        kind, found, kept = "group", {e.group for items in inputs for e in ellipses_of(items)}, {e.group for e in ellipses_of(output)}
    else:
        kind, found, kept = "axis", {a.id for items in inputs for a in axes_of(items)}, {a.id for a in axes_of(output)}
    if axis_id not in found:
        raise _error(PatternError, pattern, name.column, f"clause {kind} {axis_id!r} is in no input")
    if axis_id in kept:
        raise _error(
            PatternError,
            pattern,
            name.column,
            f"clause {kind} {axis_id!r} is also in the output; a clause reduces {'what' if kind == 'group' else 'axes'} the output drops",
        )


def _validate(pattern: Pattern, inputs, output, clauses) -> None:
    for operand in pattern.inputs:
        _check_ellipses(pattern, operand, "one operand")
    _check_ellipses(pattern, pattern.output, "the output")
    _check_groups(pattern, output)  # in an input, (a a) is a diagonal, as a a is
    _validate_output(pattern, inputs, output)
    reduced: set[str] = set()
    for index, ((reducer, ids), clause) in enumerate(zip(clauses, pattern.clauses, strict=True)):
        if reducer in ("argmax", "argmin") and index != len(clauses) - 1:
            raise _error(PatternError, pattern, clause.column, f"{reducer} may only be the last clause")
        for i, name in zip(ids, clause.names, strict=True):
            _validate_clause_axis(pattern, i, name, inputs, output)
            if i in reduced:
                raise _error(
                    PatternError, pattern, name.column, f"{'group' if is_group(i) else 'axis'} {i!r} is reduced twice by the clauses"
                )
            reduced.add(i)


@functools.lru_cache(maxsize=2048)
def resolve(pattern_text: str, chains: bool = True) -> Resolved:
    """Parse and resolve a pattern (cached: patterns recur).

    ``chains=False`` reads a name repeated inside one operand as torch.einsum does: always a
    diagonal, whatever the other operands hold."""
    pattern = parse(pattern_text)
    input_ids, chain_names = _chain_ids(pattern, chains)
    output_ids, clause_ids = _resolve_output(pattern, chain_names, input_ids)
    inputs = tuple(_rebuild(op.axes, iter(ids), pattern) for op, ids in zip(pattern.inputs, input_ids, strict=True))
    output = _rebuild(pattern.output.axes, iter(output_ids), pattern)
    clauses = tuple((c.reducer, tuple(ids)) for c, ids in zip(pattern.clauses, clause_ids, strict=True))
    _validate(pattern, inputs, output, clauses)
    return Resolved(pattern, inputs, output, clauses, chains)
