"""The contraction lowerings: how one step ``a, b -> c`` becomes torch code.

Each lowering is priced, then emitted: ``price(step, context)`` returns an
:class:`Estimate` for the cost model (or None when it cannot do the step), and
``emit(step, context)`` returns the :class:`Lowered` code, called once, for the
winner.  Both read one frozen :class:`Contraction`; ``REGISTRY`` holds every
lowering by name, and ``choose`` prices them all and names the winner.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import blocks, ir, slices, written_out
from .contraction import (
    CACHE_LINE,
    SHORT_ROW,
    Candidate,
    Context,
    Contraction,
    Lowered,
    Value,
    align,
    assign_result,
    broadcast_passes,
    gathered,
    grouped,
    new_tensor,
    numel,
    rows_of,
    sized,
    sum_over,
    torch_lacks,
    ungrouped,
)
from .cost import DeviceModel, Estimate
from .errors import UnsupportedError
from .matmul_layout import copies_made, matmul_layout
from .written_out import VECTOR_MIN, aligned_term, index_tuples, term_name

MATMUL = "matmul-broadcast"
ELEMENTWISE = "elementwise-sum"
UNROLLED = "unrolled"
CHUNKED = "chunked-reduction"
FUSED = "fused"  # one Triton kernel: the product's tiles reduced on chip (CUDA, or Triton's interpreter)
LOWERINGS = (MATMUL, ELEMENTWISE, UNROLLED, CHUNKED, FUSED)


class Lowering:
    """One way to compute a contraction: priced first, emitted once if it wins."""

    name = ""

    def price(self, step: Contraction, context: Context) -> Estimate | None:
        raise NotImplementedError

    def emit(self, step: Contraction, context: Context) -> Lowered:
        raise NotImplementedError

    def result_axes(self, step: Contraction, context: Context | None = None) -> tuple[str, ...]:
        """The order of the result's axes, known without emitting (``context``: as planned there)."""
        return tuple(step.kept)


# --- elementwise-sum --------------------------------------------------------------------------


class ElementwiseSum(Lowering):
    """Broadcast multiply, then ``.sum`` over the contracted axes (trailing); one
    ``torch.linalg.vecdot`` call when a single axis of a float product is summed.

    Compiled (``options.compiled``), torch.compile runs the product and its sum
    as one loop that reads the inputs and writes the result: no product exists.
    """

    name = ELEMENTWISE

    @staticmethod
    def _product_exists(step: Contraction, context: Context) -> bool:
        return bool(step.summed) and not context.options.compiled

    def _into(self, step: Contraction, context: Context) -> Value | None:
        """An owned operand of the product's shape the multiply may overwrite (no allocation): the
        product before its sum, or the result itself when nothing is summed."""
        if context.options.compiled:
            return None
        rank = len(step.kept) + len(step.summed)
        return next((v for v in (step.a, step.b) if v.owned and len(v.axes) == rank), None)

    def price(self, step: Contraction, context: Context) -> Estimate | None:
        return slices.cheaper(step, context, self._whole(step, context))[0]

    def _whole(self, step: Contraction, context: Context) -> Estimate:
        """The product written whole (see :mod:`einplan.slices` for it in slices)."""
        exists = self._product_exists(step, context)
        into = self._into(step, context)
        full = step.numel(step.kept + step.summed)
        out = step.numel(step.kept)
        inputs = step.numel(step.a.axes) + step.numel(step.b.axes)
        traffic = inputs + out + (2 * full if exists else 0)
        itemsize = step.dtype.itemsize
        return Estimate(
            flops=2 * full if step.summed else full,
            bytes=traffic * itemsize,
            ops=2 if exists else 1,
            elementwise=full if step.summed else 0,  # a product summed; one only written is its memory traffic
            reductions=out if exists and step.numel(step.summed) < 64 else 0,
            memory=((full if into is None else 0) + out) * itemsize if exists else (0 if into is not None else out * itemsize),
            allocations=tuple(
                n * itemsize for n in ((full if into is None else 0, out) if exists else (0 if into is not None else out,)) if n
            ),
            # two ops when the product exists: the multiply (both inputs and the product), then its sum
            working_set=max(inputs + full, full + out) * itemsize if exists else 0,
            passes=0 if context.options.compiled else broadcast_passes(step, step.kept + step.summed),
        )

    def emit(self, step: Contraction, context: Context) -> Lowered:
        form = slices.cheaper(step, context, self._whole(step, context))[1]
        if form is not None:
            return slices.emit(step, form, context.names)
        layout = step.kept + step.summed
        into = self._into(step, context)
        left, right = align(step.a, layout), align(step.b, layout)
        product: ir.Expr
        if into is not None:
            product = ir.Method(*((left, "mul_", (right,)) if into is step.a else (right, "mul_", (left,))))
        else:
            product = ir.BinOp("*", left, right)
        summed = step.summed
        expr: ir.Expr
        if self._product_exists(step, context) and into is None and len(summed) == 1 and step.dtype.is_floating_point:
            expr = ir.Call("torch.linalg.vecdot", (left, right))  # the same multiply and sum, one call
        else:
            expr = sum_over(product, tuple(range(-len(summed), 0)), step.dtype) if summed else product
        return Lowered(expr, tuple(step.kept))


