"""Chunked steps in code: one ``for`` loop per cut axis, and what each mode does in it.

Python's slicing clamps the last, shorter chunk (``x0[i:i + 512]``), and every
size the body needs is read from the chunk itself (``chunk.shape[0]``), so one
loop body serves every chunk.  Modes: ``rows`` (chunks of an output axis: every
clause runs on the chunk, which fills rows of the result), ``row-tiles`` (the
same, each chunk's rows reduced across tiles of columns), ``running`` (chunks
of a clause's axis fold into a running max/min/logsumexp/sum), ``running-arg``
(the same for an argmax/argmin: the running best and its flat index) and
``partial-sums`` (chunks of a contracted axis added up).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from . import ir
from .chunking import GRAD_FLAG, Chunking, Job, chunk_step, human_bytes
from .clauses import (
    ARG_REDUCERS,
    REDUCE_CALLS,
    apply_clauses,
    clause_dtype,
    extreme,
    finish_running,
    fold,
    fold_counting,
    index_per_axis,
    no_ties_at_nan,
    running_start,
    strictly_better,
)
from .contraction import Context, Value, new_tensor, numel, rows_of, sized
from .lowerings import MATMUL, REGISTRY

# --- emitting: one loop per cut axis ------------------------------------------------------------


class Loops:
    """Statements of a chunked step: cut operands, loop over chunks and tiles, contract each."""

    def __init__(self, chunking: Chunking, job: Job, context: Context, flagged: bool = True, counting: bool = False):
        self.chunking = chunking
        # flagged: the code checks whether autograd records before writing into out= buffers (not
        # inside an autograd function, whose forward never records).  counting: a running max/min
        # also counts the positions that tie for it (what its backward splits the gradient by)
        self.flagged = flagged
        self.counting = counting
        self.job = job
        self.context = context
        self.names = context.names
        self.chunk = chunk_step(chunking)
        self.axes = REGISTRY[chunking.inner].result_axes(self.chunk)  # each chunk's result axes
        self.buffer: str | None = None
        self.lengths: dict[str, ir.Expr] = {}  # cut axis -> its length in this chunk, read from the chunk
        self.temporaries: list[str] = []  # chunk-sized results not written into the buffer

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
                cuts.append(ir.Assign(cut, rows_of(value, axis, start, step), f"{role} of {axis}"))
                self.lengths[axis] = ir.shape_of(cut, value.axes.index(axis))
                value = Value(cut, value.axes)
            parts.append(value)
        holder = next(v for v in values if axis in v.axes)
        stop = ir.shape_of(holder.var, holder.axes.index(axis))
        comment = f"{role}s of {length} along {axis}"
        made = len(self.temporaries)
        statements = cuts + body(start, parts)
        if self.temporaries[made:]:  # without a reused buffer, free this chunk's product before the next
            statements.append(ir.Delete(tuple(self.temporaries[made:])))
            del self.temporaries[made:]
        return [ir.Loop(var, 0, stop, step, tuple(statements), comment)]

    def buffer_setup(self, dtype: torch.dtype | None = None, grad: bool = True) -> list:
        """The reused out= buffer of the chunk's matmul (and the flag that turns it off under autograd)."""
        if not self.chunking.buffered:
            return []
        dtype = dtype or self.chunk.dtype
        self.buffer = self.names.fresh("buffer")
        shape = tuple(self.chunk.sizes[x] for x in self.axes)
        size = human_bytes(math.prod(shape) * dtype.itemsize)
        statements = [
            ir.Assign(self.buffer, new_tensor("torch.empty", sized(shape, self.size_tag()), dtype), f"{self.piece} buffer, {size}")
        ]
        if grad and self.flagged:
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

    def contract(self, parts: list[Value], grad: bool = True) -> tuple[list, Value]:
        """One chunk (tile) of the contraction; returns (statements, its value)."""
        step = replace(self.chunk, a=parts[0], b=parts[1])
        lowered = REGISTRY[self.chunking.inner].emit(step, self.context)
        expr = lowered.expr
        if self.buffer is not None and isinstance(expr, ir.Call):
            flag = grad and self.flagged
            out = ir.IfExp(ir.Var(GRAD_FLAG), ir.Const(None), self.buffer_part()) if flag else self.buffer_part()
            expr = ir.Call(expr.func, expr.args, (("out", out),))
        comment = f"{self.chunking.inner}: {self.chunking.step.describe(lowered.axes)} for this {self.piece}"
        if lowered.setup and isinstance(expr, ir.Var):
            self.temporaries.append(expr.name)
            return list(lowered.setup), Value(expr.name, lowered.axes)
        var = self.names.fresh("scores" if self.chunking.inner == MATMUL else "product")
        if self.buffer is None:
            self.temporaries.append(var)
        return [*lowered.setup, ir.Assign(var, expr, comment)], Value(var, lowered.axes)

    def over_rows(self, values, body: Callable[[ir.Expr, list[Value]], list]) -> list:
        return self.loop(self.chunking.axis, "i", self.chunking.rows, values, body, "chunk")

    def over_tiles(self, values, body: Callable[[ir.Expr, list[Value]], list]) -> list:
        assert self.chunking.column is not None
        return self.loop(self.chunking.column, "j", self.chunking.width, values, body, "tile")

    def operands(self) -> list[Value]:
        return [self.chunking.step.a, self.chunking.step.b]


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
    statements = loops.buffer_setup()
    results = [Value(names.fresh("result"), axes) for _ in range(len(job.clauses[-1][1]) if arg else 1)]
    statements += [ir.Assign(r.var, new_tensor("torch.empty", shape, dtype), "result, filled chunk by chunk") for r in results]
    rows = ir.Const(chunking.rows, loops.size_tag(chunking.axis))

    def body(start, parts):
        computed, value = loops.contract(parts)
        more, values = apply_clauses(value, job.clauses, loops.chunk.sizes, chunking.step.dtype, names, loops.chunk.free)
        writes = [
            ir.Assign(rows_of(r, chunking.axis, start, rows), ir.Var(v.var), f"write rows of {chunking.axis}")
            for r, v in zip(results, values, strict=True)
        ]
        return computed + more + writes

    return statements + loops.over_rows(loops.operands(), body), results


