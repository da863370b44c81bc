"""The tiny expression language a plan is written in, before it becomes Python.

A plan is a list of statements over these nodes; ``codegen`` renders them.
Function and method names are checked against allow-lists when a node is
made, so nothing else can ever reach the generated source.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

FUNCTIONS = frozenset(
    {
        "torch.matmul",
        "torch.amax",
        "torch.amin",
        "torch.logsumexp",
        "torch.unravel_index",
        "torch.maximum",
        "torch.minimum",
        "torch.where",
        "torch.empty",
        "torch.full",
        "torch.stack",
        "torch.addcmul",
        "torch.mul",
        "torch.add",
        "torch.diagonal",
        "torch.logaddexp",
        "torch.is_grad_enabled",
        "torch.zeros",
        "torch.take_along_dim",
        "torch.arange",
        "torch.linalg.vecdot",
        "torch.linalg.vector_norm",
        "torch.nonzero",
        "torch.index_select",
        "torch.logical_not",
        "torch.exp",
        "torch.zeros_like",
        "torch.get_float32_matmul_precision",
        "torch.any",
        "torch.all",
        # a rank's function on DTensors (mesh_code): einplan's own plan, then one collective
        "einplan.bl",
        "einplan.einsum",
        "DTensor.from_local",
        "Shard",
        "Replicate",
        "Partial",
        "collectives.all_reduce_sum",
        "collectives.all_gather_reduce",
        "collectives.all_gather_arg",
        "collectives.no_rows",
    }
)
METHODS = frozenset(
    {
        "reshape",
        "permute",
        "diagonal",
        "sum",
        "mean",
        "amax",
        "amin",
        "argmax",
        "argmin",
        "max",
        "min",
        "unsqueeze",
        "squeeze",
        "flatten",
        "expand",
        "contiguous",
        "logsumexp",
        "narrow",
        "copy_",
        "add_",
        "mul_",
        "addcmul_",
        "to",
        "movedim",
        "detach",
        "neg",
        "view",
        "unflatten",
        "stride",
        "sub_",
        "exp_",
        "log_",
        "abs",
        "prod",
        "to_local",
        "get_group",
    }
)
ATTRIBUTES = frozenset({"mT", "shape", "values", "indices", "device", "requires_grad", "needs_input_grad", "device_mesh"})
OPERATORS = frozenset({"*", "+", "-", "@", "/", "//", "%", ">", "<", ">=", "!=", "==", "&", "|"})


@dataclass(frozen=True)
class Var:
    name: str

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"not a generated name: {self.name!r}")


@dataclass(frozen=True)
class Const:
    """An int, float, None, bool, tuple of those, or a torch dtype.

    ``sizes``: the axes whose sizes this number was computed from (a reshape's
    dims, a chunk length, a loop bound).  Code whose constants name no axis
    does not depend on that axis's size: :func:`sized_axes` collects them.
    """

    value: Any
    sizes: frozenset = field(default=frozenset(), compare=False)


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple
    kwargs: tuple = ()

    def __post_init__(self):
        if self.func not in FUNCTIONS:
            raise ValueError(f"function {self.func!r} is not in the code generator's allow-list")
        if not all(isinstance(k, str) and k.isidentifier() for k, _ in self.kwargs):
            raise ValueError(f"not keyword names: {self.kwargs!r}")


@dataclass(frozen=True)
class Method:
    obj: Expr
    name: str
    args: tuple = ()
    kwargs: tuple = ()

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"method {self.name!r} is not in the code generator's allow-list")


@dataclass(frozen=True)
class Attr:
    obj: Expr
    name: str

    def __post_init__(self):
        if self.name not in ATTRIBUTES:
            raise ValueError(f"attribute {self.name!r} is not in the code generator's allow-list")


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Expr
    right: Expr

    def __post_init__(self):
        if self.op not in OPERATORS:
            raise ValueError(f"operator {self.op!r} is not allowed")


@dataclass(frozen=True)
class Index:
    """``obj[items]``; items are ints, None (new axis), ``SLICE``, ``ELLIPSIS`` or a ``Range``."""

    obj: Expr
    items: tuple


@dataclass(frozen=True)
class Range:
    """A slice ``start:stop`` inside an ``Index``; either end may be an expression."""

    start: Expr
    stop: Expr


@dataclass(frozen=True)
class Apply:
    """``function.apply(args)``: run one of the plan's autograd functions (see :class:`Function`).

    ``function`` is the function's local name; the rendered class name prefixes it with the
    name of the generated function, so that the functions of one module never clash."""

    function: str
    args: tuple

    def __post_init__(self):
        if not self.function.isidentifier():
            raise ValueError(f"not a generated name: {self.function!r}")


@dataclass(frozen=True)
class Launch:
    """``kernel[grid](args, **kwargs)``: launch one of the plan's Triton kernels (see :class:`Kernel`);
    like :class:`Apply`, its local name is prefixed with the generated function's."""

    kernel: str
    grid: tuple
    args: tuple
    kwargs: tuple = ()

    def __post_init__(self):
        names = (self.kernel, *(k for k, _ in self.kwargs))
        if not all(isinstance(n, str) and n.isidentifier() for n in names):
            raise ValueError(f"not generated names: {names!r}")


@dataclass(frozen=True)
class Kept:
    """``helper(view, slot, *inputs)``: ``view.contiguous()`` written into a buffer kept between calls
    (one per thread and ``slot``; see :func:`codegen.kept_source`), not allocated anew on each.

    ``helper`` is the helper's local name; like :class:`Apply`'s, the rendered name prefixes it
    with the generated function's."""

    view: Expr
    slot: str
    inputs: tuple = ()  # the step's other operands: a fresh copy while autograd records any
    helper: str = "kept"

    def __post_init__(self):
        if not (self.slot.isidentifier() and self.helper.isidentifier()):
            raise ValueError(f"not generated names: {(self.slot, self.helper)!r}")


