"""Stage 2: what a pattern means, then what it means for these tensors.

``resolve`` works on the pattern alone.  It turns every name into an *axis id*:
primes are kept (``n'`` is its own axis), and a name repeated inside one
operand is read either as einsum's diagonal (no other input has the name) or
as a matrix-chain link, which opens fresh primed ids left to right.  The
result spells the *primed form* that ``explain`` shows.

``bind`` adds the tensors' shapes: it expands ellipses (right-aligned, with
torch's broadcasting), splits composite axes, checks that every occurrence of
a size agrees, and runs jaxtyping's check on the annotations.  Nothing here
touches tensor data.
"""

from __future__ import annotations

import functools
import keyword
import math
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import torch

from .errors import PatternError, ShapeError, UnsupportedError, at
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
    """A composite axis ``(h d)``; nested groups are flattened."""

    parts: tuple[Union[Ax, One], ...]
    column: int


Item = Union[Ax, One, Ell, Comp]


@dataclass(frozen=True)
class Resolved:
    pattern: Pattern
    inputs: tuple[tuple[Item, ...], ...]
    output: tuple[Item, ...]
    clauses: tuple[tuple[str, tuple[str, ...]], ...]
    # the shape-free jaxtyping dims of each input and of the output
    input_dims: tuple[str, ...]
    output_dims: str

    @property
    def primed(self) -> str:
        """The pattern with primes and chains resolved (the canonical form)."""
        lhs = ", ".join(_spell(items) for items in self.inputs)
        text = f"{lhs} -> {_spell(self.output)}".rstrip()
        for reducer, ids in self.clauses:
            text += f" | {reducer} {' '.join(ids)}"
        return text


def _spell_item(item: Item) -> str:
    if isinstance(item, Ax):
        return item.id
    if isinstance(item, One):
        return "1"
    if isinstance(item, Ell):
        return item.group
    return "(" + " ".join(_spell_item(p) for p in item.parts) + ")"


def _spell(items: Iterable[Item]) -> str:
    return " ".join(_spell_item(i) for i in items)


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