def _emit_row_tiles(loops: Loops) -> tuple[list, list[Value]]:
    """Chunks of rows, each reduced across tiles of columns into a running max/min/logsumexp of its
    rows, which then fill those rows of the result."""
    chunking, names = loops.chunking, loops.names
    reducer, (column,) = loops.job.clauses[0]
    dtype = chunking.step.dtype
    statements = loops.buffer_setup()
    elided = not chunking.cuts_rows
    results = [Value(names.fresh("result"), (chunking.axis,))]
    kinds = [(clause_dtype(reducer, dtype), "result")]
    if loops.counting:
        results.append(Value(names.fresh("ties"), (chunking.axis,)))
        kinds.append((torch.int64, "how many positions tie for each row's " + reducer))
    if not elided:
        shape = sized((chunking.total,), (chunking.axis,))
        for result, (kind, role) in zip(results, kinds, strict=True):
            statements.append(ir.Assign(result.var, new_tensor("torch.empty", shape, kind), f"{role}, filled chunk by chunk"))
    rows = ir.Const(chunking.rows, loops.size_tag(chunking.axis))

    def body(start, parts):
        accs = [r.var for r in results] if elided else [names.fresh("acc") for _ in results]
        length = loops.lengths[chunking.axis] if not elided else None
        shape = ir.Tuple((length,)) if length is not None else sized((chunking.total,), (chunking.axis,))
        inner = [running_start(accs[0], reducer, shape, dtype)]
        if loops.counting:
            inner.append(ir.Assign(accs[1], new_tensor("torch.zeros", shape, torch.int64), "running count of ties"))

        def tile(_, tile_parts):
            computed, value = loops.contract(tile_parts)
            if loops.counting:
                return computed + fold_counting(accs[0], accs[1], reducer, value, (column,), names, "tile")
            return computed + fold(accs[0], reducer, value, (column,), dtype, names, "tile")

        inner += loops.over_tiles(parts, tile)
        if loops.counting:
            inner.append(no_ties_at_nan(accs[0], accs[1]))
        if not elided:
            inner += [
                ir.Assign(rows_of(r, chunking.axis, start, rows), ir.Var(acc), f"write rows of {chunking.axis}")
                for r, acc in zip(results, accs, strict=True)
            ]
        return inner

    return statements + loops.over_rows(loops.operands(), body), results


def _emit_running(loops: Loops) -> tuple[list, list[Value]]:
    """Chunks (tiles) of a clause's axes, each reduced and folded into a running max/min/logsumexp/sum."""
    chunking, names = loops.chunking, loops.names
    reducer, ids = loops.job.clauses[0]
    dtype = chunking.step.dtype
    rest = tuple(x for x in loops.axes if x not in ids)
    statements = loops.buffer_setup()
    shape = sized(tuple(chunking.step.sizes[x] for x in rest), rest)
    accs = [names.fresh("acc")]
    statements.append(running_start(accs[0], reducer, shape, dtype))
    if loops.counting:
        accs.append(names.fresh("ties"))
        statements.append(ir.Assign(accs[1], new_tensor("torch.zeros", shape, torch.int64), "running count of ties"))

    def body(_, parts):
        if chunking.column is not None:
            return loops.over_tiles(parts, lambda __, tile: _contract_and_fold(loops, tile, accs, reducer, ids))
        return _contract_and_fold(loops, parts, accs, reducer, ids)

    statements += loops.over_rows(loops.operands(), body)
    count = ir.Const(numel(chunking.step.sizes, ids), frozenset(ids))
    statements += finish_running(accs[0], reducer, dtype, count)
    if loops.counting:
        statements.append(no_ties_at_nan(accs[0], accs[1]))
    return statements, [Value(acc, rest) for acc in accs]


