"""One contraction step as the lowerings see it: its operands, the axes it keeps, its sizes.

A :class:`Contraction` is frozen: a lowering prices it and emits it from the
same description.  :class:`Context` carries what emitting needs beside it (fresh
names, the options, the device's constants).  The views every lowering builds
from its operands live here too: ``align`` (axes reordered and broadcast),
``grouped``/``ungrouped`` (axes merged into one dim per group, and split again)
and ``rows_of`` (rows of one axis); and ``new_tensor``, the tensors they allocate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from . import ir
from .cost import DeviceModel, Estimate, elementwise_passes


@dataclass(frozen=True)
class Options:
    lowering: str | None = None  # force one lowering for every contraction step
    memory_limit: int | None = None  # bytes an intermediate may take
    compiled: bool = False  # torch.compile will trace the code: a broadcast product and its sum fuse
    grad: bool = False  # autograd records the call: a chunked step's backward runs in chunks too


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


class Names:
    """Fresh variable names for generated code, by role and numbered in source order: t0, chunk1, ..."""

    def __init__(self, count: int = 0):
        self.count = count

    def fresh(self, prefix: str = "t") -> str:
        name = f"{prefix}{self.count}"
        self.count += 1
        return name


# A temporary copy this large (and no larger than the cap) is written into a buffer kept between
# calls (``ir.Kept``) on a device whose fresh memory costs page faults: glibc can hand a few-MB
# allocation back to the system when it is freed, and every call then faults its pages in anew.
KEEP_MIN = 2**20
KEEP_MAX = 64 * 2**20


@dataclass
class Context:
    """What emitting needs beside the step: fresh names, the options, the device's constants."""

    names: Names
    options: Options
    model: DeviceModel

    def forced(self, lowering: str) -> bool:
        return self.options.lowering == lowering

    def keeps(self, nbytes: float) -> bool:
        """Whether a temporary copy of ``nbytes`` is written into a buffer kept between calls."""
        return self.model.fresh_page > 0 and KEEP_MIN <= nbytes <= KEEP_MAX


@dataclass(frozen=True)
class Contraction:
    """One step: ``a`` and ``b`` contracted to the axes in ``keep``.

    ``rank`` orders the result's axes; ``free`` are the axes whose size the code
    reads from the tensors when it runs (a chunk's rows): no number may bake them in.
    """

    a: Value
    b: Value
    keep: frozenset
    sizes: Mapping[str, int]
    rank: Callable[[str], tuple]
    dtype: torch.dtype
    free: frozenset = frozenset()

    @property
    def union(self) -> list[str]:
        return list(dict.fromkeys(self.a.axes + self.b.axes))

    @property
    def kept(self) -> list[str]:
        return sorted((x for x in self.union if x in self.keep), key=self.rank)

    @property
    def summed(self) -> list[str]:
        return [x for x in self.union if x not in self.keep]

    def numel(self, axes) -> int:
        return numel(self.sizes, axes)

    def fixed(self, axes) -> frozenset:
        """The axes among ``axes`` whose sizes a number in the code may come from."""
        return frozenset(axes) - self.free

    def describe(self, output: tuple[str, ...] | None = None) -> str:
        return describe([self.a.axes, self.b.axes], tuple(self.kept) if output is None else output)


@dataclass(frozen=True)
class Lowered:
    expr: ir.Expr  # the step's result, assigned to the step's variable
    axes: tuple[str, ...]
    setup: tuple = ()  # statements that run before (the unrolled terms)


def describe(inputs, output) -> str:
    """A step in pattern form: ``b n, n m -> b m``."""
    return ", ".join(" ".join(a) for a in inputs) + " -> " + " ".join(output)


def numel(sizes: Mapping[str, int], axes) -> int:
    return math.prod(sizes[a] for a in axes)


CACHE_LINE = 64  # bytes
SHORT_ROW = 8  # an elementwise op whose inner loop is shorter than this costs more per element


