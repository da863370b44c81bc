"""Stage 3: a bound pattern -> a plan: contraction order, then a lowering per step.

The plan is a list of :class:`Step`, each holding the statements (``ir``) it
emits, the estimate of every candidate lowering the cost model priced, and the
step in pattern form.  Every step is priced first and emitted once, by the
winner.  Planning reads shapes only, never tensor data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import opt_einsum

from . import backward, chunks, fused, ir, screen, tails
from . import chunking as cutting
from .bind import Bound
from .calibration import model_for
from .chunking import CHUNK_BYTES, DEFAULT_MEMORY_LIMIT, Job, human_bytes
from .clauses import apply_clauses, check_supported, clause_dtype, spelled
from .contraction import Candidate, Context, Contraction, Names, Options, Value, numel, sum_over, take_pair
from .cost import DeviceModel, Estimate
from .errors import EinplanError
from .lowerings import CHUNKED, ELEMENTWISE, FUSED, LOWERINGS, MATMUL, REGISTRY, UNROLLED, choose, emit_value
from .shaping import finish, repeat, view, whole_dims

__all__ = [
    "CHUNKED",
    "CHUNK_BYTES",
    "DEFAULT_MEMORY_LIMIT",
    "ELEMENTWISE",
    "FUSED",
    "LOWERINGS",
    "MATMUL",
    "UNROLLED",
    "Candidate",
    "Options",
    "Plan",
    "Step",
    "build",
]


DEFAULT_OPTIONS = Options()


@dataclass(frozen=True)
class Step:
    kind: str  # a lowering, or "prepare" / "reduce" / "output"
    description: str  # the step in pattern form
    statements: tuple
    estimate: Estimate | None = None
    candidates: tuple[Candidate, ...] = ()
    functions: tuple[ir.Function | ir.Kernel, ...] = ()  # autograd functions and Triton kernels its statements use
    backward: str = ""  # how its backward runs, when it is an autograd function of its own


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

    @property
    def grad_matters(self) -> bool:
        """Whether a call that autograd records has another plan: one of its steps is chunked (and
        would be an autograd function of its own), or writes through ``out=`` (unrolled in blocks,
        a product in slices), which autograd does not record.  ``bl`` looks that plan up only then."""
        if self.options.grad or self.bound.dtype not in backward.FLOATING:
            return False
        return any(s.kind in (CHUNKED, FUSED) or _writes_out(s) for s in self.steps)

    @property
    def functions(self) -> tuple[ir.Function | ir.Kernel, ...]:
        """The autograd functions the plan defines (one per chunked step differentiated in chunks)
        and its Triton kernels (one per fused step)."""
        return tuple(f for step in self.steps for f in step.functions)

    @property
    def sized_axes(self) -> frozenset:
        """The axis ids whose sizes some number in the generated code was computed from."""
        return ir.sized_axes([self.statements, self.functions])


def _writes_out(step: Step) -> bool:
    """An unrolled step in blocks (:mod:`einplan.blocks`) or a product in slices (:mod:`einplan.slices`):
    their ops write the result's parts through ``out=``."""
    if step.kind not in (UNROLLED, ELEMENTWISE):
        return False
    return any(isinstance(x, ir.Call) and any(k == "out" for k, _ in x.kwargs) for x in ir.walk(step.statements))


# --- operand preparation: views, diagonals, private sums ----------------------------------


def _prepare(bound: Bound, index: int, others: list[set[str]], keep: frozenset[str]):
    """Views and sums that touch one operand only; returns (expr, axes)."""
    operand = bound.operands[index]
    expr: ir.Expr = ir.Var(f"x{index}")
    axes = list(operand.axes)
    if operand.view_shape is not None:
        expr = view(expr, operand.view_shape, operand.axes, whole_dims(bound.resolved.inputs[index]))
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
        expr = sum_over(expr, tuple(axes.index(a) - len(axes) for a in private), bound.dtype)
        axes = [a for a in axes if a not in private]
    return expr, tuple(axes)


