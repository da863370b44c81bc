"""The ``fused`` lowering: a contraction and the reduction after it in one Triton kernel.

``m d, n d -> | max m n`` or ``q d, k d -> q | logsumexp k``: each program owns a
block of rows of the product, loops over blocks of its columns, multiplies each
tile on chip (``tl.dot``, float32 accumulation) and folds it into a running max,
min, argmax, argmin, logsumexp or sum per row.  The product never reaches
memory.  What is left of the clause (its row axes, for a whole-product
reduction) is a second small pass in torch over one number per row.

The kernel's source is a fixed template (:func:`kernel_source`), rendered into
the generated module, so the user reads and keeps it.  It runs on CUDA tensors,
and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``), which
is how the tests check it on a machine without a GPU.  NaN and ties follow
torch: a NaN in a row makes its max/min/logsumexp NaN and its argmax the first
NaN; ties keep the first index in row-major order.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, replace

import torch

from . import backward, ir
from .chunking import Chunking, Job
from .clauses import ARG_REDUCERS, REDUCE_CALLS, aligned, apply_clauses, clause_dtype, index_per_axis
from .contraction import Candidate, Context, Contraction, Value, new_tensor, numel, sized
from .cost import DeviceModel, Estimate
from .triton_source import kernel_source

REDUCERS = ("max", "min", "argmax", "argmin", "logsumexp", "sum", "mean")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Share of the device's GEMM rate a Triton tile loop with its reduction is assumed to reach
# (the kernel adds a reduction to each tile): an assumption until ``einplan tune`` measures it.
GEMM_SHARE = 0.7
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per dtype; BLOCK_K follows the head size
BLOCKS = {torch.float32: (64, 64, 4, 3), torch.float16: (128, 64, 4, 3), torch.bfloat16: (128, 64, 4, 3)}
MAX_BLOCK_K = 64


def available(device: torch.device) -> bool:
    """Whether a fused kernel can run here: triton imports, and the tensors are on a CUDA device
    or Triton's interpreter runs kernels on CPU tensors."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


@dataclass(frozen=True)
class Fused:
    """A step the kernel computes: ``a`` (batch, rows, contracted) against ``b`` (batch, columns,
    contracted), every column axis reduced by ``reducer`` and then the row axes in ``reduced``."""

    a: Value
    b: Value
    batch: tuple[str, ...]
    rows: tuple[str, ...]  # kept rows first, then the reduced ones
    cols: tuple[str, ...]  # in the clause's order
    contracted: tuple[str, ...]
    reducer: str
    ids: tuple[str, ...]  # the clause's axes, in its order
    reduced: tuple[str, ...]  # row axes the second pass reduces
    sizes: dict
    dtype: torch.dtype
    device: torch.device

    def size(self, axes) -> int:
        return numel(self.sizes, axes)

    @property
    def kept(self) -> tuple[str, ...]:
        """The result's axes: the batch, then the rows the clause keeps."""
        return self.batch + tuple(a for a in self.rows if a not in self.reduced)

    def describe(self) -> str:
        rows = " ".join(self.rows) or "1"
        cols = " ".join(self.cols)
        more = f", then the rows' {' '.join(self.reduced)} in torch" if self.reduced else ""
        return f"one Triton kernel: blocks of rows ({rows}) against tiles of columns ({cols}), {self.reducer} on chip{more}"


def fit(step: Contraction, clause, device: torch.device) -> tuple[Fused | None, str]:
    """The fused form of ``step`` followed by ``clause``, or None and why not."""
    reducer, ids = clause
    if reducer not in REDUCERS:
        return None, f"the kernel has no {reducer}"
    if step.dtype not in DTYPES:
        return None, f"the kernel multiplies float32, float16 and bfloat16 tiles, not {step.dtype}"
    a, b = step.a, step.b
    both = [x for x in a.axes if x in b.axes]
    batch = tuple(sorted((x for x in both if x in step.keep and x not in ids), key=step.rank))
    contracted = tuple(x for x in both if x not in step.keep)
    if any(x in both for x in ids):
        return None, "the clause reduces an axis both operands have"
    if not contracted:
        return None, "nothing is contracted: the product is an outer product"
    if any(step.sizes[x] == 0 for x in step.union):
        return None, "an axis has size 0"
    for first, second in ((a, b), (b, a)):
        cols = tuple(x for x in ids if x in second.axes)
        if cols != tuple(x for x in second.axes if x not in first.axes) or not cols:
            continue  # every column axis must be reduced
        reduced = tuple(x for x in ids if x in first.axes)
        if reducer.startswith("arg") and reduced and ids != reduced + cols:
            continue  # an argmax over rows and columns flattens them rows first
        own = [x for x in first.axes if x not in second.axes]
        if reducer.startswith("arg") and reduced and len(reduced) != len(own):
            continue  # it also needs every row reduced
        kept = tuple(sorted((x for x in own if x not in reduced), key=step.rank))
        rows = kept + reduced
        fused = Fused(first, second, batch, rows, cols, contracted, reducer, tuple(ids), reduced, dict(step.sizes), step.dtype, device)
        return fused, ""
    return None, "the clause must reduce every axis of one operand that the other lacks"


