"""The bfloat16 screen: max/min/argmax/argmin of a whole 2-D product on a CPU with a fast bfloat16 GEMM.

A max/min/argmax/argmin of a whole large 2-D product, on a CPU whose bfloat16 GEMM is fast (AMX
tiles or AVX512-BF16 instructions), runs in two passes.  The screen computes every product from
the inputs rounded to bfloat16, in tiles, and keeps each row's largest value.  A proven bound on
|screened - float32| then names the rows that can hold the result, and the float32 product of
those rows alone decides it, exactly as the tiles would.  When the bound cannot be trusted (NaN
or inf in the inputs, products near the float32 limit), or every product is negative, every row
is kept and the exact pass does it all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from . import ir
from .chunking import Chunking, Job
from .chunks import Loops
from .clauses import ARG_REDUCERS, MERGE_CALLS, REDUCE_CALLS, extreme, strictly_better
from .contraction import Context, Value, new_tensor, rows_of, sized
from .cost import Estimate
from .lowerings import REGISTRY

# screen only where a bfloat16 GEMM runs at least this much faster (the cost model then decides):
# measured on a CPU whose bfloat16 GEMM ran 2.2x faster, the screen took 293 ms against 722 ms for
# the float32 product alone, so half again as fast leaves a clear margin for the screen's extra ops
SCREEN_MIN_SPEEDUP = 1.5
BFLOAT16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
FLOAT32_UNIT = 2.0**-24
FLUSH = 2.0**-124  # covers subnormals a bfloat16 GEMM may flush to zero: inputs, products, output
SCREEN_OVERFLOW = 1e38  # |products| below this are finite in bfloat16 too (its largest is 3.39e38)
NO_BITS = -32768  # int16 bits of -0.0: below every bit pattern of a value >= 0
ROW_LENGTH_SLACK = 2.0**-23  # float32 rounding of a sum of squares and its root, per term (see _norm)
UNDERFLOW_SLACK = 2.0**-63  # squares that underflow float32, after the root


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


@dataclass(frozen=True)
class Screen:
    """A screened whole-product extreme: the tiles of ``chunking`` in bfloat16, then float32 over
    up to ``exact_rows`` kept rows at a time."""

    chunking: Chunking
    exact_rows: int

    @property
    def step(self):
        return self.chunking.step

    @property
    def rows_of(self) -> Value:
        step = self.step
        return step.a if self.chunking.axis in step.a.axes else step.b

    @property
    def columns_of(self) -> Value:
        step = self.step
        return step.b if self.rows_of is step.a else step.a

    @property
    def depth_axis(self) -> str:
        return next(x for x in self.rows_of.axes if x != self.chunking.axis)

    def memory(self) -> float:
        """Peak extra bytes: bfloat16 copies, the screen's tile, per-row vectors, one exact chunk."""
        step, chunking = self.step, self.chunking
        copies = (step.numel(self.rows_of.axes) + step.numel(self.columns_of.axes)) * 2
        tile = chunking.rows * chunking.width * 2
        per_row = chunking.total * (2 + 4 + 4 * 8 + 1 + 8)  # bits, lengths, float64 bound terms, mask, row indices
        assert chunking.column is not None
        exact = self.exact_rows * step.sizes[chunking.column] * step.dtype.itemsize * 2  # the product and a row's pick
        return copies + tile + per_row + exact

    def estimate(self, context: Context) -> Estimate:
        """The screen's GEMM priced at the bfloat16 rate, plus one chunk of exact rows."""
        chunking, model = self.chunking, context.model
        full = chunking.full
        assert chunking.column is not None
        exact = 2.0 * self.exact_rows * self.step.sizes[chunking.column] * self.step.sizes[self.depth_axis]
        screen = full.gemm_flops * model.gemm_rate / model.screen_rate
        ops = math.prod(chunking.grid) * (full.ops + 2) + 24
        return replace(
            full, flops=full.flops + exact, gemm_flops=screen + exact, bytes=full.bytes / 2, ops=ops, memory=self.memory(), allocations=()
        )

    def describe(self) -> str:
        return (
            f"screened in bfloat16 {self.chunking.describe()}, then exactly over the rows of {self.chunking.axis} that can hold the result"
        )