def _prepared(bound: Bound, keep: frozenset) -> tuple[list[Step], list[Value]]:
    steps: list[Step] = []
    values: list[Value] = []
    for index in range(len(bound.operands)):
        others = [set(op.axes) for k, op in enumerate(bound.operands) if k != index]
        expr, axes = _prepare(bound, index, others, keep)
        if isinstance(expr, ir.Var):
            values.append(Value(expr.name, axes))
            continue
        var = f"a{index}"
        description = f"{bound.resolved.pattern.inputs[index].text} -> {' '.join(axes)}"
        steps.append(Step("prepare", description, (ir.Assign(var, expr, f"prepare: {description}"),)))
        values.append(Value(var, axes))
    return steps, values


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
    """Refuse a result larger than this machine's memory, counted in the result's own dtype and
    once per tensor returned (an argmax over several axes returns one int64 tensor per axis)."""
    count = numel(bound.sizes, bound.output_axes)
    dtype = bound.dtype
    for reducer, _ in bound.clauses:
        dtype = clause_dtype(reducer, dtype)
    last = bound.clauses[-1] if bound.clauses else None
    tensors = len(last[1]) if last is not None and last[0] in ("argmax", "argmin") else 1
    need = count * dtype.itemsize * tensors
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return
    if need > physical:
        raise EinplanError(
            f"the output of '{bound.resolved.pattern.text}' would take {human_bytes(need)} "
            f"({tensors} x {count} elements of {dtype}), more than this machine's {human_bytes(physical)} of memory"
        )


def check_memory_limit(memory_limit) -> None:
    """``memory_limit`` is None or a positive int (bytes): not a bool, not a float that equals one."""
    if memory_limit is not None and (not isinstance(memory_limit, int) or isinstance(memory_limit, bool) or memory_limit <= 0):
        raise EinplanError(f"memory_limit must be a positive int (bytes), got {memory_limit!r}")


def _check_options(options: Options) -> None:
    if options.lowering is not None and options.lowering not in LOWERINGS:
        raise EinplanError(f"unknown lowering {options.lowering!r}; choose one of {', '.join(LOWERINGS)}")
    check_memory_limit(options.memory_limit)


@dataclass(frozen=True)
class _Planning:
    """What every step of one plan shares."""

    bound: Bound
    context: Context
    clauses: tuple
    keep: frozenset
    rank: Callable[[str], tuple]

    @property
    def limit(self) -> int:
        return self.context.options.memory_limit or DEFAULT_MEMORY_LIMIT


def _job(planning: _Planning, step: Contraction) -> Job:
    bound = planning.bound
    return Job(step, planning.clauses, bound.output_axes, tuple(f"x{k}" for k in range(len(bound.operands))), bound.device)


def _fused(planning: _Planning, step: Contraction, estimate: Estimate, candidates) -> tuple[Step, list[Value]] | None:
    """The last step and its first clause in one Triton kernel, on CUDA when it is cheaper than the
    product in memory (or whenever forced): (step, result values), or None."""
    context, device = planning.context, planning.bound.device
    forced = context.forced(FUSED)
    if context.options.compiled and not (forced and device.type == "cuda"):
        return None  # traced by torch.compile: not yet checked on a GPU, and the interpreter cannot be traced
    if not forced and device.type != "cuda":
        return None
    budget = min(planning.limit, CHUNK_BYTES)
    job = _job(planning, step)
    chunking = cutting.price(job, context, budget)  # the alternative, and the backward's chunks
    planned = fused.plan_step(job, context, chunking)
    if planned is None:
        return None
    model = context.model
    others = [fused.read_back(c, step, model) for c in candidates]  # a product in memory is read again to reduce it
    if chunking is not None:
        chunked = chunking.estimate(planning.clauses)
        others.append(Candidate(CHUNKED, chunked, model.seconds(chunked)))
    seconds = model.seconds(planned.estimate)
    fitting = [c.seconds for c in others if c.estimate.memory <= budget or c.lowering == CHUNKED]
    if not forced and seconds >= min(fitting, default=float("inf")):
        return None
    candidates = tuple(others) + (Candidate(FUSED, planned.estimate, seconds),)
    step_ = Step(FUSED, planned.description, planned.statements, planned.estimate, candidates, planned.definitions, planned.backward)
    return step_, planned.results