def _chain_ids(pattern: Pattern) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Axis ids of each input occurrence, and for each chain name its ids in order."""
    per_operand = [_flat_names(op.axes) for op in pattern.inputs]
    counts = [dict() for _ in per_operand]
    for occurrences, count in zip(per_operand, counts):
        for axis in occurrences:
            count[_text(axis)] = count.get(_text(axis), 0) + 1
    texts = {t for count in counts for t in count}
    chains = {
        t
        for t in texts
        if any(c.get(t, 0) >= 2 for c in counts) and sum(1 for c in counts if t in c) >= 2
    }
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


def _rebuild(axes, ids: Iterable[str], pattern: Pattern) -> tuple[Item, ...]:
    """Resolved items of an operand, taking axis ids from ``ids`` in order."""
    items: list[Item] = []
    for axis in axes:
        if isinstance(axis, Group):
            parts = _rebuild(axis.items, ids, pattern)
            flat: list = []
            for part in parts:
                if isinstance(part, Comp):
                    flat.extend(part.parts)
                elif isinstance(part, Ell):
                    raise _error(
                        UnsupportedError,
                        pattern,
                        part.column,
                        "an ellipsis inside a composite axis is not supported",
                    )
                else:
                    flat.append(part)
            items.append(Comp(tuple(flat), axis.column))
        elif isinstance(axis, Ellipsis_):
            items.append(Ell(axis.text, axis.column))
        elif isinstance(axis, Literal) and axis.size == 1:
            items.append(One(axis.column))
        else:
            items.append(Ax(next(ids), _base(axis), axis.column))
    return tuple(items)


def axes_of(items: Iterable[Item]) -> list[Ax]:
    """The named axes of resolved items, looking inside composites."""
    out: list[Ax] = []
    for item in items:
        if isinstance(item, Ax):
            out.append(item)
        elif isinstance(item, Comp):
            out.extend(p for p in item.parts if isinstance(p, Ax))
    return out


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
    output_ids = []
    for axis in output_names:
        t = _text(axis)
        output_ids.append(queue[t].pop(0) if t in chains else t)
    clause_ids = []
    for clause in pattern.clauses:
        ids = []
        for name in clause.names:
            t = name.text
            if t in chains:
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


def _primed_inputs(pattern: Pattern, input_ids: list[list[str]]) -> str:
    return ", ".join(
        _spell(_rebuild(op.axes, iter(ids), pattern)) for op, ids in zip(pattern.inputs, input_ids)
    ) + " -> ..."


def _check_ellipses(pattern: Pattern, operand: Operand, where: str) -> None:
    seen: set[str] = set()
    for axis in operand.axes:
        if isinstance(axis, Ellipsis_):
            if axis.text in seen:
                raise _error(
                    PatternError, pattern, axis.column, f"{axis.text!r} appears twice in {where}"
                )
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


def _validate(pattern: Pattern, inputs, output, clauses) -> None:
    for operand in pattern.inputs:
        _check_ellipses(pattern, operand, "one operand")
    _check_ellipses(pattern, pattern.output, "the output")
    _check_groups(pattern, output)  # in an input, (a a) is a diagonal, as a a is
    input_ids = {a.id for items in inputs for a in axes_of(items)}
    input_groups = {i.group for items in inputs for i in items if isinstance(i, Ell)}
    seen_out: set[str] = set()
    for axis in axes_of(output):
        if axis.id not in input_ids:
            raise _error(
                PatternError,
                pattern,
                axis.column,
                f"output axis {axis.id!r} is in no input (inputs: {pattern.text.split('->')[0].strip()})",
            )
        if axis.id in seen_out:
            raise _error(PatternError, pattern, axis.column, f"output axis {axis.id!r} appears twice")
        seen_out.add(axis.id)
    for item in output:
        if isinstance(item, Ell) and item.group != "..." and item.group not in input_groups:
            raise _error(
                PatternError, pattern, item.column, f"output group {item.group!r} is in no input"
            )
    reduced: set[str] = set()
    for index, ((reducer, ids), clause) in enumerate(zip(clauses, pattern.clauses)):
        if reducer in ("argmax", "argmin") and index != len(clauses) - 1:
            raise _error(
                PatternError, pattern, clause.column, f"{reducer} may only be the last clause"
            )
        for i, name in zip(ids, clause.names):
            if i not in input_ids:
                raise _error(PatternError, pattern, name.column, f"clause axis {i!r} is in no input")
            if i in seen_out:
                raise _error(
                    PatternError,
                    pattern,
                    name.column,
                    f"clause axis {i!r} is also in the output; a clause reduces axes the output drops",
                )
            if i in reduced:
                raise _error(
                    PatternError, pattern, name.column, f"axis {i!r} is reduced twice by the clauses"
                )
            reduced.add(i)


@functools.lru_cache(maxsize=2048)
def resolve(pattern_text: str) -> Resolved:
    """Parse and resolve a pattern (cached: patterns recur)."""
    pattern = parse(pattern_text)
    input_ids, chains = _chain_ids(pattern)
    output_ids, clause_ids = _resolve_output(pattern, chains, input_ids)
    inputs = tuple(
        _rebuild(op.axes, iter(ids), pattern) for op, ids in zip(pattern.inputs, input_ids)
    )
    output = _rebuild(pattern.output.axes, iter(output_ids), pattern)
    clauses = tuple((c.reducer, tuple(ids)) for c, ids in zip(pattern.clauses, clause_ids))
    _validate(pattern, inputs, output, clauses)
    input_dims, output_dims = _jaxtyping_dims(inputs, output)
    return Resolved(pattern, inputs, output, clauses, input_dims, output_dims)


# --- jaxtyping dims ----------------------------------------------------------------


def _is_plain_name(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")


def _dim_word(base: str) -> str:
    """A base name as a jaxtyping dim; names with a leading '_' mean something
    else to jaxtyping, so they become '_' (unchecked there; einplan checks them)."""
    return "_" if base.startswith("_") else base


def _dims_of(items: Sequence[Item], bound: set[str], is_output: bool) -> str:
    words = []
    for item in items:
        if isinstance(item, Ax):
            words.append(_dim_word(item.base))
        elif isinstance(item, One):
            words.append("1")
        elif isinstance(item, Ell):
            if item.group == "..." or item.group.startswith("*_"):
                words.append("...")
            else:
                words.append(("" if is_output else "#") + item.group)
        else:
            bases = [p.base if isinstance(p, Ax) else "1" for p in item.parts]
            symbolic = all(b.isdigit() or (_is_plain_name(b) and b in bound) for b in bases)
            words.append("*".join(bases) if symbolic else "_")
    return " ".join(words)


def _jaxtyping_dims(inputs, output) -> tuple[tuple[str, ...], str]:
    """jaxtyping dims strings, with primes dropped (a prime is the same size)."""
    bound: set[str] = set()
    input_dims = []
    for items in inputs:
        input_dims.append(_dims_of(items, bound, False))
        bound |= {i.base for i in items if isinstance(i, Ax)}
    return tuple(input_dims), _dims_of(output, bound, True)


# --- bind -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundOperand:
    """An input as the plan sees it: a view of the tensor, then its axis ids."""

    view_shape: tuple[int, ...] | None  # reshape to this first (splits, dropped 1s), or None
    axes: tuple[str, ...]  # may repeat an id: einsum's diagonal


@dataclass(frozen=True)
class Bound:
    resolved: Resolved
    operands: tuple[BoundOperand, ...]
    sizes: dict[str, int]  # every axis id, ellipsis dims included
    output_axes: tuple[str, ...]  # the result's axes before the final reshape
    output_shape: tuple[int, ...] | None  # final reshape (merges, added 1s), or None
    clauses: tuple[tuple[str, tuple[str, ...]], ...]
    dtype: torch.dtype
    device: torch.device

    @property
    def kept(self) -> frozenset[str]:
        """Axes that survive the sum: the output's and the clauses'."""
        return frozenset(self.output_axes).union(*(ids for _, ids in self.clauses))


def _describe_operand(resolved: Resolved, index: int) -> str:
    return f"operand {index} ('{resolved.pattern.inputs[index].text}')"


class _Sizes:
    """Collects every observed size of every base name, then checks they agree."""

    def __init__(self, resolved: Resolved, keywords: dict[str, int]):
        self.resolved = resolved
        self.seen: dict[str, list[tuple[int, str]]] = {}
        for name, size in keywords.items():
            self.add(name, size, f"keyword {name}={size}")

    def add(self, base: str, size: int, where: str) -> None:
        self.seen.setdefault(base, []).append((size, where))

    def known(self, base: str) -> int | None:
        if base.isdigit():
            return int(base)
        sizes = self.seen.get(base)
        return sizes[0][0] if sizes else None

    def check(self) -> dict[str, int]:
        result = {}
        for base, observations in self.seen.items():
            distinct = {s for s, _ in observations}
            if base.isdigit():
                distinct.add(int(base))
            if len(distinct) > 1:
                detail = ", ".join(f"{w} has {s}" for s, w in observations)
                if base.isdigit():
                    detail += f"; the pattern fixes it at {base}"
                raise ShapeError(
                    f"axis {base!r} has conflicting sizes in '{self.resolved.pattern.source}': {detail}"
                )
            result[base] = observations[0][0]
        return result


def _split_composites(resolved, comps: list[tuple[Comp, int, str]], sizes: _Sizes) -> None:
    """Infer the unknown part of each composite ``(h d)`` dim from its size."""
    pending = list(comps)
    while pending:
        progress = False
        for entry in list(pending):
            comp, total, where = entry
            bases = [p.base if isinstance(p, Ax) else "1" for p in comp.parts]
            unknown = [b for b in bases if sizes.known(b) is None]
            known_product = math.prod(sizes.known(b) for b in bases if b not in unknown)
            if len(set(unknown)) > 1:
                continue
            pending.remove(entry)
            progress = True
            if unknown:
                power = len(unknown)  # (a a) holds a twice: its size is the square root
                size = _integer_root(total // known_product, power) if known_product else None
                if size is None or known_product * size**power != total:
                    raise ShapeError(
                        f"composite axis {_spell_item(comp)} of {where} has size {total}, "
                        f"which the known part {known_product} does not divide"
                        f"{'' if power == 1 else f' into {power} equal factors'} "
                        f"(in '{resolved.pattern.source}')"
                    )
                sizes.add(unknown[0], size, f"{where} split")
            elif known_product != total:
                detail = " * ".join(f"{b}={sizes.known(b)}" for b in bases)
                raise ShapeError(
                    f"composite axis {_spell_item(comp)} of {where} has size {total}, "
                    f"but {detail} = {known_product} (in '{resolved.pattern.source}')"
                )
        if not progress:
            comp, total, where = pending[0]
            names = [p.base for p in comp.parts if isinstance(p, Ax) and sizes.known(p.base) is None]
            raise ShapeError(
                f"cannot split composite axis {_spell_item(comp)} of {where} (size {total}): "
                f"sizes of {', '.join(repr(n) for n in names)} are unknown; "
                f"give them as keywords, e.g. {names[0]}=... (in '{resolved.pattern.source}')"
            )


def _integer_root(value: int, power: int) -> int | None:
    """The integer r with r**power == value, if there is one."""
    if power == 1:
        return value
    root = round(value ** (1 / power))
    for candidate in (root - 1, root, root + 1):
        if candidate >= 0 and candidate**power == value:
            return candidate
    return None


def _ellipsis_lengths(resolved: Resolved, shapes) -> list[dict[str, int]]:
    """For each operand, how many dims each of its ellipsis groups covers."""
    lengths = []
    for index, (items, shape) in enumerate(zip(resolved.inputs, shapes)):
        fixed = sum(1 for i in items if not isinstance(i, Ell))
        groups = [i.group for i in items if isinstance(i, Ell)]
        if not groups:
            if len(shape) != fixed:
                raise ShapeError(
                    f"{_describe_operand(resolved, index)} has {fixed} axes but the tensor has "
                    f"{len(shape)} dims, shape {tuple(shape)} (in '{resolved.pattern.source}')"
                )
            lengths.append({})
            continue
        if len(shape) < fixed:
            raise ShapeError(
                f"{_describe_operand(resolved, index)} needs at least {fixed} dims but the tensor "
                f"has {len(shape)}, shape {tuple(shape)} (in '{resolved.pattern.source}')"
            )
        lengths.append({groups[0]: len(shape) - fixed})
    return lengths


def _broadcast_ellipses(resolved, shapes, lengths) -> dict[str, int]:
    """Sizes of every ellipsis dim id, broadcast as torch does (right-aligned)."""
    longest: dict[str, int] = {}
    for per in lengths:
        for group, n in per.items():
            longest[group] = max(longest.get(group, 0), n)
    observed: dict[str, list[tuple[int, int]]] = {}
    for index, (items, shape, per) in enumerate(zip(resolved.inputs, shapes, lengths)):
        dim = 0
        for item in items:
            if isinstance(item, Ell):
                n, total = per[item.group], longest[item.group]
                for k in range(n):
                    observed.setdefault(_ell_id(item.group, total - n + k), []).append((shape[dim + k], index))
                dim += n
            else:
                dim += 1
    sizes = {}
    for group, total in longest.items():
        for k in range(total):
            dim_id = _ell_id(group, k)
            distinct = {s for s, _ in observed.get(dim_id, [])} - {1}
            if len(distinct) > 1:
                detail = ", ".join(f"operand {i} has {s}" for s, i in observed[dim_id])
                raise ShapeError(
                    f"dim {k} of {group!r} does not broadcast: {detail} (in '{resolved.pattern.source}')"
                )
            sizes[dim_id] = distinct.pop() if distinct else 1
    return sizes


def _ell_id(group: str, k: int) -> str:
    return f"{group}[{k}]"


def _bind_operand(resolved, index, items, shape, per, longest, ell_sizes, sizes, comps):
    """Axis ids and view shape of one input; records sizes and composites to split."""
    axes: list[str] = []
    view: list[int] = []
    changed = False
    dim = 0
    where = _describe_operand(resolved, index)
    for item in items:
        if isinstance(item, Ell):
            n, total = per[item.group], longest[item.group]
            for k in range(n):
                dim_id = _ell_id(item.group, total - n + k)
                size = shape[dim + k]
                if size == 1 and ell_sizes[dim_id] != 1:
                    changed = True  # broadcast: drop this size-1 dim
                    continue
                axes.append(dim_id)
                view.append(size)
            dim += n
            continue
        size = shape[dim]
        dim += 1
        if isinstance(item, One):
            if size != 1:
                raise ShapeError(
                    f"{where} has a literal 1 at dim {dim - 1}, but the tensor's size there is "
                    f"{size}, shape {tuple(shape)} (in '{resolved.pattern.source}')"
                )
            changed = True
        elif isinstance(item, Ax):
            sizes.add(item.base, size, where)
            axes.append(item.id)
            view.append(size)
        else:
            comps.append((item, size, where))
            changed = True
            for part in item.parts:
                if isinstance(part, Ax):
                    axes.append(part.id)
                    view.append(-1)  # filled in once the split is known
    return axes, view, changed


def bind(resolved: Resolved, shapes: Sequence[Sequence[int]], dtype, device, keywords: dict[str, int]) -> Bound:
    """Bind a resolved pattern to operand shapes; raise ShapeError on any disagreement."""
    pattern = resolved.pattern
    if len(shapes) != len(resolved.inputs):
        raise ShapeError(
            f"'{pattern.source}' has {len(resolved.inputs)} operand(s), but "
            f"{len(shapes)} tensor(s) were given"
        )
    all_bases = {a.base for items in resolved.inputs for a in axes_of(items)}
    for name, value in keywords.items():
        if name not in all_bases:
            raise PatternError(
                f"size given for axis {name!r}, which '{pattern.source}' does not have"
            )
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ShapeError(f"size of axis {name!r} must be a non-negative int, got {value!r}")
    lengths = _ellipsis_lengths(resolved, shapes)
    ell_sizes = _broadcast_ellipses(resolved, shapes, lengths)
    longest: dict[str, int] = {}
    for per in lengths:
        for group, n in per.items():
            longest[group] = max(longest.get(group, 0), n)
    for items in (resolved.output,):
        for item in items:
            if isinstance(item, Ell):
                longest.setdefault(item.group, 0)
    sizes = _Sizes(resolved, keywords)
    comps: list = []
    raw = [
        _bind_operand(resolved, i, items, shape, lengths[i], longest, ell_sizes, sizes, comps)
        for i, (items, shape) in enumerate(zip(resolved.inputs, shapes))
    ]
    sizes.check()  # direct disagreements first: they are the real cause
    _split_composites(resolved, comps, sizes)
    base_sizes = sizes.check()
    id_sizes = dict(ell_sizes)
    for items in resolved.inputs:
        for axis in axes_of(items):
            id_sizes[axis.id] = base_sizes[axis.base] if not axis.base.isdigit() else int(axis.base)
    operands = []
    for (axes, view, changed), shape in zip(raw, shapes):
        full = tuple(id_sizes[a] for a in axes)
        operands.append(BoundOperand(full if changed else None, tuple(axes)))
    output_axes, output_shape, reshaped = [], [], False
    for item in resolved.output:
        if isinstance(item, Ell):
            ids = [_ell_id(item.group, k) for k in range(longest[item.group])]
            output_axes.extend(ids)
            output_shape.extend(id_sizes[i] for i in ids)
        elif isinstance(item, One):
            output_shape.append(1)
            reshaped = True
        elif isinstance(item, Ax):
            output_axes.append(item.id)
            output_shape.append(id_sizes[item.id])
        else:
            ids = [p.id for p in item.parts if isinstance(p, Ax)]
            output_axes.extend(ids)
            output_shape.append(math.prod(id_sizes[i] for i in ids))
            reshaped = True
    # ellipsis dims absent from the output are summed, as in torch.einsum
    return Bound(
        resolved=resolved,
        operands=tuple(operands),
        sizes=id_sizes,
        output_axes=tuple(output_axes),
        output_shape=tuple(output_shape) if reshaped else None,
        clauses=resolved.clauses,
        dtype=dtype,
        device=device,
    )


# --- the jaxtyping check -----------------------------------------------------------------


def jaxtyping_class(dtype: torch.dtype) -> str:
    """The jaxtyping dtype class that names ``dtype``'s kind."""
    if dtype.is_complex:
        return "Complex"
    if dtype.is_floating_point:
        return "Float"
    if dtype == torch.bool:
        return "Bool"
    return "Integer"