@dataclass(frozen=True)
class IfExp:
    """``then if condition else otherwise``."""

    condition: Expr
    then: Expr
    otherwise: Expr


@dataclass(frozen=True)
class BoolOp:
    """``a or b or ...`` / ``a and b and ...``."""

    op: str
    values: tuple

    def __post_init__(self):
        if self.op not in ("and", "or"):
            raise ValueError(f"boolean operator {self.op!r} is not allowed")


@dataclass(frozen=True)
class Tuple:
    """``(a, b, ...)`` of expressions: a shape read from tensors (``(chunk.shape[0],)``)."""

    items: tuple


SLICE = slice(None)
ELLIPSIS = ...

Expr = Var | Const | Call | Method | Attr | BinOp | Index | IfExp | BoolOp | Tuple | Apply | Launch | Kept


@dataclass(frozen=True)
class Assign:
    """``target = value``; the target is a generated name or an ``Index`` of one."""

    target: str | Index
    value: Expr
    comment: str = ""


@dataclass(frozen=True)
class Do:
    """An expression evaluated for its effect, e.g. ``t0.addcmul_(a, b)``."""

    value: Expr
    comment: str = ""


@dataclass(frozen=True)
class Loop:
    """``for var in range(start, stop, step): body``; ``stop`` is usually read from a tensor
    (``x0.shape[0]``) and ``step`` is a ``Const`` that records the sizes it came from."""

    var: str
    start: int
    stop: int | Expr
    step: int | Const
    body: tuple
    comment: str = ""


@dataclass(frozen=True)
class If:
    """``if condition: body`` (an autograd function's backward skips a gradient nobody needs)."""

    condition: Expr
    body: tuple


@dataclass(frozen=True)
class Delete:
    """``del a, b``: drop generated names, so a chunk's temporary is freed before the next is made."""

    names: tuple

    def __post_init__(self):
        if not all(isinstance(n, str) and n.isidentifier() for n in self.names):
            raise ValueError(f"not generated names: {self.names!r}")


@dataclass(frozen=True)
class Return:
    value: Expr | tuple


@dataclass(frozen=True)
class Save:
    """``ctx.save_for_backward(names)`` in an autograd function's forward."""

    names: tuple


@dataclass(frozen=True)
class Saved:
    """``names = ctx.saved_tensors`` at the start of an autograd function's backward."""

    names: tuple


Stmt = Assign | Do | Loop | If | Delete | Return | Save | Saved


@dataclass(frozen=True)
class Function:
    """A ``torch.autograd.Function`` the plan defines: a chunked step whose backward loops over
    the same chunks, recomputing each one, instead of autograd keeping every chunk.

    ``inputs`` are the forward's parameters (after ``ctx``), ``grads`` the backward's."""

    name: str
    doc: str
    inputs: tuple
    forward: tuple
    grads: tuple
    backward: tuple

    def __post_init__(self):
        names = (self.name, *self.inputs, *self.grads)
        if not all(isinstance(n, str) and n.isidentifier() for n in names):
            raise ValueError(f"not generated names: {names!r}")


@dataclass(frozen=True)
class Kernel:
    """A Triton kernel the plan defines (the ``fused`` lowering): its source is einplan's fixed
    template (``fused.kernel_source``) with a generated name, rendered as it is."""

    name: str
    source: str

    def __post_init__(self):
        if not self.name.isidentifier() or not self.source.startswith("@triton.jit\ndef " + self.name + "("):
            raise ValueError(f"not a generated kernel: {self.name!r}")


# --- small helpers the planner uses -------------------------------------------------


def permute(expr: Expr, order: tuple[int, ...]) -> Expr:
    """``expr.permute(order)``, or ``expr`` itself when the order is the identity."""
    if order == tuple(range(len(order))):
        return expr
    if len(order) >= 2 and order == tuple(range(len(order) - 2)) + (len(order) - 1, len(order) - 2):
        return Attr(expr, "mT")
    return Method(expr, "permute", tuple(Const(i) for i in order))


def reshape(expr: Expr, shape: tuple[int, ...], sizes: frozenset = frozenset()) -> Expr:
    """``expr.reshape(shape)``; ``sizes``: the axes the shape's numbers come from."""
    if not shape:
        return Method(expr, "reshape", (Const((), sizes),))
    return Method(expr, "reshape", tuple(Const(s, sizes) for s in shape))


def shape_of(var: str, dim: int) -> Expr:
    """``var.shape[dim]``: a size read from a tensor when the code runs."""
    return Index(Attr(Var(var), "shape"), (dim,))


def plus(left: Expr, right: Expr) -> Expr:
    """``left + right``, or the other side alone when one is the constant 0."""
    if isinstance(left, Const) and left.value == 0:
        return right
    if isinstance(right, Const) and right.value == 0:
        return left
    return BinOp("+", left, right)


def walk(nodes: Iterable) -> Iterator:
    """Every node in ``nodes`` (statements, expressions, autograd functions, nested in tuples and
    lists) and in their fields, a :class:`Const` without looking inside it."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (tuple, list)):
            stack.extend(node)
        elif is_dataclass(node) and not isinstance(node, (type, Const)):
            stack.extend(getattr(node, f.name) for f in fields(node))


def sized_axes(nodes: Iterable) -> frozenset:
    """Every axis whose size some constant in ``nodes`` (statements or expressions) was computed from."""
    return frozenset(axis for node in walk(nodes) if isinstance(node, Const) for axis in node.sizes)
