"""torch.compile support: ``bl`` and kernels trace as plain torch code, with no graph break.

While compiling, the program is looked up at trace time (a constant to the
compiler: see :func:`constant_under_compile`) and the per-call jaxtyping check
is skipped; the compiled graph re-specialises, as the code does, when a size
changes.  The look-up returns a *name* under which the function is kept
(:func:`traced_name`), and the traced code calls the function by that name.
"""

from __future__ import annotations

import itertools
import operator
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from . import programs
from .errors import EinplanError


def constant_under_compile(fn: Callable) -> Callable:
    """Mark ``fn`` so that torch.compile calls it at trace time and treats its result as a constant.

    This is what ``torch.compiler.assume_constant_result`` does (it sets this one
    attribute); setting it here spares ``import einplan`` the import of
    ``torch._dynamo``.  tests/test_compile.py checks the two agree.
    """
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


class _Traced:
    """Functions traced under torch.compile, as attributes named by the trace-time look-up.

    An attribute, not a dict entry: the compiler reads an object's attribute
    afresh, while it keeps one view of a dict for a whole trace (a second new
    plan in one traced function would not be in it).
    """


_TRACED = _Traced()
_TRACED_NAMES: OrderedDict[Callable, str] = OrderedDict()  # least recently looked up first
_COUNT = itertools.count()
MAX_TRACED = 4096  # functions kept for traced code; the least recently looked up go first


def traced_name(function: Callable) -> str:
    """The name under which ``function`` is kept for traced code (one per function).

    At most MAX_TRACED are kept, as the plan cache keeps at most its size of programs: a graph
    compiled around a function that was dropped fails its guard on the name and is traced again."""
    name = _TRACED_NAMES.get(function)
    if name is not None:
        _TRACED_NAMES.move_to_end(function)
        return name
    name = _TRACED_NAMES[function] = f"program{next(_COUNT)}"
    setattr(_TRACED, name, function)
    while len(_TRACED_NAMES) > MAX_TRACED:
        _, dropped = _TRACED_NAMES.popitem(last=False)
        delattr(_TRACED, dropped)
    return name


def signature(tensors: Sequence[torch.Tensor]) -> tuple:
    """Shapes as plain ints (``operator.index`` makes the compiler specialise a symbolic size)."""
    return tuple((tuple(operator.index(s) for s in t.shape), t.dtype, t.device) for t in tensors)


def constant(value):
    """An int the compiler treats as symbolic (a size or limit that changed between calls, or
    ``dynamic=True``) as a plain int, so that the trace-time look-up can take it: the compiled
    graph then specialises on it, as it does on the shapes.  Anything else is left for the
    look-up to check (a float or a bool is refused there, not converted)."""
    return operator.index(value) if isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool) else value


def failing(error: Exception) -> Callable:
    """A function that raises ``error`` again: a plan that fails at trace time fails where it is called.

    Tracing the raise stops the graph there: without ``fullgraph`` the call
    then runs eagerly and raises the einplan error itself.
    """
    kind, message = type(error), str(error)

    def fail(*tensors):
        raise kind(message)

    return fail


class Traceable(Protocol):
    """What can be called under torch.compile besides ``bl``: a kernel, say."""

    def traced_function(self, signature: tuple, grad: bool = False) -> Callable:
        """The function for a call signature (plain-int shapes, dtypes, devices; ``grad``: autograd
        records the call); EinplanError if none."""
        ...


@constant_under_compile
def _bl_program(pattern: str, signature: tuple, sizes: tuple, lowering, memory_limit, grad: bool, einsum: bool = False) -> str:
    try:
        programs.check_call(sizes, memory_limit)
        signature = tuple((torch.Size(shape), dtype, device) for shape, dtype, device in signature)
        function = programs.lookup(pattern, signature, sizes, lowering, memory_limit, True, grad, einsum).function
    except (EinplanError, TypeError) as error:
        function = failing(error)
    return traced_name(function)


@constant_under_compile
def _call_program(owner: Traceable, signature: tuple, grad: bool) -> str:
    try:
        function = owner.traced_function(signature, grad)
    except EinplanError as error:
        function = failing(error)
    return traced_name(function)


def traced_bl(pattern: str, tensors: tuple, lowering, memory_limit, sizes: dict, einsum: bool = False):
    """``bl`` while torch.compile traces: a trace-time plan look-up, then the generated torch code
    (``einsum=True``: ``einplan.einsum``, whose pattern is a torch.einsum equation)."""
    sized = tuple((k, constant(v)) for k, v in sizes.items())
    name = _bl_program(pattern, signature(tensors), sized, lowering, constant(memory_limit), programs.records(tensors), einsum)
    return getattr(_TRACED, name)(*tensors)


def traced_call(owner: Traceable, tensors: tuple, grad: bool = False):
    """``owner(*tensors)`` while torch.compile traces: its function looked up at trace time, then run."""
    return getattr(_TRACED, _call_program(owner, signature(tensors), grad))(*tensors)
