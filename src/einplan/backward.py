"""A chunked step that autograd differentiates in chunks: one ``torch.autograd.Function``.

Left to autograd, a chunk loop keeps every chunk's product for the backward,
so a reduction that never builds its q x k intermediate keeps all of it when
the inputs require gradients.  Instead, the step becomes an autograd function:
its forward runs the chunk loop without recording and saves the operands, the
small result and, for a max/min across tiles, how many positions tie for each
extreme.  Its backward loops over the same chunks and tiles, recomputes each
product with the same call, turns it into the clause's weights and contracts
them with the other operand (a contraction einplan's own lowerings plan):

- sum: ``g``; mean: ``g / count``; logsumexp: ``exp(s - result) * g``;
- max / min: ``g`` split evenly among the positions equal to the extreme (torch.amax's rule);
- argmax / argmin: no gradient (the step stays plain code).

The backward is written in plain torch ops, so a double backward records it
(correct, but it keeps what it records).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import chunks, ir
from .chunking import BACKWARD_TEMPORARIES, TEMPORARIES, Chunking, Job, human_bytes
from .chunks import Loops
from .clauses import ARG_REDUCERS, WHOLE_ONLY, reduce_clause
from .contraction import DEVICE_OF, Context, Contraction, Options, Value, align, describe, numel
from .lowerings import REGISTRY, choose

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NEEDS_PRODUCT = ("max", "min", "logsumexp")  # derivatives that read the product itself


def differentiable(chunking: Chunking, job: Job) -> bool:
    """Whether the step has a gradient to compute in chunks: floating inputs, and no argmax/argmin."""
    if job.step.dtype not in FLOATING or chunking.style == "running-arg":
        return False
    return not any(reducer in ARG_REDUCERS or reducer in WHOLE_ONLY for reducer, _ in job.clauses)


def _clauses_of(chunking: Chunking, job: Job) -> tuple:
    """The clauses the loops apply: all of them on each chunk of rows, else the first one."""
    if chunking.style in ("rows", "partial-sums"):
        return tuple(job.clauses)
    return tuple(job.clauses[:1])


def emit(chunking: Chunking, job: Job, context: Context, fused_forward=None) -> tuple[list, list[Value], tuple, ir.Function]:
    """The step as an autograd function: (the statement applying it, its result, the clauses left
    for ordinary autograd after it, the function).  ``fused_forward(clauses, counting)``, when
    given, writes the forward instead of the chunk loops (a fused kernel and the clauses after it):
    (statements, results)."""
    names = context.names
    name = names.fresh("chunks")
    a, b = chunking.step.a, chunking.step.b
    counting = chunking.style in ("row-tiles", "running") and job.clauses[0][0] in ("max", "min")
    if fused_forward is None:
        forward, results, remaining = chunks.emit_loops(Loops(chunking, job, context, flagged=False, counting=counting))
    else:
        inside = _clauses_of(chunking, job)
        forward, results = fused_forward(inside, counting)
        remaining = tuple(job.clauses[len(inside) :])
    inputs = (a.var, b.var) + ((DEVICE_OF,) if DEVICE_OF not in (a.var, b.var) else ())
    result = results[0]
    saved = (a.var, b.var, *(r.var for r in results))
    forward += [ir.Save(saved), ir.Return(ir.Var(result.var))]
    grad = names.fresh("grad")
    backward = _Backward(chunking, job, context, grad, results).statements(saved, len(inputs))
    clauses = "".join(f" | {reducer} {' '.join(ids)}" for reducer, ids in _clauses_of(chunking, job))
    how = "forward and backward over the same chunks" if fused_forward is None else "forward in one Triton kernel, backward in chunks"
    doc = f"{chunking.step.describe()}{clauses} {chunking.describe()}: {how}"
    function = ir.Function(name, doc, inputs, tuple(forward), (grad,), tuple(backward))
    out = names.fresh("t")
    apply = ir.Assign(out, ir.Apply(function.name, tuple(ir.Var(x) for x in inputs)), "chunked-reduction, differentiated in chunks")
    return [apply], [Value(out, result.axes)], remaining, function


@dataclass
class _Backward:
    """The statements of one chunked step's backward."""

    chunking: Chunking
    job: Job
    context: Context
    grad: str  # the backward's parameter: the gradient of the result
    results: list[Value]  # the forward's result (and the tie counts)

    def statements(self, saved: tuple, inputs: int) -> list:
        names, chunking = self.context.names, self.chunking
        a, b = chunking.step.a, chunking.step.b
        grads = [Value(names.fresh("grad"), a.axes), Value(names.fresh("grad"), b.axes)]
        statements: list = [ir.Saved(saved)]
        for grad, operand in zip(grads, (a, b), strict=True):
            zeros = ir.Call("torch.zeros_like", (ir.Var(operand.var),))
            statements.append(ir.Assign(grad.var, zeros, f"the gradient of {operand.var}, added up chunk by chunk"))
        share, more = self._share()
        statements += more
        loops = Loops(chunking, self.job, self.context, flagged=False)
        values = [a, b, self.results[0], share, *grads]

        def body(_, parts):
            return self._chunk(loops, parts)

        if chunking.style == "row-tiles" or (chunking.style == "running" and chunking.column is not None):
            statements += loops.over_rows(values, lambda _, parts: loops.over_tiles(parts, body))
        else:
            statements += loops.over_rows(values, body)
        returned = (ir.Var(grads[0].var), ir.Var(grads[1].var)) + (ir.Const(None),) * (inputs - 2)
        return statements + [ir.Return(returned)]

    def _share(self) -> tuple[Value, list]:
        """What each position of a chunk gets of the result's gradient before the product's own
        factor: g, g / count for a mean, g / ties for a max/min counted across tiles."""
        result, grad = self.results[0], Value(self.grad, self.results[0].axes)
        clauses = _clauses_of(self.chunking, self.job)
        if self.chunking.style in ("rows", "partial-sums") or not clauses:
            return grad, []
        reducer, ids = clauses[0]
        share = self.context.names.fresh("share")
        if reducer == "mean":
            count = ir.Const(numel(self.chunking.step.sizes, ids), frozenset(ids))
            return Value(share, result.axes), [ir.Assign(share, ir.BinOp("/", ir.Var(self.grad), count), "g / count: a mean's share")]
        if reducer in ("max", "min"):
            ties = ir.Var(self.results[1].var)
            split = ir.BinOp("/", ir.Var(self.grad), ties)
            return Value(share, result.axes), [ir.Assign(share, split, f"split evenly among the positions tied for the {reducer}")]
        return grad, []

    def _chunk(self, loops: Loops, parts: list[Value]) -> list:
        """One chunk (tile): the weights of its product, contracted into both gradients."""
        a, b, result, share, grad_a, grad_b = parts
        clauses = _clauses_of(self.chunking, self.job)
        statements, weights = self._weights(loops, a, b, result, share, clauses)
        for k, (grad, other) in enumerate(((grad_a, b), (grad_b, a))):
            needed = ir.Index(ir.Attr(ir.Var("ctx"), "needs_input_grad"), (k,))
            statements.append(ir.If(needed, tuple(self._contract_into(loops, grad, weights, other))))
        return statements

    def _weights(self, loops: Loops, a: Value, b: Value, result: Value, share: Value, clauses) -> tuple[list, Value]:
        """The derivative of the result with respect to this chunk's product, times the gradient."""
        names = self.context.names
        axes = loops.axes
        if not any(reducer in NEEDS_PRODUCT for reducer, _ in clauses):
            # sum and mean: no product needed, only its shape (read from the operands' chunks)
            shape = ir.Tuple(tuple(_length(x, (a, b)) for x in axes))
            weights = names.fresh("weights")
            spread = align(share, axes)
            if self.chunking.style == "rows":  # the clauses run on each chunk: divide by each mean's count
                sizes = self.chunking.step.sizes
                for reducer, ids in clauses:
                    if reducer == "mean":
                        spread = ir.BinOp("/", spread, ir.Const(numel(sizes, ids), frozenset(ids)))
            expanded = ir.Method(spread, "expand", (shape,))
            loops.temporaries.append(weights)
            return [ir.Assign(weights, expanded, "each product's share of the gradient")], Value(weights, axes)
        statements, product = loops.contract([a, b], grad=False)
        if self.chunking.style == "rows":
            more, found = _chain(product, clauses, share, self.chunking, loops)
        else:
            counted = clauses[0][0] in ("max", "min")
            more, found = _derivative(clauses[0][0], product, result, share, counted, names, loops)
        return statements + more, found

    def _contract_into(self, loops: Loops, grad: Value, weights: Value, other: Value) -> list:
        """``grad += weights . other`` over the axes ``grad`` lacks, planned by einplan's lowerings."""
        target = grad.axes
        rank = lambda x: (target.index(x), 0) if x in target else (len(target), 0)  # noqa: E731
        step = Contraction(weights, other, frozenset(target), loops.chunk.sizes, rank, loops.chunk.dtype, loops.chunk.free)
        context = Context(self.context.names, Options(None, None, self.context.options.compiled), self.context.model)
        winner, _, _ = choose(step, context)
        lowered = REGISTRY[winner].emit(step, context)
        expr = ir.permute(lowered.expr, tuple(lowered.axes.index(x) for x in target))
        comment = f"{winner}: {describe([weights.axes, other.axes], target)} into the gradient"
        return [*lowered.setup, ir.Do(ir.Method(ir.Var(grad.var), "add_", (expr,)), comment)]


