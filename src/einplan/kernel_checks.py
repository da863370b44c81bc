"""Why a call cannot run on a kernel: the axis and the size it was planned for, the dtype and device.

A kernel runs the plan it was made for; these messages name what differs
(``axis 'b2' is 10 in this call ..., but kernel 'quad' was planned for b2=20``)
and what to do instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import plan as planner
from .bind import Bound
from .errors import EinplanError
from .resolve import Ell, Resolved, axes_of
from .source import steps_text


def _where(resolved: Resolved, base: str, shapes) -> str:
    for k, (items, shape) in enumerate(zip(resolved.inputs, shapes, strict=False)):
        if any(a.base == base for a in axes_of(items)) or any(isinstance(i, Ell) and i.group == base for i in items):
            return f"operand {k} '{resolved.pattern.inputs[k].text}' has shape {tuple(shape)}"
    return f"shapes {[tuple(s) for s in shapes]}"


def _size_change(planned: Bound, bound: Bound, dynamic: Sequence[str]):
    """The first axis id outside the dynamic axes whose size differs: (id, base, old, new), or None."""
    for axis_id in list(planned.sizes) + [i for i in bound.sizes if i not in planned.sizes]:
        base = planned.bases[axis_id] if axis_id in planned.bases else bound.bases[axis_id]
        old, new = planned.sizes.get(axis_id), bound.sizes.get(axis_id)
        if base not in dynamic and not base.isdigit() and old != new:
            return axis_id, base, old, new
    return None


def mismatch(name: str, planned: Bound, bound: Bound, dynamic: Sequence[str], shapes) -> str | None:
    """Why a call bound as ``bound`` cannot run on a kernel planned as ``planned``, or None."""
    change = _size_change(planned, bound, dynamic)
    if change is None:
        return None
    axis_id, base, old, new = change
    rule = f"only its dynamic axes ({', '.join(dynamic)}) may change size" if dynamic else "it has no dynamic axes"
    where = _where(planned.resolved, base, shapes)
    if old is None or new is None:
        count = len(planned.groups.get(base, ()))
        return f"{base!r} covers another number of dims here ({where}) than the {count} kernel {name!r} was planned for; {rule}"
    label = f"dim {planned.groups[base].index(axis_id)} of {base!r}" if base in planned.groups else f"axis {base!r}"
    return (
        f"{label} is {new} in this call ({where}), but kernel {name!r} "
        f"was planned for {base}={old}; {rule}. "
        f"Make a kernel for these shapes, or pass dynamic=({base!r},)"
    )


def structure_message(name: str, dynamic: Sequence[str], old: planner.Plan, new: planner.Plan) -> str:
    """Why a dynamic size is refused: the planner would choose other lowerings or another path."""

    def at(bound: Bound) -> str:
        named = [f"{a}={s}" for a, s in bound.named_sizes.items() if a in dynamic]
        return ", ".join(named + [f"{g}={s}" for g, s in bound.group_sizes.items() if g in dynamic])

    return (
        f"kernel {name!r} was planned at {at(old.bound)} as: {steps_text(old)}, path {list(old.path)}; "
        f"at {at(new.bound)} the planner would choose: {steps_text(new)}, path {list(new.path)}. "
        f"A kernel runs one plan: make another kernel for these sizes, or force one with lowering=..."
    )


def check_kind(name: str, planned: Bound, dtype: torch.dtype, device: torch.device) -> None:
    """A call's dtype and device type are those the kernel was planned for."""
    if dtype != planned.dtype:
        raise EinplanError(
            f"kernel {name!r} was planned for {planned.dtype}, but the tensors are {dtype}; "
            f"make a kernel for {dtype} (einplan.kernel(..., dtype={dtype}))"
        )
    if torch.device(device).type != planned.device.type:
        raise EinplanError(
            f"kernel {name!r} was planned for device {planned.device}, but the tensors are on {device}; "
            f"make a kernel for that device (einplan.kernel(..., device={str(device)!r}))"
        )