# --- matmul-broadcast ---------------------------------------------------------------------------


class MatmulBroadcast(Lowering):
    """Views plus one ``torch.matmul``; a shared operand is folded, never expanded."""

    name = MATMUL

    def applies(self, step: Contraction, model: DeviceModel) -> bool:
        dtype = step.dtype
        if dtype == torch.bool or (not dtype.is_floating_point and not dtype.is_complex and model.kind == "cuda"):
            return False
        if model.kind == "cpu" and torch_lacks("matmul", dtype):  # e.g. uint16: torch has no CPU GEMM for it
            return False
        layout = matmul_layout(step)
        # a merged group of the result is split again with -1 for a free axis: one per group at most
        return all(sum(x in step.free for x in group) <= 1 for group in (layout.m, layout.n))

    def result_axes(self, step: Contraction, context: Context | None = None) -> tuple[str, ...]:
        return matmul_layout(step).out_axes

    def writes_out(self, step: Contraction) -> bool:
        """Whether the emitted code is one plain ``torch.matmul`` call (it can take ``out=``)."""
        return matmul_layout(step).direct

    def price(self, step: Contraction, context: Context) -> Estimate | None:
        model = context.model
        if not self.applies(step, model):
            return None
        layout = matmul_layout(step)
        B, M, N, K = (step.numel(g) for g in (layout.batch, layout.m, layout.n, layout.contracted))
        copies = copies_made(step, layout)
        out = B * M * N
        itemsize = step.dtype.itemsize
        estimate = Estimate(
            flops=2 * B * M * N * K,
            bytes=(step.numel(layout.left.axes) + step.numel(layout.right.axes) + out + 2 * sum(copies)) * itemsize,
            ops=1 + sum(1 for c in copies if c),
            memory=(out + sum(copies)) * itemsize,
            allocations=tuple(n * itemsize for n in (out, *copies) if n),
        )
        if layout.batch and M * N * K < model.loop_limit:  # torch loops over tiny matrices instead of a GEMM
            return replace(estimate, loop_matrices=B, loop_fmas=B * M * N * K, loop_outputs=out)
        if layout.vector and M == 1:  # torch.dot: one pass of multiply-adds over the two vectors
            return replace(estimate, elementwise=K)
        if layout.batch and N == 1 and model.column_rate:  # matvecs or dot products: far below the GEMM rate
            return replace(estimate, column_flops=2 * B * M * K, matrices=B)
        if layout.batch and M == 1 and N > 1 and model.row_rate:  # vectors times matrices: one pass over the matrices
            return replace(estimate, row_flops=2 * B * N * K, matrices=B)
        return replace(estimate, gemm_flops=2 * B * M * N * K, matrices=B if layout.batch else 0).gemm_eff(model, M, N, K)

    def emit(self, step: Contraction, context: Context) -> Lowered:
        layout = matmul_layout(step)
        if layout.direct or layout.vector:  # a vector's permute is the identity: it stays a vector
            lhs = ir.permute(ir.Var(layout.left.var), tuple(layout.left.axes.index(a) for a in layout.batch + layout.m + layout.contracted))
            rhs = ir.permute(
                ir.Var(layout.right.var), tuple(layout.right.axes.index(a) for a in layout.batch + layout.contracted + layout.n)
            )
            return Lowered(ir.Call("torch.matmul", (lhs, rhs)), layout.out_axes)
        batch = [[x] for x in layout.batch]
        lhs = grouped(layout.left, batch + [layout.m, layout.contracted])
        rhs = grouped(layout.right, batch + [layout.contracted, layout.n])
        expr = ungrouped(ir.Call("torch.matmul", (lhs, rhs)), batch + [layout.m, layout.n], step)
        return Lowered(expr, layout.out_axes)


# --- unrolled ---------------------------------------------------------------------------------

UNROLL_TERMS = 16  # most terms the cost model may unroll; forcing allows up to 64
FORCED_UNROLL_TERMS = 64


