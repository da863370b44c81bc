"""Stage 6: ``bl``, ``code`` and ``plan_for``, over the plan cache of :mod:`einplan.programs`.

``bl`` on a call signature it has seen costs one dict look-up plus the
generated code itself.  Inside torch.compile it looks the program up at trace
time (:mod:`einplan.tracing`).
"""

from __future__ import annotations

import torch

from . import plan as planner
from . import programs
from .errors import EinplanError
from .letters import from_sublists, read
from .programs import (  # noqa: F401  (part of this module's interface since before the split)
    CACHE_SIZE,
    cache_info,
    check_memory_limit,
    check_sizes,
    check_tensors,
    clear_cache,
    is_compiling,
    is_grad_enabled,
    make_plan,
    metadata,
    records,
    requires_grad,
    set_cache_size,
    shapes_of,
)
from .source import FUNCTION_NAME, compile_source, render  # noqa: F401
from .tracing import traced_bl


def bl(pattern: str, *tensors: torch.Tensor, lowering: str | None = None, memory_limit: int | None = None, **sizes: int):
    """Evaluate ``pattern`` on ``tensors``: plan (cached), then run the generated code.

    >>> bl("b n, m n -> b m", x, A)          # x @ A.T, A never copied
    >>> bl("b (h d), h d e -> b h e", x, W, h=8)

    Inside ``torch.compile`` the plan is looked up once at trace time (the
    compiler treats it as a constant) and the generated code is traced as plain
    torch ops: no graph break, and no recompilation while shapes stay the same.
    """
    if is_compiling():
        return traced_bl(pattern, tensors, lowering, memory_limit, sizes)
    if sizes:
        key = tuple(sizes.items())
        for value in sizes.values():
            if type(value) is not int:  # 3.0 and True hash as 3 and 1: checked before the cache sees them
                check_sizes(sizes)
    else:
        key = ()
    if memory_limit is not None and type(memory_limit) is not int:
        check_memory_limit(memory_limit)
    try:
        signature = tuple(map(metadata, tensors))
        program = programs.lookup(pattern, signature, key, lowering, memory_limit)
        if program.grad_matters and is_grad_enabled() and True in map(requires_grad, tensors):  # its backward in chunks too
            program = programs.lookup(pattern, signature, key, lowering, memory_limit, False, True)
    except AttributeError:
        check_tensors(tensors)
        raise
    except TypeError:
        if isinstance(pattern, str):
            check_tensors(tensors)
            check_sizes(sizes)
            if lowering is not None and not isinstance(lowering, str):  # unhashable: refused as explain refuses it
                raise EinplanError(f"unknown lowering {lowering!r}; choose one of {', '.join(planner.LOWERINGS)}") from None
        raise
    return program.function(*tensors)


def einsum(equation: str, *operands: torch.Tensor, lowering: str | None = None, memory_limit: int | None = None):
    """``torch.einsum`` through einplan: torch's language and meaning, einplan's plan, cache and code.

    >>> einsum("bhqd,bhkd->bhqk", q, k)      # letters, spaces ignored, '...', implicit output
    >>> einsum("xii,xip->pi", x, y)          # a repeated letter is a diagonal, as in torch

    Also ``einsum("ij,jk", [a, b])`` and torch's sublist form ``einsum(a, [0, 1], b, [1, 2])``.
    ``lowering`` and ``memory_limit`` are as for :func:`bl`.  A call signature seen before costs
    one dict look-up, as ``bl``'s does.
    """
    if is_compiling():
        return traced_einsum(equation, operands, lowering, memory_limit)
    if memory_limit is not None and type(memory_limit) is not int:
        check_memory_limit(memory_limit)
    try:
        signature = tuple(map(metadata, operands))
        program = programs.lookup(equation, signature, (), lowering, memory_limit, False, False, True)
        if program.grad_matters and is_grad_enabled() and True in map(requires_grad, operands):
            program = programs.lookup(equation, signature, (), lowering, memory_limit, False, True, True)
    except (AttributeError, TypeError):
        form = other_form(equation, operands)
        if form is None:
            read(equation)  # a TypeError that says what an equation is
            check_tensors(operands)
            if lowering is not None and not isinstance(lowering, str):  # unhashable: refused as explain refuses it
                raise EinplanError(f"unknown lowering {lowering!r}; choose one of {', '.join(planner.LOWERINGS)}") from None
            raise
        return einsum(form[0], *form[1], lowering=lowering, memory_limit=memory_limit)
    return program.function(*operands)


def traced_einsum(equation, operands: tuple, lowering, memory_limit):
    """``einsum`` while torch.compile traces: a trace-time plan look-up, then the generated torch code."""
    form = other_form(equation, operands)
    if form is not None:
        equation, operands = form[0], tuple(form[1])
    return traced_bl(equation, operands, lowering, memory_limit, {}, True)


def other_form(equation, operands: tuple) -> tuple[str, list] | None:
    """torch.einsum's other ways to pass operands, as (equation, operands): in one list
    (``einsum("ij,jk", [a, b])``) or the sublist form (``einsum(a, [0, 1], b, [1, 2])``)."""
    if isinstance(equation, str) and len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        return equation, list(operands[0])
    if isinstance(equation, torch.Tensor):
        return from_sublists((equation,) + operands)
    return None


def plan_for(
    pattern: str,
    *tensors_or_shapes,
    device=None,
    dtype=None,
    lowering=None,
    memory_limit=None,
    compiled=False,
    grad=None,
    einsum: bool = False,
    **sizes,
) -> planner.Plan:
    """The plan for these shapes; ``compiled=True`` is the plan ``bl`` uses inside torch.compile;
    ``grad=True`` the plan of a call autograd records (by default: whether a tensor given requires
    gradients, with grad mode on), whose chunked steps run their backward in chunks too;
    ``einsum=True``: ``pattern`` is a torch.einsum equation, read as :func:`einsum` reads it."""
    check_einsum_flag(einsum)
    shapes, dtype, device = shapes_of(tensors_or_shapes, dtype, device)
    grad = records(tensors_or_shapes) if grad is None else bool(grad)
    return make_plan(pattern, shapes, dtype, device, sizes, planner.Options(lowering, memory_limit, bool(compiled), grad), einsum)


def check_einsum_flag(value) -> None:
    """``einsum=`` is True or False (an axis named ``einsum`` cannot be sized by keyword where it is a flag)."""
    if not isinstance(value, bool):
        raise EinplanError(
            f"einsum= takes True (the pattern is a torch.einsum equation) or False, got {value!r}; "
            f"an axis named 'einsum' cannot be given its size by keyword here"
        )


def code(pattern: str, *tensors_or_shapes, **options) -> str:
    """The generated source for ``pattern`` at these shapes."""
    return render(plan_for(pattern, *tensors_or_shapes, **options))
