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


def plan_for(
    pattern: str, *tensors_or_shapes, device=None, dtype=None, lowering=None, memory_limit=None, compiled=False, grad=None, **sizes
) -> planner.Plan:
    """The plan for these shapes; ``compiled=True`` is the plan ``bl`` uses inside torch.compile;
    ``grad=True`` the plan of a call autograd records (by default: whether a tensor given requires
    gradients, with grad mode on), whose chunked steps run their backward in chunks too."""
    shapes, dtype, device = shapes_of(tensors_or_shapes, dtype, device)
    grad = records(tensors_or_shapes) if grad is None else bool(grad)
    return make_plan(pattern, shapes, dtype, device, sizes, planner.Options(lowering, memory_limit, bool(compiled), grad))


def code(pattern: str, *tensors_or_shapes, **options) -> str:
    """The generated source for ``pattern`` at these shapes."""
    return render(plan_for(pattern, *tensors_or_shapes, **options))
