"""Stage 5: the plan cache, ``bl``, ``explain``, ``code`` and ``Kernel``.

A call signature (pattern, shapes, dtypes, devices, sizes, options) maps to a
:class:`Program`: the plan, its source and the function compiled from that
source.  ``bl`` on a signature it has seen costs one dict look-up plus the
generated code itself; the signature holds the exact shapes that were checked.
"""

from __future__ import annotations

import functools
import hashlib
import linecache
import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from . import codegen, plan as planner
from .cost import load_model
from .errors import EinplanError, ShapeError
from .semantics import Bound, bind, jaxtyping_check, jaxtyping_class, resolve

CACHE_SIZE = 4096  # plans kept (least recently used are dropped first)
FUNCTION_NAME = "einplan_kernel"

# The cached call's own steps, bound once: after a large op has flushed the CPU's caches, every
# attribute look-up and Python frame on this path costs far more than in a tight loop (measured
# after a 600 us GEMM: bl's look-up cost 20-30 us, of which these save about a third).
is_compiling = torch.compiler.is_compiling  # torch.compile recognises the function itself
metadata = operator.attrgetter("shape", "dtype", "device")  # one operand's part of a call signature


@dataclass(frozen=True)
class Program:
    """A plan, the source rendered from it, and the function that source defines."""

    plan: planner.Plan
    source: str
    function: Callable

    def __call__(self, *tensors):
        return self.function(*tensors)


# --- from a plan to source and a function ----------------------------------------------------


def _return_annotation(plan: planner.Plan) -> str:
    resolved = plan.bound.resolved
    reducers = [r for r, _ in plan.bound.clauses]
    if reducers and reducers[-1] in ("argmax", "argmin"):
        one = codegen.annotation("Int64", resolved.output_dims)
        return one if len(plan.returns) == 1 else "tuple[" + ", ".join([one] * len(plan.returns)) + "]"
    return codegen.annotation(jaxtyping_class(plan.bound.dtype), resolved.output_dims)


def render(plan: planner.Plan, name: str = FUNCTION_NAME) -> str:
    """The plan as one annotated Python function."""
    bound = plan.bound
    resolved = bound.resolved
    kind = jaxtyping_class(bound.dtype)
    params = [
        (var, codegen.annotation(kind, dims)) for var, dims in zip(plan.inputs, resolved.input_dims)
    ]
    doc = f"{resolved.pattern.text}  (primed: {resolved.primed})"
    return codegen.function(name, params, _return_annotation(plan), doc, plan.statements)


def _namespace() -> dict[str, Any]:
    import jaxtyping

    space: dict[str, Any] = {"torch": torch, "Tensor": torch.Tensor}
    for kind in ("Bool", "Complex", "Float", "Int", "Int64", "Integer", "Shaped"):
        space[kind] = getattr(jaxtyping, kind)
    return space


