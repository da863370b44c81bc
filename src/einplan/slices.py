"""A broadcast product written one slice at a time: one multiply per index of a short kept axis.

torch's CPU loop runs the two innermost merged dims of an elementwise op per pass
(:func:`cost.elementwise_passes`), so a batch of tiny outer products,
``x[:, :, None] * y[:, None, :]``, makes one pass per row of its batch.  With its
short axis fixed at each index, each multiply merges into two dims and makes one
pass, written into the result's slice through ``out=``::

    t0 = torch.empty((262144, 2, 2), dtype=torch.float32, device=x0.device)
    torch.mul(x0, x1[:, 0, None], out=t0[:, :, 0])  # j=0
    torch.mul(x0, x1[:, 1, None], out=t0[:, :, 1])  # j=1

Autograd does not record the ``out=`` writes: a plan for calls that autograd
records (``Options.grad``) has no slices, and a plan with slices says so
(``Plan.grad_matters``), as a plan with unrolled blocks does.  Slices are for a
CPU's eager code only: torch.compile writes its own loop, and a CUDA kernel
indexes every dim itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ir
from .contraction import SHORT_ROW, Context, Contraction, Lowered, Names, broadcast_passes, gathered, new_tensor, sized
from .cost import Estimate
from .written_out import aligned_term

SLICE_MAX = 16  # a kept axis this short may be fixed: one torch op per index


@dataclass(frozen=True)
class Slices:
    """The result laid out in ``layout``, written one index of ``axis`` at a time."""

    axis: str
    layout: tuple[str, ...]


def slices(step: Contraction, context: Context) -> Slices | None:
    """The slices of a product nothing is summed from whose broadcast makes passes, along the
    innermost short axis of one operand only whose slices make none; None where there is none, or
    in a plan for autograd, torch.compile or a GPU, or with a size read at run time."""
    options = context.options
    if step.summed or step.free or options.compiled or options.grad or context.model.kind != "cpu":
        return None
    layout = tuple(step.kept)
    if not broadcast_passes(step, list(layout)):
        return None
    for axis in reversed(layout):  # the innermost first: faster than an outer one, as measured
        if step.sizes[axis] > SLICE_MAX or (axis in step.a.axes) == (axis in step.b.axes):
            continue
        if not broadcast_passes(step, list(layout), fixed=axis):
            return Slices(axis, layout)
    return None


def cheaper(step: Contraction, context: Context, whole: Estimate) -> tuple[Estimate, Slices | None]:
    """The product's estimate written whole (``whole``, and None), or in slices (their estimate and
    the slices) where they cost less."""
    form = slices(step, context)
    if form is None:
        return whole, None
    sliced = price(step, form)
    return (sliced, form) if context.model.seconds(sliced) < context.model.seconds(whole) else (whole, None)


def price(step: Contraction, form: Slices) -> Estimate:
    """One multiply per index: each reads all of the operand without the axis and its slice of the
    other, and writes its slice of the result (with a stride where the axis is the innermost)."""
    count, itemsize = step.sizes[form.axis], step.dtype.itemsize
    holder, other = (step.a, step.b) if form.axis in step.a.axes else (step.b, step.a)
    rest = [x for x in form.layout if x != form.axis]
    out = step.numel(form.layout)
    # a slice along an innermost axis steps through the rest by that axis's size (at least 2: fixing
    # an axis of 1 changes no pass, so slices never fix one)
    holder_traffic = gathered(count, itemsize) if holder.axes[-1] == form.axis else 1.0
    result_traffic = gathered(count, itemsize) if form.layout[-1] == form.axis else 1.0
    reads = count * step.numel(other.axes) + step.numel(holder.axes) * holder_traffic
    inner = step.sizes[rest[-1]] if rest else 1
    return Estimate(
        flops=out,
        bytes=(reads + out * result_traffic) * itemsize,
        ops=count + 1,
        elementwise=out * max(1.0, SHORT_ROW / max(inner, 1)),
        memory=out * itemsize,
        allocations=(out * itemsize,),
    )


def emit(step: Contraction, form: Slices, names: Names) -> Lowered:
    """The result allocated, then one ``torch.mul(..., out=result[..., k, ...])`` per index ``k``."""
    axis, layout = form.axis, list(form.layout)
    rest = [x for x in layout if x != axis]
    result = names.fresh()
    empty = new_tensor("torch.empty", sized(tuple(step.sizes[x] for x in layout), layout), step.dtype)
    setup: list = [ir.Assign(result, empty, f"elementwise-sum: the result, one slice of {axis} at a time")]
    position = layout.index(axis)
    for k in range(step.sizes[axis]):
        index = ir.Const(k, frozenset([axis]))
        factors = tuple(aligned_term(v, rest, [axis], (k,)) if axis in v.axes else aligned_term(v, rest, [], ()) for v in (step.a, step.b))
        into = ir.Index(ir.Var(result), (ir.SLICE,) * position + (index,))
        setup.append(ir.Do(ir.Call("torch.mul", factors, (("out", into),)), f"{axis}={k}"))
    return Lowered(ir.Var(result), tuple(layout), tuple(setup))