MAX_CHECKED_OPERANDS = 128  # jaxtyping checks the first 128 operands; einplan checks all


@functools.lru_cache(maxsize=512)
def _checker(input_dims: tuple[str, ...], kind: str):
    import jaxtyping
    from beartype import beartype

    cls = getattr(jaxtyping, kind)
    annotation = tuple.__class_getitem__(tuple(cls[torch.Tensor, dims] for dims in input_dims))

    def check(operands):
        return None

    check.__annotations__ = {"operands": annotation}
    return jaxtyping.jaxtyped(typechecker=beartype)(check)


def jaxtyping_check(resolved: Resolved, shapes, dtype: torch.dtype) -> None:
    """Check shapes against the jaxtyping annotations, on meta tensors (no data)."""
    if not resolved.input_dims:
        return
    fakes = tuple(torch.empty(tuple(s), dtype=dtype, device="meta") for s in shapes)
    dims = resolved.input_dims
    if len(dims) > MAX_CHECKED_OPERANDS:  # the type checker refuses huge tuple hints
        dims, fakes = dims[:MAX_CHECKED_OPERANDS], fakes[:MAX_CHECKED_OPERANDS]
    try:
        _checker(dims, jaxtyping_class(dtype))(fakes)
    except Exception as error:  # jaxtyping raises TypeCheckError (a TypeError) and others
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ShapeError(
            f"jaxtyping rejects the shapes {[tuple(s) for s in shapes]} for "
            f"'{resolved.pattern.source}' ({', '.join(resolved.input_dims)}): {first}"
        ) from None
