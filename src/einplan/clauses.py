"""Clauses: the reductions after the sum-product (``| max k``, ``| argmax m n`` ...).

``reduce_clause`` applies one clause to a tensor that exists in full (or to one
chunk of it); the running forms (``running_start``, ``fold``) are what a chunk
loop uses to combine chunks: add, max/min elementwise, log-add.
"""

from __future__ import annotations

import torch

from . import ir
from .contraction import Names, Value, new_tensor, numel, sized, sum_over, torch_lacks
from .errors import EinplanError, UnsupportedError

REDUCE_CALLS = {"max": "torch.amax", "min": "torch.amin", "logsumexp": "torch.logsumexp"}
MERGE_CALLS = {"max": "torch.maximum", "min": "torch.minimum", "logsumexp": "torch.logaddexp"}
ARG_REDUCERS = ("argmax", "argmin")
LOGICAL = ("any", "all")  # -> bool
WHOLE_ONLY = ("prod", "any", "all")  # no running form: reduced in full, or on chunks of kept rows


def clause_dtype(reducer: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a clause returns: int64 indices, and a float mean/logsumexp of integers."""
    if reducer in ARG_REDUCERS:
        return torch.int64
    if reducer in LOGICAL:
        return torch.bool
    if reducer == "prod" and not (dtype.is_floating_point or dtype.is_complex):
        return torch.int64  # torch.prod's promotion of integers and bools
    if reducer in ("logsumexp", "mean") and not (dtype.is_floating_point or dtype.is_complex):
        return torch.get_default_dtype()
    return dtype


def check_supported(reducer: str, dtype: torch.dtype, device) -> None:
    """An ``UnsupportedError`` when torch has no ``reducer`` for ``dtype`` (complex numbers have
    no order; some integer dtypes lack max/min kernels).  Checked on the CPU, for a CPU plan."""
    if torch.device(device).type != "cpu":
        return
    why = torch_lacks(reducer, dtype)
    if why:
        unordered = " (complex numbers have no order)" if dtype.is_complex and reducer != "logsumexp" else ""
        raise UnsupportedError(f"torch has no {reducer} for {dtype} tensors{unordered}: {why}")


def extreme(dtype: torch.dtype, low: bool):
    """The identity of max (``low``) or min: -inf/+inf, False/True, or the integer limits."""
    if dtype == torch.bool:
        return not low
    if dtype.is_floating_point:
        return float("-inf") if low else float("inf")
    info = torch.iinfo(dtype)
    return info.min if low else info.max


def _reduced_by(reducer: str, source: ir.Expr, dims: tuple[int, ...], dtype: torch.dtype) -> ir.Expr:
    arg = ir.Const(dims[0] if len(dims) == 1 else dims)
    if reducer == "sum":
        return sum_over(source, dims, dtype)
    if reducer == "mean":
        integer = not (dtype.is_floating_point or dtype.is_complex)
        kwargs = (("dtype", ir.Const(clause_dtype("mean", dtype))),) if integer else ()
        return ir.Method(source, "mean", (arg,), kwargs)
    if reducer == "prod":  # torch.prod takes one dim: the last first, so the others keep their place
        for dim in sorted(dims, reverse=True):
            source = ir.Method(source, "prod", (ir.Const(dim),))
        return source
    if reducer in LOGICAL:
        return ir.Call(f"torch.{reducer}", (source, arg))
    return ir.Call(REDUCE_CALLS[reducer], (source, arg))


def spelled(ids) -> str:
    """Axis ids for a comment, the dims of a group written as the group: ``*r[0] *r[1]`` -> ``*r``."""
    words: list[str] = []
    for axis in ids:
        group = axis[: axis.index("[")] if axis.endswith("]") and "[" in axis else None
        if group is None or not words or words[-1] != group:
            words.append(group or axis)
    return " ".join(words)


def reduce_clause(value: Value, reducer: str, ids: tuple[str, ...], sizes, dtype, names: Names, free=frozenset()):
    """One clause applied to ``value``; returns (statements, result values).

    ``free``: axes of ``value`` whose size is read at run time (a chunk's rows).
    """
    dims = tuple(value.axes.index(a) for a in ids)
    rest = tuple(a for a in value.axes if a not in ids)
    if reducer in ("max", "min", "argmax", "argmin") and numel(sizes, ids) == 0:
        raise EinplanError(f"cannot take {reducer} over axes {spelled(ids)} of size 0")
    source = ir.Var(value.var)
    if reducer not in ARG_REDUCERS:
        var = names.fresh()
        return [ir.Assign(var, _reduced_by(reducer, source, dims, dtype), f"reduce: {reducer} {spelled(ids)}")], [Value(var, rest)]
    if len(ids) == 1:
        var = names.fresh()
        return [ir.Assign(var, ir.Method(source, reducer, (ir.Const(dims[0]),)), f"reduce: {reducer} {ids[0]}")], [Value(var, rest)]
    moved = ir.permute(source, tuple(value.axes.index(a) for a in rest + ids))
    flat = ir.Method(moved, "flatten", (ir.Const(len(rest)), ir.Const(-1)))
    index = names.fresh()
    flat_index = ir.Assign(index, ir.Method(flat, reducer, (ir.Const(-1),)), f"reduce: {reducer} over ({spelled(ids)}) flattened")
    statements, parts = index_per_axis(index, ids, rest, sizes, names)
    return [flat_index] + statements, parts


def index_per_axis(index: str, ids, rest, sizes, names: Names) -> tuple[list, list[Value]]:
    """Unravel the flat ``index`` over ``ids``: one index value per axis; returns (statements, values)."""
    var = names.fresh()
    shape = sized(tuple(sizes[a] for a in ids), ids)
    statements = [ir.Assign(var, ir.Call("torch.unravel_index", (ir.Var(index), shape)), "one index tensor per axis")]
    values = []
    for k, axis in enumerate(ids):
        part = names.fresh()
        statements.append(ir.Assign(part, ir.Index(ir.Var(var), (k,)), f"index along {axis}"))
        values.append(Value(part, rest))
    return statements, values


def apply_clauses(value: Value, clauses, sizes, dtype: torch.dtype, names: Names, free=frozenset()) -> tuple[list, list[Value]]:
    """Clauses applied in order to a value that exists in full (or to one chunk of it)."""
    statements: list = []
    values = [value]
    for reducer, ids in clauses:
        (current,) = values
        more, values = reduce_clause(current, reducer, ids, sizes, dtype, names, free)
        statements.extend(more)
        dtype = clause_dtype(reducer, dtype)
    return statements, values


def accumulator_dtype(reducer: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a running sum/mean is kept in: float32 for half precision (a sum of many
    float16 values overflows where their mean does not), int64 for a mean of integers (exact)."""
    if reducer in ("sum", "mean") and dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if reducer == "mean" and not (dtype.is_floating_point or dtype.is_complex):
        return torch.int64
    return dtype


def running_start(var: str, reducer: str, shape, dtype: torch.dtype) -> ir.Assign:
    """``var`` = the identity of a running max/min/logsumexp/sum of ``shape`` (``dtype``: the input's)."""
    if reducer in ("max", "min"):
        return ir.Assign(var, new_tensor("torch.full", shape, dtype, extreme(dtype, reducer == "max")), f"running {reducer}")
    if reducer == "logsumexp":
        return ir.Assign(var, new_tensor("torch.full", shape, clause_dtype("logsumexp", dtype), float("-inf")), "running logsumexp")
    return ir.Assign(var, new_tensor("torch.zeros", shape, accumulator_dtype(reducer, dtype)), "running sum")


def fold(acc: str, reducer: str, value: Value, ids, dtype: torch.dtype, names: Names, piece: str) -> list:
    """Reduce ``value`` over ``ids`` and fold the result into the running ``acc``."""
    dims = tuple(value.axes.index(x) for x in ids)
    part = names.fresh("part")
    merge: ir.Expr
    if reducer in MERGE_CALLS:
        merge = ir.Call(MERGE_CALLS[reducer], (ir.Var(acc), ir.Var(part)))
    else:  # sum, mean
        merge = ir.BinOp("+", ir.Var(acc), ir.Var(part))
    wide = accumulator_dtype(reducer, dtype)
    if reducer == "logsumexp" and value.owned and dtype.is_floating_point:
        return _logsumexp_in_place(part, value, dims, names, piece) + [ir.Assign(acc, merge, "combine")]
    if wide != dtype:  # each chunk's sum in the accumulator's dtype, as torch's own sum accumulates
        partial: ir.Expr = ir.Method(
            ir.Var(value.var), "sum", (ir.Const(dims[0] if len(dims) == 1 else dims),), (("dtype", ir.Const(wide)),)
        )
    else:
        partial = _reduced_by("sum" if reducer == "mean" else reducer, ir.Var(value.var), dims, dtype)
    return [
        ir.Assign(part, partial, f"{reducer} of this {piece}"),
        ir.Assign(acc, merge, "combine"),
    ]


def _logsumexp_in_place(part: str, value: Value, dims: tuple[int, ...], names: Names, piece: str) -> list:
    """torch.logsumexp of a piece the loop owns (its buffer, or a fresh product), shifting and
    exponentiating the piece in place: no temporary the size of the piece.  The shift is
    torch's: the max, or 0 where the max is infinite."""
    arg = ir.Const(dims[0] if len(dims) == 1 else dims)
    rest = tuple(x for x in value.axes if value.axes.index(x) not in dims)
    high, shift = names.fresh("high"), names.fresh("shift")
    infinite = ir.BinOp("==", ir.Method(ir.Var(high), "abs"), ir.Const(float("inf")))
    shifted = ir.Method(ir.Method(ir.Var(value.var), "sub_", (aligned(Value(shift, rest), value.axes),)), "exp_")
    total = ir.Method(ir.Method(ir.Method(ir.Var(value.var), "sum", (arg,)), "log_"), "add_", (ir.Var(shift),))
    return [
        ir.Assign(high, ir.Call("torch.amax", (ir.Var(value.var), arg)), f"the max of this {piece}"),
        ir.Assign(shift, ir.Call("torch.where", (infinite, ir.Const(0.0), ir.Var(high))), "shift by it (by 0 where it is infinite)"),
        ir.Do(shifted, f"exp(s - shift), in place: no copy of the {piece}"),
        ir.Assign(part, total, f"logsumexp of this {piece}"),
    ]


def aligned(value: Value, axes) -> ir.Expr:
    """``value`` (whose axes are ``axes`` less some, in order) indexed to broadcast against ``axes``:
    ``part[:, None]`` for a part reduced over the second of two axes."""
    items = [ir.SLICE if x in value.axes else None for x in axes]
    while items and items[-1] is ir.SLICE:
        items.pop()
    return ir.Index(ir.Var(value.var), tuple(items)) if items else ir.Var(value.var)


def fold_counting(acc: str, count: str, reducer: str, value: Value, ids, names: Names, piece: str) -> list:
    """:func:`fold` for a max/min that also keeps ``count``, how many positions equal the running
    extreme: a piece's own ties replace it when the piece's extreme is better, and add to it on a tie."""
    dims = tuple(value.axes.index(x) for x in ids)
    part, ties = names.fresh("part"), names.fresh("ties")
    rest = Value(part, tuple(x for x in value.axes if x not in ids))
    arg = ir.Const(dims[0] if len(dims) == 1 else dims)
    same = ir.BinOp("==", ir.Var(value.var), aligned(rest, value.axes))
    better = ir.BinOp(">" if reducer == "max" else "<", ir.Var(part), ir.Var(acc))
    tied = ir.Call("torch.where", (ir.BinOp("==", ir.Var(part), ir.Var(acc)), ir.BinOp("+", ir.Var(count), ir.Var(ties)), ir.Var(count)))
    return [
        ir.Assign(part, ir.Call(REDUCE_CALLS[reducer], (ir.Var(value.var), arg)), f"{reducer} of this {piece}"),
        ir.Assign(ties, ir.Method(same, "sum", (arg,)), f"how many positions of this {piece} equal it"),
        ir.Assign(count, ir.Call("torch.where", (better, ir.Var(ties), tied)), "count the ties of the running " + reducer),
        ir.Assign(acc, ir.Call(MERGE_CALLS[reducer], (ir.Var(acc), ir.Var(part))), "combine"),
    ]


def no_ties_at_nan(acc: str, count: str) -> ir.Assign:
    """A NaN extreme ties with nothing (torch.amax's gradient is NaN there: g / 0 at no position)."""
    nan = ir.BinOp("!=", ir.Var(acc), ir.Var(acc))
    return ir.Assign(count, ir.Call("torch.where", (nan, ir.Const(0), ir.Var(count))), "a NaN ties with nothing")


def finish_running(acc: str, reducer: str, dtype: torch.dtype, count: ir.Const) -> list:
    """After the loops: a mean divides by the count; an accumulator kept wider goes back to the
    clause's dtype."""
    statements = []
    if reducer == "mean":
        statements.append(ir.Assign(acc, ir.BinOp("/", ir.Var(acc), count), "mean = sum / count"))
    wanted = clause_dtype(reducer, dtype)
    if accumulator_dtype(reducer, dtype) != wanted:
        statements.append(ir.Assign(acc, ir.Method(ir.Var(acc), "to", (ir.Const(wanted),)), f"back to {wanted}"))
    return statements


def strictly_better(reducer: str, values: ir.Expr, best: ir.Expr) -> ir.Expr:
    """``values`` beat the running ``best`` of an argmax/argmin: strictly (ties keep the first), or NaN."""
    beats = ">" if reducer in ("max", "argmax") else "<"
    nan = ir.BinOp("&", ir.BinOp("!=", values, values), ir.BinOp("==", best, best))
    return ir.BinOp("|", ir.BinOp(beats, values, best), nan)