@dataclass(frozen=True)
class _UnrolledLayout:
    kept: list[str]  # the result's axes, long ones last
    summed: list[str]
    laid: tuple  # per operand: the axis order it is copied to, or None when read as it is
    big: list[str]


def _unrolled_layout(step: Contraction, limit: int) -> _UnrolledLayout | None:
    if step.dtype == torch.bool or torch_lacks("addcmul", step.dtype):
        return None
    kept, summed = step.kept, step.summed
    terms = step.numel(summed)
    if not summed or terms == 0 or terms > limit or any(x not in step.a.axes or x not in step.b.axes for x in summed):
        return None
    if step.free.intersection(summed):  # one term per index: a size read at run time (a chunk's) has no fixed count
        return None
    big = [x for x in kept if step.sizes[x] >= VECTOR_MIN]
    laid: list = [None, None]
    if kept and step.sizes[kept[-1]] < VECTOR_MIN and big:
        # lay the long axes last and contiguous, so each term is one vectorised op
        kept = [x for x in kept if step.sizes[x] < VECTOR_MIN] + big
        for k, value in enumerate((step.a, step.b)):
            order = summed + [x for x in kept if x in value.axes]
            if tuple(value.axes.index(x) for x in order) != tuple(range(len(order))):
                laid[k] = tuple(order)
    return _UnrolledLayout(kept, summed, tuple(laid), big)


def _gather_factor(value: Value, inner: str, sizes, itemsize: int) -> float:
    """How many times a transposing copy's traffic exceeds a straight copy's: it writes ``inner``
    contiguously and reads it with a stride (see :func:`contraction.gathered`)."""
    return gathered(numel(sizes, value.axes[value.axes.index(inner) + 1 :]), itemsize)


