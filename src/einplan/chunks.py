"""Chunked steps: the last contraction and its clauses, computed a chunk at a time.

``price`` decides how a step is cut (the axis, the rows per chunk, tiles of a
second axis, the mode) and what it costs, without emitting anything; ``emit``
writes it as one ``for`` loop per cut axis.  Python's slicing clamps the last,
shorter chunk (``x0[i:i + 512]``), and every size the body needs is read from
the chunk itself (``chunk.shape[0]``), so one loop body serves every chunk.

Modes: ``rows`` (chunks of an output axis: every clause runs on the chunk,
which fills rows of the result), ``row-tiles`` (the same, each chunk's rows
reduced across tiles of columns), ``running`` (chunks of a clause's axis fold
into a running max/min/logsumexp/sum), ``running-arg`` (the same for an
argmax/argmin: the running best and its flat index) and ``partial-sums``
(chunks of a contracted axis added up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from . import ir
from .clauses import (
    ARG_REDUCERS,
    MERGE_CALLS,
    REDUCE_CALLS,
    apply_clauses,
    clause_dtype,
    extreme,
    fold,
    index_per_axis,
    new_tensor,
    running_start,
    sized,
    strictly_better,
)
from .cost import Estimate
from .lowerings import MATMUL, REGISTRY, Context, Contraction, MatmulBroadcast, Options, Value, choose, numel

CHUNK_BYTES = 8 * 2**20  # default budget of one chunk (buffer plus the reduction's temporaries)
# a chunk that max/min/argmax/argmin read once, straight from matmul's reused out= buffer, may be
# larger: a taller GEMM runs faster, and no chunk-sized temporary is allocated per chunk (bigger
# temporaries than ~32 MiB are mapped afresh from the OS each time, page faults included)
ONE_PASS_CHUNK_BYTES = 32 * 2**20
ONE_PASS = ("max", "min", "argmax", "argmin")
# a one-pass clause over a whole product (``m d, n d -> | max m n``) runs in tiles of rows by
# TILE_COLUMNS columns (a chunk's budget each) instead of full-width rows: the GEMM's output is read
# back while it is still in cache, and a tile's clause costs a few small ops.  Measured at
# M = N = 20000, D = 128 (interleaved): max 607 ms, argmax 625 ms in 2048 x 1024 tiles, against
# 734 ms and 761 ms in 419-row chunks
TILE_COLUMNS = 1024
# a max/min/logsumexp over the columns of a 2-D product that keeps its rows (``q d, k d -> q |
# logsumexp k``) runs over chunks of rows, each reduced across tiles of TILE_WIDTH columns with a
# running max/min/log-add per row, so that the GEMM's output and the chunk's rows of the left
# operand stay in a core's cache.  Measured at q = k = 20000, d = 64 (interleaved): logsumexp in
# 512 x 512 tiles 656 ms, 1024 x 256 684 ms, against 971 ms in full-width 52-row chunks
ROW_TILE_BYTES = 2 * 2**20  # a tile's budget (the GEMM's output plus the clause's temporaries)
TILE_WIDTH = 512
DEFAULT_MEMORY_LIMIT = 256 * 2**20  # a step whose intermediate is larger is computed in chunks
TEMPORARIES = {"logsumexp": 2.0, "mean": 1.0, "sum": 1.0, "max": 1.0, "min": 1.0, "argmax": 1.0, "argmin": 1.0}
GRAD_FLAG = "grad"  # True when autograd is recording: matmul must not write into the buffer then


@dataclass(frozen=True)
class Job:
    """The last contraction of a plan and the clauses after it, to be computed in chunks."""

    step: Contraction
    clauses: tuple
    output_axes: tuple[str, ...]
    inputs: tuple[str, ...]  # the kernel's parameters (x0, x1, ...): the grad flag reads them
    device: torch.device


@dataclass(frozen=True)
class Chunking:
    """How a step is cut, decided and priced before any code exists.

    ``step`` is the job's contraction with the chunked axis ranked first; each
    chunk is ``inner`` of it.  ``column``/``width``: tiles across a second axis.
    """

    axis: str
    mode: str  # "output": write slices; "reduce": combine the first clause; "sum": add partial sums
    style: str  # rows / row-tiles / running / running-arg / partial-sums
    step: Contraction
    inner: str
    full: Estimate  # the whole contraction's estimate, lowered by ``inner``
    rows: int
    per_row: float  # bytes per row of a chunk (of a tile, when tiled)
    buffered: bool  # the chunk's matmul writes into one reused buffer
    column: Optional[str] = None
    width: int = 0
    budget: int = CHUNK_BYTES

    @property
    def total(self) -> int:
        return self.step.sizes[self.axis]

    @property
    def grid(self) -> tuple[int, int]:
        """How many chunks of rows, and how many tiles across each (1 when not tiled)."""
        columns = math.ceil(self.step.sizes[self.column] / self.width) if self.column is not None else 1
        return max(1, math.ceil(self.total / self.rows)), max(1, columns)

    def estimate(self, clauses) -> Estimate:
        """The full step's estimate, with one set of ops per chunk (tile) and one chunk's memory."""
        chunks = math.prod(self.grid)
        ops = self.full.ops * chunks + 2 * len(clauses) * chunks
        return replace(self.full, ops=ops, memory=self.rows * self.per_row)

    def describe(self) -> str:
        if self.column is None:
            return f"in chunks of {self.rows} along {self.axis}"
        return f"in tiles of {self.rows} along {self.axis} by {self.width} along {self.column}"


# --- pricing: how to cut ---------------------------------------------------------------------


def _chunk_axis(job: Job) -> Optional[tuple[str, str]]:
    """The axis to cut into chunks and the mode, or None when there is no axis to cut."""
    step, sizes = job.step, job.step.sizes
    union = step.union
    outputs = [x for x in job.output_axes if x in union and sizes[x] > 1]
    if outputs:
        return max(outputs, key=lambda x: sizes[x]), "output"
    if job.clauses:
        reducer, ids = job.clauses[0]
        if reducer in ARG_REDUCERS:
            return ids[0], "reduce"
        return max(ids, key=lambda x: sizes[x]), "reduce"
    if step.summed:
        return max(step.summed, key=lambda x: sizes[x]), "sum"
    everything = [x for x in union if x in job.output_axes]
    return (everything[0], "output") if everything else None


def _style(mode: str, clauses) -> str:
    if mode == "output":
        return "rows"
    if mode == "sum":
        return "partial-sums"
    return "running-arg" if clauses[0][0] in ARG_REDUCERS else "running"


def _whole_product_tiles(job: Job, chunk: Contraction, axes, context: Context, budget: int) -> tuple[Optional[str], int]:
    """Tiles of a one-pass clause over the whole 2-D product (``| max m n``) on a CPU, if it is
    wider than a tile; a tile is TILE_COLUMNS wide, or narrower when one row would not fit ``budget``."""
    reducer, ids = job.clauses[0]
    if reducer not in ONE_PASS or context.model.kind != "cpu":  # a GPU's GEMM wants the taller chunk
        return None, 0
    width = int(max(1, min(TILE_COLUMNS, budget // chunk.dtype.itemsize)))
    if len(axes) != 2 or set(axes) != set(ids) or chunk.sizes[axes[1]] <= width:
        return None, 0
    return axes[1], width


def _row_tiles(job: Job, axes, context: Context) -> Optional[str]:
    """The column axis when one max/min/logsumexp reduces the columns of a 2-D product that keeps
    its rows (``q d, k d -> q | logsumexp k``), on a CPU, in eager code."""
    if context.model.kind != "cpu" or context.options.compiled or len(job.clauses) != 1:
        return None
    reducer, ids = job.clauses[0]
    if reducer not in MERGE_CALLS or len(ids) != 1 or not job.step.dtype.is_floating_point:
        return None
    return ids[0] if tuple(axes) == (axes[0], ids[0]) and job.step.sizes[ids[0]] > TILE_WIDTH else None


def price(job: Job, context: Context, budget: int) -> Optional[Chunking]:
    """How to cut ``job`` (None when chunks make no sense: an empty step costs nothing in full,
    and a loop that never runs would leave its result cut off from autograd)."""
    step = job.step
    if step.numel(step.union) == 0:
        return None
    choice = _chunk_axis(job)
    if choice is None:
        return None
    axis, mode = choice
    style = _style(mode, job.clauses)
    chunk = replace(step, rank=lambda x: (-1, 0) if x == axis else step.rank(x))
    options = context.options
    forced = options.lowering if options.lowering in REGISTRY else None
    inner, full, _ = choose(chunk, Context(context.names, Options(forced, options.memory_limit, options.compiled), context.model))
    axes = REGISTRY[inner].result_axes(chunk)
    matmul = REGISTRY[MATMUL]
    buffered = inner == MATMUL and isinstance(matmul, MatmulBroadcast) and matmul.writes_out(chunk) and axes[0] == axis
    column, width = None, 0
    if mode == "reduce" and buffered:
        column, width = _whole_product_tiles(job, chunk, axes, context, budget)
        if column is None and job.clauses[0][0] in ONE_PASS:
            budget = max(budget, min(options.memory_limit or DEFAULT_MEMORY_LIMIT, ONE_PASS_CHUNK_BYTES))
    elif style == "rows" and buffered and _row_tiles(job, axes, context) is not None:
        style, budget = "row-tiles", min(budget, ROW_TILE_BYTES)
        column = job.clauses[0][1][0]
        width = int(max(1, min(TILE_WIDTH, budget // (step.dtype.itemsize * TEMPORARIES[job.clauses[0][0]]))))
    factor = max((TEMPORARIES[r] for r, _ in job.clauses), default=1.0)
    total = step.sizes[axis]
    if column is not None:
        per_row = width * step.dtype.itemsize * factor
    else:
        per_row = max(full.memory / max(total, 1), step.dtype.itemsize) * factor
    rows = int(max(1, min(total, budget // per_row))) if total else 1
    if column is None and rows >= total:
        if total < 2:
            return None  # one chunk would be a loop that runs once
        rows = math.ceil(total / 2)
    chunking = Chunking(axis, mode, style, chunk, inner, full, rows, per_row, buffered, column, width, budget)
    return chunking if REGISTRY[inner].price(_chunk_step(chunking), context) is not None else None


def _chunk_step(chunking: Chunking) -> Contraction:
    """The contraction one chunk (tile) computes: the cut axes sized by a chunk, their sizes free."""
    sizes = dict(chunking.step.sizes)
    free = set()
    if chunking.rows < chunking.total:
        sizes[chunking.axis] = chunking.rows
        free.add(chunking.axis)
    if chunking.column is not None:
        sizes[chunking.column] = chunking.width
        free.add(chunking.column)
    return replace(chunking.step, sizes=sizes, free=frozenset(free))


# --- emitting: one loop per cut axis ------------------------------------------------------------


class Loops:
    """Statements of a chunked step: cut operands, loop over chunks and tiles, contract each."""

    def __init__(self, chunking: Chunking, job: Job, context: Context):
        self.chunking = chunking
        self.job = job
        self.context = context
        self.names = context.names
        self.chunk = _chunk_step(chunking)
        self.axes = REGISTRY[chunking.inner].result_axes(self.chunk)  # each chunk's result axes
        self.buffer: Optional[str] = None
        self.lengths: dict[str, ir.Expr] = {}  # cut axis -> its length in this chunk, read from the chunk

    @property
    def piece(self) -> str:
        return "tile" if self.chunking.column is not None else "chunk"

    def size_tag(self, *without: str) -> frozenset:
        """The axes a chunk length or buffer shape is computed from (all of the step's but ``without``)."""
        return frozenset(self.chunk.union) - set(without)

    def loop(self, axis: str, var: str, length: int, values, body: Callable[[ir.Expr, list[Value]], list], role: str) -> list:
        """``for var in range(0, n, length)`` over ``axis``, each value holding it cut to
        ``value[var:var + length]`` (named ``role``); or the body alone, uncut, when one pass covers it."""
        total = self.chunking.step.sizes[axis]
        if length >= total:
            return body(ir.Const(0), list(values))
        start = ir.Var(var)
        step = ir.Const(length, self.size_tag(axis))
        cuts, parts = [], []
        for value in values:
            if axis in value.axes:
                cut = self.names.fresh(role)
                position = value.axes.index(axis)
                items = (ir.SLICE,) * position + (ir.Range(start, ir.plus(start, step)),)
                cuts.append(ir.Assign(cut, ir.Index(ir.Var(value.var), items), f"{role} of {axis}"))
                self.lengths[axis] = ir.shape_of(cut, position)
                value = Value(cut, value.axes)
            parts.append(value)
        holder = next(v for v in values if axis in v.axes)
        stop = ir.shape_of(holder.var, holder.axes.index(axis))
        comment = f"{role}s of {length} along {axis}"
        return [ir.Loop(var, 0, stop, step, tuple(cuts + body(start, parts)), comment)]

    def buffer_setup(self, dtype: Optional[torch.dtype] = None, grad: bool = True) -> list:
        """The reused out= buffer of the chunk's matmul (and the flag that turns it off under autograd)."""
        if not self.chunking.buffered:
            return []
        dtype = dtype or self.chunk.dtype
        self.buffer = self.names.fresh("buffer")
        shape = tuple(self.chunk.sizes[x] for x in self.axes)
        size = human_bytes(math.prod(shape) * dtype.itemsize)
        statements = [ir.Assign(self.buffer, new_tensor("torch.empty", sized(shape, self.size_tag()), dtype), f"{self.piece} buffer, {size}")]
        if grad:
            recording = ir.BoolOp("or", tuple(ir.Attr(ir.Var(x), "requires_grad") for x in self.job.inputs))
            flag = ir.BoolOp("and", (ir.Call("torch.is_grad_enabled", ()), recording))
            statements.append(ir.Assign(GRAD_FLAG, flag, "out= buffers do not carry gradients"))
        return statements

    def buffer_part(self) -> ir.Expr:
        """The buffer cut to this chunk's (tile's) lengths."""
        items = [ir.Range(ir.Const(None), self.lengths[x]) if x in self.chunk.free else ir.SLICE for x in self.axes]
        while items and items[-1] is ir.SLICE:
            items.pop()
        assert self.buffer is not None
        return ir.Index(ir.Var(self.buffer), tuple(items)) if items else ir.Var(self.buffer)

    def contract(self, parts: list[Value], grad: bool = True, role: str = "scores") -> tuple[list, Value]:
        """One chunk (tile) of the contraction; returns (statements, its value)."""
        step = replace(self.chunk, a=parts[0], b=parts[1])
        lowered = REGISTRY[self.chunking.inner].emit(step, self.context)
        expr = lowered.expr
        if self.buffer is not None and isinstance(expr, ir.Call):
            out = ir.IfExp(ir.Var(GRAD_FLAG), ir.Const(None), self.buffer_part()) if grad else self.buffer_part()
            expr = ir.Call(expr.func, expr.args, (("out", out),))
        comment = f"{self.chunking.inner}: {self.chunking.step.describe(lowered.axes)} for this {self.piece}"
        if lowered.setup and isinstance(expr, ir.Var):
            return list(lowered.setup), Value(expr.name, lowered.axes)
        var = self.names.fresh(role)
        return [*lowered.setup, ir.Assign(var, expr, comment)], Value(var, lowered.axes)

    def over_rows(self, values, body: Callable[[ir.Expr, list[Value]], list]) -> list:
        return self.loop(self.chunking.axis, "i", self.chunking.rows, values, body, "chunk")

    def over_tiles(self, values, body: Callable[[ir.Expr, list[Value]], list]) -> list:
        assert self.chunking.column is not None
        return self.loop(self.chunking.column, "j", self.chunking.width, values, body, "tile")

    def operands(self) -> list[Value]:
        return [self.chunking.step.a, self.chunking.step.b]


def _rows_of(target: Value, axis: str, start: ir.Expr, length: ir.Const) -> ir.Expr:
    """``target[:, ..., start:start + length]`` along ``axis``."""
    return ir.Index(ir.Var(target.var), (ir.SLICE,) * target.axes.index(axis) + (ir.Range(start, ir.plus(start, length)),))


# --- the modes --------------------------------------------------------------------------------


def _emit_rows(loops: Loops) -> tuple[list, list[Value]]:
    """Chunks of an output axis: every clause runs on the chunk, which fills rows of the result."""
    chunking, job, names = loops.chunking, loops.job, loops.names
    reduced = [x for _, ids in job.clauses for x in ids]
    axes = tuple(x for x in loops.axes if x not in reduced)
    arg = bool(job.clauses) and job.clauses[-1][0] in ARG_REDUCERS
    dtype = chunking.step.dtype
    for reducer, _ in job.clauses:
        dtype = clause_dtype(reducer, dtype)
    shape = sized(tuple(chunking.step.sizes[x] for x in axes), axes)
    results = [Value(names.fresh("result"), axes) for _ in range(len(job.clauses[-1][1]) if arg else 1)]
    statements = loops.buffer_setup()
    statements += [ir.Assign(r.var, new_tensor("torch.empty", shape, dtype), "result, filled chunk by chunk") for r in results]
    rows = ir.Const(chunking.rows, loops.size_tag(chunking.axis))

    def body(start, parts):
        computed, value = loops.contract(parts)
        more, values = apply_clauses(value, job.clauses, loops.chunk.sizes, chunking.step.dtype, names, loops.chunk.free)
        writes = [ir.Assign(_rows_of(r, chunking.axis, start, rows), ir.Var(v.var), f"write rows of {chunking.axis}") for r, v in zip(results, values)]
        return computed + more + writes

    return statements + loops.over_rows(loops.operands(), body), results


def _emit_row_tiles(loops: Loops) -> tuple[list, list[Value]]:
    """Chunks of rows, each reduced across tiles of columns into a running max/min/logsumexp of its
    rows, which then fill those rows of the result."""
    chunking, names = loops.chunking, loops.names
    reducer, (column,) = loops.job.clauses[0]
    dtype = chunking.step.dtype
    statements = loops.buffer_setup()
    elided = chunking.rows >= chunking.total
    result = Value(names.fresh("result"), (chunking.axis,))
    if not elided:
        shape = sized((chunking.total,), (chunking.axis,))
        statements.append(ir.Assign(result.var, new_tensor("torch.empty", shape, clause_dtype(reducer, dtype)), "result, filled chunk by chunk"))
    rows = ir.Const(chunking.rows, loops.size_tag(chunking.axis))

    def body(start, parts):
        acc = result.var if elided else names.fresh("acc")
        length = loops.lengths[chunking.axis] if not elided else None
        shape = ir.Tuple((length,)) if length is not None else sized((chunking.total,), (chunking.axis,))
        inner = [running_start(acc, reducer, shape, dtype)]

        def tile(_, tile_parts):
            computed, value = loops.contract(tile_parts)
            return computed + fold(acc, reducer, value, (column,), dtype, names, "tile")

        inner += loops.over_tiles(parts, tile)
        if not elided:
            inner.append(ir.Assign(_rows_of(result, chunking.axis, start, rows), ir.Var(acc), f"write rows of {chunking.axis}"))
        return inner

    return statements + loops.over_rows(loops.operands(), body), [result]


def _emit_running(loops: Loops) -> tuple[list, list[Value]]:
    """Chunks (tiles) of a clause's axes, each reduced and folded into a running max/min/logsumexp/sum."""
    chunking, names = loops.chunking, loops.names
    reducer, ids = loops.job.clauses[0]
    dtype = chunking.step.dtype
    rest = tuple(x for x in loops.axes if x not in ids)
    statements = loops.buffer_setup()
    acc = names.fresh("acc")
    statements.append(running_start(acc, reducer, sized(tuple(chunking.step.sizes[x] for x in rest), rest), dtype))

    def body(_, parts):
        if chunking.column is not None:
            return loops.over_tiles(parts, lambda __, tile: _contract_and_fold(loops, tile, acc, reducer, ids))
        return _contract_and_fold(loops, parts, acc, reducer, ids)

    statements += loops.over_rows(loops.operands(), body)
    if reducer == "mean":
        count = ir.Const(numel(chunking.step.sizes, ids), frozenset(ids))
        statements.append(ir.Assign(acc, ir.BinOp("/", ir.Var(acc), count), "mean = sum / count"))
    return statements, [Value(acc, rest)]


def _contract_and_fold(loops: Loops, parts, acc: str, reducer: str, ids) -> list:
    computed, value = loops.contract(parts)
    return computed + fold(acc, reducer, value, ids, loops.chunking.step.dtype, loops.names, loops.piece)


def _emit_partial_sums(loops: Loops) -> tuple[list, list[Value]]:
    """Chunks of a contracted axis: the chunks' partial sums are added up."""
    chunking = loops.chunking
    statements = loops.buffer_setup()
    acc = loops.names.fresh("acc")
    shape = sized(tuple(chunking.step.sizes[x] for x in loops.axes), loops.axes)
    statements.append(ir.Assign(acc, new_tensor("torch.zeros", shape, chunking.step.dtype), "running sum"))

    def body(_, parts):
        computed, value = loops.contract(parts)
        return computed + [ir.Assign(acc, ir.BinOp("+", ir.Var(acc), ir.Var(value.var)), "add this chunk's partial sum")]

    return statements + loops.over_rows(loops.operands(), body), [Value(acc, loops.axes)]


def _emit_running_arg(loops: Loops) -> tuple[list, list[Value]]:
    """Chunks (tiles) of an argmax/argmin's axes: the running best and its flat index, which a chunk
    (tile) replaces only when strictly better or, tied, earlier in flat order (NaN wins, as torch)."""
    chunking, names = loops.chunking, loops.names
    reducer, ids = loops.job.clauses[0]
    sizes, dtype = chunking.step.sizes, chunking.step.dtype
    rest = tuple(x for x in loops.axes if x not in ids)
    rest_shape = sized(tuple(sizes[x] for x in rest), rest)
    statements = loops.buffer_setup()
    best, index = names.fresh("best"), names.fresh("index")
    statements.append(ir.Assign(best, new_tensor("torch.full", rest_shape, dtype, extreme(dtype, reducer == "argmax")), f"running {reducer[3:]}"))
    tiled = chunking.column is not None
    beyond = ir.Const(numel(sizes, ids), frozenset(ids))  # past every flat index: the first tile always wins
    start = new_tensor("torch.full", rest_shape, torch.int64, beyond) if tiled else new_tensor("torch.zeros", rest_shape, torch.int64)
    statements.append(ir.Assign(index, start, "its flat index"))
    found = _ArgFinder(loops, reducer, ids, rest, best, index)
    if tiled:
        body = lambda i, parts: loops.over_tiles(parts, lambda j, tile: found.tile(tile, i, j))  # noqa: E731
    else:
        body = found.chunk
    statements += loops.over_rows(loops.operands(), body)
    if len(ids) == 1:
        return statements, [Value(index, rest)]
    more, values = index_per_axis(index, ids, rest, sizes, names)
    return statements + more, values


@dataclass
class _ArgFinder:
    """A chunk's (tile's) extreme and flat index, in cheap passes: each row's extreme, the first
    row holding the chunk's, the first place in that row (torch's max-with-index kernel is many
    times slower than ``amax``; row-major order makes this the first flat position, NaN included)."""

    loops: Loops
    reducer: str
    ids: tuple
    rest: tuple
    best: str
    index: str

    @property
    def extreme(self) -> str:
        return self.reducer[3:]  # "max" or "min"

    def _take(self, values: ir.Expr, flat: ir.Expr, tie_break: bool) -> list:
        best, index = ir.Var(self.best), ir.Var(self.index)
        names = self.loops.names
        statements = []
        better = strictly_better(self.reducer, values, best)
        if tie_break:  # tiles do not come in flat order: a tie (or a second NaN) earlier in it wins too
            at, tied = names.fresh("flat"), names.fresh("tied")
            same = ir.BinOp("|", ir.BinOp("==", values, best), ir.BinOp("&", ir.BinOp("!=", values, values), ir.BinOp("!=", best, best)))
            statements += [
                ir.Assign(at, flat, "its flat index"),
                ir.Assign(tied, same, "as good as the best so far (NaN ties NaN)"),
            ]
            flat = ir.Var(at)
            better = ir.BinOp("|", better, ir.BinOp("&", ir.Var(tied), ir.BinOp("<", flat, index)))
        take = names.fresh("take")
        comment = "better, or tied and earlier" if tie_break else "strictly better (ties keep the first; NaN wins)"
        return statements + [
            ir.Assign(take, better, comment),
            ir.Assign(self.best, ir.Call("torch.where", (ir.Var(take), values, best))),
            ir.Assign(self.index, ir.Call("torch.where", (ir.Var(take), flat, index)), "its flat index"),
        ]

    def chunk(self, start: ir.Expr, parts) -> list:
        loops, names = self.loops, self.loops.names
        computed, value = loops.contract(parts)
        moved = ir.permute(ir.Var(value.var), tuple(value.axes.index(x) for x in self.rest + self.ids))
        sizes = loops.chunking.step.sizes
        stride = ir.Const(numel(sizes, self.ids[1:]), frozenset(self.ids[1:]))  # flat positions per row
        part = names.fresh("part")
        if len(self.ids) == 1:
            found, first_row = [ir.Assign(part, ir.Method(moved, self.extreme, (ir.Const(-1),)), f"{self.extreme} of this chunk and where")], start
        else:
            grid = ir.Method(moved, "flatten", (ir.Const(len(self.rest) + 1), ir.Const(-1))) if len(self.ids) > 2 else moved
            row = names.fresh("row")
            picked = ir.Call("torch.take_along_dim", (grid, ir.Index(ir.Var(row), (ir.ELLIPSIS, None, None))), (("dim", ir.Const(-2)),))
            found = [
                ir.Assign(row, ir.Method(ir.Call(REDUCE_CALLS[self.extreme], (grid, ir.Const(-1))), self.reducer, (ir.Const(-1),)), f"the first row holding this chunk's {self.extreme}"),
                ir.Assign(part, ir.Method(ir.Method(picked, "squeeze", (ir.Const(-2),)), self.extreme, (ir.Const(-1),)), f"{self.extreme} of that row and where"),
            ]
            first_row = ir.plus(start, ir.Var(row))
        values, indices = ir.Attr(ir.Var(part), "values"), ir.Attr(ir.Var(part), "indices")
        flat = ir.BinOp("+", indices, ir.BinOp("*", first_row, stride)) if not isinstance(first_row, ir.Const) else indices
        return computed + found + self._take(values, flat, tie_break=False)

    def tile(self, parts, i: ir.Expr, j: ir.Expr) -> list:
        loops, names = self.loops, self.loops.names
        computed, value = loops.contract(parts)
        scores = ir.Var(value.var)
        if value.axes != self.ids:
            scores = ir.permute(scores, tuple(value.axes.index(x) for x in self.ids))
        part, column = names.fresh("part"), names.fresh("col")
        row = ir.Attr(ir.Var(part), "indices")
        picked = ir.Call("torch.take_along_dim", (scores, ir.Method(row, "reshape", (ir.Const(1), ir.Const(1)))), (("dim", ir.Const(-2)),))
        width = ir.Const(loops.chunking.step.sizes[self.ids[1]], frozenset(self.ids[1:]))
        flat = ir.plus(ir.plus(ir.BinOp("*", ir.plus(i, row), width), j), ir.Var(column))
        rows_extreme = ir.Call(REDUCE_CALLS[self.extreme], (scores, ir.Const(-1)))
        return computed + [
            ir.Assign(part, ir.Method(rows_extreme, self.extreme, (ir.Const(-1),)), f"this tile's {self.extreme} and the first row holding it"),
            ir.Assign(column, ir.Method(picked, self.reducer, ()), "its first place in that row"),
            *self._take(ir.Attr(ir.Var(part), "values"), flat, tie_break=True),
        ]


EMITTERS = {
    "rows": _emit_rows,
    "row-tiles": _emit_row_tiles,
    "running": _emit_running,
    "running-arg": _emit_running_arg,
    "partial-sums": _emit_partial_sums,
}


def emit(chunking: Chunking, job: Job, context: Context) -> tuple[list, list[Value], tuple]:
    """The chunked step's statements, its result values, and the clauses left for after the loops."""
    statements, results = EMITTERS[chunking.style](Loops(chunking, job, context))
    remaining = tuple(job.clauses[1:]) if chunking.style in ("running", "running-arg") else ()
    return statements, results, remaining


def dtype_after(chunking: Chunking, clauses) -> torch.dtype:
    """The dtype of the loop's result (before the remaining clauses)."""
    dtype = chunking.step.dtype
    if chunking.style in ("running", "running-arg"):
        return clause_dtype(clauses[0][0], dtype)
    return dtype


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"