def compile_source(source: str, name: str = FUNCTION_NAME) -> Callable:
    """Exec generated source; register it in linecache so tracebacks show real lines."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    filename = f"<einplan-{digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = _namespace()
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


# --- call signatures -------------------------------------------------------------------------


def _check_signature(signature: tuple) -> None:
    """On a cache miss: every operand is a tensor, all of one dtype and device."""
    for k, (shape, dtype, device) in enumerate(signature):
        if not (isinstance(shape, torch.Size) and isinstance(dtype, torch.dtype) and isinstance(device, torch.device)):
            raise TypeError(f"einplan operand {k} is not a torch.Tensor")
    if len({d for _, d, _ in signature}) > 1:
        listed = ", ".join(f"operand {k} is {d}" for k, (_, d, _) in enumerate(signature))
        raise EinplanError(f"all operands must share one dtype: {listed}")
    if len({v for _, _, v in signature}) > 1:
        listed = ", ".join(f"operand {k} is on {v}" for k, (_, _, v) in enumerate(signature))
        raise EinplanError(f"all operands must be on one device: {listed}")



def _check_tensors(tensors: Sequence) -> None:
    for k, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"einplan operand {k} is a {type(t).__name__}, not a torch.Tensor")
    _check_signature(tuple((t.shape, t.dtype, t.device) for t in tensors))


def make_plan(pattern: str, shapes, dtype, device, sizes: dict, options: planner.Options) -> planner.Plan:
    """Pattern and shapes -> checked, bound and planned (no tensor data needed)."""
    if not isinstance(pattern, str):
        raise TypeError(f"an einplan pattern is a str, not {type(pattern).__name__}")
    resolved = resolve(pattern)
    bound: Bound = bind(resolved, shapes, dtype, device, sizes)
    jaxtyping_check(resolved, shapes, dtype)
    return planner.build(bound, options, load_model(device))


def _build_program(pattern: str, signature: tuple, sizes: tuple, lowering, memory_limit, compiled: bool = False) -> Program:
    _check_signature(signature)
    shapes = [shape for shape, _, _ in signature]
    dtype, device = (signature[0][1], signature[0][2]) if signature else (torch.float32, torch.device("cpu"))
    plan = make_plan(pattern, shapes, dtype, device, dict(sizes), planner.Options(lowering, memory_limit, compiled))
    source = render(plan)
    return Program(plan, source, compile_source(source))


_program = functools.lru_cache(maxsize=CACHE_SIZE)(_build_program)


def set_cache_size(size: int) -> None:
    """Keep at most ``size`` plans (least recently used dropped first); clears the cache."""
    global _program
    if not isinstance(size, int) or size < 1:
        raise EinplanError(f"the plan cache size must be a positive int, got {size!r}")
    _program = functools.lru_cache(maxsize=size)(_build_program)


def bl(pattern: str, *tensors: torch.Tensor, lowering: Optional[str] = None, memory_limit: Optional[int] = None, **sizes: int):
    """Evaluate ``pattern`` on ``tensors``: plan (cached), then run the generated code.

    >>> bl("b n, m n -> b m", x, A)          # x @ A.T, A never copied
    >>> bl("b (h d), h d e -> b h e", x, W, h=8)

    Inside ``torch.compile`` the plan is looked up once at trace time (the
    compiler treats it as a constant) and the generated code is traced as plain
    torch ops: no graph break, and no recompilation while shapes stay the same.
    """
    if is_compiling():
        from .kernels import traced_bl

        return traced_bl(pattern, tensors, lowering, memory_limit, sizes)
    try:
        program = _program(pattern, tuple(map(metadata, tensors)), tuple(sizes.items()) if sizes else (), lowering, memory_limit)
    except AttributeError:
        _check_tensors(tensors)
        raise
    except TypeError:
        if isinstance(pattern, str):
            _check_tensors(tensors)
            _check_sizes(sizes)
        raise
    return program.function(*tensors)


def _check_sizes(sizes: dict) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ShapeError(f"size of axis {name!r} must be an int, got {value!r}")


def cache_info():
    """Hits, misses and size of the plan cache."""
    return _program.cache_info()


def clear_cache() -> None:
    _program.cache_clear()


# --- explain / code ----------------------------------------------------------------------------


def _shapes_of(tensors_or_shapes, dtype, device):
    """Accept tensors, shapes (tuples, lists, torch.Size) or a mix."""
    shapes, dtypes, devices = [], [], []
    for k, item in enumerate(tensors_or_shapes):
        if isinstance(item, torch.Tensor):
            shapes.append(tuple(item.shape))
            dtypes.append(item.dtype)
            devices.append(item.device)
        elif isinstance(item, (tuple, list, torch.Size)) and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in item
        ):
            shapes.append(tuple(item))
        else:
            raise TypeError(f"operand {k}: expected a tensor or a shape (a tuple of ints), got {item!r}")
    if len(set(dtypes)) > 1 or len(set(devices)) > 1:
        _check_tensors([t for t in tensors_or_shapes if isinstance(t, torch.Tensor)])
    dtype = dtype or (dtypes[0] if dtypes else torch.float32)
    device = torch.device(device) if device is not None else (devices[0] if devices else torch.device("cpu"))
    return shapes, dtype, device


def plan_for(
    pattern: str, *tensors_or_shapes, device=None, dtype=None, lowering=None, memory_limit=None, compiled=False, **sizes
) -> planner.Plan:
    """The plan for these shapes; ``compiled=True`` is the plan ``bl`` uses inside torch.compile."""
    shapes, dtype, device = _shapes_of(tensors_or_shapes, dtype, device)
    return make_plan(pattern, shapes, dtype, device, sizes, planner.Options(lowering, memory_limit, bool(compiled)))


def code(pattern: str, *tensors_or_shapes, **options) -> str:
    """The generated source for ``pattern`` at these shapes."""
    return render(plan_for(pattern, *tensors_or_shapes, **options))


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def describe(plan: planner.Plan) -> str:
    """The text ``explain`` prints: primed form, sizes, path, steps, then the source."""
    bound = plan.bound
    resolved = bound.resolved
    lines = [
        f"pattern:  {resolved.pattern.text}",
        f"primed:   {resolved.primed}",
        "sizes:    " + (", ".join(f"{a}={s}" for a, s in bound.sizes.items()) or "(none)"),
        f"dtype:    {bound.dtype}, device: {bound.device} (cost model: {plan.model.kind}"
        + (", code traced by torch.compile)" if plan.options.compiled else ")"),
        f"path:     {list(plan.path) if plan.path else '(no contraction)'}",
        "steps:",
    ]
    for number, step in enumerate(plan.steps):
        lines.append(f"  {number}. {step.kind:<18} {step.description}")
        if step.estimate is not None:
            e = step.estimate
            lines.append(
                f"     {_human(e.flops)} FLOPs, {_human(e.bytes)}B moved, {e.ops:g} torch op(s), "
                f"{_human(e.memory)}B allocated"
            )
        for candidate in step.candidates:
            mark = "*" if candidate.lowering == step.kind else " "
            terms = plan.model.breakdown(candidate.estimate)
            main = max(terms, key=terms.get)
            lines.append(
                f"     {mark} {candidate.lowering:<18} est. {candidate.seconds * 1e6:9.1f} us"
                f"  (mostly {main})"
            )
        lines.extend(_why(step, plan))
    lines.append("source:")
    lines.append(render(plan))
    return "\n".join(lines)


def _why(step, plan) -> list[str]:
    """One line saying why the winner won: forced, memory, or cheaper than the runner-up."""
    if len(step.candidates) < 2:
        return []
    if plan.options.lowering is not None and step.kind == plan.options.lowering:
        return [f"     why: {step.kind} was forced"]
    winner = next((c for c in step.candidates if c.lowering == step.kind), None)
    others = sorted((c for c in step.candidates if c.lowering != step.kind), key=lambda c: c.seconds)
    if winner is None or not others:
        return []
    if step.kind == planner.CHUNKED:
        return [f"     why: the full intermediate would take {_human(step.candidates[0].estimate.memory)}B; chunks keep it under the memory budget"]
    runner = others[0]
    ratio = runner.seconds / max(winner.seconds, 1e-12)
    return [f"     why: {ratio:.2g}x cheaper than {runner.lowering}, the next best"]


def explain(pattern: str, *tensors_or_shapes, **options) -> str:
    """The primed pattern, axis sizes, path, each step's lowering and cost, and the source."""
    return describe(plan_for(pattern, *tensors_or_shapes, **options))
