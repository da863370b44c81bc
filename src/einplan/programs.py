"""Call signatures and the programs they map to.

A call signature (pattern, each operand's shape, dtype and device, keyword
sizes, options) maps to a :class:`Program`: the plan, the source rendered from
it and the function compiled from that source.  ``bl`` keeps them in one
least-recently-used cache (:data:`lookup`), which the trace-time look-up under
torch.compile shares; a kernel keeps its own programs, made by :func:`program`.
A cache hit costs one dict look-up, and since the key holds the exact shapes,
the shape check already passed for it.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from . import plan as planner
from .bind import MAX_SIZE, bind, check_size
from .calibration import model_for
from .errors import EinplanError, ShapeError, UnsupportedError
from .letters import spaced_hint, spelling
from .measuring import Trial, measuring_enabled, pending, remember
from .placements import is_distributed
from .plan import check_memory_limit
from .resolve import resolve
from .signatures import NO_AXES, jaxtyping_check
from .source import FUNCTION_NAME, compile_source, release_buffers, render

CACHE_SIZE = 4096  # plans kept (least recently used are dropped first)

# The cached call's own steps, bound once: after a large op has flushed the CPU's caches, every
# attribute look-up and Python frame on this path costs far more than in a tight loop (measured
# after a 600 us GEMM: bl's look-up cost 20-30 us, of which these save about a third).
is_compiling = torch.compiler.is_compiling  # torch.compile recognises the function itself
# one operand's part of a call signature; its class too, so that a DTensor (whose shape, dtype and
# device read as a plain tensor's) never reuses a plain tensor's program, nor the other way round
metadata = operator.attrgetter("shape", "dtype", "device", "__class__")
requires_grad = operator.attrgetter("requires_grad")
is_grad_enabled = torch.is_grad_enabled


def records(tensors) -> bool:
    """Whether autograd records a call on ``tensors`` (tensors or shapes): the plan then
    differentiates its chunked steps in chunks too."""
    return is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


@dataclass
class Program:
    """A plan, the source rendered from it, and the function that source defines (for a close
    call, a :class:`einplan.measuring.Trial` until its first calls have timed both candidates)."""

    plan: planner.Plan
    source: str
    function: Callable
    grad_matters: bool = False  # a call that autograd records has a plan of its own (see Plan.grad_matters)

    def __call__(self, *tensors):
        return self.function(*tensors)


def program(plan: planner.Plan, name: str = FUNCTION_NAME, shapes=None, symbolic: frozenset = NO_AXES) -> Program:
    """Render ``plan`` (see :func:`einplan.source.render`) and compile it."""
    source = render(plan, name, shapes, symbolic)
    return Program(plan, source, compile_source(source, name), plan.grad_matters)


# --- checking a call --------------------------------------------------------------------------------


def check_signature(signature: tuple) -> None:
    """On a cache miss: every operand is a tensor, all of one dtype and device."""
    for k, (shape, dtype, device, *_) in enumerate(signature):
        if not (isinstance(shape, torch.Size) and isinstance(dtype, torch.dtype) and isinstance(device, torch.device)):
            raise TypeError(f"einplan operand {k} is not a torch.Tensor")
    if len({entry[1] for entry in signature}) > 1:
        listed = ", ".join(f"operand {k} is {entry[1]}" for k, entry in enumerate(signature))
        raise EinplanError(f"all operands must share one dtype: {listed}")
    if len({entry[2] for entry in signature}) > 1:
        listed = ", ".join(f"operand {k} is on {entry[2]}" for k, entry in enumerate(signature))
        raise EinplanError(f"all operands must be on one device: {listed}")


def check_tensors(tensors) -> None:
    """Every operand is a tensor, all of one dtype and device (TypeError / EinplanError if not)."""
    for k, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"einplan operand {k} is a {type(t).__name__}, not a torch.Tensor")
        refuse_distributed(k, t)
    check_signature(tuple((t.shape, t.dtype, t.device) for t in tensors))


def refuse_distributed(k: int, tensor) -> None:
    """A kernel, ``code`` and ``plan_for`` plan one process's plain tensors: a DTensor is refused
    there (``bl`` and ``einsum`` run DTensors, ``explain`` shows their route)."""
    if is_distributed(type(tensor)):
        raise UnsupportedError(
            f"operand {k} is a DTensor: einplan.kernel, code and plan_for take plain tensors or shapes; "
            f"call einplan.bl or einplan.einsum on DTensors (einplan.explain and einplan.distributed.code show how they run)"
        )


def check_sizes(sizes: dict) -> None:
    """Keyword sizes are ints (not bools, not floats that equal one) from 0 to MAX_SIZE."""
    for name, value in sizes.items():
        check_size(name, value)


def check_call(sizes, memory_limit) -> None:
    """What ``bl`` checks before its cache key: a float 3.0 or a bool True hashes as the int it
    equals, so a warm cache would otherwise take it for that int.  ``sizes``: (name, value) pairs."""
    for name, value in sizes:
        check_size(name, value)
    check_memory_limit(memory_limit)


def as_dtype(value) -> torch.dtype | None:
    """A torch dtype, or the name of one (``"float32"``, ``"torch.float32"``); None stays None."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value.removeprefix("torch."), None), torch.dtype):
        return getattr(torch, value.removeprefix("torch."))
    raise EinplanError(f"not a torch dtype: {value!r} (give a torch.dtype or its name, e.g. torch.float32 or 'float32')")


