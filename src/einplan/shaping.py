"""How a result gets its final shape: the views of inputs, the created axes, the output's reshape.

``view`` reshapes an input (splits, dropped 1s) with -1 for one whole dim where that is not
ambiguous; ``repeat`` broadcasts the created output axes (einops' repeat); ``finish`` permutes to
the output's order, merges composites and adds literal 1s.
"""

from __future__ import annotations

import math

from . import ir
from .bind import Bound
from .contraction import Value, sized
from .resolve import spell_item


def view(expr: ir.Expr, shape: tuple[int, ...], axes: tuple[str, ...], direct: list[bool] | None) -> ir.Expr:
    """``expr.reshape(shape)`` with -1 for the first axis that is a whole dim of the tensor
    (``direct``; None when unknown), so that the code does not depend on that axis's size."""
    free = next((k for k, whole in enumerate(direct or ()) if whole and axes.count(axes[k]) == 1), None)
    if free is None or ambiguous(shape, free):
        return ir.reshape(expr, shape, frozenset(axes))
    dims = tuple(-1 if k == free else s for k, s in enumerate(shape))
    return ir.reshape(expr, dims, frozenset(axes) - {axes[free]})


def ambiguous(shape: tuple[int, ...], free: int) -> bool:
    """Whether -1 at ``free`` would be ambiguous: the other dims hold no element."""
    return math.prod(s for k, s in enumerate(shape) if k != free) == 0


def whole_dims(items) -> list[bool] | None:
    """Per dim after the view, whether it is a whole dim of the tensor (an axis, not a part of a
    composite); None when an ellipsis makes the positions data-dependent.  An item with an ``id``
    is one axis, one with ``parts`` a composite, a literal 1 is dropped."""
    whole: list[bool] = []
    for item in items:
        if hasattr(item, "id"):
            whole.append(True)
        elif hasattr(item, "parts"):
            if any(hasattr(part, "group") for part in item.parts):
                return None
            whole.extend(False for part in item.parts if hasattr(part, "id"))
        elif hasattr(item, "group"):
            return None
    return whole


def finish(value: Value, bound: Bound) -> ir.Expr:
    """Permute to the output's order, then merge composites and add literal 1s."""
    layout = bound.layout or bound.output_axes
    expr = ir.permute(ir.Var(value.var), tuple(value.axes.index(a) for a in layout))
    if bound.output_shape is None:
        return expr
    items = bound.resolved.output
    if any(hasattr(item, "group") for item in items):  # each output item is one dim, else no -1
        return ir.reshape(expr, bound.output_shape, frozenset(layout))
    ids = [getattr(item, "id", "") for item in items]
    free = next((k for k, i in enumerate(ids) if i and i not in bound.created), None)
    if free is None or ambiguous(bound.output_shape, free):
        return ir.reshape(expr, bound.output_shape, frozenset(layout))
    shape = tuple(-1 if k == free else s for k, s in enumerate(bound.output_shape))
    return ir.reshape(expr, shape, frozenset(layout) - {ids[free]})


def repeat(bound: Bound, values: list[Value], names) -> tuple[list, list[Value], str]:
    """The created output axes (einops' repeat): a broadcast view, copied only where the output
    merges a created axis with others; returns (statements, values, the step in pattern form)."""
    created = bound.created
    copies = [
        item for item in bound.resolved.output if hasattr(item, "parts") and any(getattr(p, "id", None) in created for p in item.parts)
    ]
    verb = " merges a created axis" if len(copies) == 1 else " merge created axes"
    what = "a copy, since " + ", ".join(spell_item(c) for c in copies) + verb if copies else "a view, no copy"
    shape = sized(tuple(bound.sizes[a] if a in created else -1 for a in bound.layout), created)
    statements, results = [], []
    for value in values:
        expr = ir.permute(ir.Var(value.var), tuple(value.axes.index(a) for a in bound.output_axes))
        items = [None if a in created else ir.SLICE for a in bound.layout]
        while items[-1] is ir.SLICE:
            items.pop()
        spread = ir.Index(expr, tuple(items))
        var = names.fresh()
        statements.append(ir.Assign(var, ir.Method(spread, "expand", (shape,)), f"repeat: {' '.join(created)} new, broadcast ({what})"))
        results.append(Value(var, bound.layout))
    return statements, results, f"{' '.join(bound.output_axes)} -> {' '.join(bound.layout)}"