def _chunked(planning: _Planning, step: Contraction, winner: str, candidates) -> tuple[Step, list[Value]] | None:
    """The last step in chunks and every clause after it, when chunks are worth it: (step, result
    values), or None."""
    context, clauses = planning.context, planning.clauses
    job = _job(planning, step)
    chunking = _chunking(planning, step)
    if chunking is None:
        return None
    model = context.model
    price = chunking.estimate(clauses)
    in_chunks = context.options.grad and backward.differentiable(chunking, job)  # its backward too
    screened = screen.price(chunking, job, context) if chunking.mode == "reduce" and not in_chunks else None
    screen_price = screened.estimate(context) if screened is not None else Estimate()
    functions: tuple = ()
    remaining: tuple = ()
    if in_chunks:
        statements, results, remaining, function = backward.emit(chunking, job, context)
        how, functions = chunking.describe(), (function,)
    elif screened is not None and screened.memory() <= planning.limit and model.seconds(screen_price) < model.seconds(price):
        statements, results = screen.emit(screened, job, context)
        how, price = screened.describe(), screen_price
    else:
        statements, results, remaining = chunks.emit(chunking, job, context)
        how = chunking.describe()
    if remaining and len(results) == 1:
        more, results = apply_clauses(results[0], remaining, step.sizes, chunks.dtype_after(chunking, clauses), context.names)
        statements += more
    description = step.describe(REGISTRY[winner].result_axes(step))
    candidates = candidates + (Candidate(CHUNKED, price, model.seconds(price)),)
    text = f"{description} {how}, then {chunking.inner}"
    after = backward.backward_text(chunking, job) if functions else ""
    return Step(CHUNKED, text, tuple(statements), price, candidates, functions, after), results


def _chunking(planning: _Planning, step: Contraction):
    """How the last step would run in chunks within the default chunk budget, or None."""
    return cutting.price(_job(planning, step), planning.context, min(planning.limit, CHUNK_BYTES))


def _with_chunks_priced(planning: _Planning, step: Contraction, candidates) -> tuple:
    """A last step whose product a clause reduces, written in full although it is larger than the
    cache: its chunks too, as a candidate that a close call times (the clause then reads each chunk
    while it is in cache; the cost model prices neither clause's passes over the product, and
    measured 4 MB products of ``q d, k d -> q | logsumexp k`` went either way, 0.81x and 1.12x)."""
    model = planning.context.model
    if planning.context.options.lowering is not None or step.numel(step.kept) * step.dtype.itemsize <= model.cache_bytes:
        return candidates
    chunking = _chunking(planning, step)
    if chunking is None:
        return candidates
    price = chunking.estimate(planning.clauses)
    return candidates + (Candidate(CHUNKED, price, model.seconds(price)),)


def _tail(planning: _Planning, values: tuple, path, candidates) -> tuple[Step, list[Value]] | None:
    """The rest of the path in chunks of one axis, when a step before the last would exceed the
    limit (see :mod:`einplan.tails`): (step, result values), or None when cutting cannot help."""
    bound = planning.bound
    tail = tails.Tail(values, tuple(path), planning.keep, dict(bound.sizes), planning.rank, bound.dtype, planning.clauses)
    done = tails.plan(tail, planning.context, planning.limit)
    if done is None:
        return None
    statements, result, estimate, how = done
    clauses = " and its clauses" if planning.clauses else ""
    description = f"{', '.join(' '.join(v.axes) for v in values)} -> {' '.join(result.axes)} {how}, the rest of the path{clauses}"
    chunked = Candidate(CHUNKED, estimate, planning.context.model.seconds(estimate))
    return Step(CHUNKED, description, tuple(statements), estimate, candidates + (chunked,)), [result]


