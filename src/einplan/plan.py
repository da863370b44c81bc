"""Stage 3: a bound pattern -> a plan: contraction order, then a lowering per step.

The plan is a list of :class:`Step`, each holding the statements (``ir``) it
emits, the estimate of every candidate lowering the cost model priced, and the
step in pattern form.  Planning reads shapes only, never tensor data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
    def __init__(self):
        self.count = 0

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
    expr: ir.Expr
    axes: tuple[str, ...]
    estimate: Estimate


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


CONTRACTIONS: dict[str, Callable] = {
    MATMUL: lower_matmul,
    ELEMENTWISE: lower_elementwise,
}


def _choose(a: Value, b: Value, keep, sizes, rank, dtype, model, options: Options):
    candidates = []
    results = {}
    for name, lower in CONTRACTIONS.items():
        lowered = lower(a, b, keep, sizes, rank, dtype, model)
        if lowered is None:
            continue
        results[name] = lowered
        candidates.append(Candidate(name, lowered.estimate, model.seconds(lowered.estimate)))
    if options.lowering is not None:
        if options.lowering not in results:
            raise UnsupportedError(
                f"lowering {options.lowering!r} cannot compute the step "
                f"'{_describe([a.axes, b.axes], tuple(x for x in dict.fromkeys(a.axes + b.axes) if x in keep))}'"
                f" for dtype {dtype}"
            )
        winner = options.lowering
    else:
        winner = min(candidates, key=lambda c: c.seconds).lowering
    return winner, results[winner], tuple(candidates)


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


def build(bound: Bound, options: Options = Options(), model: DeviceModel | None = None) -> Plan:
    """Plan ``bound``: prepare operands, contract along the path, reduce, shape the output."""
    if options.lowering is not None and options.lowering not in LOWERINGS:
        raise EinplanError(f"unknown lowering {options.lowering!r}; choose one of {', '.join(LOWERINGS)}")
    if options.lowering in (UNROLLED, CHUNKED):
        raise UnsupportedError(f"the {options.lowering} lowering is not implemented yet")
    model = model or load_model(bound.device)
    keep = bound.kept
    sizes = bound.sizes
    rank = _rank_function(bound)
    names = _Names()
    steps: list[Step] = []
    values: list[Value] = []
    for index, operand in enumerate(bound.operands):
        others = [set(op.axes) for k, op in enumerate(bound.operands) if k != index]
        expr, axes = _prepare(bound, index, others, keep)
        if isinstance(expr, ir.Var):
            values.append(Value(expr.name, axes))
            continue
        var = f"a{index}"
        description = f"{' '.join(operand.axes)} -> {' '.join(axes)}"
        steps.append(Step("prepare", description, (ir.Assign(var, expr, f"prepare: {description}"),)))
        values.append(Value(var, axes))
    path = _path(values, keep, sizes)
    for pair in path:
        taken = [values[k] for k in pair]
        for k in sorted(pair, reverse=True):
            values.pop(k)
        if len(taken) == 1:  # opt_einsum may ask for a lone operand's sum
            values.append(taken[0])
            continue
        a, b = taken
        needed = keep.union(*(set(v.axes) for v in values))
        winner, lowered, candidates = _choose(a, b, needed, sizes, rank, bound.dtype, model, options)
        var = names.fresh()
        description = _describe([a.axes, b.axes], lowered.axes)
        statement = ir.Assign(var, lowered.expr, f"{winner}: {description}")
        steps.append(Step(winner, description, (statement,), lowered.estimate, candidates))
        values.append(Value(var, lowered.axes))
    (result,) = values
    results = [result]
    for reducer, ids in bound.clauses:
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