RULES = {
    "logsumexp": "exp(s - logsumexp) * g",
    "max": "g split evenly among the positions of the max",
    "min": "g split evenly among the positions of the min",
    "mean": "g / count",
    "sum": "g",
}


def backward_text(chunking: Chunking, job: Job) -> str:
    """How the step's backward runs, for ``explain``: its loops, its weights, its memory."""
    clauses = _clauses_of(chunking, job)
    rules = [RULES[reducer] for reducer, _ in clauses] or ["g"]
    recompute = any(reducer in NEEDS_PRODUCT for reducer, _ in clauses)
    piece = "tile" if chunking.column is not None else "chunk"
    temporaries = max((TEMPORARIES[r] for r, _ in job.clauses), default=1.0)
    itemsize = chunking.step.dtype.itemsize
    product: float
    if chunking.column is not None:
        product = chunking.rows * chunking.width * itemsize
    else:
        product = chunking.rows * max(chunking.full.memory / max(chunking.total, 1), itemsize)
    peak = product * (1 + temporaries + BACKWARD_TEMPORARIES)
    again = f"each {piece}'s product recomputed, " if recompute else ""
    return (
        f"over the same {piece}s: {again}weighted by {'; then '.join(reversed(rules))} and contracted with the other "
        f"operand into each gradient; about {human_bytes(peak)} at a time beside the inputs and their gradients"
    )


