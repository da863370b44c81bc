"""The rest of a contraction path in chunks, when a step before the last would exceed the limit.

``a i, a j, i j ->`` contracts ``a i, a j -> i j`` first: at 4096^3 that
intermediate alone is 64 MiB.  Chunking only the last step cannot bound it.
Instead the steps from the oversized one to the end run inside one loop over
chunks of an axis of that intermediate: each chunk cuts every value holding the
axis, contracts the rest of the path for those rows, and either fills rows of
the result (an output axis) or adds its partial result (an axis summed later).
With clauses (``a i, a j, i j -> i | max j``) the cut axis must be one the
clauses keep: each chunk then applies every clause to its rows before writing
them.  Otherwise the plan keeps its clause machinery (the last step in chunks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from . import ir
from .chunking import CHUNK_BYTES, human_bytes
from .clauses import ARG_REDUCERS, apply_clauses, clause_dtype
from .contraction import Context, Contraction, Value, new_tensor, rows_of, sized, take_pair
from .cost import Estimate
from .lowerings import REGISTRY, choose, emit_value


@dataclass(frozen=True)
class Tail:
    """The path from one step on, and the sizes and options every step shares."""

    values: tuple[Value, ...]  # the values before the oversized step
    path: tuple[tuple[int, ...], ...]  # the steps from it to the end
    keep: frozenset  # the output axes
    sizes: dict
    rank: Callable[[str], tuple]
    dtype: torch.dtype
    clauses: tuple = ()  # applied to each chunk's rows

    @property
    def output(self) -> frozenset:
        """The axes the clauses keep: ``keep`` less every clause's axes."""
        return self.keep.difference(*(ids for _, ids in self.clauses))


def _steps(tail: Tail, sizes, context: Context, free=frozenset(), emit: bool = False):
    """Walk the tail's path at ``sizes``: (estimates, statements, the final value, every step's result bytes)."""
    values = list(tail.values)
    estimates: list[Estimate] = []
    statements: list = []
    results: list[tuple[tuple[str, ...], int]] = []
    for pair in tail.path:
        taken, needed = take_pair(values, pair, tail.keep)
        if len(taken) == 1:
            values.append(taken[0])
            continue
        step = Contraction(taken[0], taken[1], needed, sizes, tail.rank, tail.dtype, free)
        winner, estimate, _ = choose(step, context)
        estimates.append(estimate)
        axes = REGISTRY[winner].result_axes(step, context)
        results.append((axes, math.prod(sizes[x] for x in axes) * tail.dtype.itemsize))
        if emit:
            more, value, _ = emit_value(winner, step, context, " for this chunk")
            statements += more
            values.append(value)
        else:
            values.append(Value(f"v{len(results)}", axes))
    (final,) = values
    return estimates, statements, final, results


def _axis(tail: Tail, oversized: tuple[str, ...]) -> str | None:
    """The axis to cut: the largest of the oversized intermediate's, an output axis first."""
    candidates = [x for x in oversized if tail.sizes[x] > 1 and (x in tail.output or not tail.clauses)]
    if not candidates:
        return None
    outputs = [x for x in candidates if x in tail.keep]
    return max(outputs or candidates, key=lambda x: tail.sizes[x])


def plan(tail: Tail, context: Context, limit: int):
    """(statements, the result value, the estimate, a description), or None when cutting cannot help."""
    estimates, _, final, results = _steps(tail, tail.sizes, context)
    oversized = next((axes for axes, size in results if size > limit), None)
    if oversized is None:  # what exceeds the limit is a lowering's own temporary, not a result to cut
        return None
    axis = _axis(tail, oversized)
    if axis is None or (tail.clauses and tail.clauses[-1][0] in ARG_REDUCERS and len(tail.clauses[-1][1]) > 1):
        return None  # no axis to cut, or a clause that returns one index tensor per axis
    # a chunk's intermediates, and a copy of an operand cut across its rows (a GEMM copies a
    # strided chunk it cannot read in place)
    per_row = 2 * max(size / tail.sizes[axis] for axes, size in results if axis in axes)
    budget = min(limit, CHUNK_BYTES)
    rows = int(max(1, budget // per_row))
    if rows >= tail.sizes[axis] or any(size > limit for axes, size in results if axis not in axes and axes != final.axes):
        return None
    statements, result = _emit(tail, context, axis, rows, final)
    total = _total(estimates, math.ceil(tail.sizes[axis] / rows), rows * per_row)
    how = f"in chunks of {rows} along {axis} (about {human_bytes(rows * per_row)} at a time)"
    return statements, result, total, how


def _total(estimates: list[Estimate], chunks: int, memory: float) -> Estimate:
    """The steps' estimates added up (each GEMM's flops weighted by its efficiency), their ops once
    per chunk, and one chunk's memory."""
    summed = {f.name: sum(getattr(e, f.name) for e in estimates) for f in fields(Estimate) if f.name != "allocations"}
    summed["gemm_flops"] = sum(e.gemm_flops / max(e.gemm_efficiency, 1e-12) for e in estimates)
    summed.update(gemm_efficiency=1.0, ops=summed["ops"] * chunks, memory=memory)
    return Estimate(**summed)  # no allocations priced fresh: one chunk's temporaries, reused


def _emit(tail: Tail, context: Context, axis: str, rows: int, final: Value) -> tuple[list, Value]:
    names = context.names
    start = ir.Var("i")
    step = ir.Const(rows, frozenset(tail.sizes) - {axis})
    cuts, parts = [], []
    for value in tail.values:
        if axis in value.axes:
            cut = names.fresh("chunk")
            items = (ir.SLICE,) * value.axes.index(axis) + (ir.Range(start, ir.plus(start, step)),)
            cuts.append(ir.Assign(cut, ir.Index(ir.Var(value.var), items), f"chunk of {axis}"))
            value = Value(cut, value.axes)
        parts.append(value)
    holder = next(v for v in tail.values if axis in v.axes)
    sizes = dict(tail.sizes, **{axis: rows})
    body_tail = Tail(tuple(parts), tail.path, tail.keep, sizes, tail.rank, tail.dtype)
    _, body, piece, _ = _steps(body_tail, sizes, context, frozenset({axis}), emit=True)
    dtype = tail.dtype
    if tail.clauses:
        more, (piece,) = apply_clauses(piece, tail.clauses, sizes, dtype, names, frozenset({axis}))
        body += more
        for reducer, _ in tail.clauses:
            dtype = clause_dtype(reducer, dtype)
    result = Value(names.fresh("result"), piece.axes)
    shape = sized(tuple(tail.sizes[x] for x in piece.axes), piece.axes)
    if axis in piece.axes:
        setup = ir.Assign(result.var, new_tensor("torch.empty", shape, dtype), "result, filled chunk by chunk")
        body.append(ir.Assign(rows_of(result, axis, start, step), ir.Var(piece.var), f"write rows of {axis}"))
    else:
        setup = ir.Assign(result.var, new_tensor("torch.zeros", shape, tail.dtype), "running sum")
        body.append(ir.Assign(result.var, ir.BinOp("+", ir.Var(result.var), ir.Var(piece.var)), "add this chunk's partial sum"))
    made = tuple(s.target for s in body if isinstance(s, ir.Assign) and isinstance(s.target, str) and s.target != result.var)
    if made:  # free this chunk's intermediates before the next chunk makes its own
        body.append(ir.Delete(made))
    stop = ir.shape_of(holder.var, holder.axes.index(axis))
    loop = ir.Loop("i", 0, stop, step, tuple(cuts + body), f"chunks of {rows} along {axis}")
    return [setup, loop], result