class Unrolled(Lowering):
    """Written-out arithmetic: one fused multiply-add per index of the summed axes.

    ``out = a[..., 0] * b[..., 0]; out.addcmul_(a[..., 1], b[..., 1]); ...`` --
    each term is one vector op over the kept axes, with no temporary the size
    of the full product.  Under torch.compile on a CPU, a step whose kept axes are
    long or tiny is written out per element instead (:mod:`einplan.written_out`): one fused
    loop along the long axes.
    """

    name = UNROLLED

    def _layout(self, step: Contraction, context: Context) -> _UnrolledLayout | None:
        return _unrolled_layout(step, FORCED_UNROLL_TERMS if context.forced(UNROLLED) else UNROLL_TERMS)

    @staticmethod
    def _compiled_form(step: Contraction, context: Context | None) -> written_out.Layout | None:
        """The written-out form, for code torch.compile traces on a CPU (where it was measured)."""
        if context is None or not context.options.compiled or context.model.kind != "cpu":
            return None
        return written_out.layout(step)

    def result_axes(self, step: Contraction, context: Context | None = None) -> tuple[str, ...]:
        form = self._compiled_form(step, context)
        if form is not None:
            return tuple(form.long + form.tiny)
        layout = _unrolled_layout(step, FORCED_UNROLL_TERMS)
        return tuple(layout.kept) if layout is not None else tuple(step.kept)

    def price(self, step: Contraction, context: Context) -> Estimate | None:
        form = self._compiled_form(step, context)
        if form is not None:
            return written_out.price(step, form)
        layout = self._layout(step, context)
        if layout is None:
            return None
        return self._priced(step, layout, context)[0]

    def _priced(self, step: Contraction, layout: _UnrolledLayout, context: Context) -> tuple[Estimate, blocks.Blocks | None]:
        """The step's estimate, and its blocks when it runs in blocks (None: laid out whole, when it
        has no blocks or they cost more)."""
        itemsize = step.dtype.itemsize
        terms = step.numel(layout.summed)
        copied, reads, laid, fresh = 0.0, 0, [], []
        for value, order in zip((step.a, step.b), layout.laid, strict=True):
            if order is not None:
                copied += step.numel(value.axes) * _gather_factor(value, order[-1], step.sizes, itemsize)
                laid.append(step.numel(value.axes))
                if not context.keeps(laid[-1] * itemsize):  # a kept copy is not allocated anew
                    fresh.append(laid[-1])
                value = Value(value.var, order)
            # a term reads its slice; a strided slice (summed axes not leading) drags in whole cache lines
            leading = value.axes[: len(layout.summed)] == tuple(layout.summed)
            reads += step.numel(value.axes) // terms if leading else step.numel(value.axes)
        out = step.numel(layout.kept)
        inner = step.sizes[layout.kept[-1]] if layout.kept else 1
        whole = Estimate(
            flops=2 * out * terms,
            bytes=(2 * copied + terms * (2 * out + reads)) * itemsize,
            ops=terms + (2 if copied else 0),
            elementwise=out * terms * max(1.0, SHORT_ROW / max(inner, 1)),  # short inner loops cost more per element
            terms=terms,
            memory=(out + sum(laid)) * itemsize,
            working_set=max([2 * n for n in laid] + [out + reads]) * itemsize,  # one copy (source and copy), or one term
            allocations=tuple(n * itemsize for n in (out, *fresh)),
        )
        laid_values = [Value(v.var, order) for v, order in zip((step.a, step.b), layout.laid, strict=True) if order is not None]
        cutting = blocks.blocks(step, layout.big[0], laid_values, layout.kept, context) if layout.big else None
        if cutting is None:
            return whole, None
        inside = [v for v in laid_values if cutting.axis in v.axes]
        streamed = (out + sum(self._block_reads(step, v, order) for v, order in zip((step.a, step.b), layout.laid, strict=True))) * itemsize
        block_memory = sum(step.numel(v.axes) for v in inside) * cutting.rows // step.sizes[cutting.axis] * itemsize
        cached = (2 * sum(laid) + terms * (2 * out + reads)) * itemsize  # a copy's reread lines come from cache
        ops = (terms + len(inside), whole.ops - terms - len(inside) + 1)  # each block's; once (the whole form's other copies, the result)
        priced = blocks.estimate(whole, cutting, streamed, cached, ops, out * itemsize, block_memory)
        return (priced, cutting) if context.model.seconds(priced) < context.model.seconds(whole) else (whole, None)

    @staticmethod
    def _block_reads(step: Contraction, value: Value, order: tuple | None) -> float:
        """Elements memory reads for one operand in blocks: each once, unless its transposing copy
        reads with a stride beyond a cache line, whose gathered reads stay at memory speed (8x8
        rows, 256 B apart, took 0.56 ns an element in blocks against 0.23 at 4x4's 64 B)."""
        n = step.numel(value.axes)
        if order is None:
            return n
        stride = step.numel(value.axes[value.axes.index(order[-1]) + 1 :]) * step.dtype.itemsize
        return n * _gather_factor(value, order[-1], step.sizes, step.dtype.itemsize) if stride > CACHE_LINE else n

    def emit(self, step: Contraction, context: Context) -> Lowered:
        form = self._compiled_form(step, context)
        if form is not None:
            return written_out.emit(step, form, context.names)
        layout = self._layout(step, context)
        assert layout is not None, "emit follows a successful price"
        cutting = self._priced(step, layout, context)[1]
        if cutting is not None:
            return self._emit_blocks(step, layout, cutting, context)
        setup: list = []
        a, b = (self._laid(step, layout, k, ir.Var(v.var), setup, context) for k, v in enumerate((step.a, step.b)))
        target = context.names.fresh()
        setup += self._terms(step, layout, a, b, target, None)
        return Lowered(ir.Var(target), tuple(layout.kept), tuple(setup))

    def _emit_blocks(self, step: Contraction, layout: _UnrolledLayout, cutting: blocks.Blocks, context: Context) -> Lowered:
        """The result allocated once, then one loop over blocks of ``cutting.axis`` that lays each
        block out and writes its terms into the result's slice."""
        names, kept = context.names, layout.kept
        result = names.fresh()
        empty = new_tensor("torch.empty", sized(tuple(step.sizes[x] for x in kept), kept), step.dtype)
        setup: list = [ir.Assign(result, empty, "unrolled: the result, filled block by block")]
        start, rows = names.fresh("i"), ir.Const(cutting.rows, cutting.sizes)
        body: list = []
        operands = []
        for k, value in enumerate((step.a, step.b)):
            if cutting.axis not in value.axes:  # laid out once, before the loop
                operands.append(self._laid(step, layout, k, ir.Var(value.var), setup, context))
                continue
            piece = rows_of(value, cutting.axis, ir.Var(start), rows)
            if layout.laid[k] is None:
                var = names.fresh("block")
                body.append(ir.Assign(var, piece, f"block of {cutting.axis}"))
                operands.append(Value(var, value.axes))
            else:
                operands.append(self._laid(step, layout, k, piece, body, context, cutting.rows))
        a, b = operands
        into = rows_of(Value(result, tuple(kept)), cutting.axis, ir.Var(start), rows)
        body += self._terms(step, layout, a, b, names.fresh(), into)
        holder = step.a if cutting.axis in step.a.axes else step.b
        stop = ir.shape_of(holder.var, holder.axes.index(cutting.axis))
        comment = f"unrolled: blocks of {cutting.rows} along {cutting.axis}, each laid out and summed in cache"
        setup.append(ir.Loop(start, 0, stop, rows, tuple(body), comment))
        return Lowered(ir.Var(result), tuple(kept), tuple(setup))

    @staticmethod
    def _laid(step: Contraction, layout: _UnrolledLayout, k: int, source: ir.Expr, setup: list, context: Context, rows: int = 0) -> Value:
        """Operand ``k`` (``source``: it, or its block of ``rows`` rows) as the terms read it: copied
        into its laid-out order (into a buffer kept between calls, when that is worth it), or as it is."""
        value, order = (step.a, step.b)[k], layout.laid[k]
        if order is None:
            return value
        var = context.names.fresh("v")
        view = ir.permute(source, tuple(value.axes.index(x) for x in order))
        nbytes = step.numel(value.axes) * step.dtype.itemsize
        if rows:
            nbytes = nbytes * rows // step.sizes[layout.big[0]]
        moved: ir.Expr = ir.Method(view, "contiguous")
        note = ""
        if context.keeps(nbytes):
            other = (step.a, step.b)[1 - k]
            moved, note = ir.Kept(view, var, (ir.Var(other.var),)), ", kept between calls"
        setup.append(ir.Assign(var, moved, f"unrolled: lay {' '.join(order)} out, {' '.join(layout.big)} last{note}"))
        return Value(var, order)

    @staticmethod
    def _terms(step: Contraction, layout: _UnrolledLayout, a: Value, b: Value, target: str, into: ir.Expr | None) -> list:
        """``target = a[0] * b[0]`` (written into ``into`` when given), then one ``addcmul_`` per further term."""
        kept, summed = layout.kept, layout.summed
        indices = index_tuples([step.sizes[x] for x in summed])
        left, right = aligned_term(a, kept, summed, indices[0]), aligned_term(b, kept, summed, indices[0])
        first: ir.Expr = ir.BinOp("*", left, right) if into is None else ir.Call("torch.mul", (left, right), (("out", into),))
        statements: list = [ir.Assign(target, first, f"unrolled: term {term_name(summed, indices[0])}")]
        for index in indices[1:]:
            term = ir.Method(ir.Var(target), "addcmul_", (aligned_term(a, kept, summed, index), aligned_term(b, kept, summed, index)))
            statements.append(ir.Do(term, f"unrolled: term {term_name(summed, index)}"))
        return statements


