"""Clauses: reductions after the sum-product, materialised or in chunks.

``reduce_clause`` applies one clause to a tensor that exists in full.
``chunked`` computes the last contraction and the clauses in chunks of one
axis into a reused buffer, so that the full intermediate never exists; a
max/min/argmax/argmin of a whole wide product goes in tiles of two axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch

from . import ir
from .errors import EinplanError
from .lowerings import CONTRACTIONS, MATMUL, Names, Options, Value, _describe, _lower, _numel, _sum, assign_result, choose
from .bind import Bound

# --- clauses and output -----------------------------------------------------------------------


REDUCE_CALLS = {"max": "torch.amax", "min": "torch.amin", "logsumexp": "torch.logsumexp"}
ARG_REDUCERS = ("argmax", "argmin")


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
        integer = not (dtype.is_floating_point or dtype.is_complex)
        kwargs = (("dtype", ir.Const(clause_dtype("mean", dtype))),) if integer else ()
        expr = ir.Method(source, "mean", (arg,), kwargs)
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
        flat_index = ir.Assign(index, ir.Method(flat, reducer, (ir.Const(-1),)), f"reduce: {reducer} over ({' '.join(ids)}) flattened")
        statements, parts = _index_per_axis(var, index, ids, rest, sizes, names)
        return [flat_index] + statements, parts
    return [ir.Assign(var, expr, f"reduce: {reducer} {' '.join(ids)}")], [Value(var, rest)]


def _index_per_axis(var: str, index: str, ids, rest, sizes, names: Names) -> tuple[list, list[Value]]:
    """Unravel the flat ``index`` over ``ids`` into ``var``: one index value per axis.

    Returns (statements, values).
    """
    shape = ir.Const(tuple(sizes[a] for a in ids))
    statements = [ir.Assign(var, ir.Call("torch.unravel_index", (ir.Var(index), shape)), "one index tensor per axis")]
    values = []
    for k, axis in enumerate(ids):
        part = names.fresh()
        statements.append(ir.Assign(part, ir.Index(ir.Var(var), (k,)), f"index along {axis}"))
        values.append(Value(part, rest))
    return statements, values


# --- chunked reduction -------------------------------------------------------------------------

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

DEVICE_OF = "x0"  # new tensors are made on this input's device
GRAD_FLAG = "grad"  # True when autograd is recording: matmul must not write into the buffer then
MERGE_CALLS = {"max": "torch.maximum", "min": "torch.minimum", "logsumexp": "torch.logaddexp"}


def clause_dtype(reducer: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a clause returns: int64 indices, and a float mean/logsumexp of integers."""
    if reducer in ARG_REDUCERS:
        return torch.int64
    if reducer in ("logsumexp", "mean") and not (dtype.is_floating_point or dtype.is_complex):
        return torch.get_default_dtype()
    return dtype


def apply_clauses(value: Value, clauses, sizes, dtype: torch.dtype, names: Names) -> tuple[list, list[Value]]:
    """Clauses applied in order to a value that exists in full."""
    statements: list = []
    values = [value]
    for reducer, ids in clauses:
        (current,) = values
        more, values = reduce_clause(current, reducer, ids, sizes, dtype, names)
        statements.extend(more)
        dtype = clause_dtype(reducer, dtype)
    return statements, values


def _extreme(dtype: torch.dtype, low: bool):
    """The identity of max (``low``) or min: -inf/+inf, or the integer limits."""
    if dtype.is_floating_point:
        return float("-inf") if low else float("inf")
    info = torch.iinfo(dtype)
    return info.min if low else info.max


def _on_device(dtype) -> tuple:
    """The ``dtype=..., device=x0.device`` keywords of a new tensor."""
    return (("dtype", ir.Const(dtype)), ("device", ir.Attr(ir.Var(DEVICE_OF), "device")))


def _full(shape, value, dtype) -> ir.Expr:
    return ir.Call("torch.full", (ir.Const(tuple(shape)), ir.Const(value)), _on_device(dtype))


def _empty(shape, dtype) -> ir.Expr:
    return ir.Call("torch.empty", (ir.Const(tuple(shape)),), _on_device(dtype))


def _zeros(shape, dtype) -> ir.Expr:
    return ir.Call("torch.zeros", (ir.Const(tuple(shape)),), _on_device(dtype))


def _slice(value: Value, axis: str, start: ir.Expr, length: int) -> ir.Expr:
    """``value[:, ..., start:start + length]`` along ``axis``."""
    position = value.axes.index(axis)
    stop = ir.BinOp("+", start, ir.Const(length))
    return ir.Index(ir.Var(value.var), (ir.SLICE,) * position + (ir.Range(start, stop),))


@dataclass(frozen=True)
class _Chunking:
    """How a step was cut into chunks (shown in the step's description)."""

    axis: str
    mode: str  # "output": write slices; "reduce": combine the first clause; "sum": add partial sums
    rows: int
    column: Optional[str] = None  # tiles: the second axis cut, ``width`` at a time
    width: int = 0
    screened: bool = False  # tiles in bfloat16 pick the rows, then float32 over those rows

    def describe(self) -> str:
        if self.column is None:
            return f"in chunks of {self.rows} along {self.axis}"
        tiles = f"in tiles of {self.rows} along {self.axis} by {self.width} along {self.column}"
        if self.screened:
            return f"screened in bfloat16 {tiles}, then exactly over the rows of {self.axis} that can hold the result"
        return tiles


def _chunk_axis(a: Value, b: Value, clauses, output_axes, keep, sizes) -> Optional[tuple[str, str]]:
    """The axis to cut into chunks and the mode, or None when there is no axis to cut."""
    union = list(dict.fromkeys(a.axes + b.axes))
    outputs = [x for x in output_axes if x in union and sizes[x] > 1]
    if outputs:
        return max(outputs, key=lambda x: sizes[x]), "output"
    if clauses:
        reducer, ids = clauses[0]
        if reducer in ARG_REDUCERS:
            return ids[0], "reduce"
        return max(ids, key=lambda x: sizes[x]), "reduce"
    contracted = [x for x in union if x not in keep]
    if contracted:
        return max(contracted, key=lambda x: sizes[x]), "sum"
    everything = [x for x in union if x in output_axes]
    return (everything[0], "output") if everything else None