def as_device(value) -> torch.device:
    """A torch device from a device, a string (``"cpu"``, ``"cuda:0"``) or an index."""
    if isinstance(value, torch.device):
        return value
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise EinplanError(f"not a torch device: {value!r} (give a torch.device or its name, e.g. 'cpu' or 'cuda')")
    try:
        return torch.device(value)
    except (RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EinplanError(f"not a torch device: {value!r} ({first})") from None


def shapes_of(tensors_or_shapes, dtype, device):
    """Shapes, dtype and device from tensors, shapes (tuples, lists, torch.Size) or a mix."""
    shapes, dtypes, devices = [], [], []
    for k, item in enumerate(tensors_or_shapes):
        if isinstance(item, torch.Tensor):
            refuse_distributed(k, item)
            shapes.append(tuple(item.shape))
            dtypes.append(item.dtype)
            devices.append(item.device)
        elif isinstance(item, (tuple, list, torch.Size)) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in item):
            if any(s > MAX_SIZE for s in item):
                raise ShapeError(f"operand {k}: shape {tuple(item)} has a size above {MAX_SIZE} (2**63 - 1), the most a torch dim can be")
            shapes.append(tuple(item))
        else:
            raise TypeError(f"operand {k}: expected a tensor or a shape (a tuple of ints), got {item!r}")
    if len(set(dtypes)) > 1 or len(set(devices)) > 1:
        check_tensors([t for t in tensors_or_shapes if isinstance(t, torch.Tensor)])
    dtype = as_dtype(dtype) or (dtypes[0] if dtypes else torch.float32)
    device = as_device(device) if device is not None else (devices[0] if devices else torch.device("cpu"))
    return shapes, dtype, device


# --- planning ------------------------------------------------------------------------------------------


def make_plan(pattern: str, shapes, dtype, device, sizes: dict, options: planner.Options, einsum: bool = False) -> planner.Plan:
    """Pattern and shapes -> checked, bound and planned (no tensor data needed).

    ``einsum=True``: ``pattern`` is a torch.einsum equation, checked against the shapes as torch
    does and read as torch does (a repeated letter is always a diagonal): a plan of its own."""
    if einsum:
        resolved = resolve(spelling(pattern, shapes), chains=False)
        bound = bind(resolved, shapes, dtype, device, sizes)
    elif not isinstance(pattern, str):
        raise TypeError(f"an einplan pattern is a str, not {type(pattern).__name__}")
    else:
        try:
            resolved = resolve(pattern)
            bound = bind(resolved, shapes, dtype, device, sizes)
        except EinplanError as error:  # a letter string ('bhqd,bhkd->bhqk') read as einplan words
            hint = spaced_hint(pattern)
            if hint:
                raise type(error)(f"{error}{hint}") from None
            raise
    jaxtyping_check(resolved, shapes, dtype)
    return planner.build(bound, options, model_for(device))


def build(
    pattern: str, signature: tuple, sizes: tuple, lowering, memory_limit, compiled: bool = False, grad: bool = False, einsum: bool = False
) -> Program:
    """The program for one call signature (what :data:`lookup` caches); ``grad``: autograd records the call;
    ``einsum``: ``pattern`` is a torch.einsum equation (``einplan.einsum``), a key of its own since the
    same text can mean another thing as an einplan pattern."""
    check_signature(signature)
    if routes and any(len(entry) > 3 and entry[3] is not torch.Tensor for entry in signature):
        for route in routes:  # another class of tensor (a DTensor): a program of its own
            made = route(pattern, signature, sizes, lowering, memory_limit, einsum)
            if made is not None:
                return made
    shapes = [entry[0] for entry in signature]
    dtype, device = (signature[0][1], signature[0][2]) if signature else (torch.float32, torch.device("cpu"))
    options = planner.Options(lowering, memory_limit, compiled, grad)
    made = program(make_plan(pattern, shapes, dtype, device, dict(sizes), options, einsum))
    if lowering is None and not compiled and not grad and measuring_enabled():
        _measure_close_call(
            made, lambda forced: program(make_plan(pattern, shapes, dtype, device, dict(sizes), replace(options, lowering=forced), einsum))
        )
    return made


def _measure_close_call(made: Program, forced: Callable[[str], Program]) -> None:
    """A close call's program runs a trial of its candidates on its first calls (or, when this
    signature was measured before, the one kept then)."""
    found = pending(made.plan, forced)
    if found is None:
        return
    key, chosen, known, others = found
    if known is not None:  # measured before: the kept plan, without a trial
        other = others[known.kept]
        made.plan, made.source, made.function = other.plan, other.source, other.function
        return
    candidates = {chosen: Program(made.plan, made.source, made.function), **others}

    def settle(kept: str, measured) -> None:
        remember(key, measured)
        winner = candidates[kept]
        made.plan, made.source, made.function = winner.plan, winner.source, winner.function

    made.function = Trial(tuple(candidates), tuple(p.function for p in candidates.values()), made.plan.bound.device, settle)


# Builders of the program of a call signature with an operand of another class than torch.Tensor
# (einplan.distributed adds the one for DTensors); each returns a Program, or None to pass.
routes: list[Callable] = []


lookup = functools.lru_cache(maxsize=CACHE_SIZE)(build)


def set_cache_size(size: int) -> None:
    """Keep at most ``size`` plans (least recently used dropped first); clears the cache."""
    global lookup
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise EinplanError(f"the plan cache size must be a positive int, got {size!r}")
    lookup = functools.lru_cache(maxsize=size)(build)


def cache_info():
    """Hits, misses and size of the plan cache."""
    return lookup.cache_info()


def clear_cache() -> None:
    """Drop every cached plan, and this thread's kept buffers."""
    lookup.cache_clear()
    release_buffers()