def price(chunking: Chunking, job: Job, context: Context) -> Screen | None:
    """The screen for tiles of a whole 2-D product, when its device and dtype allow one."""
    model, step = context.model, chunking.step
    if chunking.column is None or context.options.compiled or step.dtype != torch.float32:
        return None
    if model.kind != "cpu" or model.screen_rate < SCREEN_MIN_SPEEDUP * model.gemm_rate:
        return None
    if torch.device(job.device).type != "cpu":  # e.g. meta tensors: no data to screen
        return None
    shared = set(step.a.axes) & set(step.b.axes)
    if len(step.a.axes) != 2 or len(step.b.axes) != 2 or len(shared) != 1 or not chunking.buffered:
        return None
    if step.sizes[next(iter(shared))] * FLOAT32_UNIT >= 0.5:
        return None
    exact_rows = int(max(1, min(chunking.total, chunking.budget // (2 * step.sizes[chunking.column] * step.dtype.itemsize))))
    return Screen(chunking, exact_rows)


# --- the code ---------------------------------------------------------------------------------


def emit(screen: Screen, job: Job, context: Context) -> tuple[list, list[Value]]:
    """The screen's tiles, the rows that can hold the result, then float32 over those rows."""
    loops = Loops(screen.chunking, job, context)
    reducer = job.clauses[0][0]
    setup, operands, top = _screen_setup(screen, loops, reducer)
    statements = setup + loops.over_rows(
        operands, lambda i, rows: loops.over_tiles(rows, lambda j, tile: _screen_tile(screen, loops, tile, top, i))
    )
    candidates, kept = _candidates(screen, loops, top, reducer)
    exact, results = _exact_pass(screen, loops, kept, reducer)
    return statements + candidates + exact, results


def _screen_setup(screen: Screen, loops: Loops, reducer: str) -> tuple[list, list[Value], str]:
    """The bfloat16 copies (the screen's operands), its tile buffer and each row's largest bits."""
    statements = []
    operands = []
    for value in (screen.step.a, screen.step.b):
        var = loops.names.fresh("half")
        rounded = ir.Method(ir.Method(ir.Var(value.var), "detach"), "to", (ir.Const(torch.bfloat16),))
        comment = f"{value.var} rounded to bfloat16, for the screen"
        if value is screen.columns_of and reducer in ("min", "argmin"):
            rounded, comment = ir.Method(rounded, "neg"), f"{value.var} rounded to bfloat16 and negated: the screen looks for a max"
        statements.append(ir.Assign(var, rounded, comment))
        operands.append(Value(var, value.axes))
    statements += loops.buffer_setup(torch.bfloat16, grad=False)
    top = loops.names.fresh("top")
    bits = new_tensor("torch.full", sized((screen.chunking.total,), (screen.chunking.axis,)), torch.int16, NO_BITS)
    statements.append(ir.Assign(top, bits, "each row's largest screened value, as int16 bits"))
    return statements, operands, top


def _screen_tile(screen: Screen, loops: Loops, tile, top: str, i: ir.Expr) -> list:
    """Each row's largest int16 bit pattern in this tile, which is its max when that is >= 0
    (bfloat16 bits order like int16 for values >= 0, and a fast integer max reads them)."""
    computed, value = loops.contract(tile, grad=False)
    chunking = screen.chunking
    largest = ir.Call(
        "torch.amax", (ir.Method(ir.Var(value.var), "view", (ir.Const(torch.int16),)), ir.Const(value.axes.index(chunking.column)))
    )
    rows = rows_of(Value(top, (chunking.axis,)), chunking.axis, i, ir.Const(chunking.rows, loops.size_tag(chunking.axis)))
    target: str | ir.Index = rows if chunking.cuts_rows else top
    current = ir.Var(top) if isinstance(target, str) else target
    return computed + [ir.Assign(target, ir.Call("torch.maximum", (current, largest)), "each row's largest bits so far")]


def _norm(screen: Screen, value: Value, longest: bool = False) -> ir.Expr:
    """Each row's length along the depth axis (the longest, if ``longest``), rounded up in float64.

    Computed in float32 (no float64 copy of the input): the sum of squares is off by at most
    gamma of itself plus the squares that underflow (``depth`` * 2^-126 in all), and the
    square root by an ulp; so length * (1 + (depth + 2) * 2^-23) + sqrt(depth) * 2^-63 bounds
    the true one.  A NaN, or a square past float32's range (inf), makes the screen untrusted.
    """
    depth_axis = screen.depth_axis
    depth = screen.step.sizes[depth_axis]
    tag = frozenset((depth_axis,))
    norms: ir.Expr = ir.Call(
        "torch.linalg.vector_norm", (ir.Method(ir.Var(value.var), "detach"),), (("dim", ir.Const(value.axes.index(depth_axis))),)
    )
    if longest:
        norms = ir.Method(norms, "amax", ())
    scaled = ir.BinOp("*", ir.Method(norms, "to", (ir.Const(torch.float64),)), ir.Const(1 + (depth + 2) * ROW_LENGTH_SLACK, tag))
    return ir.BinOp("+", scaled, ir.Const(math.sqrt(depth) * UNDERFLOW_SLACK, tag))


def _candidates(screen: Screen, loops: Loops, top: str, reducer: str) -> tuple[list, str]:
    """The rows whose screened max plus the bound reaches the best screened max minus its bound."""
    names = loops.names
    depth = screen.step.sizes[screen.depth_axis]
    tag = frozenset((screen.depth_axis,))
    up, na, nb, err, low, kept = (names.fresh(p) for p in ("up", "norm", "norm", "err", "low", "rows"))
    bits = ir.Var(top)
    positive = ir.BinOp(">=", bits, ir.Const(0))
    decoded = ir.Method(ir.Method(bits, "view", (ir.Const(torch.bfloat16),)), "to", (ir.Const(torch.float64),))
    relative = ir.BinOp("*", ir.Var(na), ir.BinOp("*", ir.Const(screen_error(depth), tag), ir.Var(nb)))
    tiny = ir.BinOp(
        "*",
        ir.Const(FLUSH),
        ir.BinOp(
            "+", ir.BinOp("*", ir.Const(math.sqrt(depth), tag), ir.BinOp("+", ir.Var(na), ir.Var(nb))), ir.Const(float(depth + 1), tag)
        ),
    )
    trusted = ir.BinOp("<", ir.BinOp("*", ir.Method(ir.Var(na), "amax", ()), ir.Var(nb)), ir.Const(SCREEN_OVERFLOW))
    reaches = ir.BinOp(">=", ir.BinOp("+", ir.Var(up), ir.Var(err)), ir.Var(low))
    which = "max" if reducer in ("max", "argmax") else "max of the negated product"
    extreme_name = reducer[-3:]
    keep = ir.BinOp("|", reaches, ir.Call("torch.logical_not", (trusted,)))
    rows_of, columns_of = screen.rows_of, screen.columns_of
    return [
        ir.Assign(
            up, ir.Call("torch.where", (positive, decoded, ir.Const(0.0))), f"each row's screened {which} (a row of negatives: at most 0)"
        ),
        ir.Assign(na, _norm(screen, rows_of), f"length of each row of {rows_of.var} along {screen.depth_axis}"),
        ir.Assign(nb, _norm(screen, columns_of, longest=True), f"the longest of {columns_of.var} along {screen.depth_axis}"),
        ir.Assign(err, ir.BinOp("+", relative, tiny), "bound on |screened - float32| in each row"),
        ir.Assign(
            low,
            ir.Method(ir.Call("torch.where", (positive, ir.BinOp("-", ir.Var(up), ir.Var(err)), ir.Const(float("-inf")))), "amax", ()),
            f"the float32 {extreme_name} is at least this far out",
        ),
        ir.Assign(
            kept,
            ir.Index(ir.Call("torch.nonzero", (keep,)), (ir.SLICE, 0)),
            "rows that can hold it, in order (all, if the screen could overflow or saw NaN/inf)",
        ),
    ], kept


def _exact_pass(screen: Screen, loops: Loops, kept: str, reducer: str) -> tuple[list, list[Value]]:
    """float32 over the kept rows, ``exact_rows`` at a time: the running extreme (and where)."""
    names, chunking, step = loops.names, screen.chunking, screen.step
    arg = reducer in ARG_REDUCERS
    extreme_name = reducer[-3:]
    best = names.fresh("best")
    setup = [
        ir.Assign(
            best, new_tensor("torch.full", ir.Const(()), step.dtype, extreme(step.dtype, extreme_name == "max")), f"running {extreme_name}"
        )
    ]
    if arg:
        row, column = names.fresh("row"), names.fresh("col")
        setup.append(ir.Assign(row, new_tensor("torch.zeros", ir.Const(()), torch.int64), f"where: its index along {chunking.axis}"))
        setup.append(ir.Assign(column, new_tensor("torch.zeros", ir.Const(()), torch.int64), f"and along {chunking.column}"))
    i = ir.Var("i")
    count = ir.Const(screen.exact_rows, loops.size_tag(chunking.axis))
    picked = ir.Index(ir.Var(kept), (ir.Range(i, ir.plus(i, count)),))
    rows_of = screen.rows_of
    chunk = names.fresh("chunk")
    body = [
        ir.Assign(
            chunk,
            ir.Call("torch.index_select", (ir.Var(rows_of.var), ir.Const(rows_of.axes.index(chunking.axis)), picked)),
            f"kept rows of {rows_of.var}",
        )
    ]
    parts = [Value(chunk, v.axes) if v is rows_of else v for v in (step.a, step.b)]
    exact_step = replace(
        step, a=parts[0], b=parts[1], sizes=dict(step.sizes, **{chunking.axis: screen.exact_rows}), free=frozenset((chunking.axis,))
    )
    lowered = REGISTRY[chunking.inner].emit(exact_step, loops.context)
    scores = names.fresh("scores")
    body.append(ir.Assign(scores, lowered.expr, f"{chunking.inner}: {step.describe(lowered.axes)} for these rows, in float32"))
    if arg:
        body += _exact_arg(names, reducer, scores, kept, best, row, column)
    else:
        part = names.fresh("part")
        body += [
            ir.Assign(part, ir.Call(REDUCE_CALLS[extreme_name], (ir.Var(scores), ir.Const((0, 1)))), f"{extreme_name} of these rows"),
            ir.Assign(best, ir.Call(MERGE_CALLS[extreme_name], (ir.Var(best), ir.Var(part))), "combine"),
        ]
    loop = ir.Loop("i", 0, ir.shape_of(kept, 0), count, tuple(body), f"exact pass: up to {screen.exact_rows} kept rows at a time")
    results = [Value(row, ()), Value(column, ())] if arg else [Value(best, ())]
    return setup + [loop], results


def _exact_arg(names, reducer: str, scores: str, kept: str, best: str, row: str, column: str) -> list:
    """Each row's extreme, the first row holding these rows', the first place in that row; later
    rows win only when strictly better (NaN wins), so the first index stays."""
    extreme_name = reducer[-3:]
    first, part, take = names.fresh("first"), names.fresh("part"), names.fresh("take")
    picked = ir.Call(
        "torch.take_along_dim", (ir.Var(scores), ir.Method(ir.Var(first), "reshape", (ir.Const(1), ir.Const(1)))), (("dim", ir.Const(-2)),)
    )
    values, indices = ir.Attr(ir.Var(part), "values"), ir.Attr(ir.Var(part), "indices")
    where = ir.Index(ir.Var(kept), (ir.plus(ir.Var("i"), ir.Var(first)),))
    return [
        ir.Assign(
            first,
            ir.Method(ir.Call(REDUCE_CALLS[extreme_name], (ir.Var(scores), ir.Const(-1))), reducer, (ir.Const(-1),)),
            f"the first of these rows holding their {extreme_name}",
        ),
        ir.Assign(
            part, ir.Method(ir.Method(picked, "flatten", ()), extreme_name, (ir.Const(-1),)), f"{extreme_name} of that row and where"
        ),
        ir.Assign(take, strictly_better(reducer, values, ir.Var(best)), "strictly better (ties keep the first; NaN wins)"),
        ir.Assign(best, ir.Call("torch.where", (ir.Var(take), values, ir.Var(best)))),
        ir.Assign(row, ir.Call("torch.where", (ir.Var(take), where, ir.Var(row))), "the row, among all"),
        ir.Assign(column, ir.Call("torch.where", (ir.Var(take), indices, ir.Var(column))), "the place in that row"),
    ]