def _contract_and_fold(loops: Loops, parts, accs: list[str], reducer: str, ids) -> list:
    computed, value = loops.contract(parts)
    # a whole chunk (up to the chunk budget) is the loop's own tensor, its buffer or a fresh
    # product: a logsumexp shifts it in place rather than make two more of its size; the row
    # tiles keep torch.logsumexp (their tiles are small and stay in cache)
    value = replace(value, owned=True)
    if loops.counting:
        return computed + fold_counting(accs[0], accs[1], reducer, value, ids, loops.names, loops.piece)
    return computed + fold(accs[0], reducer, value, ids, loops.chunking.step.dtype, loops.names, loops.piece)


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
    statements.append(
        ir.Assign(best, new_tensor("torch.full", rest_shape, dtype, extreme(dtype, reducer == "argmax")), f"running {reducer[3:]}")
    )
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
            found, first_row = (
                [ir.Assign(part, ir.Method(moved, self.extreme, (ir.Const(-1),)), f"{self.extreme} of this chunk and where")],
                start,
            )
        else:
            grid = ir.Method(moved, "flatten", (ir.Const(len(self.rest) + 1), ir.Const(-1))) if len(self.ids) > 2 else moved
            row = names.fresh("row")
            picked = ir.Call("torch.take_along_dim", (grid, ir.Index(ir.Var(row), (ir.ELLIPSIS, None, None))), (("dim", ir.Const(-2)),))
            found = [
                ir.Assign(
                    row,
                    ir.Method(ir.Call(REDUCE_CALLS[self.extreme], (grid, ir.Const(-1))), self.reducer, (ir.Const(-1),)),
                    f"the first row holding this chunk's {self.extreme}",
                ),
                ir.Assign(
                    part,
                    ir.Method(ir.Method(picked, "squeeze", (ir.Const(-2),)), self.extreme, (ir.Const(-1),)),
                    f"{self.extreme} of that row and where",
                ),
            ]
            first_row = ir.plus(start, ir.Var(row))
        values, indices = ir.Attr(ir.Var(part), "values"), ir.Attr(ir.Var(part), "indices")
        flat = ir.BinOp("+", indices, ir.BinOp("*", first_row, stride)) if not isinstance(first_row, ir.Const) else indices
        return computed + found + self._take(values, flat, tie_break=False)

    def tile(self, parts, i: ir.Expr, j: ir.Expr) -> list:
        loops, names = self.loops, self.loops.names
        computed, value = loops.contract(parts)
        scores: ir.Expr = ir.Var(value.var)
        if value.axes != self.ids:
            scores = ir.permute(scores, tuple(value.axes.index(x) for x in self.ids))
        part, column = names.fresh("part"), names.fresh("col")
        row = ir.Attr(ir.Var(part), "indices")
        picked = ir.Call("torch.take_along_dim", (scores, ir.Method(row, "reshape", (ir.Const(1), ir.Const(1)))), (("dim", ir.Const(-2)),))
        width = ir.Const(loops.chunking.step.sizes[self.ids[1]], frozenset(self.ids[1:]))
        flat = ir.plus(ir.plus(ir.BinOp("*", ir.plus(i, row), width), j), ir.Var(column))
        rows_extreme = ir.Call(REDUCE_CALLS[self.extreme], (scores, ir.Const(-1)))
        return computed + [
            ir.Assign(
                part, ir.Method(rows_extreme, self.extreme, (ir.Const(-1),)), f"this tile's {self.extreme} and the first row holding it"
            ),
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
    return emit_loops(Loops(chunking, job, context))


def emit_loops(loops: Loops) -> tuple[list, list[Value], tuple]:
    """:func:`emit` with loops made by the caller (an autograd function's forward: no grad flag,
    and the tie counts of a running max/min as a second result)."""
    chunking, job = loops.chunking, loops.job
    statements, results = EMITTERS[chunking.style](loops)
    remaining = tuple(job.clauses[1:]) if chunking.style in ("running", "running-arg") else ()
    return statements, results, remaining


def dtype_after(chunking: Chunking, clauses) -> torch.dtype:
    """The dtype of the loop's result (before the remaining clauses)."""
    dtype = chunking.step.dtype
    if chunking.style in ("running", "running-arg"):
        return clause_dtype(clauses[0][0], dtype)
    return dtype
