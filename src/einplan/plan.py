"""Stage 3: a bound pattern -> a plan: contraction order, then a lowering per step.

The plan is a list of :class:`Step`, each holding the statements (``ir``) it
emits, the estimate of every candidate lowering the cost model priced, and the
step in pattern form.  Planning reads shapes only, never tensor data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import opt_einsum
import torch

from . import ir
from .cost import DeviceModel, Estimate, load_model
from .errors import EinplanError, UnsupportedError
from .semantics import Bound

MATMUL = "matmul-broadcast"
ELEMENTWISE = "elementwise-sum"
UNROLLED = "unrolled"
CHUNKED = "chunked-reduction"
LOWERINGS = (MATMUL, ELEMENTWISE, UNROLLED, CHUNKED)


@dataclass(frozen=True)
class Options:
    lowering: Optional[str] = None  # force one lowering for every contraction step
    memory_limit: Optional[int] = None  # bytes an intermediate may take


@dataclass(frozen=True)
class Value:
    """A tensor in the generated code: its variable and its axis ids, in order."""

    var: str
    axes: tuple[str, ...]


@dataclass(frozen=True)
class Candidate:
    lowering: str
    estimate: Estimate
    seconds: float


@dataclass(frozen=True)
class Step:
    kind: str  # a lowering, or "prepare" / "reduce" / "output"
    description: str  # the step in pattern form
    statements: tuple
    estimate: Optional[Estimate] = None
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class Plan:
    bound: Bound
    options: Options
    model: DeviceModel
    inputs: tuple[str, ...]
    path: tuple[tuple[int, ...], ...]
    steps: tuple[Step, ...]
    returns: tuple[ir.Expr, ...]  # one tensor, or the index tensors of an argmax

    @property
    def statements(self) -> list:
        body = [s for step in self.steps for s in step.statements]
        value = self.returns[0] if len(self.returns) == 1 else self.returns
        return body + [ir.Return(value)]


# --- helpers ---------------------------------------------------------------------------


def _describe(inputs: list[tuple[str, ...]], output: tuple[str, ...]) -> str:
    return ", ".join(" ".join(a) for a in inputs) + " -> " + " ".join(output)


def _numel(sizes: dict[str, int], axes) -> int:
    return math.prod(sizes[a] for a in axes)


def _sum(expr, dims: tuple[int, ...], dtype: torch.dtype):
    """``expr.sum(dims)`` that keeps integer dtypes (torch promotes them to int64)."""
    arg = ir.Const(dims[0] if len(dims) == 1 else dims)
    kwargs = () if (dtype.is_floating_point or dtype.is_complex) else (("dtype", ir.Const(dtype)),)
    return ir.Method(expr, "sum", (arg,), kwargs)


class _Names:
    def __init__(self, count: int = 0):
        self.count = count

    def fresh(self, prefix: str = "t") -> str:
        name = f"{prefix}{self.count}"
        self.count += 1
        return name


# --- operand preparation: views, diagonals, private sums ----------------------------------


def _prepare(bound: Bound, index: int, others: list[set[str]], keep: frozenset[str]):
    """Views and sums that touch one operand only; returns (expr, axes)."""
    operand = bound.operands[index]
    expr: ir.Expr = ir.Var(f"x{index}")
    if operand.view_shape is not None:
        expr = ir.reshape(expr, operand.view_shape)
    axes = list(operand.axes)
    while True:
        repeated = next((a for a in axes if axes.count(a) > 1), None)
        if repeated is None:
            break
        first = axes.index(repeated)
        second = axes.index(repeated, first + 1)
        expr = ir.Method(expr, "diagonal", (ir.Const(0), ir.Const(first), ir.Const(second)))
        axes = [a for k, a in enumerate(axes) if k not in (first, second)] + [repeated]
    elsewhere = set().union(*others) if others else set()
    private = [a for a in axes if a not in keep and a not in elsewhere]
    if private:
        dims = tuple(axes.index(a) - len(axes) for a in private)
        expr = _sum(expr, dims, bound.dtype)
        axes = [a for a in axes if a not in private]
    return expr, tuple(axes)


# --- contraction lowerings -------------------------------------------------------------------


@dataclass(frozen=True)
class Lowered:
    expr: ir.Expr  # the step's result, assigned to the step's variable
    axes: tuple[str, ...]
    estimate: Estimate
    setup: tuple = ()  # statements that run before (the unrolled terms)


def _order(axes, rank: Callable[[str], tuple]) -> list[str]:
    return sorted(axes, key=rank)


def _align(value: Value, layout: list[str]) -> ir.Expr:
    """``value`` permuted to the order of ``layout`` with None for its missing axes."""
    present = [a for a in layout if a in value.axes]
    expr = ir.permute(ir.Var(value.var), tuple(value.axes.index(a) for a in present))
    first = next((k for k, a in enumerate(layout) if a in value.axes), len(layout))
    items = [ir.SLICE if a in value.axes else None for a in layout[first:]]
    if any(i is None for i in items):
        while items and items[-1] is ir.SLICE:
            items.pop()
        expr = ir.Index(expr, tuple(items))
    return expr


def lower_elementwise(a: Value, b: Value, keep, sizes, rank, dtype, model) -> Lowered:
    """Broadcast multiply, then ``.sum`` over the contracted axes (trailing)."""
    union = list(dict.fromkeys(a.axes + b.axes))
    kept = _order([x for x in union if x in keep], rank)
    summed = [x for x in union if x not in keep]
    layout = kept + summed
    product = ir.BinOp("*", _align(a, layout), _align(b, layout))
    expr = _sum(product, tuple(range(-len(summed), 0)), dtype) if summed else product
    itemsize = dtype.itemsize
    full = _numel(sizes, layout)
    out = _numel(sizes, kept)
    traffic = _numel(sizes, a.axes) + _numel(sizes, b.axes) + out + (2 * full if summed else 0)
    estimate = Estimate(
        flops=2 * full if summed else full,
        bytes=traffic * itemsize,
        ops=2 if summed else 1,
        elementwise=full,
        reductions=out if summed and _numel(sizes, summed) < 64 else 0,
        memory=(full + out) * itemsize if summed else out * itemsize,
    )
    return Lowered(expr, tuple(kept), estimate)


def _laid_out(value: Value, layout: list[str], shape: Optional[tuple[int, ...]], sizes):
    """``value`` permuted to ``layout``, then reshaped to ``shape`` if given.

    Returns the expression and how many elements a copy would move (merging
    dims that the permute moved apart forces torch to copy).
    """
    order = tuple(value.axes.index(a) for a in layout)
    expr = ir.permute(ir.Var(value.var), order)
    if shape is None or shape == tuple(sizes[a] for a in layout):
        return expr, 0
    copies = _numel(sizes, layout) if order != tuple(sorted(order)) else 0
    return ir.reshape(expr, shape), copies


def lower_matmul(a: Value, b: Value, keep, sizes, rank, dtype, model) -> Optional[Lowered]:
    """Views plus one ``torch.matmul``; a shared operand is folded, never expanded.

    Batch axes (in both operands, kept) lead on both sides, so torch never has
    to broadcast one operand against the other's batch and never copies it.
    """
    if dtype == torch.bool or (not dtype.is_floating_point and not dtype.is_complex and model.kind == "cuda"):
        return None
    first_private = lambda v, w: min((rank(x) for x in v.axes if x not in w.axes), default=(1e9,))
    left, right = (a, b) if first_private(a, b) <= first_private(b, a) else (b, a)
    batch = _order([x for x in left.axes if x in right.axes and x in keep], rank)
    contracted = [x for x in left.axes if x in right.axes and x not in keep]
    m = _order([x for x in left.axes if x not in right.axes], rank)
    n = _order([x for x in right.axes if x not in left.axes], rank)
    B, M, N, K = (_numel(sizes, g) for g in (batch, m, n, contracted))
    out_axes = tuple(batch + m + n)
    # one axis per group: plain matmul; no batch and a 2-d right side: torch
    # folds the left's leading dims into one GEMM.  Otherwise merge groups.
    direct = len(contracted) == 1 and len(n) == 1 and (len(m) == 1 or (not batch and m))
    batch_shape = tuple(sizes[x] for x in batch)
    lhs, left_copy = _laid_out(left, batch + m + contracted, None if direct else batch_shape + (M, K), sizes)
    rhs, right_copy = _laid_out(right, batch + contracted + n, None if direct else batch_shape + (K, N), sizes)
    expr: ir.Expr = ir.Call("torch.matmul", (lhs, rhs))
    if not direct:
        expr = ir.reshape(expr, tuple(sizes[x] for x in out_axes))
    itemsize = dtype.itemsize
    out = B * M * N
    copies = left_copy + right_copy
    estimate = Estimate(
        flops=2 * B * M * N * K,
        bytes=(_numel(sizes, left.axes) + _numel(sizes, right.axes) + out + 2 * copies) * itemsize,
        ops=1 + (1 if left_copy else 0) + (1 if right_copy else 0),
        gemm_flops=2 * B * M * N * K,
        matrices=B if batch else 0,
        memory=(out + copies) * itemsize,
    ).gemm_eff(model, M, N, K)
    return Lowered(expr, out_axes, estimate)


UNROLL_TERMS = 16  # most terms the cost model may unroll; forcing allows up to 64
VECTOR_MIN = 32  # an axis this long is a vector axis: unrolled terms run along it
FORCED_UNROLL_TERMS = 64


def lower_unrolled(a: Value, b: Value, keep, sizes, rank, dtype, model, names=None, limit=UNROLL_TERMS) -> Optional[Lowered]:
    """Written-out arithmetic: one fused multiply-add per index of the summed axes.

    ``out = a[..., 0] * b[..., 0]; out.addcmul_(a[..., 1], b[..., 1]); ...`` --
    each term is one vector op over the kept axes, with no temporary the size
    of the full product.  Fuses into one kernel under torch.compile.
    """
    if dtype == torch.bool or names is None:
        return None
    union = list(dict.fromkeys(a.axes + b.axes))
    kept = _order([x for x in union if x in keep], rank)
    summed = [x for x in union if x not in keep]
    terms = _numel(sizes, summed)
    if not summed or terms == 0 or terms > limit or any(x not in a.axes or x not in b.axes for x in summed):
        return None
    setup: list = []
    copied = 0
    big = [x for x in kept if sizes[x] >= VECTOR_MIN]
    if kept and sizes[kept[-1]] < VECTOR_MIN and big:
        # lay the long axes last and contiguous, so each term is one vectorised op
        kept = [x for x in kept if sizes[x] < VECTOR_MIN] + big
        laid = []
        for value in (a, b):
            order = summed + [x for x in kept if x in value.axes]
            permutation = tuple(value.axes.index(x) for x in order)
            if permutation == tuple(range(len(order))):
                laid.append(value)
                continue
            var = names.fresh("v")
            moved = ir.Method(ir.permute(ir.Var(value.var), permutation), "contiguous")
            setup.append(ir.Assign(var, moved, f"unrolled: lay {' '.join(order)} out, {' '.join(big)} last"))
            laid.append(Value(var, tuple(order)))
            copied += _numel(sizes, value.axes)
        a, b = laid
    inner = sizes[kept[-1]] if kept else 1
    target = names.fresh()
    indices = _index_tuples([sizes[x] for x in summed])
    first = ir.BinOp("*", _aligned_term(a, kept, summed, indices[0]), _aligned_term(b, kept, summed, indices[0]))
    setup.append(ir.Assign(target, first, f"unrolled: term {_term_name(summed, indices[0])}"))
    for index in indices[1:]:
        setup.append(
            ir.Do(
                ir.Method(ir.Var(target), "addcmul_", (_aligned_term(a, kept, summed, index), _aligned_term(b, kept, summed, index))),
                f"unrolled: term {_term_name(summed, index)}",
            )
        )
    itemsize = dtype.itemsize
    out = _numel(sizes, kept)
    # short inner loops (an inner axis of 2 or 3) cost far more per element
    inner_penalty = max(1.0, 8.0 / max(inner, 1))
    # a term reads its slice; a strided slice (summed axes not leading) drags in whole cache lines
    reads = sum(
        _numel(sizes, v.axes) // terms if v.axes[: len(summed)] == tuple(summed) else _numel(sizes, v.axes)
        for v in (a, b)
    )
    estimate = Estimate(
        flops=2 * out * terms,
        bytes=(2 * copied + terms * (2 * out + reads)) * itemsize,
        ops=terms + (1 if copied else 0) * 2,
        elementwise=out * terms * inner_penalty,
        terms=terms,
        memory=(out + copied) * itemsize,
    )
    return Lowered(ir.Var(target), tuple(kept), estimate, tuple(setup))


def _index_tuples(extents: list[int]) -> list[tuple[int, ...]]:
    tuples: list[tuple[int, ...]] = [()]
    for extent in extents:
        tuples = [t + (k,) for t in tuples for k in range(extent)]
    return tuples


def _term_name(summed: list[str], index: tuple[int, ...]) -> str:
    return ", ".join(f"{a}={k}" for a, k in zip(summed, index))


def _aligned_term(value: Value, kept: list[str], summed: list[str], index: tuple[int, ...]) -> ir.Expr:
    """``value`` with its summed axes fixed at ``index`` and None where it lacks a
    kept axis, so that terms broadcast to the kept layout.  Indexes the tensor
    as it is when its kept axes are already in order, else permutes first."""
    present = [a for a in value.axes if a in kept]
    if present != [a for a in kept if a in value.axes]:
        order = tuple(value.axes.index(a) for a in [a for a in kept if a in value.axes] + summed)
        expr = ir.permute(ir.Var(value.var), order)
        axes = [value.axes[k] for k in order]
    else:
        expr, axes = ir.Var(value.var), list(value.axes)
    fixed = dict(zip(summed, index))
    items: list = []
    position = next((k for k, a in enumerate(kept) if a in axes), len(kept))
    for axis in axes:
        if axis in fixed:
            items.append(fixed[axis])
            continue
        target = kept.index(axis)
        items.extend([None] * (target - position))
        items.append(ir.SLICE)
        position = target + 1
    items.extend([None] * (len(kept) - position))
    while items and items[-1] is ir.SLICE:
        items.pop()
    return ir.Index(expr, tuple(items)) if items else expr


CONTRACTIONS: dict[str, Callable] = {
    MATMUL: lower_matmul,
    ELEMENTWISE: lower_elementwise,
    UNROLLED: lower_unrolled,
}


def _lower(name, a, b, keep, sizes, rank, dtype, model, names, forced):
    if name == UNROLLED:
        limit = FORCED_UNROLL_TERMS if forced else UNROLL_TERMS
        return lower_unrolled(a, b, keep, sizes, rank, dtype, model, names, limit)
    return CONTRACTIONS[name](a, b, keep, sizes, rank, dtype, model)


def _choose(a: Value, b: Value, keep, sizes, rank, dtype, model, options: Options, names: "_Names"):
    """Price every lowering that can do this step; the forced one or the cheapest wins."""
    forced = options.lowering if options.lowering in CONTRACTIONS else None
    candidates = []
    results = {}
    for name in CONTRACTIONS:
        scratch = _Names(names.count) if name == UNROLLED else names
        lowered = _lower(name, a, b, keep, sizes, rank, dtype, model, scratch, name == forced)
        if lowered is None:
            continue
        results[name] = (lowered, scratch)
        candidates.append(Candidate(name, lowered.estimate, model.seconds(lowered.estimate)))
    if forced is not None and forced not in results:
        step = _describe([a.axes, b.axes], tuple(x for x in dict.fromkeys(a.axes + b.axes) if x in keep))
        raise UnsupportedError(
            f"lowering {forced!r} cannot compute the step '{step}' "
            f"(sizes {', '.join(f'{x}={sizes[x]}' for x in dict.fromkeys(a.axes + b.axes))}, dtype {dtype})"
        )
    affordable = [c for c in candidates if options.memory_limit is None or c.estimate.memory <= options.memory_limit]
    pool = affordable or candidates
    winner = forced or min(pool, key=lambda c: c.seconds).lowering
    lowered, scratch = results[winner]
    names.count = max(names.count, scratch.count)
    return winner, lowered, tuple(candidates)


# --- contraction order ------------------------------------------------------------------------


def _path(values: list[Value], keep, sizes) -> tuple[tuple[int, ...], ...]:
    if len(values) <= 2:
        return ((0, 1),) if len(values) == 2 else ()
    axes = list(dict.fromkeys(a for v in values for a in v.axes))
    symbol = {a: opt_einsum.get_symbol(k) for k, a in enumerate(axes)}
    equation = ",".join("".join(symbol[a] for a in v.axes) for v in values)
    equation += "->" + "".join(symbol[a] for a in axes if a in keep)
    shapes = [tuple(max(sizes[a], 1) for a in v.axes) for v in values]
    try:
        path, _ = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="auto")
    except Exception:  # pragma: no cover - fall back to left to right
        path = [(0, 1)] * (len(values) - 1)
    return tuple(tuple(p) for p in path)


# --- clauses and output -----------------------------------------------------------------------


REDUCE_CALLS = {"max": "torch.amax", "min": "torch.amin", "logsumexp": "torch.logsumexp"}


def _reduce(value: Value, reducer: str, ids: tuple[str, ...], sizes, dtype, names: _Names):
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


def _finish(value: Value, bound: Bound) -> ir.Expr:
    """Permute to the output's order, then merge composites and add literal 1s."""
    expr = ir.permute(ir.Var(value.var), tuple(value.axes.index(a) for a in bound.output_axes))
    if bound.output_shape is not None:
        expr = ir.reshape(expr, bound.output_shape)
    return expr


