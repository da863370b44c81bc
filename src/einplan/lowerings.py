"""The contraction lowerings: how one step ``a, b -> c`` becomes torch code.

Each ``lower_*`` function returns a :class:`Lowered` (the expression, the
result's axis order, statements to run first, and an :class:`Estimate` for the
cost model) or None when it cannot do the step.  ``choose`` prices every
lowering and picks the forced one or the cheapest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from . import ir
from .cost import Estimate
from .errors import UnsupportedError

MATMUL = "matmul-broadcast"
ELEMENTWISE = "elementwise-sum"
UNROLLED = "unrolled"
CHUNKED = "chunked-reduction"
LOWERINGS = (MATMUL, ELEMENTWISE, UNROLLED, CHUNKED)


@dataclass(frozen=True)
class Options:
    lowering: Optional[str] = None  # force one lowering for every contraction step
    memory_limit: Optional[int] = None  # bytes an intermediate may take
    compiled: bool = False  # torch.compile will trace the code: a broadcast product and its sum fuse


@dataclass(frozen=True)
class Value:
    """A tensor in the generated code: its variable and its axis ids, in order.

    ``owned``: a fresh tensor of the plan's own (a matmul's result) that only the
    next step reads, so that step may overwrite it instead of allocating.
    """

    var: str
    axes: tuple[str, ...]
    owned: bool = False


@dataclass(frozen=True)
class Candidate:
    lowering: str
    estimate: Estimate
    seconds: float


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


class Names:
    """Fresh variable names for generated code: t0, t1, ..."""

    def __init__(self, count: int = 0):
        self.count = count

    def fresh(self, prefix: str = "t") -> str:
        name = f"{prefix}{self.count}"
        self.count += 1
        return name


# --- contraction lowerings -------------------------------------------------------------------


@dataclass(frozen=True)
class Lowered:
    expr: ir.Expr  # the step's result, assigned to the step's variable
    axes: tuple[str, ...]
    estimate: Estimate
    setup: tuple = ()  # statements that run before (the unrolled terms)


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


def lower_elementwise(a: Value, b: Value, keep, sizes, rank, dtype, model, fused: bool = False) -> Lowered:
    """Broadcast multiply, then ``.sum`` over the contracted axes (trailing);
    one ``torch.linalg.vecdot`` call when a single axis of a float product is summed.

    ``fused``: torch.compile will trace the code and run the product and its sum
    as one loop that reads the inputs and writes the result; the product never exists.
    """
    union = list(dict.fromkeys(a.axes + b.axes))
    kept = _order([x for x in union if x in keep], rank)
    summed = [x for x in union if x not in keep]
    layout = kept + summed
    product_exists = bool(summed) and not fused
    # a product the sum reads once may overwrite an owned operand of the same shape (no allocation)
    into = next((v for v in (a, b) if v.owned and len(v.axes) == len(layout)), None) if product_exists else None
    left, right = _align(a, layout), _align(b, layout)
    if into is not None:
        product = ir.Method(*((left, "mul_", (right,)) if into is a else (right, "mul_", (left,))))
    else:
        product = ir.BinOp("*", left, right)
    if product_exists and into is None and len(summed) == 1 and dtype.is_floating_point:
        # the same multiply and sum, issued from Python as one call instead of two
        expr = ir.Call("torch.linalg.vecdot", (left, right))
    else:
        expr = _sum(product, tuple(range(-len(summed), 0)), dtype) if summed else product
    itemsize = dtype.itemsize
    full = _numel(sizes, layout)
    out = _numel(sizes, kept)
    traffic = _numel(sizes, a.axes) + _numel(sizes, b.axes) + out + (2 * full if product_exists else 0)
    estimate = Estimate(
        flops=2 * full if summed else full,
        bytes=traffic * itemsize,
        ops=2 if product_exists else 1,
        elementwise=full,
        reductions=out if product_exists and _numel(sizes, summed) < 64 else 0,
        memory=((full if into is None else 0) + out) * itemsize if product_exists else out * itemsize,
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
        memory=(out + copies) * itemsize,
    )
    if batch and M * N * K < model.loop_limit:  # torch loops over tiny matrices instead of calling a GEMM
        estimate = replace(estimate, loop_matrices=B, loop_fmas=B * M * N * K, loop_outputs=out)
    else:
        estimate = replace(estimate, gemm_flops=2 * B * M * N * K, matrices=B if batch else 0).gemm_eff(model, M, N, K)
    return Lowered(expr, out_axes, estimate)


UNROLL_TERMS = 16  # most terms the cost model may unroll; forcing allows up to 64
VECTOR_MIN = 32  # an axis this long is a vector axis: unrolled terms run along it
FORCED_UNROLL_TERMS = 64


def lower_unrolled(a: Value, b: Value, keep, sizes, rank, dtype, model, names=None, limit=UNROLL_TERMS) -> Optional[Lowered]:
    """Written-out arithmetic: one fused multiply-add per index of the summed axes.

    ``out = a[..., 0] * b[..., 0]; out.addcmul_(a[..., 1], b[..., 1]); ...`` --
    each term is one vector op over the kept axes, with no temporary the size
    of the full product.  Fuses into one kernel under torch.compile.
    """
    if dtype == torch.bool or names is None:
        return None
    union = list(dict.fromkeys(a.axes + b.axes))
    kept = _order([x for x in union if x in keep], rank)
    summed = [x for x in union if x not in keep]
    terms = _numel(sizes, summed)
    if not summed or terms == 0 or terms > limit or any(x not in a.axes or x not in b.axes for x in summed):
        return None
    setup: list = []
    copied = 0
    big = [x for x in kept if sizes[x] >= VECTOR_MIN]
    if kept and sizes[kept[-1]] < VECTOR_MIN and big:
        # lay the long axes last and contiguous, so each term is one vectorised op
        kept = [x for x in kept if sizes[x] < VECTOR_MIN] + big
        laid = []
        for value in (a, b):
            order = summed + [x for x in kept if x in value.axes]
            permutation = tuple(value.axes.index(x) for x in order)
            if permutation == tuple(range(len(order))):
                laid.append(value)
                continue
            var = names.fresh("v")
            moved = ir.Method(ir.permute(ir.Var(value.var), permutation), "contiguous")
            setup.append(ir.Assign(var, moved, f"unrolled: lay {' '.join(order)} out, {' '.join(big)} last"))
            laid.append(Value(var, tuple(order)))
            copied += _numel(sizes, value.axes) * _gather_factor(value, order[-1], sizes, dtype.itemsize)
        a, b = laid
    inner = sizes[kept[-1]] if kept else 1
    target = names.fresh()
    indices = _index_tuples([sizes[x] for x in summed])
    first = ir.BinOp("*", _aligned_term(a, kept, summed, indices[0]), _aligned_term(b, kept, summed, indices[0]))
    setup.append(ir.Assign(target, first, f"unrolled: term {_term_name(summed, indices[0])}"))
    for index in indices[1:]:
        setup.append(
            ir.Do(
                ir.Method(ir.Var(target), "addcmul_", (_aligned_term(a, kept, summed, index), _aligned_term(b, kept, summed, index))),
                f"unrolled: term {_term_name(summed, index)}",
            )
        )
    itemsize = dtype.itemsize
    out = _numel(sizes, kept)
    # short inner loops (an inner axis of 2 or 3) cost far more per element
    inner_penalty = max(1.0, 8.0 / max(inner, 1))
    # a term reads its slice; a strided slice (summed axes not leading) drags in whole cache lines
    reads = sum(
        _numel(sizes, v.axes) // terms if v.axes[: len(summed)] == tuple(summed) else _numel(sizes, v.axes)
        for v in (a, b)
    )
    estimate = Estimate(
        flops=2 * out * terms,
        bytes=(2 * copied + terms * (2 * out + reads)) * itemsize,
        ops=terms + (1 if copied else 0) * 2,
        elementwise=out * terms * inner_penalty,
        terms=terms,
        memory=(out + copied) * itemsize,
    )
    return Lowered(ir.Var(target), tuple(kept), estimate, tuple(setup))


CACHE_LINE = 64  # bytes


def _gather_factor(value: Value, inner: str, sizes, itemsize: int) -> float:
    """How many times a transposing copy's traffic exceeds a straight copy's.

    The copy writes ``inner`` contiguously but reads it with a stride; each read
    drags in part of a cache line, up to a whole line per element.
    """
    stride = _numel(sizes, value.axes[value.axes.index(inner) + 1 :])
    return 1.0 + min(stride, CACHE_LINE // itemsize) / 2


def _index_tuples(extents: list[int]) -> list[tuple[int, ...]]:
    tuples: list[tuple[int, ...]] = [()]
    for extent in extents:
        tuples = [t + (k,) for t in tuples for k in range(extent)]
    return tuples


def _term_name(summed: list[str], index: tuple[int, ...]) -> str:
    return ", ".join(f"{a}={k}" for a, k in zip(summed, index))


def _aligned_term(value: Value, kept: list[str], summed: list[str], index: tuple[int, ...]) -> ir.Expr:
    """``value`` with its summed axes fixed at ``index`` and None where it lacks a
    kept axis, so that terms broadcast to the kept layout.  Indexes the tensor
    as it is when its kept axes are already in order, else permutes first."""
    present = [a for a in value.axes if a in kept]
    if present != [a for a in kept if a in value.axes]:
        order = tuple(value.axes.index(a) for a in [a for a in kept if a in value.axes] + summed)
        expr = ir.permute(ir.Var(value.var), order)
        axes = [value.axes[k] for k in order]
    else:
        expr, axes = ir.Var(value.var), list(value.axes)
    fixed = dict(zip(summed, index))
    items: list = []
    position = next((k for k, a in enumerate(kept) if a in axes), len(kept))
    for axis in axes:
        if axis in fixed:
            items.append(fixed[axis])
            continue
        target = kept.index(axis)
        items.extend([None] * (target - position))
        items.append(ir.SLICE)
        position = target + 1
    items.extend([None] * (len(kept) - position))
    while items and items[-1] is ir.SLICE:
        items.pop()
    return ir.Index(expr, tuple(items)) if items else expr


CONTRACTIONS: dict[str, Callable] = {
    MATMUL: lower_matmul,
    ELEMENTWISE: lower_elementwise,
    UNROLLED: lower_unrolled,
}


def _lower(name, a, b, keep, sizes, rank, dtype, model, names, forced, fused=False):
    if name == UNROLLED:
        limit = FORCED_UNROLL_TERMS if forced else UNROLL_TERMS
        return lower_unrolled(a, b, keep, sizes, rank, dtype, model, names, limit)
    if name == ELEMENTWISE:
        return lower_elementwise(a, b, keep, sizes, rank, dtype, model, fused)
    return CONTRACTIONS[name](a, b, keep, sizes, rank, dtype, model)


def choose(a: Value, b: Value, keep, sizes, rank, dtype, model, options: Options, names: "Names"):
    """Price every lowering that can do this step; the forced one or the cheapest wins."""
    forced = options.lowering if options.lowering in CONTRACTIONS else None
    candidates = []
    results = {}
    for name in CONTRACTIONS:
        scratch = Names(names.count) if name == UNROLLED else names
        lowered = _lower(name, a, b, keep, sizes, rank, dtype, model, scratch, name == forced, options.compiled)
        if lowered is None:
            continue
        results[name] = (lowered, scratch)
        candidates.append(Candidate(name, lowered.estimate, model.seconds(lowered.estimate)))
    if forced is not None and forced not in results:
        step = _describe([a.axes, b.axes], tuple(x for x in dict.fromkeys(a.axes + b.axes) if x in keep))
        raise UnsupportedError(
            f"lowering {forced!r} cannot compute the step '{step}' "
            f"(sizes {', '.join(f'{x}={sizes[x]}' for x in dict.fromkeys(a.axes + b.axes))}, dtype {dtype})"
        )
    affordable = [c for c in candidates if options.memory_limit is None or c.estimate.memory <= options.memory_limit]
    pool = affordable or candidates
    winner = forced or min(pool, key=lambda c: c.seconds).lowering
    lowered, scratch = results[winner]
    names.count = max(names.count, scratch.count)
    return winner, lowered, tuple(candidates)


def assign_result(lowered: Lowered, comment: str, names: Names, prefix: str = "t") -> tuple[str, tuple]:
    """The lowering's statements ending in ``var = result``; returns (var, statements)."""
    if lowered.setup and isinstance(lowered.expr, ir.Var):
        return lowered.expr.name, lowered.setup  # the terms already built it in place
    var = names.fresh(prefix)
    return var, (*lowered.setup, ir.Assign(var, lowered.expr, comment))
