"""Stage 2b: a resolved pattern and the tensors' shapes -> a :class:`Bound` pattern.

``bind`` expands ellipses (right-aligned, with torch's broadcasting), splits
composite axes, and checks that every occurrence of a size agrees, raising a
:class:`ShapeError` that names the axis, the operands and the sizes seen.
Nothing here touches tensor data.  A bound pattern carries what later stages
read about each axis id (its size, its base name, its group), so no stage
re-parses an id's spelling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .errors import PatternError, ShapeError, at
from .resolve import Ax, Comp, Ell, One, Resolved, axes_of, is_group, spell_item


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
    # each axis id's base: the name without primes (n'' -> n), the group of an
    # ellipsis dim (...[0] -> ...), or the fixed size of a literal (3 -> 3)
    bases: dict[str, str] = field(default_factory=dict)
    # each ellipsis group's dim ids, in order (empty: the group covers no dims)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # output axes in no input (einops' repeat), broadcast after the clauses; sizes in ``sizes``
    created: tuple[str, ...] = ()
    # the result's axes before the final reshape, created ones included
    layout: tuple[str, ...] = ()

    @property
    def kept(self) -> frozenset[str]:
        """Axes that survive the sum: the output's and the clauses'."""
        return frozenset(self.output_axes).union(*(ids for _, ids in self.clauses))

    @property
    def named_sizes(self) -> dict[str, int]:
        """One size per axis name (primes share their name's size); groups and literals left out."""
        named: dict[str, int] = {}
        for axis_id, size in self.sizes.items():
            base = self.bases[axis_id]
            if base not in self.groups and not base.isdigit():
                named.setdefault(base, size)
        return named

    @property
    def group_sizes(self) -> dict[str, tuple[int, ...]]:
        """The sizes of each ellipsis group's dims."""
        return {group: tuple(self.sizes[i] for i in ids) for group, ids in self.groups.items()}

    def ids_of(self, base: str) -> tuple[str, ...]:
        """Every axis id of one name (``n``, ``n'`` ...) or of one group (its dims)."""
        if base in self.groups:
            return self.groups[base]
        return tuple(i for i, b in self.bases.items() if b == base)


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
                raise ShapeError(f"axis {base!r} has conflicting sizes in '{self.resolved.pattern.source}': {detail}")
            result[base] = observations[0][0]
        return result


def _part_bases(comp: Comp, group_sizes: dict[str, int]) -> list[str]:
    """The bases of a composite's parts; a group stands for its dims' product (a fixed size)."""
    return [p.base if isinstance(p, Ax) else str(group_sizes[p.group]) if isinstance(p, Ell) else "1" for p in comp.parts]


def _split_composites(resolved, comps: list[tuple[Comp, int, str]], sizes: _Sizes, group_sizes: dict[str, int]) -> None:
    """Infer the unknown part of each composite ``(h d)`` dim from its size."""
    pending = list(comps)
    while pending:
        progress = False
        for entry in list(pending):
            comp, total, where = entry
            bases = _part_bases(comp, group_sizes)
            unknown = [b for b in bases if sizes.known(b) is None]
            known_product = math.prod(sizes.known(b) or 0 for b in bases if b not in unknown)
            if len(set(unknown)) > 1:
                continue
            pending.remove(entry)
            progress = True
            if unknown:
                power = len(unknown)  # (a a) holds a twice: its size is the square root
                size = _integer_root(total // known_product, power) if known_product else None
                if size is None or known_product * size**power != total:
                    raise ShapeError(
                        f"composite axis {spell_item(comp)} of {where} has size {total}, "
                        f"which the known part {known_product} does not divide"
                        f"{'' if power == 1 else f' into {power} equal factors'} "
                        f"(in '{resolved.pattern.source}')"
                    )
                sizes.add(unknown[0], size, f"{where} split")
            elif known_product != total:
                detail = " * ".join(f"{b}={sizes.known(b)}" for b in bases)
                raise ShapeError(
                    f"composite axis {spell_item(comp)} of {where} has size {total}, "
                    f"but {detail} = {known_product} (in '{resolved.pattern.source}')"
                )
        if not progress:
            comp, total, where = pending[0]
            names = [p.base for p in comp.parts if isinstance(p, Ax) and sizes.known(p.base) is None]
            raise ShapeError(
                f"cannot split composite axis {spell_item(comp)} of {where} (size {total}): "
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
    lengths: list[dict[str, int]] = []
    for index, (items, shape) in enumerate(zip(resolved.inputs, shapes, strict=True)):
        fixed = sum(1 for i in items if not isinstance(i, Ell))
        groups = [i.group for i in items if isinstance(i, Ell)]
        if not groups:
            if len(shape) != fixed:
                raise ShapeError(
                    f"{resolved.operand(index)} has {fixed} axes but the tensor has "
                    f"{len(shape)} dims, shape {tuple(shape)} (in '{resolved.pattern.source}')"
                )
            lengths.append({})
            continue
        if len(shape) < fixed:
            raise ShapeError(
                f"{resolved.operand(index)} needs at least {fixed} dims but the tensor "
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
    for index, (items, shape, per) in enumerate(zip(resolved.inputs, shapes, lengths, strict=True)):
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
                raise ShapeError(f"dim {k} of {group!r} does not broadcast: {detail} (in '{resolved.pattern.source}')")
            sizes[dim_id] = distinct.pop() if distinct else 1
    return sizes


def _ell_id(group: str, k: int) -> str:
    return f"{group}[{k}]"


def _bind_operand(resolved, index, items, shape, per, longest, ell_sizes, sizes, comps):
    """Axis ids of one input, and whether it needs a view; records sizes and composites to split."""
    axes: list[str] = []
    changed = False
    dim = 0
    where = resolved.operand(index)
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
        else:
            comps.append((item, size, where))
            changed = True
            axes.extend(_part_ids(item, longest))
    return axes, changed


def _part_ids(comp: Comp, longest: dict[str, int]) -> list[str]:
    """The axis ids a composite is made of, in order; a group inside it gives each of its dims."""
    ids: list[str] = []
    for part in comp.parts:
        if isinstance(part, Ax):
            ids.append(part.id)
        elif isinstance(part, Ell):
            ids.extend(_ell_id(part.group, k) for k in range(longest[part.group]))
    return ids


MAX_SIZE = 2**63 - 1  # the largest size of a torch dim


def check_size(name: str, value) -> None:
    """A keyword size is an int (not a bool, not a float that equals one) from 0 to MAX_SIZE."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ShapeError(f"size of axis {name!r} must be a non-negative int, got {value!r}")
    if value > MAX_SIZE:
        raise ShapeError(f"size of axis {name!r} is {value}, above {MAX_SIZE} (2**63 - 1), the most a torch dim can be")


def _check_call(resolved: Resolved, shapes, keywords: dict[str, int]) -> None:
    """As many shapes as operands; keyword sizes name axes of the pattern and are sizes."""
    pattern = resolved.pattern
    if len(shapes) != len(resolved.inputs):
        raise ShapeError(f"'{pattern.source}' has {len(resolved.inputs)} operand(s), but {len(shapes)} tensor(s) were given")
    all_bases = {a.base for items in (*resolved.inputs, resolved.output) for a in axes_of(items)}
    for name, value in keywords.items():
        if name not in all_bases:
            raise PatternError(f"size given for axis {name!r}, which '{pattern.source}' does not have")
        check_size(name, value)


def _longest(resolved: Resolved, lengths: list[dict[str, int]]) -> dict[str, int]:
    """How many dims each group covers: its longest occurrence (an output-only group covers none)."""
    longest: dict[str, int] = {}
    for per in lengths:
        for group, n in per.items():
            longest[group] = max(longest.get(group, 0), n)
    for item in resolved.output:
        if isinstance(item, Ell):
            longest.setdefault(item.group, 0)
    return longest


def _id_sizes(resolved: Resolved, base_sizes: dict[str, int], ell_sizes: dict[str, int], groups):
    """Every axis id's size and base: the ellipsis dims first, then the inputs' axes, then the
    output's created axes (sized by a keyword or a literal)."""
    sizes = dict(ell_sizes)
    bases = {dim_id: group for group, ids in groups.items() for dim_id in ids}
    for items in resolved.inputs:
        for axis in axes_of(items):
            sizes[axis.id] = int(axis.base) if axis.base.isdigit() else base_sizes[axis.base]
            bases[axis.id] = axis.base
    for axis in axes_of(resolved.output):
        if axis.id not in sizes:  # created: check_created saw its size given
            sizes[axis.id] = int(axis.base) if axis.base.isdigit() else base_sizes[axis.base]
            bases[axis.id] = axis.base
    return sizes, bases


def check_created(resolved: Resolved, keywords) -> None:
    """Each output axis in no input is created (einops' repeat): a literal size, or a name whose
    size is a keyword; a name another input axis shares (``a' -> a``) is refused, as a typo is."""
    created = resolved.created
    inputs = [a for items in resolved.inputs for a in axes_of(items)]
    for axis in axes_of(resolved.output):
        if axis.id not in created or axis.base.isdigit():
            continue
        alike = sorted({a.id for a in inputs if a.base == axis.base})
        if alike or axis.id != axis.base:
            hint = f" (the inputs have {', '.join(alike)})" if alike else ""
            raise at(PatternError, resolved.pattern.source, axis.column, f"output axis {axis.id!r} is in no input{hint}")
        if axis.base not in keywords:
            raise at(
                PatternError,
                resolved.pattern.source,
                axis.column,
                f"output axis {axis.id!r} is in no input: to create it (a broadcast copy, as einops' repeat), give its size, e.g. {axis.base}=2",
            )


def _clauses(resolved: Resolved, groups: dict[str, tuple[str, ...]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The clauses with each group (``...``, ``*r``) spelled as its dims; a clause left with no
    axis is dropped (it reduces nothing), except an argmax/argmin, which has no index to return."""
    clauses = []
    for reducer, ids in resolved.clauses:
        dims = tuple(d for i in ids for d in (groups.get(i, ()) if is_group(i) else (i,)))
        if not dims and reducer in ("argmax", "argmin"):
            raise ShapeError(
                f"{reducer} over {' '.join(ids)}, which covers no dims, has no index to return (in '{resolved.pattern.source}')"
            )
        if dims:
            clauses.append((reducer, dims))
    return tuple(clauses)


def _check_group_lengths(resolved: Resolved, bare: set[str]) -> None:
    """A group inside an input's composite, ``(b ...)``, needs its dims from a bare occurrence."""
    for index, items in enumerate(resolved.inputs):
        for item in items:
            for part in item.parts if isinstance(item, Comp) else ():
                if isinstance(part, Ell) and part.group not in bare:
                    raise ShapeError(
                        f"the dims of {part.group!r} inside {spell_item(item)} of {resolved.operand(index)} cannot be "
                        f"read off one dim; write {part.group!r} on its own in another operand, or split it by "
                        f"names with keyword sizes (in '{resolved.pattern.source}')"
                    )


def _output(resolved: Resolved, groups: dict[str, tuple[str, ...]], id_sizes: dict[str, int]):
    """The result's axes before the final reshape, and that reshape (merges, added 1s) or None."""
    output_axes: list[str] = []
    output_shape: list[int] = []
    reshaped = False
    for item in resolved.output:
        if isinstance(item, Ell):
            output_axes.extend(groups[item.group])
            output_shape.extend(id_sizes[i] for i in groups[item.group])
        elif isinstance(item, One):
            output_shape.append(1)
            reshaped = True
        elif isinstance(item, Ax):
            output_axes.append(item.id)
            output_shape.append(id_sizes[item.id])
        else:
            ids = _part_ids(item, {group: len(dims) for group, dims in groups.items()})
            output_axes.extend(ids)
            output_shape.append(math.prod(id_sizes[i] for i in ids))
            reshaped = True
            if output_shape[-1] > MAX_SIZE:
                raise ShapeError(
                    f"output axis {spell_item(item)} would have size {output_shape[-1]}, above {MAX_SIZE} (2**63 - 1), "
                    f"the most a torch dim can be (in '{resolved.pattern.source}')"
                )
    return tuple(output_axes), (tuple(output_shape) if reshaped else None)


def bind(resolved: Resolved, shapes: Sequence[Sequence[int]], dtype, device, keywords: dict[str, int]) -> Bound:
    """Bind a resolved pattern to operand shapes; raise ShapeError on any disagreement."""
    check_created(resolved, keywords)
    _check_call(resolved, shapes, keywords)
    lengths = _ellipsis_lengths(resolved, shapes)
    ell_sizes = _broadcast_ellipses(resolved, shapes, lengths)
    longest = _longest(resolved, lengths)
    _check_group_lengths(resolved, {group for per in lengths for group in per})
    sizes = _Sizes(resolved, keywords)
    comps: list = []
    raw = [
        _bind_operand(resolved, i, items, shape, lengths[i], longest, ell_sizes, sizes, comps)
        for i, (items, shape) in enumerate(zip(resolved.inputs, shapes, strict=True))
    ]
    sizes.check()  # direct disagreements first: they are the real cause
    groups = {group: tuple(_ell_id(group, k) for k in range(n)) for group, n in longest.items()}
    _split_composites(resolved, comps, sizes, {g: math.prod(ell_sizes[i] for i in ids) for g, ids in groups.items()})
    id_sizes, bases = _id_sizes(resolved, sizes.check(), ell_sizes, groups)
    operands = tuple(BoundOperand(tuple(id_sizes[a] for a in axes) if changed else None, tuple(axes)) for axes, changed in raw)
    layout, output_shape = _output(resolved, groups, id_sizes)
    new = set(resolved.created)
    created = tuple(a for a in layout if a in new)
    # ellipsis dims absent from the output are summed, as in torch.einsum
    return Bound(
        resolved=resolved,
        operands=operands,
        sizes=id_sizes,
        output_axes=tuple(a for a in layout if a not in created),
        output_shape=output_shape,
        clauses=_clauses(resolved, groups),
        dtype=dtype,
        device=device,
        bases=bases,
        groups=groups,
        created=created,
        layout=layout,
    )
