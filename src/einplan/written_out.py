"""Written-out arithmetic: a contraction spelled as products of its operands at fixed indices.

Two forms share these terms.  Eager, the unrolled lowering (``lowerings.Unrolled``)
fixes the summed axes at each index and issues one vector op per index over the
kept axes.  Traced by torch.compile for a CPU, a step whose kept axes are either long (a
batch) or tiny is written out further (:func:`emit`): every element of the tiny
axes is its own sum of products, and the elements are stacked last.  The compiler
then runs one loop over the long axes that loads each row of both operands once
and keeps all its products in registers, where a broadcast multiply-sum becomes a
loop nest whose innermost loop runs along a summed axis too short to vectorise.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import ir
from .contraction import Contraction, Lowered, Names, Value
from .cost import Estimate

VECTOR_MIN = 32  # an axis this long is a vector axis: vector ops run along it
WRITTEN_OUT_PRODUCTS = 64  # most products one row of the compiled form spells out (a 4x4 matmul's)
# the compiled form is for sums shorter than this: a sum as long as a vector register of float32
# (16 lanes of AVX-512) runs vectorised in the broadcast multiply-sum's fused loop
SHORT_SUM = 16
# elementwise work per product of the compiled form, against one of the broadcast multiply-sum:
# its products stay in registers, where the other's short innermost loop leaves lanes idle
PRODUCT_COST = 0.5


def index_tuples(extents: list[int]) -> list[tuple[int, ...]]:
    """Every index of axes of these sizes, the last axis fastest."""
    tuples: list[tuple[int, ...]] = [()]
    for extent in extents:
        tuples = [t + (k,) for t in tuples for k in range(extent)]
    return tuples


def term_name(axes: list[str], index: tuple[int, ...]) -> str:
    return ", ".join(f"{a}={k}" for a, k in zip(axes, index, strict=True))


def aligned_term(value: Value, kept: list[str], fixed_axes: list[str], index: tuple[int, ...]) -> ir.Expr:
    """``value`` with ``fixed_axes`` (all of them its own) fixed at ``index`` and None where it
    lacks a kept axis, so that terms broadcast to the kept layout.  Indexes the tensor as it
    is when its kept axes are already in order, else permutes first."""
    present = [a for a in value.axes if a in kept]
    if present != [a for a in kept if a in value.axes]:
        order = tuple(value.axes.index(a) for a in [a for a in kept if a in value.axes] + fixed_axes)
        expr = ir.permute(ir.Var(value.var), order)
        axes = [value.axes[k] for k in order]
    else:
        expr, axes = ir.Var(value.var), list(value.axes)
    fixed = dict(zip(fixed_axes, index, strict=True))
    items: list = []
    position = next((k for k, a in enumerate(kept) if a in axes), len(kept))
    for axis in axes:
        if axis in fixed:
            items.append(ir.Const(fixed[axis], frozenset(fixed_axes)))
            continue
        target = kept.index(axis)
        items.extend([None] * (target - position))
        items.append(ir.SLICE)
        position = target + 1
    items.extend([None] * (len(kept) - position))
    while items and items[-1] is ir.SLICE:
        items.pop()
    return ir.Index(expr, tuple(items)) if items else expr


@dataclass(frozen=True)
class Layout:
    """The compiled form's axes: the loop runs along ``long``; ``tiny`` and ``summed`` are spelled out."""

    long: list[str]
    tiny: list[str]
    summed: list[str]


def layout(step: Contraction) -> Layout | None:
    """The compiled written-out form of ``step``, or None where it does not apply: no long kept
    axis, a sum of a vector's length, too many products a row, a summed axis in one operand only,
    a size read at run time."""
    summed = step.summed
    if step.dtype == torch.bool or not summed or any(x not in step.a.axes or x not in step.b.axes for x in summed):
        return None
    long = [x for x in step.kept if step.sizes[x] >= VECTOR_MIN]
    tiny = [x for x in step.kept if step.sizes[x] < VECTOR_MIN]
    terms = step.numel(summed)
    if not long or terms >= SHORT_SUM or not 0 < step.numel(tiny) * terms <= WRITTEN_OUT_PRODUCTS or step.free.intersection(tiny + summed):
        return None
    return Layout(long, tiny, summed)


def price(step: Contraction, form: Layout) -> Estimate:
    """One fused loop: each operand read once, the result written once, no temporary."""
    rows, elements = step.numel(form.long), step.numel(form.tiny)
    products = elements * step.numel(form.summed)
    itemsize = step.dtype.itemsize
    inputs = step.numel(step.a.axes) + step.numel(step.b.axes)
    out = rows * elements
    return Estimate(
        flops=2 * rows * products,
        bytes=(inputs + out) * itemsize,
        ops=1,
        elementwise=rows * products * PRODUCT_COST,
        memory=out * itemsize,
        allocations=(out * itemsize,),
    )


def _in_order(value: Value, form: Layout, names: Names, setup: list) -> Value:
    """``value``, or a view of it with its long axes in the result's order (assigned once, so
    that no term permutes)."""
    want = [a for a in form.long if a in value.axes]
    if [a for a in value.axes if a in form.long] == want:
        return value
    order = tuple([value.axes.index(a) for a in want] + [k for k, a in enumerate(value.axes) if a not in form.long])
    var, axes = names.fresh("v"), tuple(value.axes[k] for k in order)
    setup.append(ir.Assign(var, ir.permute(ir.Var(value.var), order), f"written out: {' '.join(axes)}, a view"))
    return Value(var, axes)


def _element(step: Contraction, form: Layout, operands: tuple, element: tuple[int, ...]) -> ir.Expr:
    """One element of the tiny axes: its products over every index of the summed axes, added."""
    products = []
    for index in index_tuples([step.sizes[x] for x in form.summed]):
        fixed = dict(zip(form.tiny, element, strict=True)) | dict(zip(form.summed, index, strict=True))
        factors = []
        for value in operands:
            axes = [x for x in fixed if x in value.axes]
            factors.append(aligned_term(value, form.long, axes, tuple(fixed[x] for x in axes)))
        products.append(ir.BinOp("*", *factors))
    return functools.reduce(lambda left, right: ir.BinOp("+", left, right), products)


def emit(step: Contraction, form: Layout, names: Names) -> Lowered:
    """One statement per element of the tiny axes, then the elements stacked last and, with more
    than one tiny axis, split into them (with none, the one sum itself)."""
    setup: list = []
    operands = tuple(_in_order(value, form, names, setup) for value in (step.a, step.b))
    if not form.tiny:
        return Lowered(_element(step, form, operands, ()), tuple(form.long), tuple(setup))
    elements = []
    for element in index_tuples([step.sizes[x] for x in form.tiny]):
        var = names.fresh("e")
        setup.append(ir.Assign(var, _element(step, form, operands, element), f"written out: {term_name(form.tiny, element)}"))
        elements.append(ir.Var(var))
    result: ir.Expr = ir.Call("torch.stack", (ir.Tuple(tuple(elements)), ir.Const(-1)))
    if len(form.tiny) > 1:
        result = ir.Method(result, "unflatten", (ir.Const(-1), ir.Const(tuple(step.sizes[x] for x in form.tiny), frozenset(form.tiny))))
    return Lowered(result, tuple(form.long + form.tiny), tuple(setup))
