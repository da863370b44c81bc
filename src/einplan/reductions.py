"""Clauses: reductions after the sum-product, materialised or in chunks.

``reduce_clause`` applies one clause to a tensor that exists in full.
``chunked`` computes the last contraction and the clauses in chunks of one
axis into a reused buffer, so that the full intermediate never exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch

from . import ir
from .errors import EinplanError
from .lowerings import CONTRACTIONS, MATMUL, Names, Options, Value, _describe, _lower, _numel, _sum, assign_result, choose
from .semantics import Bound

# --- clauses and output -----------------------------------------------------------------------


REDUCE_CALLS = {"max": "torch.amax", "min": "torch.amin", "logsumexp": "torch.logsumexp"}


def reduce_clause(value: Value, reducer: str, ids: tuple[str, ...], sizes, dtype, names: Names):
    """One clause applied to a materialised value; returns (statement, result values)."""
    dims = tuple(value.axes.index(a) for a in ids)
    rest = tuple(a for a in value.axes if a not in ids)
    if reducer in ("max", "min", "argmax", "argmin") and _numel(sizes, ids) == 0:
        raise EinplanError(f"cannot take {reducer} over axes {' '.join(ids)} of size 0")
    var = names.fresh()
    arg = ir.Const(dims[0] if len(dims) == 1 else dims)
    source = ir.Var(value.var)
    if reducer == "sum":
        expr = _sum(source, dims, dtype)
    elif reducer == "mean":
        expr = ir.Method(source, "mean", (arg,))
    elif reducer in REDUCE_CALLS:
        expr = ir.Call(REDUCE_CALLS[reducer], (source, arg))
    else:  # argmax / argmin
        if len(ids) == 1:
            expr = ir.Method(source, reducer, (arg,))
            comment = f"reduce: {reducer} {ids[0]}"
            return [ir.Assign(var, expr, comment)], [Value(var, rest)]
        layout = rest + ids
        moved = ir.permute(source, tuple(value.axes.index(a) for a in layout))
        flat = ir.reshape(moved, tuple(sizes[a] for a in rest) + (_numel(sizes, ids),))
        index = names.fresh()
        statements = [
            ir.Assign(index, ir.Method(flat, reducer, (ir.Const(-1),)), f"reduce: {reducer} over ({' '.join(ids)}) flattened"),
            ir.Assign(var, ir.Call("torch.unravel_index", (ir.Var(index), ir.Const(tuple(sizes[a] for a in ids)))), "one index tensor per axis"),
        ]
        parts = []
        for k, axis in enumerate(ids):
            part = names.fresh()
            statements.append(ir.Assign(part, ir.Index(ir.Var(var), (k,)), f"index along {axis}"))
            parts.append(Value(part, rest))
        return statements, parts
    return [ir.Assign(var, expr, f"reduce: {reducer} {' '.join(ids)}")], [Value(var, rest)]


# --- chunked reduction -------------------------------------------------------------------------

CHUNK_BYTES = 8 * 2**20  # default budget of one chunk (buffer plus the reduction's temporaries)
DEFAULT_MEMORY_LIMIT = 256 * 2**20  # a step whose intermediate is larger is computed in chunks
TEMPORARIES = {"logsumexp": 2.0, "mean": 1.0, "sum": 1.0, "max": 1.0, "min": 1.0, "argmax": 1.0, "argmin": 1.0}


def _extreme(dtype: torch.dtype, low: bool):
    """The identity of max (``low``) or min: -inf/+inf, or the integer limits."""
    if dtype.is_floating_point:
        return float("-inf") if low else float("inf")
    info = torch.iinfo(dtype)
    return info.min if low else info.max


def _full(shape, value, dtype, device_of: str) -> ir.Expr:
    return ir.Call(
        "torch.full",
        (ir.Const(tuple(shape)), ir.Const(value)),
        (("dtype", ir.Const(dtype)), ("device", ir.Attr(ir.Var(device_of), "device"))),
    )


def _empty(shape, dtype, device_of: str) -> ir.Expr:
    return ir.Call(
        "torch.empty",
        (ir.Const(tuple(shape)),),
        (("dtype", ir.Const(dtype)), ("device", ir.Attr(ir.Var(device_of), "device"))),
    )


def _slice(value: Value, axis: str, start: ir.Expr, length: int) -> ir.Expr:
    """``value[:, ..., start:start + length]`` along ``axis``."""
    position = value.axes.index(axis)
    stop = ir.BinOp("+", start, ir.Const(length))
    return ir.Index(ir.Var(value.var), (ir.SLICE,) * position + (ir.Range(start, stop),))


@dataclass(frozen=True)
class _Chunking:
    axis: str
    mode: str  # "output": write slices; "reduce": combine the first clause; "sum": add partial sums
    rows: int


def _chunk_axis(a: Value, b: Value, clauses, output_axes, keep, sizes) -> Optional[tuple[str, str]]:
    union = list(dict.fromkeys(a.axes + b.axes))
    outputs = [x for x in output_axes if x in union and sizes[x] > 1]
    if outputs:
        return max(outputs, key=lambda x: sizes[x]), "output"
    if clauses:
        reducer, ids = clauses[0]
        if reducer in ("argmax", "argmin"):
            return ids[0], "reduce"
        return max(ids, key=lambda x: sizes[x]), "reduce"
    contracted = [x for x in union if x not in keep]
    if contracted:
        return max(contracted, key=lambda x: sizes[x]), "sum"
    everything = [x for x in union if x in output_axes]
    return (everything[0], "output") if everything else None


def chunked(a: Value, b: Value, clauses, bound: Bound, keep, sizes, rank, model, options, names, budget):
    """The last contraction and the clauses, in chunks of one axis.

    Returns (statements, result values, estimate, inner lowering, chunking) or None.
    """
    dtype = bound.dtype
    choice = _chunk_axis(a, b, clauses, bound.output_axes, keep, sizes)
    if choice is None:
        return None
    axis, mode = choice
    first_rank = lambda x: (-1, 0) if x == axis else rank(x)
    inner_options = Options(options.lowering if options.lowering in CONTRACTIONS else None, options.memory_limit)
    probe = Names(names.count)
    inner, full, _ = choose(a, b, keep, sizes, first_rank, dtype, model, inner_options, probe)
    factor = max((TEMPORARIES[r] for r, _ in clauses), default=1.0)
    per_row = max(full.estimate.memory / max(sizes[axis], 1), dtype.itemsize) * factor
    rows = int(max(1, min(sizes[axis], budget // per_row))) if sizes[axis] else 1
    chunking = _Chunking(axis, mode, rows)
    total = sizes[axis]
    tail = total % rows if rows else 0
    setup: list = []
    x_of = "x0"
    i = ir.Var("i")
    accumulators: list[Value] = []
    results: list[Value] = []
    buffer = None
    grad = None

    def body(length: int) -> tuple[list, list[Value]]:
        """Statements for one chunk of ``length`` rows; returns them and the chunk's values."""
        chunk_sizes = dict(sizes, **{axis: length})
        statements = []
        parts = []
        for value in (a, b):
            if axis in value.axes:
                var = names.fresh("c")
                statements.append(ir.Assign(var, _slice(value, axis, i, length), f"chunk of {axis}"))
                parts.append(Value(var, value.axes))
            else:
                parts.append(value)
        lowered = _lower(inner, parts[0], parts[1], keep, chunk_sizes, first_rank, dtype, model, names, options.lowering == inner)
        expr = lowered.expr
        if buffer is not None and isinstance(expr, ir.Call) and expr.func == "torch.matmul" and lowered.axes[0] == axis:
            target = ir.Var(buffer) if length == rows else ir.Index(ir.Var(buffer), (ir.Range(ir.Const(None), ir.Const(length)),))
            expr = ir.Call(expr.func, expr.args, (("out", ir.IfExp(ir.Var(grad), ir.Const(None), target)),))
        lowered = replace(lowered, expr=expr)
        comment = f"{inner}: {_describe([a.axes, b.axes], lowered.axes)} for this chunk"
        var, more = assign_result(lowered, comment, names, "s")
        statements.extend(more)
        return statements, [Value(var, lowered.axes)], chunk_sizes

    # the chunk buffer, reused by every full chunk (matmul writes into it with out=)
    if inner == MATMUL:
        probe_statements = _lower(inner, a, b, keep, dict(sizes, **{axis: rows}), first_rank, dtype, model, Names(), False)
        if isinstance(probe_statements.expr, ir.Call) and probe_statements.axes[0] == axis:
            buffer, grad = names.fresh("buf"), "grad"
            shape = tuple(rows if x == axis else sizes[x] for x in probe_statements.axes)
            setup.append(ir.Assign(buffer, _empty(shape, dtype, x_of), f"chunk buffer, {_human_bytes(math.prod(shape) * dtype.itemsize)}"))
            inputs_grad = ir.BoolOp("or", tuple(ir.Attr(ir.Var(f"x{k}"), "requires_grad") for k in range(len(bound.operands))))
            setup.append(ir.Assign(grad, ir.BoolOp("and", (ir.Call("torch.is_grad_enabled", ()), inputs_grad)), "out= buffers do not carry gradients"))

    reduced_axes = [x for _, ids in clauses for x in ids]
    if mode == "output":
        after = tuple(x for x in full.axes if x not in reduced_axes)
        arg = clauses and clauses[-1][0] in ("argmax", "argmin")
        count = len(clauses[-1][1]) if arg else 1
        for k in range(count):
            var = names.fresh("r")
            result_dtype = torch.int64 if arg else dtype
            setup.append(ir.Assign(var, _empty(tuple(sizes[x] for x in after), result_dtype, x_of), "result, filled chunk by chunk"))
            results.append(Value(var, after))

        def combine(values, chunk_sizes):
            statements = []
            for reducer, ids in clauses:
                (current,) = values
                more, values = reduce_clause(current, reducer, ids, chunk_sizes, dtype, names)
                statements.extend(more)
            for result, value in zip(results, values):
                statements.append(ir.Assign(_slice(result, axis, i, chunk_sizes[axis]), ir.Var(value.var), f"write rows of {axis}"))
            return statements

    elif mode == "reduce":
        reducer, ids = clauses[0]
        rest = tuple(x for x in full.axes if x not in ids)
        rest_shape = tuple(sizes[x] for x in rest)
        best = names.fresh("acc")
        if reducer in ("argmax", "argmin"):
            index = names.fresh("idx")
            setup.append(ir.Assign(best, _full(rest_shape, _extreme(dtype, reducer == "argmax"), dtype, x_of), f"running {reducer[3:]}"))
            setup.append(ir.Assign(index, ir.Call("torch.zeros", (ir.Const(rest_shape),), (("dtype", ir.Const(torch.int64)), ("device", ir.Attr(ir.Var(x_of), "device")))), "its flat index"))
            stride = _numel(sizes, ids[1:])
        elif reducer in ("max", "min"):
            setup.append(ir.Assign(best, _full(rest_shape, _extreme(dtype, reducer == "max"), dtype, x_of), f"running {reducer}"))
        elif reducer == "logsumexp":
            setup.append(ir.Assign(best, _full(rest_shape, float("-inf"), dtype, x_of), "running logsumexp"))
        else:
            setup.append(ir.Assign(best, ir.Call("torch.zeros", (ir.Const(rest_shape),), (("dtype", ir.Const(dtype)), ("device", ir.Attr(ir.Var(x_of), "device")))), "running sum"))

        def combine(values, chunk_sizes):
            (value,) = values
            dims = tuple(value.axes.index(x) for x in ids)
            arg = ir.Const(dims[0] if len(dims) == 1 else dims)
            source = ir.Var(value.var)
            part = names.fresh("p")
            if reducer in ("argmax", "argmin"):
                flat = ir.reshape(ir.permute(source, tuple(value.axes.index(x) for x in rest + ids)), rest_shape + (-1,))
                values_, indices = ir.Attr(ir.Var(part), "values"), ir.Attr(ir.Var(part), "indices")
                beats = ">" if reducer == "argmax" else "<"
                take = names.fresh("take")
                nan = ir.BinOp("&", ir.BinOp("!=", values_, values_), ir.BinOp("==", ir.Var(best), ir.Var(best)))
                return [
                    ir.Assign(part, ir.Method(flat, reducer[3:], (ir.Const(-1),)), f"{reducer[3:]} of this chunk and where"),
                    ir.Assign(take, ir.BinOp("|", ir.BinOp(beats, values_, ir.Var(best)), nan), "strictly better (ties keep the first; NaN wins)"),
                    ir.Assign(best, ir.Call("torch.where", (ir.Var(take), values_, ir.Var(best)))),
                    ir.Assign(index, ir.Call("torch.where", (ir.Var(take), ir.BinOp("+", indices, ir.BinOp("*", i, ir.Const(stride))), ir.Var(index))), "chunk offset"),
                ]
            if reducer in ("max", "min"):
                partial = ir.Call(REDUCE_CALLS[reducer], (source, arg))
                merge = ir.Call("torch.maximum" if reducer == "max" else "torch.minimum", (ir.Var(best), ir.Var(part)))
            elif reducer == "logsumexp":
                partial = ir.Call("torch.logsumexp", (source, arg))
                merge = ir.Call("torch.logaddexp", (ir.Var(best), ir.Var(part)))
            else:
                partial = _sum(source, dims, dtype)
                merge = ir.BinOp("+", ir.Var(best), ir.Var(part))
            return [
                ir.Assign(part, partial, f"{reducer} of this chunk"),
                ir.Assign(best, merge, "combine"),
            ]

        if reducer in ("argmax", "argmin"):
            finish = []
            if len(ids) == 1:
                accumulators = [Value(index, rest)]
            else:
                unravelled = names.fresh()
                finish.append(ir.Assign(unravelled, ir.Call("torch.unravel_index", (ir.Var(index), ir.Const(tuple(sizes[x] for x in ids)))), "one index tensor per axis"))
                for k, x in enumerate(ids):
                    part_var = names.fresh()
                    finish.append(ir.Assign(part_var, ir.Index(ir.Var(unravelled), (k,)), f"index along {x}"))
                    accumulators.append(Value(part_var, rest))
        else:
            finish = []
            if reducer == "mean":
                finish.append(ir.Assign(best, ir.BinOp("/", ir.Var(best), ir.Const(_numel(sizes, ids))), "mean = sum / count"))
            accumulators = [Value(best, rest)]
        remaining = clauses[1:]
    else:  # "sum": partial sums over chunks of a contracted axis
        best = names.fresh("acc")
        out_axes = full.axes
        setup.append(ir.Assign(best, ir.Call("torch.zeros", (ir.Const(tuple(sizes[x] for x in out_axes)),), (("dtype", ir.Const(dtype)), ("device", ir.Attr(ir.Var(x_of), "device")))), "running sum"))

        def combine(values, chunk_sizes):
            (value,) = values
            return [ir.Assign(best, ir.BinOp("+", ir.Var(best), ir.Var(value.var)), "add this chunk's partial sum")]

        finish = []
        accumulators = [Value(best, out_axes)]
        remaining = clauses

    statements = list(setup)
    full_stop = total - tail
    for start, stop, length in ((0, full_stop, rows), (full_stop, total, tail)):
        if length <= 0 or stop <= start:
            continue
        chunk_statements, values, chunk_sizes = body(length)
        chunk_statements += combine(values, chunk_sizes)
        label = "chunked-reduction" if length == rows else "last, shorter chunk"
        statements.append(ir.Loop("i", start, stop, length, tuple(chunk_statements), f"{label}: {length} of {total} along {axis}"))
    if mode != "output":
        statements.extend(finish)
        results = accumulators
        for reducer, ids in remaining:
            (current,) = results
            more, results = reduce_clause(current, reducer, ids, sizes, dtype, names)
            statements.extend(more)
    chunk_memory = rows * per_row
    estimate = replace(
        full.estimate,
        ops=full.estimate.ops * max(1, math.ceil(total / rows)) + 2 * len(clauses) * max(1, math.ceil(total / rows)),
        memory=chunk_memory,
    )
    return statements, results, estimate, inner, chunking


def _human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