# --- the planner ------------------------------------------------------------------------------


def _rank_function(bound: Bound):
    target = list(bound.output_axes) + [a for _, ids in bound.clauses for a in ids]
    position = {a: k for k, a in enumerate(target)}
    order = {a: k for k, a in enumerate(dict.fromkeys(a for op in bound.operands for a in op.axes))}
    return lambda axis: (position.get(axis, len(target)), order.get(axis, 0))


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


def _chunked(a: Value, b: Value, clauses, bound: Bound, keep, sizes, rank, model, options, names, budget):
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
    probe = _Names(names.count)
    inner, full, _ = _choose(a, b, keep, sizes, first_rank, dtype, model, inner_options, probe)
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
        var, more = _assign_result(lowered, comment, names, "s")
        statements.extend(more)
        return statements, [Value(var, lowered.axes)], chunk_sizes

    # the chunk buffer, reused by every full chunk (matmul writes into it with out=)
    if inner == MATMUL:
        probe_statements = _lower(inner, a, b, keep, dict(sizes, **{axis: rows}), first_rank, dtype, model, _Names(), False)
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
                more, values = _reduce(current, reducer, ids, chunk_sizes, dtype, names)
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
            more, results = _reduce(current, reducer, ids, sizes, dtype, names)
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


def _effective_clauses(bound: Bound):
    """Leading ``sum`` clauses are part of the sum-product: fold them in."""
    clauses = list(bound.clauses)
    while clauses and clauses[0][0] == "sum":
        clauses.pop(0)
    return tuple(clauses)