def gathered(stride: int, itemsize: int) -> float:
    """How many times the traffic of a pass that steps ``stride`` elements at a time exceeds a
    contiguous one's: each element drags in part of a cache line, up to a whole line."""
    return 1.0 + min(stride, CACHE_LINE // itemsize) / 2


def broadcast_passes(step: Contraction, layout: list[str], fixed: str | None = None) -> float:
    """The passes torch's CPU loop makes over a broadcast multiply of ``step``'s operands laid out in
    ``layout`` (see :func:`cost.elementwise_passes`): the result contiguous in it, each operand
    contiguous in its own axes and broadcast along the others; with ``fixed``, over the slice of
    each at one index of that axis."""

    def strides(axes) -> list[int]:
        return [numel(step.sizes, axes[axes.index(x) + 1 :]) if x in axes else 0 for x in layout if x != fixed]

    tensors = (strides(layout), strides(list(step.a.axes)), strides(list(step.b.axes)))
    return elementwise_passes([step.sizes[x] for x in layout if x != fixed], tensors)


def sum_over(expr, dims: tuple[int, ...], dtype: torch.dtype):
    """``expr.sum(dims)`` that keeps integer dtypes (torch promotes them to int64)."""
    arg = ir.Const(dims[0] if len(dims) == 1 else dims)
    kwargs = () if (dtype.is_floating_point or dtype.is_complex) else (("dtype", ir.Const(dtype)),)
    return ir.Method(expr, "sum", (arg,), kwargs)


def assign_result(lowered: Lowered, comment: str, names: Names, prefix: str = "t") -> tuple[str, tuple]:
    """The lowering's statements ending in ``var = result``; returns (var, statements)."""
    if lowered.setup and isinstance(lowered.expr, ir.Var):
        return lowered.expr.name, lowered.setup  # the terms already built it in place
    var = names.fresh(prefix)
    return var, (*lowered.setup, ir.Assign(var, lowered.expr, comment))


def take_pair(values: list[Value], pair, keep: frozenset) -> tuple[list[Value], frozenset]:
    """One step of a contraction path: pop ``pair`` from ``values``; returns the values taken and
    the axes the step must keep (``keep`` and every axis a value left still has)."""
    taken = [values[k] for k in pair]
    for k in sorted(pair, reverse=True):
        values.pop(k)
    return taken, keep.union(*(set(v.axes) for v in values))


def _probe(op: str, dtype: torch.dtype) -> None:
    """Run the torch ops that ``op`` (a clause, ``matmul``, ``sum``) emits, on a tiny CPU tensor."""
    t = torch.zeros((2, 2), dtype=dtype)
    if op in ("max", "min"):
        getattr(torch, f"a{op}")(t, 0)
        getattr(torch, "maximum" if op == "max" else "minimum")(t, t)
    elif op in ("argmax", "argmin"):
        getattr(t, op)(0)
        getattr(t, op[3:])(0)
    elif op == "logsumexp":
        torch.logaddexp(*(torch.logsumexp(t, 0),) * 2)
    elif op == "mean":
        floating = dtype.is_floating_point or dtype.is_complex
        t.mean(0, dtype=None if floating else torch.get_default_dtype())
    elif op == "prod":
        t.prod(0)
    elif op in ("any", "all"):
        getattr(torch, op)(t, 0)
    elif op == "matmul":
        torch.matmul(t, t)
    elif op == "addcmul":
        t.clone().addcmul_(t, t)
    else:  # sum, as sum_over writes it: also the elementwise product it follows
        floating = dtype.is_floating_point or dtype.is_complex
        (t * t).sum(0, dtype=None if floating else dtype)


@functools.cache
def torch_lacks(op: str, dtype: torch.dtype) -> str:
    """Why torch (on a CPU) cannot run ``op`` on ``dtype`` tensors, or "" when it can."""
    try:
        with torch.no_grad():
            _probe(op, dtype)
    except (RuntimeError, NotImplementedError, TypeError) as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return ""


def align(value: Value, layout) -> ir.Expr:
    """``value`` permuted to the order of ``layout`` with None for its missing axes (those before its
    first axis broadcast by themselves)."""
    present = [a for a in layout if a in value.axes]
    expr = ir.permute(ir.Var(value.var), tuple(value.axes.index(a) for a in present))
    first = next((k for k, a in enumerate(layout) if a in value.axes), len(layout))
    items = [ir.SLICE if a in value.axes else None for a in layout[first:]]
    if any(i is None for i in items):
        while items and items[-1] is ir.SLICE:
            items.pop()
        expr = ir.Index(expr, tuple(items))
    return expr


def grouped(value: Value, groups: list[list[str]]) -> ir.Expr:
    """``value`` permuted to the concatenated groups, then one dim per group: a group of
    several axes flattened, an empty group a new dim of 1.  No size is written."""
    layout = [x for group in groups for x in group]
    expr = ir.permute(ir.Var(value.var), tuple(value.axes.index(a) for a in layout))
    position = 0
    for group in groups:
        if not group:
            expr = ir.Method(expr, "unsqueeze", (ir.Const(position),))
        elif len(group) > 1:
            expr = ir.Method(expr, "flatten", (ir.Const(position), ir.Const(position + len(group) - 1)))
        position += 1
    return expr


def ungrouped(expr: ir.Expr, groups: list[list[str]], step: Contraction) -> ir.Expr:
    """The inverse of ``grouped`` on a result: merged dims split (a free axis's size as -1),
    then the dims of empty groups dropped in one ``squeeze``."""
    for position in reversed(range(len(groups))):
        group = groups[position]
        if len(group) > 1:
            shape = tuple(-1 if x in step.free else step.sizes[x] for x in group)
            expr = ir.Method(expr, "unflatten", (ir.Const(position), ir.Const(shape, step.fixed(group))))
    empty, position = [], 0
    for group in groups:
        if not group:
            empty.append(position)
        position += max(len(group), 1)
    if empty:
        expr = ir.Method(expr, "squeeze", (ir.Const(empty[0] if len(empty) == 1 else tuple(empty)),))
    return expr


DEVICE_OF = "x0"  # new tensors are made on this input's device


def new_tensor(function: str, shape, dtype: torch.dtype, *values) -> ir.Expr:
    """``torch.empty/zeros/full(shape, *values, dtype=..., device=x0.device)``; ``shape`` is a
    ``Const`` tuple or an ``ir.Tuple`` of sizes read from tensors."""
    keywords = (("dtype", ir.Const(dtype)), ("device", ir.Attr(ir.Var(DEVICE_OF), "device")))
    return ir.Call(function, (shape, *(v if isinstance(v, ir.Const) else ir.Const(v) for v in values)), keywords)


def sized(shape: tuple[int, ...], axes) -> ir.Const:
    """A shape of planned sizes, recording the axes it came from."""
    return ir.Const(tuple(shape), frozenset(axes))


def rows_of(target: Value, axis: str, start: ir.Expr, length: ir.Const) -> ir.Index:
    """``target[:, ..., start:start + length]`` along ``axis``."""
    return ir.Index(ir.Var(target.var), (ir.SLICE,) * target.axes.index(axis) + (ir.Range(start, ir.plus(start, length)),))