# --- the registry -----------------------------------------------------------------------------

REGISTRY: dict[str, Lowering] = {lowering.name: lowering for lowering in (MatmulBroadcast(), ElementwiseSum(), Unrolled())}
CONTRACTIONS = tuple(REGISTRY)


def emit_value(winner: str, step: Contraction, context: Context, suffix: str = "") -> tuple[tuple, Value, str]:
    """The winner's code for ``step`` assigned to a fresh name: (statements, the result's value,
    the step in pattern form).  A matmul's result is the plan's own, for the next step to overwrite."""
    lowered = REGISTRY[winner].emit(step, context)
    description = step.describe(lowered.axes)
    var, statements = assign_result(lowered, f"{winner}: {description}{suffix}", context.names)
    return statements, Value(var, lowered.axes, owned=winner == MATMUL), description


def choose(step: Contraction, context: Context) -> tuple[str, Estimate, tuple[Candidate, ...]]:
    """Price every lowering that can do this step; the forced one or the cheapest wins.

    Returns (winner, its estimate, every candidate priced).  Nothing is emitted.
    """
    options, model = context.options, context.model
    forced = options.lowering if options.lowering in REGISTRY else None
    candidates = []
    for name, lowering in REGISTRY.items():
        estimate = lowering.price(step, context)
        if estimate is not None:
            candidates.append(Candidate(name, estimate, model.seconds(estimate)))
    if forced is not None and all(c.lowering != forced for c in candidates):
        sizes = ", ".join(f"{x}={step.sizes[x]}" for x in step.union)
        raise UnsupportedError(f"lowering {forced!r} cannot compute the step '{step.describe()}' (sizes {sizes}, dtype {step.dtype})")
    affordable = [c for c in candidates if options.memory_limit is None or c.estimate.memory <= options.memory_limit]
    winner = next((c for c in candidates if c.lowering == forced), None) or min(affordable or candidates, key=lambda c: c.seconds)
    return winner.lowering, winner.estimate, tuple(candidates)
