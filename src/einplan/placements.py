"""Where a call on DTensors runs: each operand's placement on its 1-D mesh -> a :class:`Route`.

The one sharded axis decides it (see :mod:`einplan.distributed`, which runs a route): kept in the
output (a ``Shard`` result, no communication), summed (``Partial()``), or reduced by the last
clause (one collective, ``Replicate()``).  Everything that would need a shard of an operand or
of the product on another rank is refused here, with the axis and the reason, before any
communication.  ``torch.distributed.tensor`` is imported on first use (it takes about a second):
a DTensor operand means it already is.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace

from .bind import bind
from .collectives import SUMMED
from .errors import EinplanError, UnsupportedError
from .letters import spelling
from .resolve import Ax, Comp, Ell, Resolved, axes_of, resolve, spell


def api():
    """``torch.distributed.tensor`` (DTensor, Shard, Replicate, Partial)."""
    import torch.distributed.tensor as tensor_api

    return tensor_api


def is_distributed(cls) -> bool:
    """Whether an operand of class ``cls`` is a DTensor (without importing DTensor's module)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(cls, type) and issubclass(cls, module.DTensor)


def rows(size: int, world: int, rank: int) -> tuple[int, int]:
    """(offset, length) of ``rank``'s rows of a dim of ``size`` cut as ``torch.chunk`` (DTensor's Shard)."""
    step = -(-size // world) if size else 0
    offset = min(rank * step, size)
    return offset, max(0, min(size, offset + step) - offset)


@dataclass(frozen=True)
class Route:
    """How one call on DTensors runs: what each rank computes and how the ranks combine."""

    kind: str  # "replicated" (nothing sharded), "kept", "partial", "clause"
    axis: str | None  # the sharded axis id
    offset: int  # this rank's first row of the sharded axis
    length: int  # this rank's rows of it
    narrow: tuple[tuple[int, ...], ...]  # per operand, the dims narrowed to this rank's rows
    local: str  # the pattern each rank runs on its local tensors
    einsum: bool  # ``local`` is a torch.einsum equation
    sizes: tuple  # keyword sizes for the local call
    reducer: str | None = None  # the clause over the sharded axis
    values: str = ""  # argmax/argmin: the pattern of each rank's extreme (max/min in its place)
    clause: tuple[str, ...] = ()  # its axes
    extent: tuple[int, ...] = ()  # their global sizes
    count: int = 1  # mean: how many values it averages
    out_dim: int | None = None  # "kept": the result's sharded dim
    shape: tuple[int, ...] = ()  # the global result's shape
    placements_in: tuple[str, ...] = ()
    collective: str = "none"
    placement_out: str = "Replicate()"
    replicate: bool = False
    rank: int = 0  # this rank, of ``world`` on the mesh
    world: int = 1
    sharded: tuple[bool, ...] = ()  # per operand: whether it is a Shard (else Replicate)
    results: int = 1  # tensors returned: an argmax over several axes returns one per axis
    options: tuple = ()  # (name, value) keywords of the local call: lowering, memory_limit


def check_operands(tensors) -> None:
    """Every operand a DTensor, all on one 1-D mesh, none Partial."""
    if not all(isinstance(t, api().DTensor) for t in tensors):
        kinds = ", ".join(f"operand {k} is a {type(t).__name__}" for k, t in enumerate(tensors))
        raise EinplanError(
            f"either every operand is a DTensor or none is: {kinds} (wrap a plain tensor with DTensor.from_local(t, mesh, [Replicate()]))"
        )
    meshes = {id(t.device_mesh): t.device_mesh for t in tensors}
    if len(meshes) > 1:
        raise EinplanError(f"all DTensor operands must be on one device mesh, got {', '.join(map(repr, meshes.values()))}")
    mesh = tensors[0].device_mesh
    if mesh.ndim != 1:
        raise UnsupportedError(f"einplan runs DTensors on a 1-D device mesh; {mesh!r} has {mesh.ndim} dims")
    for k, t in enumerate(tensors):
        if any(isinstance(p, api().Partial) for p in t.placements):
            raise UnsupportedError(f"operand {k} is Partial(): redistribute it (to Replicate() or a Shard) before einplan")


def _dim_item(items: tuple, dim: int, ndim: int):
    """The item of an operand that holds tensor ``dim`` (an ellipsis covers what the others leave)."""
    position = 0
    for item in items:
        width = ndim - (len(items) - 1) if isinstance(item, Ell) else 1
        if position <= dim < position + width:
            return item
        position += width
    return None


def _sharded_axis(resolved: Resolved, tensors) -> tuple[str | None, list[str]]:
    """The one axis id the operands are sharded on (None: all replicated), and each placement spelled."""
    found: set[str] = set()
    spelled = []
    for k, t in enumerate(tensors):
        placement = t.placements[0]
        spelled.append(f"operand {k} '{spell(resolved.inputs[k])}': {placement!r}")
        if not isinstance(placement, api().Shard):
            continue
        item = _dim_item(resolved.inputs[k], placement.dim % t.ndim, t.ndim)
        if not isinstance(item, Ax) or item.base.isdigit():
            what = "an ellipsis group" if isinstance(item, Ell) else "a composite axis" if isinstance(item, Comp) else "no named axis"
            raise UnsupportedError(f"operand {k} is sharded on dim {placement.dim}, which is {what}: shard a dim that is one named axis")
        found.add(item.id)
    if len(found) > 1:
        raise UnsupportedError(
            f"operands are sharded on different axes ({', '.join(sorted(found))}) of a 1-D mesh: "
            f"each rank would need the other ranks' shards (a gather); shard one axis, replicate the rest"
        )
    return (found.pop() if found else None), spelled


def _narrowed(resolved: Resolved, tensors, axis: str) -> tuple[tuple[int, ...], ...]:
    """Per operand, the dims to narrow to this rank's rows of ``axis`` (all but a sharded one)."""
    result = []
    base = next(a.base for items in resolved.inputs for a in axes_of(items) if a.id == axis)
    for k, t in enumerate(tensors):
        items = resolved.inputs[k]
        for a in axes_of(items):
            if a.base == base and a.id != axis:
                raise UnsupportedError(
                    f"axis {axis} is sharded, but {a.id} shares its size (a prime or chain link) and is not: spell it as an axis of its own"
                )
        if any(isinstance(i, Comp) and any(isinstance(p, Ax) and p.id == axis for p in i.parts) for i in items):
            raise UnsupportedError(f"axis {axis} is sharded, and operand {k} has it inside a composite: split that dim first")
        sharded = t.placements[0].dim % t.ndim if isinstance(t.placements[0], api().Shard) else None
        dims = tuple(d for d in range(t.ndim) if d != sharded and _is_axis(_dim_item(items, d, t.ndim), axis))
        result.append(dims)
    return tuple(result)


def _is_axis(item, axis: str) -> bool:
    return isinstance(item, Ax) and item.id == axis


def _output_dim(resolved: Resolved, bound, axis: str) -> int:
    """The result's dim that holds ``axis`` (refused inside a composite)."""
    position = 0
    for item in resolved.output:
        if isinstance(item, Comp) and any(isinstance(p, Ax) and p.id == axis for p in item.parts):
            raise UnsupportedError(
                f"the sharded axis {axis} is merged into a composite of the output: its rows would not follow DTensor's Shard layout"
            )
        if _is_axis(item, axis):
            return position
        position += len(bound.groups[item.group]) if isinstance(item, Ell) else 1
    raise AssertionError(axis)


def _local_pattern(resolved: Resolved, clauses) -> str:
    lhs = ", ".join(spell(items) for items in resolved.inputs)
    text = f"{lhs} -> {spell(resolved.output)}".rstrip()
    return text + "".join(f" | {reducer} {' '.join(ids)}" for reducer, ids in clauses)


def route(pattern: str, tensors, sizes: tuple, einsum: bool) -> Route:
    """What each rank computes and how the ranks combine, from the placements (refused: anything
    that would need a shard of an operand or of the product on another rank)."""
    check_operands(tensors)
    shapes = [tuple(t.shape) for t in tensors]
    resolved = resolve(spelling(pattern, shapes), chains=False) if einsum else resolve(pattern)
    bound = bind(resolved, shapes, tensors[0].dtype, tensors[0].device, dict(sizes))
    shape = bound.output_shape if bound.output_shape is not None else tuple(bound.sizes[a] for a in bound.layout)
    axis, spelled = _sharded_axis(resolved, tensors)
    mesh = tensors[0].device_mesh
    last = bound.clauses[-1] if bound.clauses else None
    base = Route(
        "replicated",
        None,
        0,
        0,
        ((),) * len(tensors),
        pattern,
        einsum,
        sizes,
        shape=tuple(shape),
        placements_in=tuple(spelled),
        rank=mesh.get_local_rank(),
        world=mesh.size(),
        sharded=tuple(isinstance(t.placements[0], api().Shard) for t in tensors),
        results=len(last[1]) if last is not None and last[0] in ("argmax", "argmin") else 1,
    )
    if axis is None:
        return base
    offset, length = rows(bound.sizes[axis], mesh.size(), mesh.get_local_rank())
    for k, t in enumerate(tensors):
        held = t.to_local().shape[t.placements[0].dim] if isinstance(t.placements[0], api().Shard) else length
        if held != length:
            raise UnsupportedError(
                f"operand {k}'s shard has {held} rows of {axis}, not torch.chunk's {length}: einplan follows DTensor's even Shard layout"
            )
    name = next(a.base for items in resolved.inputs for a in axes_of(items) if a.id == axis)
    local_sizes = tuple((n, v) for n, v in sizes if n != name)
    base = replace(base, axis=axis, offset=offset, length=length, narrow=_narrowed(resolved, tensors, axis), sizes=local_sizes)
    if axis in bound.output_axes:
        dim = _output_dim(resolved, bound, axis)
        return replace(base, kind="kept", out_dim=dim, placement_out=f"Shard(dim={dim})")
    return _reduced(base, resolved, bound, axis)


def _reduced(base: Route, resolved: Resolved, bound, axis: str) -> Route:
    """The route of a sharded axis that the sum or a clause reduces."""
    clauses = resolved.clauses
    at = next((c for c, (_, ids) in enumerate(clauses) if axis in ids or any(axis in bound.groups.get(i, ()) for i in ids)), None)
    if at is None:  # summed with the product: every rank holds a part of the sum
        later = [reducer for reducer, _ in clauses if reducer not in SUMMED]
        if later:
            raise UnsupportedError(
                f"axis {base.axis} is sharded and summed, and the clause '{later[0]}' after the sum needs the whole sum on one rank "
                f"(a gather of the partial products): shard another axis, or reduce {base.axis} with a clause"
            )
        return replace(base, kind="partial", placement_out="Partial(sum)")
    reducer, ids = clauses[at]
    if at != len(clauses) - 1:
        raise UnsupportedError(
            f"the clause '{reducer} {' '.join(ids)}' over the sharded axis {base.axis} must be the last clause: "
            f"apply '{' | '.join(r + ' ' + ' '.join(i) for r, i in clauses[at + 1 :])}' to its result"
        )
    clause = tuple(d for i in ids for d in bound.groups.get(i, (i,)))
    extent = tuple(bound.sizes[i] for i in clause)
    local = clauses[:at] + ((("sum" if reducer == "mean" else reducer), ids),)
    collective = "all_reduce SUM" if reducer in SUMMED else "all_gather"
    return replace(
        base,
        kind="clause",
        local=_local_pattern(resolved, local),
        values=_local_pattern(resolved, clauses[:at] + ((reducer[3:], ids),)) if reducer.startswith("arg") else "",
        einsum=False,
        reducer=reducer,
        clause=clause,
        extent=extent,
        count=math.prod(extent),
        collective=collective,
    )


def describe(found: Route, mesh) -> str:
    """What ``explain`` shows before the local plan: placements in, the collective, placement out."""
    rank = mesh.get_local_rank()
    lines = [f"distributed: {mesh!r}, rank {rank} of {mesh.size()}", "placements in:"]
    lines += [f"  {p}" for p in found.placements_in]
    if found.axis is not None:
        lines.append(f"sharded axis: {found.axis}, this rank's rows {found.offset}:{found.offset + found.length} (torch.chunk's cut)")
    lines.append(f"each rank runs: {found.local}" + ("  (torch.einsum equation)" if found.einsum else ""))
    lines.append(f"collective: {_combine_text(found)}")
    lines.append(f"placement out: {found.placement_out}")
    return "\n".join(lines)


def _combine_text(found: Route) -> str:
    if found.kind == "partial":
        return (
            "one all_reduce SUM of each rank's partial sum"
            if found.replicate
            else "none (Partial(sum): reduced when the result is redistributed)"
        )
    if found.kind != "clause":
        return "none"
    reducer = found.reducer
    if reducer in SUMMED:
        return "one all_reduce SUM of each rank's sum" + (f", divided by {found.count}" if reducer == "mean" else "")
    if reducer in ("argmax", "argmin"):
        return f"one all_gather of each rank's ({reducer[3:]}, global flat index); a NaN wins, then the {reducer[3:]}, then the first index"
    torch_name = {"max": "amax", "min": "amin"}.get(reducer or "", reducer)
    return f"one all_gather of each rank's {reducer}, then torch.{torch_name} over the ranks"