def _length(axis: str, values) -> ir.Expr:
    holder = next(v for v in values if axis in v.axes)
    return ir.shape_of(holder.var, holder.axes.index(axis))


def _derivative(reducer: str, x: Value, y: Value, g: Value, counted: bool, names, loops: Loops) -> tuple[list, Value]:
    """``dy/dx * g`` for one clause ``y = reducer(x)``, elementwise on x's chunk.  ``counted``: ``g``
    is already split among the ties (counted by the forward across tiles)."""
    axes = x.axes
    y_at, g_at = align(y, axes), align(g, axes)
    weights = names.fresh("weights")
    loops.temporaries.append(weights)
    statements = []
    if reducer == "logsumexp":
        value: ir.Expr = ir.BinOp("*", ir.Call("torch.exp", (ir.BinOp("-", ir.Var(x.var), y_at),)), g_at)
        comment = "exp(s - logsumexp) * g"
    elif reducer in ("max", "min"):
        mask = names.fresh("at")
        loops.temporaries.append(mask)
        statements.append(ir.Assign(mask, ir.BinOp("==", ir.Var(x.var), y_at), f"the positions of the {reducer}"))
        if not counted:
            dims = tuple(axes.index(a) for a in axes if a not in y.axes)
            ties = ir.Method(ir.Var(mask), "sum", (ir.Const(dims[0] if len(dims) == 1 else dims),), (("keepdim", ir.Const(True)),))
            g_at = ir.BinOp("/", g_at, ties)
        value, comment = ir.BinOp("*", ir.Var(mask), g_at), "g, split evenly among the ties"
    else:  # sum, mean: the gradient spread over the reduced axes
        count = ir.Const(numel(loops.chunking.step.sizes, [a for a in axes if a not in y.axes]), frozenset(axes) - set(y.axes))
        spread = g_at if reducer == "sum" else ir.BinOp("/", g_at, count)
        value, comment = ir.Method(spread, "expand", (ir.Attr(ir.Var(x.var), "shape"),)), f"d {reducer} = g spread"
    return statements + [ir.Assign(weights, value, comment)], Value(weights, axes)


def _chain(product: Value, clauses, g: Value, chunking: Chunking, loops: Loops) -> tuple[list, Value]:
    """A chunk of rows whose clauses all run on it: recompute each clause's result, then their
    derivatives in reverse order (chain rule), ending with the weights of the product."""
    names = loops.names
    statements: list = []
    values = [product]
    dtype = chunking.step.dtype
    for reducer, ids in clauses:
        more, (value,) = reduce_clause(values[-1], reducer, ids, loops.chunk.sizes, dtype, names, loops.chunk.free)
        statements += more
        values.append(value)
    grad = g
    for k in range(len(clauses) - 1, -1, -1):
        reducer, ids = clauses[k]
        more, grad = _derivative(reducer, values[k], values[k + 1], grad, False, names, loops)
        statements += more
    return statements, grad