class _ChunkLoop:
    """The last contraction, computed in chunks of ``axis`` inside a ``for i in range(...)`` loop.

    Each subclass is one mode and says what happens around the chunks:
    ``setup`` (before the loops), ``combine`` (folds one chunk in) and
    ``finish`` (after the loops; also returns the result values).
    """

    mode = ""

    def __init__(self, a: Value, b: Value, clauses, bound: Bound, keep, sizes, rank, model, options, names: Names, axis: str, budget):
        self.a, self.b = a, b
        self.clauses = clauses
        self.bound = bound
        self.dtype = bound.dtype
        self.keep, self.sizes, self.rank = keep, sizes, rank
        self.model, self.options, self.names = model, options, names
        self.axis = axis
        self.total = sizes[axis]
        self.budget = budget  # bytes of one chunk
        self.i = ir.Var("i")  # the loop variable: where the chunk starts
        self.j = ir.Var("j")  # in tiles, where the tile's columns start
        self.inner, self.full = self._inner_lowering()
        self.probe = self._buffer_probe()  # the chunk's matmul, when it can write into one reused buffer
        self.column, self.width = self._tile_columns(budget)
        if self.column is None and self.mode == "reduce" and clauses[0][0] in ONE_PASS and self.probe is not None:
            budget = max(budget, min(options.memory_limit or DEFAULT_MEMORY_LIMIT, ONE_PASS_CHUNK_BYTES))
        self.per_row, self.rows = self._rows_per_chunk(budget)
        self.buffer: str | None = None  # the reused out= buffer, if matmul can write into it

    def build(self):
        """(statements, result values, estimate, inner lowering, chunking) of the step."""
        statements = self.buffer_setup() + self.setup()
        finish, results = self.finish()  # built before the loops: its names are numbered ahead of theirs
        statements += self.loops() + finish
        (result,) = results if len(results) == 1 else (None,)
        if result is not None and self.remaining_clauses():
            more, results = apply_clauses(result, self.remaining_clauses(), self.sizes, self.dtype_after_loop(), self.names)
            statements.extend(more)
        chunking = _Chunking(self.axis, self.mode, self.rows, self.column, self.width)
        return statements, results, self.estimate(), self.inner, chunking

    @property
    def piece(self) -> str:
        """What one pass of the loop body works on, as the comments name it."""
        return "tile" if self.column is not None else "chunk"

    # --- sizing

    def _axis_first(self, x: str) -> tuple:
        """The planner's axis order, with the chunked axis first."""
        return (-1, 0) if x == self.axis else self.rank(x)

    def _inner_lowering(self):
        """The lowering of the whole contraction (name, Lowered), priced without the chunks."""
        lowering = self.options.lowering if self.options.lowering in CONTRACTIONS else None
        inner_options = Options(lowering, self.options.memory_limit, self.options.compiled)
        probe = Names(self.names.count)
        inner, full, _ = choose(self.a, self.b, self.keep, self.sizes, self._axis_first, self.dtype, self.model, inner_options, probe)
        return inner, full

    def _tile_columns(self, budget) -> tuple[Optional[str], int]:
        """The column axis and tile width when a one-pass clause reduces the whole 2-D product
        (``| max m n``, ``| argmax m n``) and the product is wider than a tile; else (None, 0).

        A tile is TILE_COLUMNS wide, or narrower when one row of that would not fit ``budget``.
        """
        if self.mode != "reduce" or self.probe is None or self.clauses[0][0] not in ONE_PASS:
            return None, 0
        if self.model.kind != "cpu":  # measured for a CPU's caches; a GPU's GEMM wants the taller chunk
            return None, 0
        axes = self.probe.axes  # the chunk axis first
        width = int(max(1, min(TILE_COLUMNS, budget // self.dtype.itemsize)))
        if len(axes) != 2 or set(axes) != set(self.clauses[0][1]) or self.sizes[axes[1]] <= width:
            return None, 0
        return axes[1], width

    def _rows_per_chunk(self, budget) -> tuple[float, int]:
        """Bytes per row of the chunk (of the tile, when tiled), and how many rows fit in ``budget``."""
        factor = max((TEMPORARIES[r] for r, _ in self.clauses), default=1.0)
        if self.column is not None:
            per_row = self.width * self.dtype.itemsize * factor
        else:
            per_row = max(self.full.estimate.memory / max(self.total, 1), self.dtype.itemsize) * factor
        rows = int(max(1, min(self.total, budget // per_row))) if self.total else 1
        return per_row, rows

    @property
    def grid(self) -> tuple[int, int]:
        """How many chunks of rows, and how many tiles across each (1 when not tiled)."""
        columns = math.ceil(self.sizes[self.column] / self.width) if self.column is not None else 1
        return max(1, math.ceil(self.total / self.rows)), max(1, columns)

    def estimate(self):
        """The full step's estimate, with one set of ops per chunk (tile) and one chunk's memory."""
        chunks = math.prod(self.grid)
        ops = self.full.estimate.ops * chunks + 2 * len(self.clauses) * chunks
        return replace(self.full.estimate, ops=ops, memory=self.rows * self.per_row)

    # --- the reused buffer

    def _buffer_probe(self):
        """The chunk's matmul (lowered for a one-row chunk) if it can write into a reused buffer, else None."""
        if self.inner != MATMUL:
            return None
        chunk_sizes = dict(self.sizes, **{self.axis: 1})
        probe = _lower(self.inner, self.a, self.b, self.keep, chunk_sizes, self._axis_first, self.dtype, self.model, Names(), False)
        return probe if isinstance(probe.expr, ir.Call) and probe.axes[0] == self.axis else None

    def buffer_setup(self) -> list:
        """Allocate the chunk buffer and the grad flag, when matmul can write into it."""
        if self.probe is None:
            return []
        self.buffer = self.names.fresh("buf")
        cut = {self.axis: self.rows, self.column: self.width}
        shape = tuple(cut.get(x, self.sizes[x]) for x in self.probe.axes)
        size = _human_bytes(math.prod(shape) * self.dtype.itemsize)
        inputs_grad = ir.BoolOp("or", tuple(ir.Attr(ir.Var(f"x{k}"), "requires_grad") for k in range(len(self.bound.operands))))
        grad = ir.BoolOp("and", (ir.Call("torch.is_grad_enabled", ()), inputs_grad))
        return [
            ir.Assign(self.buffer, _empty(shape, self.dtype), f"{self.piece} buffer, {size}"),
            ir.Assign(GRAD_FLAG, grad, "out= buffers do not carry gradients"),
        ]

    def _into_buffer(self, lowered, chunk_sizes: dict) -> ir.Expr:
        """The chunk's matmul with ``out=`` the buffer (or its first rows and columns, for a shorter
        chunk or a narrower tile)."""
        expr = lowered.expr
        is_matmul = isinstance(expr, ir.Call) and expr.func == "torch.matmul"
        if self.buffer is None or not is_matmul or lowered.axes[0] != self.axis:
            return expr
        return ir.Call(expr.func, expr.args, (("out", ir.IfExp(ir.Var(GRAD_FLAG), ir.Const(None), self._buffer_part(chunk_sizes))),))

    def _buffer_part(self, chunk_sizes: dict) -> ir.Expr:
        """The buffer, or its first rows and columns for a shorter chunk or a narrower tile."""
        length, width = chunk_sizes[self.axis], chunk_sizes.get(self.column, self.width)
        rows = ir.SLICE if length == self.rows else ir.Range(ir.Const(None), ir.Const(length))
        items = (rows, ir.Range(ir.Const(None), ir.Const(width))) if width != self.width else (rows,)
        target = ir.Var(self.buffer)
        return target if items == (ir.SLICE,) else ir.Index(target, items)

    # --- the loops

    def cut(self, values, axis: str, start: ir.Var, length: int, piece: str = "chunk") -> tuple[list, list[Value]]:
        """Slice ``length`` rows of ``axis`` from ``start`` out of each value that has the axis."""
        statements, parts = [], []
        for value in values:
            if axis in value.axes:
                var = self.names.fresh("c")
                statements.append(ir.Assign(var, _slice(value, axis, start, length), f"{piece} of {axis}"))
                value = Value(var, value.axes)
            parts.append(value)
        return statements, parts

    def contract(self, parts, chunk_sizes: dict) -> list:
        """Contract one chunk (or tile) of the operands and fold it in."""
        forced = self.options.lowering == self.inner
        lowered = _lower(self.inner, parts[0], parts[1], self.keep, chunk_sizes, self._axis_first, self.dtype, self.model, self.names, forced)
        lowered = replace(lowered, expr=self._into_buffer(lowered, chunk_sizes))
        comment = f"{self.inner}: {_describe([self.a.axes, self.b.axes], lowered.axes)} for this {self.piece}"
        var, statements = assign_result(lowered, comment, self.names, "s")
        statements = list(statements)
        if lowered.axes != self.full.axes:
            # a shorter last chunk may be lowered with another layout: the combine expects the full chunks' one
            order = tuple(lowered.axes.index(x) for x in self.full.axes)
            var, moved = self.names.fresh("s"), ir.permute(ir.Var(var), order)
            statements.append(ir.Assign(var, moved, f"in the axis order of the full {self.piece}s"))
        return statements + self.combine(Value(var, self.full.axes), chunk_sizes)

    def loops(self, operands=None) -> list:
        """One loop over the full chunks, then one for the shorter last chunk, if any; tiled, the
        same two loops over the columns run inside each.  ``operands``: the two values cut (the
        step's own by default)."""
        statements = []
        for start, stop, length in _spans(self.total, self.rows):
            body, parts = self.cut(operands or (self.a, self.b), self.axis, self.i, length)
            chunk_sizes = dict(self.sizes, **{self.axis: length})
            body += self.before_chunk(length)
            body += self.tiles(parts, chunk_sizes) if self.column is not None else self.contract(parts, chunk_sizes)
            body += self.after_chunk(length)
            label = "chunked-reduction" if length == self.rows else "last, shorter chunk"
            statements.append(ir.Loop("i", start, stop, length, tuple(body), f"{label}: {length} of {self.total} along {self.axis}"))
        return statements

    def tiles(self, parts, chunk_sizes: dict) -> list:
        """The loops over the column tiles of one chunk of rows."""
        total = self.sizes[self.column]
        statements = []
        for start, stop, width in _spans(total, self.width):
            body, tile = self.cut(parts, self.column, self.j, width, "tile")
            body += self.contract(tile, dict(chunk_sizes, **{self.column: width}))
            label = "tile" if width == self.width else "last, narrower tile"
            statements.append(ir.Loop("j", start, stop, width, tuple(body), f"{label}: {width} of {total} along {self.column}"))
        return statements

    # --- what each mode provides

    def setup(self) -> list:
        """Statements before the loops: the accumulators or results."""
        raise NotImplementedError

    def combine(self, value: Value, chunk_sizes: dict) -> list:
        """Statements that fold one chunk's ``value`` in."""
        raise NotImplementedError

    def before_chunk(self, length: int) -> list:
        """Statements at the top of each chunk's body, after the chunk is cut."""
        return []

    def after_chunk(self, length: int) -> list:
        """Statements at the end of each chunk's body."""
        return []

    def finish(self) -> tuple[list, list[Value]]:
        """Statements after the loops, and the values they leave."""
        raise NotImplementedError

    def remaining_clauses(self):
        """Clauses applied after the loops, to the finished values."""
        return ()

    def dtype_after_loop(self) -> torch.dtype:
        return self.dtype


class _WriteRows(_ChunkLoop):
    """Chunks of an output axis: every clause runs on the chunk, which fills rows of the result."""

    mode = "output"

    def setup(self) -> list:
        """Allocate the results (one per index tensor of a last argmax/argmin)."""
        reduced = [x for _, ids in self.clauses for x in ids]
        axes = tuple(x for x in self.full.axes if x not in reduced)
        arg = self.clauses and self.clauses[-1][0] in ARG_REDUCERS
        count = len(self.clauses[-1][1]) if arg else 1
        dtype = self.dtype
        for reducer, _ in self.clauses:
            dtype = clause_dtype(reducer, dtype)
        statements = []
        self.results = []
        for _ in range(count):
            var = self.names.fresh("r")
            statements.append(ir.Assign(var, _empty(tuple(self.sizes[x] for x in axes), dtype), "result, filled chunk by chunk"))
            self.results.append(Value(var, axes))
        return statements

    def combine(self, value: Value, chunk_sizes: dict) -> list:
        statements, values = apply_clauses(value, self.clauses, chunk_sizes, self.dtype, self.names)
        for result, rows in zip(self.results, values):
            target = _slice(result, self.axis, self.i, chunk_sizes[self.axis])
            statements.append(ir.Assign(target, ir.Var(rows.var), f"write rows of {self.axis}"))
        return statements

    def finish(self) -> tuple[list, list[Value]]:
        return [], self.results


class _RunningReduction(_ChunkLoop):
    """Chunks of an axis of the first clause: each chunk's max/min/logsumexp/sum/mean joins a running one."""

    mode = "reduce"

    def __init__(self, *args):
        super().__init__(*args)
        self.reducer, self.ids = self.clauses[0]
        self.rest = tuple(x for x in self.full.axes if x not in self.ids)  # the axes the clause keeps
        self.rest_shape = tuple(self.sizes[x] for x in self.rest)

    def setup(self) -> list:
        self.acc = self.names.fresh("acc")
        return [_running_start(self.acc, self.reducer, self.rest_shape, self.dtype)]

    def combine(self, value: Value, chunk_sizes: dict) -> list:
        return _fold(self.acc, self.reducer, value, self.ids, self.dtype, self.names, self.piece)

    def finish(self) -> tuple[list, list[Value]]:
        statements = []
        if self.reducer == "mean":
            count = ir.Const(_numel(self.sizes, self.ids))
            statements.append(ir.Assign(self.acc, ir.BinOp("/", ir.Var(self.acc), count), "mean = sum / count"))
        return statements, [Value(self.acc, self.rest)]

    def remaining_clauses(self):
        return self.clauses[1:]

    def dtype_after_loop(self) -> torch.dtype:
        return clause_dtype(self.reducer, self.dtype)


def _running_start(var: str, reducer: str, shape, dtype: torch.dtype) -> ir.Assign:
    """``var`` = the identity of a running max/min/logsumexp/sum of ``shape``."""
    if reducer in ("max", "min"):
        return ir.Assign(var, _full(shape, _extreme(dtype, reducer == "max"), dtype), f"running {reducer}")
    if reducer == "logsumexp":
        return ir.Assign(var, _full(shape, float("-inf"), clause_dtype("logsumexp", dtype)), "running logsumexp")
    return ir.Assign(var, _zeros(shape, dtype), "running sum")


def _fold(acc: str, reducer: str, value: Value, ids, dtype: torch.dtype, names: Names, piece: str) -> list:
    """Reduce ``value`` over ``ids`` and fold the result into the running ``acc``."""
    dims = tuple(value.axes.index(x) for x in ids)
    source = ir.Var(value.var)
    part = names.fresh("p")
    if reducer in MERGE_CALLS:
        partial = ir.Call(REDUCE_CALLS[reducer], (source, ir.Const(dims[0] if len(dims) == 1 else dims)))
        merge = ir.Call(MERGE_CALLS[reducer], (ir.Var(acc), ir.Var(part)))
    else:  # sum, mean
        partial = _sum(source, dims, dtype)
        merge = ir.BinOp("+", ir.Var(acc), ir.Var(part))
    return [
        ir.Assign(part, partial, f"{reducer} of this {piece}"),
        ir.Assign(acc, merge, "combine"),
    ]


class _WriteRowsInTiles(_WriteRows):
    """Chunks of the row axis of a 2-D product whose one clause, a max/min/logsumexp, reduces its
    column axis (``q d, k d -> q | logsumexp k``): each chunk of rows runs over tiles of columns,
    folds each tile's reduction into a running one of its rows, then fills those rows of the result.
    Unlike full-width chunks, a tile and the chunk's rows of the left operand stay in cache."""

    @staticmethod
    def applies(loop: "_ChunkLoop") -> bool:
        if not isinstance(loop, _WriteRows) or loop.model.kind != "cpu" or loop.options.compiled:
            return False
        if loop.probe is None or len(loop.clauses) != 1:
            return False
        reducer, ids = loop.clauses[0]
        if reducer not in MERGE_CALLS or len(ids) != 1 or not loop.dtype.is_floating_point:
            return False
        return loop.probe.axes == (loop.axis, ids[0]) and loop.sizes[ids[0]] > TILE_WIDTH

    def _tile_columns(self, budget) -> tuple[Optional[str], int]:
        (reducer, (column,)) = self.clauses[0]
        one_row = self.dtype.itemsize * TEMPORARIES[reducer]  # bytes per column of a one-row tile
        return column, int(max(1, min(TILE_WIDTH, budget // one_row)))

    def before_chunk(self, length: int) -> list:
        """Start the chunk's rows' running reduction."""
        self.running = self.names.fresh("acc")
        return [_running_start(self.running, self.clauses[0][0], (length,), self.dtype)]

    def combine(self, value: Value, chunk_sizes: dict) -> list:
        return _fold(self.running, self.clauses[0][0], value, (self.column,), self.dtype, self.names, self.piece)

    def after_chunk(self, length: int) -> list:
        """Fill the chunk's rows of the result."""
        (result,) = self.results
        return [ir.Assign(_slice(result, self.axis, self.i, length), ir.Var(self.running), f"write rows of {self.axis}")]


class _RunningArgReduction(_RunningReduction):
    """Like ``_RunningReduction`` for argmax/argmin: keeps the running best and its flat index.

    The chunked axis is the first of the clause's axes, so a chunk's flat
    index is offset by ``i`` times the size of the others.  Tiles do not come
    in flat order, so there each tile's extreme and where it lies are kept, and
    the first of the best is picked after the loops (``_tile_*``).
    """

    @property
    def extreme(self) -> str:
        return self.reducer[3:]  # "max" or "min"

    def setup(self) -> list:
        if self.column is not None:
            return self._tile_setup()
        self.acc = self.names.fresh("acc")
        self.index = self.names.fresh("idx")
        start = _full(self.rest_shape, _extreme(self.dtype, self.reducer == "argmax"), self.dtype)
        return [
            ir.Assign(self.acc, start, f"running {self.extreme}"),
            ir.Assign(self.index, _zeros(self.rest_shape, torch.int64), "its flat index"),
        ]

    def combine(self, value: Value, chunk_sizes: dict) -> list:
        if self.column is not None:
            return self._tile_combine(value, chunk_sizes)
        layout = tuple(value.axes.index(x) for x in self.rest + self.ids)
        moved = ir.permute(ir.Var(value.var), layout)
        stride = _numel(self.sizes, self.ids[1:])  # flat positions per row of the chunked axis
        if len(self.ids) == 1:
            statements, part, row = [], self.names.fresh("p"), None
            found = ir.Method(ir.reshape(moved, self.rest_shape + (-1,)), self.extreme, (ir.Const(-1),))
            statements.append(ir.Assign(part, found, f"{self.extreme} of this chunk and where"))
        else:
            statements, part, row = self._best_row(value, moved, chunk_sizes[self.ids[0]], stride)
        values, indices = ir.Attr(ir.Var(part), "values"), ir.Attr(ir.Var(part), "indices")
        best, index = ir.Var(self.acc), ir.Var(self.index)
        beats = ">" if self.reducer == "argmax" else "<"
        take = self.names.fresh("take")
        nan = ir.BinOp("&", ir.BinOp("!=", values, values), ir.BinOp("==", best, best))
        first_row = self.i if row is None else ir.BinOp("+", self.i, ir.Var(row))
        offset = ir.BinOp("+", indices, ir.BinOp("*", first_row, ir.Const(stride)))
        return statements + [
            ir.Assign(take, ir.BinOp("|", ir.BinOp(beats, values, best), nan), "strictly better (ties keep the first; NaN wins)"),
            ir.Assign(self.acc, ir.Call("torch.where", (ir.Var(take), values, best))),
            ir.Assign(self.index, ir.Call("torch.where", (ir.Var(take), offset, index)), "chunk offset"),
        ]

    # --- tiles: each tile's extreme, its row and its column, in a grid of tiles

    def _tile_setup(self) -> list:
        self.acc, self.tile_row, self.tile_column = self.names.fresh("best"), self.names.fresh("row"), self.names.fresh("col")
        grid = self.grid
        return [
            ir.Assign(self.acc, _empty(grid, self.dtype), f"each tile's {self.extreme}"),
            ir.Assign(self.tile_row, _empty(grid, torch.int64), "the first row of the tile holding it"),
            ir.Assign(self.tile_column, _empty(grid, torch.int64), "its first place in that row"),
        ]

    def _tile_combine(self, value: Value, chunk_sizes: dict) -> list:
        """The tile's extreme in cheap passes: each row's, the first row holding the tile's, the
        first place in that row (row-major order: the tile's first flat position, NaN included)."""
        cell = (ir.BinOp("//", self.i, ir.Const(self.rows)), ir.BinOp("//", self.j, ir.Const(self.width)))
        rows, part = self.names.fresh("r"), self.names.fresh("p")
        row = ir.Attr(ir.Var(part), "indices")
        picked = ir.Call("torch.take_along_dim", (ir.Var(value.var), ir.reshape(row, (1, 1))), (("dim", ir.Const(-2)),))
        return [
            ir.Assign(rows, ir.Call(REDUCE_CALLS[self.extreme], (ir.Var(value.var), ir.Const(-1))), f"{self.extreme} of each row of this tile"),
            ir.Assign(part, ir.Method(ir.Var(rows), self.extreme, (ir.Const(-1),)), f"the tile's {self.extreme} and the first row holding it"),
            ir.Assign(ir.Index(ir.Var(self.acc), cell), ir.Attr(ir.Var(part), "values")),
            ir.Assign(ir.Index(ir.Var(self.tile_row), cell), row),
            ir.Assign(ir.Index(ir.Var(self.tile_column), cell), ir.Method(picked, self.reducer, ()), "its first place in that row"),
        ]

    def _tile_finish(self) -> list:
        """The first flat position among the tiles holding the extreme (NaN wins, as in torch.max)."""
        count, width = self.sizes[self.column], self.width
        device = (("device", ir.Attr(ir.Var(DEVICE_OF), "device")),)
        starts = ir.Call("torch.arange", (ir.Const(0), ir.Const(self.total), ir.Const(self.rows)), device)
        columns = ir.Call("torch.arange", (ir.Const(0), ir.Const(count), ir.Const(width)), device)
        first_rows = ir.BinOp("+", ir.Index(starts, (ir.SLICE, None)), ir.Var(self.tile_row))
        flat, best, hit = self.names.fresh("flat"), self.names.fresh("m"), self.names.fresh("hit")
        self.index = self.names.fresh("idx")
        values = ir.Var(self.acc)
        return [
            ir.Assign(flat, ir.BinOp("+", ir.BinOp("+", ir.BinOp("*", first_rows, ir.Const(count)), columns), ir.Var(self.tile_column)), "each tile's flat index"),
            ir.Assign(best, ir.Call(REDUCE_CALLS[self.extreme], (values, ir.Const((0, 1)))), f"the {self.extreme} over all tiles"),
            ir.Assign(hit, ir.BinOp("|", ir.BinOp("==", values, ir.Var(best)), ir.BinOp("!=", values, values)), "the tiles holding it (NaN wins)"),
            ir.Assign(self.index, ir.Method(ir.Call("torch.where", (ir.Var(hit), ir.Var(flat), ir.Const(self.total * count))), "amin", ()), "the first of them"),
        ]

    def _best_row(self, value: Value, moved: ir.Expr, length: int, width: int) -> tuple[list, str, str]:
        """The chunk's extreme and its flat index in two cheap passes instead of one slow one.

        torch's max-with-index kernel is many times slower than ``amax``; so take
        each row's extreme with ``amax``, the first row holding the chunk's
        extreme, then the first position in that row.  Row-major order makes
        that the first flat position, as ``flat.max(-1)`` would give, NaN included.
        Returns (statements, the (values, indices) variable, the row variable).
        """
        rows, row, part = self.names.fresh("r"), self.names.fresh("row"), self.names.fresh("p")
        if len(self.ids) == 2 and value.axes == self.rest + self.ids:
            grid = ir.Var(value.var)  # already rows by columns
        else:
            grid = ir.reshape(moved, self.rest_shape + (length, width))
        reduce_rows = REDUCE_CALLS[self.extreme]
        picked = ir.Call("torch.take_along_dim", (grid, ir.reshape(ir.Var(row), self.rest_shape + (1, 1))), (("dim", ir.Const(-2)),))
        found = ir.Method(ir.reshape(picked, self.rest_shape + (width,)), self.extreme, (ir.Const(-1),))
        return [
            ir.Assign(rows, ir.Call(reduce_rows, (grid, ir.Const(-1))), f"{self.extreme} of each row of this {self.piece}"),
            ir.Assign(row, ir.Method(ir.Var(rows), self.reducer, (ir.Const(-1),)), f"the first row holding the {self.piece}'s {self.extreme}"),
            ir.Assign(part, found, f"{self.extreme} of that row and where"),
        ], part, row

    def finish(self) -> tuple[list, list[Value]]:
        statements = self._tile_finish() if self.column is not None else []
        if len(self.ids) == 1:
            return statements, [Value(self.index, self.rest)]
        more, values = _index_per_axis(self.names.fresh(), self.index, self.ids, self.rest, self.sizes, self.names)
        return statements + more, values


class _PartialSums(_ChunkLoop):
    """Chunks of a contracted axis: the chunks' partial sums are added up."""

    mode = "sum"

    def setup(self) -> list:
        self.acc = self.names.fresh("acc")
        shape = tuple(self.sizes[x] for x in self.full.axes)
        return [ir.Assign(self.acc, _zeros(shape, self.dtype), "running sum")]

    def combine(self, value: Value, chunk_sizes: dict) -> list:
        added = ir.BinOp("+", ir.Var(self.acc), ir.Var(value.var))
        return [ir.Assign(self.acc, added, "add this chunk's partial sum")]

    def finish(self) -> tuple[list, list[Value]]:
        return [], [Value(self.acc, self.full.axes)]


# --- screened extremes ---------------------------------------------------------------------------
# A max/min/argmax/argmin of a whole large 2-D product, on a CPU whose bfloat16 GEMM is fast (AMX
# tiles or AVX512-BF16 instructions), runs in two passes.  The screen computes every product from
# the inputs rounded to bfloat16, in tiles, and keeps each row's largest value.  A proven bound on
# |screened - float32| then names the rows that can hold the result, and the float32 product of
# those rows alone decides it, exactly as the tiles would.  When the bound cannot be trusted (NaN
# or inf in the inputs, products near the float32 limit), or every product is negative, every row
# is kept and the exact pass does it all.

# screen only where a bfloat16 GEMM runs at least this much faster (the cost model then decides):
# measured on a CPU whose bfloat16 GEMM ran 2.2x faster, the screen took 293 ms against 722 ms for
# the float32 product alone, so half again as fast leaves a clear margin for the screen's extra ops
SCREEN_MIN_SPEEDUP = 1.5
BFLOAT16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
FLOAT32_UNIT = 2.0**-24
FLUSH = 2.0**-124  # covers subnormals a bfloat16 GEMM may flush to zero: inputs, products, output
SCREEN_OVERFLOW = 1e38  # |products| below this are finite in bfloat16 too (its largest is 3.39e38)
NO_BITS = -32768  # int16 bits of -0.0: below every bit pattern of a value >= 0


def screen_error(depth: int) -> float:
    """Relative bound on |screened - float32| for one product over ``depth`` terms, as a multiple of
    |a| |b| (which bounds the sum of |a_k b_k|, by Cauchy-Schwarz).

    Rounding both inputs to bfloat16 costs 2u + u^2 (u = 2^-8); the screen's products are exact in
    float32 and summed there (gamma = depth * 2^-24 / (1 - depth * 2^-24) of the terms); its output
    is rounded to bfloat16 (u); the float32 product being compared carries its own gamma.  A margin
    of 1.5 covers computing the bound itself in float64, and a GEMM that would round its output
    toward zero (2u) rather than to nearest.
    """
    gamma = depth * FLOAT32_UNIT / (1 - depth * FLOAT32_UNIT)
    u = BFLOAT16_UNIT
    return 1.5 * ((2 * u + u * u) + gamma * (1 + u) ** 2 + u * (1 + u) ** 2 * (1 + gamma) + gamma)


def _plain_matmul(expr) -> bool:
    """``torch.matmul(x, y)`` of plain names or their ``.mT``: nothing baked in from a size."""
    plain = lambda e: isinstance(e, ir.Var) or (isinstance(e, ir.Attr) and e.name == "mT" and isinstance(e.obj, ir.Var))
    return isinstance(expr, ir.Call) and expr.func == "torch.matmul" and all(plain(e) for e in expr.args) and not expr.kwargs


class _ScreenedExtreme(_ChunkLoop):
    """max/min/argmax/argmin of a whole 2-D product: a bfloat16 screen in tiles picks the rows,
    then float32 over those rows alone (see the notes above ``screen_error``)."""

    mode = "reduce"

    def __init__(self, *args):
        super().__init__(*args)
        self.reducer, self.ids = self.clauses[0]
        self.extreme = self.reducer[-3:]  # "max" or "min"
        self.rows_of, self.columns_of = (self.a, self.b) if self.axis in self.a.axes else (self.b, self.a)
        (self.depth_axis,) = [x for x in self.rows_of.axes if x != self.axis]
        self.depth = self.sizes[self.depth_axis]
        self.width_total = self.sizes[self.column]
        self.exact_rows = int(max(1, min(self.total, self.budget // (2 * self.width_total * self.dtype.itemsize))))

    @staticmethod
    def applies(loop: _ChunkLoop) -> bool:
        """Whether ``loop`` (tiles of a whole 2-D product) can be screened on its device."""
        model = loop.model
        if loop.column is None or loop.options.compiled or loop.dtype != torch.float32:
            return False
        if model.kind != "cpu" or model.screen_rate < SCREEN_MIN_SPEEDUP * model.gemm_rate:
            return False
        if torch.device(loop.bound.device).type != "cpu":  # e.g. meta tensors: no data to screen
            return False
        shared = set(loop.a.axes) & set(loop.b.axes)
        if len(loop.a.axes) != 2 or len(loop.b.axes) != 2 or len(shared) != 1:
            return False
        return loop.sizes[next(iter(shared))] * FLOAT32_UNIT < 0.5 and _plain_matmul(loop.probe.expr)

    # --- sizing and price

    def memory(self) -> float:
        """Peak extra bytes: bfloat16 copies, the screen's tile, per-row vectors, one exact chunk."""
        copies = (_numel(self.sizes, self.rows_of.axes) + _numel(self.sizes, self.columns_of.axes)) * 2
        tile = self.rows * self.width * 2
        per_row = self.total * (2 + 4 + 4 * 8 + 1 + 8)  # bits, lengths, float64 bound terms, mask, row indices
        exact = self.exact_rows * self.width_total * self.dtype.itemsize * 2  # the product and a row's pick
        return copies + tile + per_row + exact

    def estimate(self):
        """The screen's GEMM priced at the bfloat16 rate, plus one chunk of exact rows."""
        full = self.full.estimate
        exact = 2.0 * self.exact_rows * self.width_total * self.depth
        screen = full.gemm_flops * self.model.gemm_rate / self.model.screen_rate
        ops = math.prod(self.grid) * (full.ops + 2) + 24
        return replace(full, flops=full.flops + exact, gemm_flops=screen + exact, bytes=full.bytes / 2, ops=ops, memory=self.memory())

    # --- the code

    def build(self):
        setup, screened = self._screen_setup()
        statements = setup + self.loops(screened) + self._candidates() + self._exact_pass()
        finish, results = self._results()
        chunking = _Chunking(self.axis, self.mode, self.rows, self.column, self.width, screened=True)
        return statements + finish, results, self.estimate(), self.inner, chunking

    def _screen_setup(self) -> tuple[list, tuple[Value, Value]]:
        """The bfloat16 copies (the screen's operands, also returned), its tile buffer and the
        per-row maxima."""
        statements = []
        operands = []
        for value in (self.a, self.b):
            var = self.names.fresh("h")
            rounded = ir.Method(ir.Method(ir.Var(value.var), "detach"), "to", (ir.Const(torch.bfloat16),))
            comment = f"{value.var} rounded to bfloat16, for the screen"
            if value is self.columns_of and self.extreme == "min":
                rounded, comment = ir.Method(rounded, "neg"), f"{value.var} rounded to bfloat16 and negated: the screen looks for a max"
            statements.append(ir.Assign(var, rounded, comment))
            operands.append(Value(var, value.axes))
        self.buffer = self.names.fresh("buf")
        self.top = self.names.fresh("top")
        size = _human_bytes(self.rows * self.width * 2)
        bits = ir.Call("torch.full", (ir.Const((self.total,)), ir.Const(NO_BITS)), _on_device(torch.int16))
        return statements + [
            ir.Assign(self.buffer, _empty((self.rows, self.width), torch.bfloat16), f"screen tile buffer, {size}"),
            ir.Assign(self.top, bits, "each row's largest screened value, as int16 bits"),
        ], tuple(operands)

    def _into_buffer(self, lowered, chunk_sizes: dict) -> ir.Expr:
        expr = lowered.expr  # the screen's inputs never need gradients: always write into the buffer
        return ir.Call(expr.func, expr.args, (("out", self._buffer_part(chunk_sizes)),))

    def combine(self, value: Value, chunk_sizes: dict) -> list:
        """The screen's tile: each row's largest int16 bit pattern, which is its max when that is >= 0
        (bfloat16 bits order like int16 for values >= 0, and a fast integer max reads them)."""
        largest = self.names.fresh("r")
        bits = ir.Method(ir.Var(value.var), "view", (ir.Const(torch.int16),))
        target = _slice(Value(self.top, (self.axis,)), self.axis, self.i, chunk_sizes[self.axis])
        return [
            ir.Assign(largest, ir.Call("torch.amax", (bits, ir.Const(value.axes.index(self.column)))), "each row's largest bits in this tile"),
            ir.Assign(target, ir.Call("torch.maximum", (target, ir.Var(largest)))),
        ]

    def _norm(self, value: Value, axis: str, longest: bool = False) -> ir.Expr:
        """Each row's length along ``axis`` (the longest, if ``longest``), rounded up in float64.

        Computed in float32 (no float64 copy of the input): the sum of squares is off by at most
        gamma of itself plus the squares that underflow (``depth`` * 2^-126 in all), and the
        square root by an ulp; so length * (1 + (depth + 2) * 2^-23) + sqrt(depth) * 2^-63 bounds
        the true one.  A NaN, or a square past float32's range (inf), makes the screen untrusted.
        """
        detached = ir.Method(ir.Var(value.var), "detach")
        norms = ir.Call("torch.linalg.vector_norm", (detached,), (("dim", ir.Const(value.axes.index(axis))),))
        if longest:
            norms = ir.Method(norms, "amax", ())
        scaled = ir.BinOp("*", ir.Method(norms, "to", (ir.Const(torch.float64),)), ir.Const(1 + (self.depth + 2) * 2.0**-23))
        return ir.BinOp("+", scaled, ir.Const(math.sqrt(self.depth) * 2.0**-63))

    def _candidates(self) -> list:
        """The rows whose screened max plus the bound reaches the best screened max minus its bound."""
        up, na, nb, err, low, keep = (self.names.fresh(p) for p in ("up", "na", "nb", "err", "low", "keep"))
        self.kept = self.names.fresh("rows")
        top = ir.Var(self.top)
        positive = ir.BinOp(">=", top, ir.Const(0))
        decoded = ir.Method(ir.Method(top, "view", (ir.Const(torch.bfloat16),)), "to", (ir.Const(torch.float64),))
        relative = ir.BinOp("*", ir.Var(na), ir.BinOp("*", ir.Const(screen_error(self.depth)), ir.Var(nb)))
        tiny = ir.BinOp("*", ir.Const(FLUSH), ir.BinOp("+", ir.BinOp("*", ir.Const(math.sqrt(self.depth)), ir.BinOp("+", ir.Var(na), ir.Var(nb))), ir.Const(float(self.depth + 1))))
        trusted = ir.BinOp("<", ir.BinOp("*", ir.Method(ir.Var(na), "amax", ()), ir.Var(nb)), ir.Const(SCREEN_OVERFLOW))
        reaches = ir.BinOp(">=", ir.BinOp("+", ir.Var(up), ir.Var(err)), ir.Var(low))
        which = "max" if self.extreme == "max" else "max of the negated product"
        return [
            ir.Assign(up, ir.Call("torch.where", (positive, decoded, ir.Const(0.0))), f"each row's screened {which} (a row of negatives: at most 0)"),
            ir.Assign(na, self._norm(self.rows_of, self.depth_axis), f"length of each row of {self.rows_of.var} along {self.depth_axis}"),
            ir.Assign(nb, self._norm(self.columns_of, self.depth_axis, longest=True), f"the longest of {self.columns_of.var} along {self.depth_axis}"),
            ir.Assign(err, ir.BinOp("+", relative, tiny), "bound on |screened - float32| in each row"),
            ir.Assign(low, ir.Method(ir.Call("torch.where", (positive, ir.BinOp("-", ir.Var(up), ir.Var(err)), ir.Const(float("-inf")))), "amax", ()), f"the float32 {self.extreme} is at least this far out"),
            ir.Assign(keep, ir.BinOp("|", reaches, ir.Call("torch.logical_not", (trusted,))), "rows that can hold it (all, if the screen could overflow or saw NaN/inf)"),
            ir.Assign(self.kept, ir.Index(ir.Call("torch.nonzero", (ir.Var(keep),)), (ir.SLICE, 0)), "their indices, in order"),
        ]

    def _exact_pass(self) -> list:
        """float32 over the kept rows, ``exact_rows`` at a time: the running extreme (and where)."""
        arg = self.reducer in ARG_REDUCERS
        self.acc = self.names.fresh("best" if arg else "acc")
        start = _full((), _extreme(self.dtype, self.extreme == "max"), self.dtype)
        setup = [ir.Assign(self.acc, start, f"running {self.extreme}")]
        if arg:
            self.index = self.names.fresh("idx")
            setup.append(ir.Assign(self.index, _zeros((), torch.int64), "its flat index among the kept rows"))
        chunk = self.names.fresh("c")
        picked = ir.Index(ir.Var(self.kept), (ir.Range(self.i, ir.BinOp("+", self.i, ir.Const(self.exact_rows))),))
        select = ir.Call("torch.index_select", (ir.Var(self.rows_of.var), ir.Const(self.rows_of.axes.index(self.axis)), picked))
        body = [ir.Assign(chunk, select, f"kept rows of {self.rows_of.var}")]
        parts = [Value(chunk, v.axes) if v is self.rows_of else v for v in (self.a, self.b)]
        chunk_sizes = dict(self.sizes, **{self.axis: self.exact_rows})
        lowered = _lower(self.inner, parts[0], parts[1], self.keep, chunk_sizes, self._axis_first, self.dtype, self.model, self.names, False)
        comment = f"{self.inner}: {_describe([self.a.axes, self.b.axes], lowered.axes)} for these rows, in float32"
        var, statements = assign_result(lowered, comment, self.names, "s")
        body += list(statements) + (self._exact_arg(var) if arg else self._exact_value(var))
        stop = ir.Index(ir.Attr(ir.Var(self.kept), "shape"), (0,))
        loop = ir.Loop("i", 0, stop, self.exact_rows, tuple(body), f"exact pass: up to {self.exact_rows} kept rows at a time")
        return setup + [loop]

    def _exact_value(self, var: str) -> list:
        part = self.names.fresh("p")
        return [
            ir.Assign(part, ir.Call(REDUCE_CALLS[self.extreme], (ir.Var(var), ir.Const((0, 1)))), f"{self.extreme} of these rows"),
            ir.Assign(self.acc, ir.Call(MERGE_CALLS[self.extreme], (ir.Var(self.acc), ir.Var(part))), "combine"),
        ]

    def _exact_arg(self, var: str) -> list:
        """Each row's extreme, the first row holding the chunk's, the first place in that row;
        a later chunk wins only when strictly better (NaN wins), so the first flat index stays."""
        rows, row, part, take = (self.names.fresh(p) for p in ("r", "row", "p", "take"))
        width = self.width_total
        picked = ir.Call("torch.take_along_dim", (ir.Var(var), ir.reshape(ir.Var(row), (1, 1))), (("dim", ir.Const(-2)),))
        values, indices = ir.Attr(ir.Var(part), "values"), ir.Attr(ir.Var(part), "indices")
        best = ir.Var(self.acc)
        beats = ">" if self.extreme == "max" else "<"
        nan = ir.BinOp("&", ir.BinOp("!=", values, values), ir.BinOp("==", best, best))
        offset = ir.BinOp("+", indices, ir.BinOp("*", ir.BinOp("+", self.i, ir.Var(row)), ir.Const(width)))
        return [
            ir.Assign(rows, ir.Call(REDUCE_CALLS[self.extreme], (ir.Var(var), ir.Const(-1))), f"{self.extreme} of each row"),
            ir.Assign(row, ir.Method(ir.Var(rows), self.reducer, (ir.Const(-1),)), f"the first row holding these rows' {self.extreme}"),
            ir.Assign(part, ir.Method(ir.reshape(picked, (width,)), self.extreme, (ir.Const(-1),)), f"{self.extreme} of that row and where"),
            ir.Assign(take, ir.BinOp("|", ir.BinOp(beats, values, best), nan), "strictly better (ties keep the first; NaN wins)"),
            ir.Assign(self.acc, ir.Call("torch.where", (ir.Var(take), values, best))),
            ir.Assign(self.index, ir.Call("torch.where", (ir.Var(take), offset, ir.Var(self.index))), "flat index among the kept rows"),
        ]

    def _results(self) -> tuple[list, list[Value]]:
        """Statements after the exact pass, and the result values (an argmax's row maps back
        from its place among the kept rows)."""
        if self.reducer not in ARG_REDUCERS:
            return [], [Value(self.acc, ())]
        row, column = self.names.fresh("t"), self.names.fresh("t")
        width = ir.Const(self.width_total)
        return [
            ir.Assign(row, ir.Index(ir.Var(self.kept), (ir.BinOp("//", ir.Var(self.index), width),)), f"index along {self.axis}"),
            ir.Assign(column, ir.BinOp("%", ir.Var(self.index), width), f"index along {self.column}"),
        ], [Value(row, ()), Value(column, ())]


def chunked(a: Value, b: Value, clauses, bound: Bound, keep, sizes, rank, model, options, names, budget):
    """The last contraction and the clauses, in chunks of one axis.

    Returns (statements, result values, estimate, inner lowering, chunking) or
    None when chunks make no sense: an empty step costs nothing in full, and a
    loop that never runs would leave its result cut off from autograd.
    """
    if _numel(sizes, set(a.axes) | set(b.axes)) == 0:
        return None
    choice = _chunk_axis(a, b, clauses, bound.output_axes, keep, sizes)
    if choice is None:
        return None
    axis, mode = choice
    if mode == "output":
        loop_class = _WriteRows
    elif mode == "sum":
        loop_class = _PartialSums
    elif clauses[0][0] in ARG_REDUCERS:
        loop_class = _RunningArgReduction
    else:
        loop_class = _RunningReduction
    arguments = (a, b, clauses, bound, keep, sizes, rank, model, options, names, axis, budget)
    loop = loop_class(*arguments)
    if _ScreenedExtreme.applies(loop):
        screened = _ScreenedExtreme(*arguments)
        fits = screened.memory() <= (options.memory_limit or DEFAULT_MEMORY_LIMIT)
        if fits and model.seconds(screened.estimate()) < model.seconds(loop.estimate()):
            loop = screened
    elif _WriteRowsInTiles.applies(loop):
        loop = _WriteRowsInTiles(*arguments[:-1], min(budget, ROW_TILE_BYTES))
    return loop.build()


def _spans(total: int, step: int) -> list[tuple[int, int, int]]:
    """(start, stop, step) of the loop over whole steps, then of the shorter last one, if any."""
    tail = total % step
    full_stop = total - tail
    return [(start, stop, length) for start, stop, length in ((0, full_stop, step), (full_stop, total, tail)) if length > 0 and stop > start]


def _human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