def _check_output_fits(bound: Bound) -> None:
    numel = _numel(bound.sizes, bound.output_axes)
    need = numel * bound.dtype.itemsize
    try:
        import os

        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return
    if need > physical:
        raise EinplanError(
            f"the output of '{bound.resolved.pattern.text}' would take {_human_bytes(need)} "
            f"({numel} elements of {bound.dtype}), more than this machine's {_human_bytes(physical)} of memory"
        )


def build(bound: Bound, options: Options = Options(), model: DeviceModel | None = None) -> Plan:
    """Plan ``bound``: prepare operands, contract along the path, reduce, shape the output."""
    if options.lowering is not None and options.lowering not in LOWERINGS:
        raise EinplanError(f"unknown lowering {options.lowering!r}; choose one of {', '.join(LOWERINGS)}")
    if options.memory_limit is not None and (not isinstance(options.memory_limit, int) or options.memory_limit <= 0):
        raise EinplanError(f"memory_limit must be a positive number of bytes, got {options.memory_limit!r}")
    _check_output_fits(bound)
    model = model or load_model(bound.device)
    clauses = _effective_clauses(bound)
    keep = frozenset(bound.output_axes).union(*(ids for _, ids in clauses))
    sizes = bound.sizes
    rank = _rank_function(bound)
    names = _Names()
    limit = options.memory_limit or DEFAULT_MEMORY_LIMIT
    budget = min(limit, CHUNK_BYTES)
    steps: list[Step] = []
    values: list[Value] = []
    for index, operand in enumerate(bound.operands):
        others = [set(op.axes) for k, op in enumerate(bound.operands) if k != index]
        expr, axes = _prepare(bound, index, others, keep)
        if isinstance(expr, ir.Var):
            values.append(Value(expr.name, axes))
            continue
        var = f"a{index}"
        description = f"{bound.resolved.pattern.inputs[index].text} -> {' '.join(axes)}"
        steps.append(Step("prepare", description, (ir.Assign(var, expr, f"prepare: {description}"),)))
        values.append(Value(var, axes))
    path = _path(values, keep, sizes)
    results: Optional[list[Value]] = None
    for number, pair in enumerate(path):
        taken = [values[k] for k in pair]
        for k in sorted(pair, reverse=True):
            values.pop(k)
        if len(taken) == 1:  # opt_einsum may ask for a lone operand's sum
            values.append(taken[0])
            continue
        a, b = taken
        needed = keep.union(*(set(v.axes) for v in values))
        winner, lowered, candidates = _choose(a, b, needed, sizes, rank, bound.dtype, model, options, names)
        last = number == len(path) - 1
        wants_chunks = options.lowering == CHUNKED or lowered.estimate.memory > limit or (
            clauses and lowered.estimate.memory > budget
        )
        if last and wants_chunks:
            chunked = _chunked(a, b, clauses, bound, keep, sizes, rank, model, options, names, budget)
            if chunked is not None:
                statements, results, estimate, inner, chunking = chunked
                description = _describe([a.axes, b.axes], lowered.axes)
                seconds = model.seconds(estimate)
                candidates = candidates + (Candidate(CHUNKED, estimate, seconds),)
                steps.append(Step(CHUNKED, f"{description} in chunks of {chunking.rows} along {chunking.axis}, then {inner}", tuple(statements), estimate, candidates))
                break
        description = _describe([a.axes, b.axes], lowered.axes)
        var, statements = _assign_result(lowered, f"{winner}: {description}", names)
        steps.append(Step(winner, description, statements, lowered.estimate, candidates))
        values.append(Value(var, lowered.axes))
    if results is None:
        (result,) = values
        results = [result]
        for reducer, ids in clauses:
            (current,) = results
            statements, results = _reduce(current, reducer, ids, sizes, bound.dtype, names)
            steps.append(Step("reduce", f"{' '.join(current.axes)} -> {' '.join(results[0].axes)}", tuple(statements)))
    returns = tuple(_finish(v, bound) for v in results)
    return Plan(
        bound=bound,
        options=options,
        model=model,
        inputs=tuple(f"x{k}" for k in range(len(bound.operands))),
        path=path,
        steps=tuple(steps),
        returns=returns,
    )


def _assign_result(lowered: Lowered, comment: str, names: _Names, prefix: str = "t") -> tuple[str, tuple]:
    """The lowering's statements ending in ``var = result``; returns (var, statements)."""
    if lowered.setup and isinstance(lowered.expr, ir.Var):
        return lowered.expr.name, lowered.setup  # the terms already built it in place
    var = names.fresh(prefix)
    return var, (*lowered.setup, ir.Assign(var, lowered.expr, comment))