def price(fused: Fused, context: Context) -> Estimate:
    """One kernel: the GEMM's flops at a share of the device's rate, the operands read once (the
    column tiles again per block of rows, from cache), one number per row written."""
    batch, m, n, k = (fused.size(fused.batch), fused.size(fused.rows), fused.size(fused.cols), fused.size(fused.contracted))
    flops = 2.0 * batch * m * n * k
    itemsize = fused.dtype.itemsize
    outputs = batch * m * (4 + 8)
    moved = (batch * (m + n) * k) * itemsize + outputs
    base = Estimate(flops=flops, bytes=moved, ops=3 + (2 if fused.reduced else 0), gemm_flops=flops, memory=outputs)
    estimate = base.gemm_eff(context.model, m, n, k)
    return replace(estimate, gemm_efficiency=estimate.gemm_efficiency * GEMM_SHARE)


def blocks(fused: Fused) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) from the table, by dtype and head size."""
    block_m, block_n, warps, stages = BLOCKS[fused.dtype]
    head = fused.size(fused.contracted)
    block_k = min(MAX_BLOCK_K, max(16, 1 << (head - 1).bit_length()))
    return block_m, block_n, block_k, warps, stages


def read_back(candidate: Candidate, step: Contraction, model: DeviceModel) -> Candidate:
    """A lowering that writes the product, priced with reading it back once for the reduction:
    what the fused kernel saves besides the memory."""
    product = step.numel(step.kept) * step.dtype.itemsize
    estimate = replace(candidate.estimate, bytes=candidate.estimate.bytes + product, ops=candidate.estimate.ops + 1)
    return Candidate(candidate.lowering, estimate, model.seconds(estimate))


# --- the code that launches it ------------------------------------------------------------------


def _operand(fused: Fused, value: Value, middle: tuple[str, ...], var: str) -> ir.Assign:
    """``value`` as a 3-d view (batch, rows or columns, contracted): a copy only when its strides
    cannot merge the axes."""
    order = fused.batch + middle + fused.contracted
    expr = ir.permute(ir.Var(value.var), tuple(value.axes.index(x) for x in order))
    shape = (fused.size(fused.batch), fused.size(middle), fused.size(fused.contracted))
    expr = ir.reshape(expr, shape, frozenset(order))
    return ir.Assign(
        var,
        expr,
        f"fused: {' '.join(value.axes)} as ({' '.join(fused.batch) or '1'}, {' '.join(middle) or '1'}, {' '.join(fused.contracted)})",
    )


def _precision(fused: Fused) -> ir.Expr:
    """``'tf32'`` only where torch allows TF32 for float32 matmuls, as torch's own matmul does."""
    if fused.dtype != torch.float32:
        return ir.Const("ieee")
    highest = ir.BinOp("==", ir.Call("torch.get_float32_matmul_precision", ()), ir.Const("highest"))
    return ir.IfExp(highest, ir.Const("ieee"), ir.Const("tf32"))