def _contract(planning: _Planning, values: list[Value], path) -> tuple[list[Step], list[Value], bool]:
    """Contract along the path; returns (steps, the values left, whether the clauses are done)."""
    context, bound = planning.context, planning.bound
    options = context.options
    steps: list[Step] = []
    for number, pair in enumerate(path):
        before = tuple(values)
        taken, needed = take_pair(values, pair, planning.keep)
        if len(taken) == 1:  # opt_einsum may ask for a lone operand's sum
            values.append(taken[0])
            continue
        step = Contraction(taken[0], taken[1], needed, bound.sizes, planning.rank, bound.dtype)
        winner, estimate, candidates = choose(step, context)
        budget = min(planning.limit, CHUNK_BYTES)
        wants_chunks = options.lowering == CHUNKED or estimate.memory > planning.limit or (planning.clauses and estimate.memory > budget)
        if number == len(path) - 1 and planning.clauses:
            done = _fused(planning, step, estimate, candidates)
            if done is not None:
                steps.append(done[0])
                return steps, done[1], True
        if number == len(path) - 1 and wants_chunks:
            done = _chunked(planning, step, winner, candidates)
            if done is not None:
                steps.append(done[0])
                return steps, done[1], True
        if number < len(path) - 1 and estimate.memory > planning.limit:
            tail = _tail(planning, before, path[number:], candidates)
            if tail is not None:
                steps.append(tail[0])
                return steps, tail[1], bool(planning.clauses)
        if number == len(path) - 1 and planning.clauses:
            candidates = _with_chunks_priced(planning, step, candidates)
        statements, value, description = emit_value(winner, step, context)
        steps.append(Step(winner, description, statements, estimate, candidates))
        values.append(value)
    return steps, values, False


def _reduce(planning: _Planning, value: Value) -> tuple[list[Step], list[Value]]:
    """The clauses, one step each, on a value that exists in full."""
    steps = []
    results = [value]
    dtype = planning.bound.dtype
    for reducer, ids in planning.clauses:
        (current,) = results
        statements, results = apply_clauses(current, ((reducer, ids),), planning.bound.sizes, dtype, planning.context.names)
        dtype = clause_dtype(reducer, dtype)
        steps.append(Step("reduce", f"{spelled(current.axes)} -> {spelled(results[0].axes)}", tuple(statements)))
    return steps, results


def build(bound: Bound, options: Options = DEFAULT_OPTIONS, model: DeviceModel | None = None) -> Plan:
    """Plan ``bound``: prepare operands, contract along the path, reduce, shape the output."""
    _check_options(options)
    for reducer in ("sum", *(r for r, _ in bound.clauses)):  # every plan may sum (a contraction, a private axis)
        check_supported(reducer, bound.dtype, bound.device)
    _check_output_fits(bound)
    clauses = _effective_clauses(bound)
    keep = frozenset(bound.output_axes).union(*(ids for _, ids in clauses))
    context = Context(Names(), options, model or model_for(bound.device))
    planning = _Planning(bound, context, clauses, keep, _rank_function(bound))
    steps, values = _prepared(bound, keep)
    path = _path(values, keep, bound.sizes)
    contracted, results, reduced = _contract(planning, values, path)
    steps += contracted
    if not reduced:
        (result,) = results
        more, results = _reduce(planning, result)
        steps += more
    if bound.created:
        statements, results, description = repeat(bound, results, context.names)
        steps.append(Step("repeat", description, tuple(statements)))
    return Plan(
        bound=bound,
        options=options,
        model=context.model,
        inputs=tuple(f"x{k}" for k in range(len(bound.operands))),
        path=path,
        steps=tuple(steps),
        returns=tuple(finish(v, bound) for v in results),
    )
