"""Stage 3: a bound pattern -> a plan: contraction order, then a lowering per step.

The plan is a list of :class:`Step`, each holding the statements (``ir``) it
emits, the estimate of every candidate lowering the cost model priced, and the
step in pattern form.  Planning reads shapes only, never tensor data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import opt_einsum

from . import ir
from .cost import DeviceModel, Estimate, load_model
from .errors import EinplanError
from .lowerings import (  # noqa: F401  (the lowering names are part of this module's interface)
    CHUNKED,
    CONTRACTIONS,
    ELEMENTWISE,
    LOWERINGS,
    MATMUL,
    UNROLLED,
    Candidate,
    Lowered,
    Names,
    Options,
    Value,
    _describe,
    _numel,
    _sum,
    assign_result,
    choose,
)
from .reductions import CHUNK_BYTES, DEFAULT_MEMORY_LIMIT, _human_bytes, chunked, clause_dtype, reduce_clause  # noqa: F401
from .bind import Bound

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
    names = Names()
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
        winner, lowered, candidates = choose(a, b, needed, sizes, rank, bound.dtype, model, options, names)
        last = number == len(path) - 1
        wants_chunks = options.lowering == CHUNKED or lowered.estimate.memory > limit or (
            clauses and lowered.estimate.memory > budget
        )
        if last and wants_chunks:
            in_chunks = chunked(a, b, clauses, bound, keep, sizes, rank, model, options, names, budget)
            if in_chunks is not None:
                statements, results, estimate, inner, chunking = in_chunks
                description = _describe([a.axes, b.axes], lowered.axes)
                seconds = model.seconds(estimate)
                candidates = candidates + (Candidate(CHUNKED, estimate, seconds),)
                steps.append(Step(CHUNKED, f"{description} {chunking.describe()}, then {inner}", tuple(statements), estimate, candidates))
                break
        description = _describe([a.axes, b.axes], lowered.axes)
        var, statements = assign_result(lowered, f"{winner}: {description}", names)
        steps.append(Step(winner, description, statements, lowered.estimate, candidates))
        values.append(Value(var, lowered.axes, owned=winner == MATMUL))
    if results is None:
        (result,) = values
        results = [result]
        dtype = bound.dtype
        for reducer, ids in clauses:
            (current,) = results
            statements, results = reduce_clause(current, reducer, ids, sizes, dtype, names)
            dtype = clause_dtype(reducer, dtype)
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