def emit(fused: Fused, context: Context, ties: bool = False) -> tuple[list, list[Value], ir.Kernel]:
    """The launch and its second pass: (statements, the result values, the kernel).  ``ties``: a
    max/min returns the count of tied positions too (its gradient splits among them)."""
    names = context.names
    kernel = names.fresh("fused")
    a, b = names.fresh("a"), names.fresh("b")
    statements: list = [_operand(fused, fused.a, fused.rows, a), _operand(fused, fused.b, fused.cols, b)]
    every = frozenset(fused.batch + fused.rows + fused.cols)
    batch, m = fused.size(fused.batch), fused.size(fused.rows)
    ties = ties and fused.reducer in ("max", "min")
    roles = ["value"] + (["index"] if fused.reducer.startswith("arg") else ["ties"] if ties else [])
    outputs = []
    for role in roles:
        var = names.fresh(role)
        dtype = torch.int64 if role == "index" else torch.float32
        statements.append(ir.Assign(var, new_tensor("torch.empty", sized((batch, m), every), dtype), f"one {role} per row"))
        outputs.append(var)
    block_m, block_n, block_k, warps, stages = blocks(fused)
    sizes = (fused.rows, fused.cols, fused.contracted)
    counts = tuple(ir.Const(fused.size(axes), frozenset(axes)) for axes in sizes)
    strides = tuple(ir.Method(ir.Var(v), "stride", (ir.Const(d),)) for v in (a, b) for d in range(3))
    grid = (ir.Const(math.ceil(m / block_m), frozenset(fused.rows)), ir.Const(batch, frozenset(fused.batch)))
    widen = fused.dtype == torch.bfloat16 and fused.device.type == "cpu"
    precision = _precision(fused)
    if isinstance(precision, ir.IfExp):
        var = names.fresh("precision")
        statements.append(ir.Assign(var, precision, "TF32 only where torch allows it for float32 matmuls"))
        precision = ir.Var(var)
    keywords: list = [("BLOCK_M", block_m), ("BLOCK_N", block_n), ("BLOCK_K", block_k), ("PRECISION", precision), ("WIDEN", widen)]
    keywords += [("num_warps", warps), ("num_stages", stages)]
    kwargs = tuple((k, v if isinstance(v, ir.Var | ir.Const) else ir.Const(v)) for k, v in keywords)
    launch = ir.Launch(kernel, grid, tuple(ir.Var(v) for v in (a, b, *outputs)) + counts + strides, kwargs)
    statements.append(ir.Do(launch, f"fused: {fused.describe()}"))
    more, results = _second_pass(fused, dict(zip(roles, outputs, strict=True)), names)
    source = kernel_source(kernel, fused.reducer, ties)
    return statements + more, results, ir.Kernel(kernel, source)


def _second_pass(fused: Fused, outputs: dict, names) -> tuple[list, list[Value]]:
    """From one number per row to the clause's result: reshape to the axes, then reduce the rows
    the clause also reduces (or, for an argmax, pick the row and its column)."""
    layout = fused.batch + fused.rows
    shape = tuple(fused.sizes[x] for x in layout)
    statements, views = [], {}
    for role, var in outputs.items():
        view = names.fresh("t")
        statements.append(ir.Assign(view, ir.reshape(ir.Var(var), shape, frozenset(layout)), f"the {role}s as ({' '.join(layout)})"))
        views[role] = view
    if fused.reducer.startswith("arg"):
        more, results = _arg_pass(fused, views, names)
        return statements + more, results
    dims = tuple(layout.index(x) for x in fused.reduced)
    value: ir.Expr = ir.Var(views["value"])
    ties = views.get("ties")
    if dims:
        more, value, ties = _reduce_rows(fused, views["value"], ties, dims, names)
        statements += more
    dtype = clause_dtype(fused.reducer, fused.dtype)
    if dtype != torch.float32:
        value = ir.Method(value, "to", (ir.Const(dtype),))
    if fused.reducer == "mean":
        value = ir.BinOp("/", value, ir.Const(fused.size(fused.ids), frozenset(fused.ids)))
    if isinstance(value, ir.Var):  # the kernel's float32 rows are the result
        result = value.name
    else:
        result = names.fresh("t")
        cast = f", as {dtype}" if dtype != torch.float32 else ""
        statements.append(ir.Assign(result, value, f"the {fused.reducer} over {' '.join(fused.ids)}{cast}"))
    return statements, [Value(result, fused.kept)] + ([Value(ties, fused.kept)] if ties else [])


def _reduce_rows(fused: Fused, value: str, ties: str | None, dims: tuple, names) -> tuple[list, ir.Expr, str | None]:
    """The reduction over the clause's row axes, of the per-row results: (statements, the
    result, and for a max/min the ties added up over the rows that reach the extreme)."""
    arg = ir.Const(dims[0] if len(dims) == 1 else dims)
    if fused.reducer not in REDUCE_CALLS:  # sum, mean: the row sums added up
        return [], ir.Method(ir.Var(value), "sum", (arg,)), None
    reduced: ir.Expr = ir.Call(REDUCE_CALLS[fused.reducer], (ir.Var(value), arg))
    if ties is None:
        return [], reduced, None
    extreme, total = names.fresh("t"), names.fresh("ties")
    at = ir.BinOp("==", ir.Var(value), aligned(Value(extreme, fused.kept), fused.batch + fused.rows))
    counted = ir.Method(ir.Call("torch.where", (at, ir.Var(ties), ir.Const(0.0))), "sum", (arg,))
    statements = [
        ir.Assign(extreme, reduced, f"the {fused.reducer} over {' '.join(fused.reduced)}"),
        ir.Assign(total, counted, "the ties of the rows that reach it"),
    ]
    return statements, ir.Var(extreme), total


def _arg_pass(fused: Fused, views: dict, names) -> tuple[list, list[Value]]:
    """An argmax/argmin's indices: over the columns alone (one flat column index per row), or over
    every row and column (the first row that reaches the extreme, and its column)."""
    index = views["index"]
    statements: list = []
    if fused.reduced:
        value = ir.Var(views["value"])
        width = len(fused.batch)
        flat_rows = ir.Method(value, "flatten", (ir.Const(width), ir.Const(-1)))
        row = names.fresh("row")
        statements.append(
            ir.Assign(
                row, ir.Method(flat_rows, fused.reducer, (ir.Const(-1),), (("keepdim", ir.Const(True)),)), "the first row that reaches it"
            )
        )
        columns = ir.Method(ir.Var(index), "flatten", (ir.Const(width), ir.Const(-1)))
        picked = ir.Call("torch.take_along_dim", (columns, ir.Var(row), ir.Const(-1)))
        flat = names.fresh("t")
        count = ir.Const(fused.size(fused.cols), frozenset(fused.cols))
        statements.append(ir.Assign(flat, ir.BinOp("+", ir.BinOp("*", ir.Var(row), count), picked), "flat index over the clause's axes"))
        index = names.fresh("t")
        statements.append(ir.Assign(index, ir.Method(ir.Var(flat), "squeeze", (ir.Const(-1),)), ""))
    if len(fused.ids) == 1:
        return statements, [Value(index, fused.kept)]
    more, values = index_per_axis(index, fused.ids, fused.kept, fused.sizes, names)
    return statements + more, values


# --- the fused step in a plan -------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """What the planner keeps of a fused step."""

    statements: tuple
    results: list
    definitions: tuple  # the kernel, and the autograd function when its backward runs in chunks
    estimate: Estimate
    description: str
    backward: str = ""


def plan_step(job: Job, context: Context, chunking: Chunking | None) -> Planned | None:
    """The job's step and its first clause in one kernel (its backward over ``chunking``, when
    autograd records the call), the clauses after it in torch; None when the kernel cannot do it."""
    step, clauses = job.step, job.clauses
    fused, _ = fit(step, clauses[0], job.device)
    if fused is None or not available(job.device):
        return None
    estimate = price(fused, context)
    text = f"{step.describe()} | {fused.reducer} {' '.join(fused.ids)}: {fused.describe()}"
    kernels: list = []

    def forward(inside, counting):
        statements, results, kernel = emit(fused, context, ties=counting)
        kernels.append(kernel)
        if len(inside) > 1:
            more, results = apply_clauses(results[0], inside[1:], step.sizes, clause_dtype(fused.reducer, step.dtype), context.names)
            statements += more
        return statements, results

    if context.options.grad and fused.reducer not in ARG_REDUCERS:
        if chunking is None or not backward.differentiable(chunking, job):
            return None
        statements, results, remaining, function = backward.emit(chunking, job, context, forward)
        definitions, after = (*kernels, function), backward.backward_text(chunking, job)
    else:
        statements, results = forward(clauses[:1], False)
        remaining, definitions, after = tuple(clauses[1:]), tuple(kernels), ""
    if remaining and len(results) == 1:
        more, results = apply_clauses(results[0], remaining, step.sizes, clause_dtype(fused.reducer, step.dtype), context.names)
        statements += more
    return Planned(tuple(statements), results, definitions, estimate, text, after)
