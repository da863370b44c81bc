"""Kernels: a plan fixed once, called without per-call planning, saved as a standalone module.

    >>> quad = einplan.kernel("b1 b2 n, n n, b1 b2 n -> b1 b2", (80, 20, 64), (64, 64), (80, 20, 64))
    >>> out = quad(l, A, l)              # no parsing or planning on this call
    >>> print(quad.plan)                 # what explain() shows
    >>> quad.save("kernels/quad.py")     # a module that imports only torch and jaxtyping

A kernel's code is specialised to the sizes it was planned for (reshapes and
chunk loops may bake them in), and its jaxtyping annotations pin them:
``Float[Tensor, 'b1=80 b2=20 n=64']``.  Axes named in ``dynamic`` may change size between calls: the kernel
plans once per distinct size and keeps the result, and rejects a size whose
plan would take different lowerings or another contraction path.  An axis the
code does not depend on stays symbolic in the annotations and shares one
function across sizes.

torch.compile: ``bl`` and kernels trace as plain torch code with no graph
break.  While compiling, the plan is looked up at trace time (a constant to the
compiler: see ``_constant_under_compile``) and the per-call jaxtyping check is
skipped; the compiled graph re-specialises, as the code does, when a size
changes.
"""

from __future__ import annotations

import keyword
import math
import operator
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import jaxtyping
import torch

from . import codegen, plan as planner, runtime
from .errors import EinplanError, PatternError, ShapeError
from .semantics import Ax, Comp, Ell, One, Resolved, axes_of, bind, jaxtyping_class

DEFAULT_NAME = "einplan_kernel"
MAX_PROGRAMS = 64  # per kernel: functions kept for distinct sizes of its dynamic axes

__all__ = ["Kernel", "kernel", "module_source", "DEFAULT_NAME"]


# --- torch.compile support ---------------------------------------------------------------------


def _constant_under_compile(fn: Callable) -> Callable:
    """Mark ``fn`` so that torch.compile calls it at trace time and treats its result as a constant.

    This is what ``torch.compiler.assume_constant_result`` does (it sets this one
    attribute); setting it here spares ``import einplan`` the import of
    ``torch._dynamo``.  tests/test_compile.py checks the two agree.
    """
    fn._dynamo_marked_constant = True
    return fn


class _Traced:
    """Functions traced under torch.compile, as attributes named by the trace-time look-up.

    An attribute, not a dict entry: the compiler reads an object's attribute
    afresh, while it keeps one view of a dict for a whole trace (a second new
    plan in one traced function would not be in it).
    """


_TRACED = _Traced()
_TRACED_NAMES: dict[Callable, str] = {}


def _traced_name(function: Callable) -> str:
    name = _TRACED_NAMES.get(function)
    if name is None:
        name = _TRACED_NAMES[function] = f"program{len(_TRACED_NAMES)}"
        setattr(_TRACED, name, function)
    return name


def _signature(tensors: Sequence[torch.Tensor]) -> tuple:
    """Shapes as plain ints (``operator.index`` makes the compiler specialise a symbolic size)."""
    return tuple((tuple(operator.index(s) for s in t.shape), t.dtype, t.device) for t in tensors)


def _failing(error: Exception) -> Callable:
    """A function that raises ``error`` again: a plan that fails at trace time fails where it is called.

    Tracing the raise stops the graph there: without ``fullgraph`` the call
    then runs eagerly and raises the einplan error itself.
    """
    kind, message = type(error), str(error)

    def fail(*tensors):
        raise kind(message)

    return fail


@_constant_under_compile
def _bl_program(pattern: str, signature: tuple, sizes: tuple, lowering, memory_limit) -> str:
    try:
        signature = tuple((torch.Size(shape), dtype, device) for shape, dtype, device in signature)
        function = runtime._program(pattern, signature, sizes, lowering, memory_limit, True).function
    except (EinplanError, TypeError) as error:
        function = _failing(error)
    return _traced_name(function)


@_constant_under_compile
def _kernel_program(kernel: "Kernel", signature: tuple) -> str:
    try:
        if len({(dtype, device) for _, dtype, device in signature}) > 1:
            kinds = ", ".join(f"operand {k} is {d} on {v}" for k, (_, d, v) in enumerate(signature))
            raise EinplanError(f"all operands must share one dtype and device: {kinds}")
        if signature:
            kernel._check_kind(signature[0][1], signature[0][2])
        program = kernel._program_for_shapes(tuple(shape for shape, _, _ in signature))
        function = kernel._functions[program.function_source][0]
    except EinplanError as error:
        function = _failing(error)
    return _traced_name(function)


def traced_bl(pattern: str, tensors: tuple, lowering, memory_limit, sizes: dict):
    """``bl`` while torch.compile traces: a trace-time plan look-up, then the generated torch code."""
    name = _bl_program(pattern, _signature(tensors), tuple(sizes.items()), lowering, memory_limit)
    return getattr(_TRACED, name)(*tensors)


# --- annotations that pin the planned sizes ---------------------------------------------------


def _plain(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")


def _base(axis_id: str) -> str:
    """``n''`` -> ``n``; ``...[0]`` -> ``...``; ``*batch[1]`` -> ``*batch``."""
    return axis_id[: axis_id.index("[")] if "[" in axis_id else axis_id.rstrip("'")


def _pin(name: str, size: int) -> str:
    # jaxtyping reads "n=64" as a fixed size 64 and ignores the name
    return f"{name}={size}" if _plain(name) else str(size)


def _input_dims(items, shape, symbolic: frozenset, seen: set) -> str:
    """jaxtyping dims of one input: planned sizes pinned, ``symbolic`` axes and groups left named."""
    fixed = sum(1 for item in items if not isinstance(item, Ell))
    words, dim = [], 0
    for item in items:
        if isinstance(item, Ell):
            n = len(shape) - fixed
            if item.group in symbolic:
                words.append("..." if item.group == "..." else "#" + item.group)
            else:
                words.extend(str(s) for s in shape[dim : dim + n])
            dim += n
            continue
        size = shape[dim]
        dim += 1
        if isinstance(item, (One, Ax)):
            words.append(_axis_word(item, size, symbolic, seen))
        else:
            words.append(_composite(item, size, symbolic, seen))
    return " ".join(words)


def _axis_word(item, size: int, symbolic: frozenset, seen: Optional[set] = None) -> str:
    """One axis's jaxtyping word: ``1``, a literal size, a symbolic name (noted in
    ``seen``), or the name pinned to its planned size."""
    if isinstance(item, One):
        return "1"
    if item.base.isdigit():
        return item.base
    if item.base in symbolic:
        if seen is not None:
            seen.add(item.base)
        return item.base
    return _pin(item.base, size)


def _composite(item: Comp, size: int, symbolic: frozenset, seen: set) -> str:
    bases = [p.base if isinstance(p, Ax) else "1" for p in item.parts]
    if not any(b in symbolic for b in bases):
        joined = "*".join(bases)
        return f"{joined}={size}" if all(b.isdigit() or _plain(b) for b in bases) else str(size)
    known = all(b.isdigit() or (_plain(b) and b in seen) for b in bases)
    return "*".join(bases) if known else "_"


def _output_dims(resolved: Resolved, bound, symbolic: frozenset, seen: set) -> str:
    sizes = bound.sizes
    words = []
    for item in resolved.output:
        if isinstance(item, Ell):
            if item.group in symbolic:
                words.append(item.group)
            else:
                ids = [i for i in sizes if i.startswith(item.group + "[")]
                ids.sort(key=lambda i: int(i[i.index("[") + 1 : -1]))
                words.extend(str(sizes[i]) for i in ids)
        elif isinstance(item, (One, Ax)):
            words.append(_axis_word(item, sizes[item.id] if isinstance(item, Ax) else 1, symbolic))
        else:
            total = math.prod(sizes[p.id] for p in item.parts if isinstance(p, Ax))
            words.append(_composite(item, total, symbolic, seen))
    return " ".join(words)


def _annotations(plan: planner.Plan, shapes, symbolic: frozenset) -> tuple[list[tuple[str, str]], str]:
    """Parameter and return annotations for ``plan`` at ``shapes``."""
    bound = plan.bound
    resolved = bound.resolved
    kind = jaxtyping_class(bound.dtype)
    seen: set[str] = set()
    params = [
        (var, codegen.annotation(kind, _input_dims(items, shape, symbolic, seen)))
        for var, items, shape in zip(plan.inputs, resolved.inputs, shapes)
    ]
    out_dims = _output_dims(resolved, bound, symbolic, seen)
    reducers = [r for r, _ in bound.clauses]
    if reducers and reducers[-1] in ("argmax", "argmin"):
        one = codegen.annotation("Int64", out_dims)
        returns = one if len(plan.returns) == 1 else "tuple[" + ", ".join([one] * len(plan.returns)) + "]"
    else:
        returns = codegen.annotation(kind, out_dims)
    return params, returns


def _function_doc(plan: planner.Plan) -> str:
    resolved = plan.bound.resolved
    return f"{resolved.pattern.text}  (primed: {resolved.primed})"


def _body(plan: planner.Plan) -> str:
    return "\n".join(codegen.statements(plan.statements))


def _structure(plan: planner.Plan) -> tuple:
    return plan.path, tuple(step.kind for step in plan.steps)


def _steps_text(plan: planner.Plan) -> str:
    return "; ".join(f"{s.kind} ({s.description})" for s in plan.steps) or "(none)"


def sizes_text(bound) -> str:
    """``b1=80, b2=20, n=64, ...=(3, 4)``: one size per name (primes share it), then the groups."""
    named: dict[str, int] = {}
    groups: dict[str, list[int]] = {}
    for axis_id, size in bound.sizes.items():
        if "[" in axis_id:
            groups.setdefault(_base(axis_id), []).append(size)
        elif not axis_id.isdigit():
            named.setdefault(_base(axis_id), size)
    parts = [f"{n}={s}" for n, s in named.items()] + [f"{g}={tuple(s)}" for g, s in groups.items()]
    return ", ".join(parts) or "(none)"


# --- modules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Program:
    name: str
    plan: planner.Plan
    shapes: tuple[tuple[int, ...], ...]
    dynamic: tuple[str, ...]
    symbolic: frozenset  # dynamic axes this code does not depend on (named, not pinned)
    function_source: str
    body: str


def _entry_doc(program: _Program) -> str:
    bound = program.plan.bound
    resolved = bound.resolved
    fixed = ", ".join(program.dynamic) if program.dynamic else "none"
    if program.dynamic:
        shared = [a for a in program.dynamic if a in program.symbolic]
        fixed += f" (size-independent code: {', '.join(shared)})" if shared else " (this function: the sizes above)"
    params = ", ".join(program.plan.inputs)
    return "\n".join(
        [
            f"{program.name}({params})",
            f"    pattern:  {resolved.pattern.text}",
            f"    primed:   {resolved.primed}",
            f"    sizes:    {sizes_text(bound)}",
            f"    shapes:   {', '.join(str(tuple(s)) for s in program.shapes)}",
            f"    dynamic:  {fixed}",
            f"    dtype:    {bound.dtype}",
            f"    device:   {bound.device}",
            f"    steps:    {_steps_text(program.plan)}",
        ]
    )


def _module(programs: Sequence[_Program], title: str) -> str:
    from . import __version__

    names = [p.name for p in programs]
    first = names[0]
    doc = [
        title,
        "",
        f"Generated by einplan {__version__}; this module imports only torch and jaxtyping.",
        "",
        *("\n".join([_entry_doc(p), ""]) for p in programs),
        "Each function was planned for the sizes listed, and its code may bake them in",
        "(reshapes, chunk counts); its jaxtyping annotations pin them (``n=64`` is a",
        "fixed size 64).  To check shapes on every call, wrap a function with jaxtyping:",
        "",
        "    from beartype import beartype",
        "    from jaxtyping import jaxtyped",
        f"    {first}_checked = jaxtyped(typechecker=beartype)({first})",
    ]
    text = '"""' + "\n".join(doc).replace("\\", "\\\\").replace('"""', '\\"\\"\\"') + '\n"""\n\n'
    text += codegen.HEADER + "\n"
    text += "__all__ = [" + ", ".join(repr(n) for n in names) + "]\n"
    for program in programs:
        text += "\n\n" + program.function_source
    return text


def module_source(kernels: Sequence["Kernel"], title: str = "Kernels generated by einplan.") -> str:
    """One standalone module holding each kernel's planned function, under its own name."""
    seen: set[str] = set()
    for k in kernels:
        if k.name in seen:
            raise EinplanError(f"two kernels are named {k.name!r}; give each its own name")
        seen.add(k.name)
    if not kernels:
        raise EinplanError("no kernels to write")
    return _module([k._original for k in kernels], title)


# --- the Kernel -----------------------------------------------------------------------------------


def _dynamic_names(dynamic: Union[str, Iterable[str]], resolved: Resolved) -> tuple[str, ...]:
    if isinstance(dynamic, str):
        dynamic = dynamic.replace(",", " ").split()
    names = tuple(dict.fromkeys(dynamic))
    axes = {a.base for items in resolved.inputs for a in axes_of(items) if not a.base.isdigit()}
    groups = {i.group for items in resolved.inputs for i in items if isinstance(i, Ell)}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"dynamic takes axis names (str), got {name!r}")
        if name.rstrip("'") != name:
            raise PatternError(
                f"dynamic axis {name!r}: name the axis without primes ({name.rstrip(chr(39))!r}); "
                f"a primed axis shares its size"
            )
        if name not in axes and name not in groups:
            known = ", ".join(sorted(axes) + sorted(groups)) or "none"
            raise PatternError(
                f"dynamic axis {name!r} is not an axis of '{resolved.pattern.source}' (its axes: {known})"
            )
    return names


def operand_shape(items, size_of: Callable[[str], int], ellipsis_dims: Sequence[int] = ()) -> tuple[int, ...]:
    """One input's shape from axis sizes (``size_of(base)``); an ellipsis takes ``ellipsis_dims``."""
    shape: list[int] = []
    for item in items:
        if isinstance(item, Ax):
            shape.append(int(item.base) if item.base.isdigit() else size_of(item.base))
        elif isinstance(item, One):
            shape.append(1)
        elif isinstance(item, Comp):
            parts = [p.base for p in item.parts if isinstance(p, Ax)]
            shape.append(math.prod(int(b) if b.isdigit() else size_of(b) for b in parts))
        else:
            shape.extend(ellipsis_dims)
    return tuple(shape)


def _with_size(resolved: Resolved, shapes, bound, axis: str, size: int):
    """``shapes`` with every occurrence of ``axis`` (also inside composites) resized to ``size``."""
    known = {_base(i): s for i, s in bound.sizes.items() if "[" not in i}
    known[axis] = size
    out = []
    for items, shape in zip(resolved.inputs, shapes):
        fixed = sum(1 for item in items if not isinstance(item, Ell))
        start = next((k for k, item in enumerate(items) if isinstance(item, Ell)), None)
        ell = shape[start : start + len(shape) - fixed] if start is not None else ()
        out.append(operand_shape(items, known.__getitem__, ell))
    return tuple(out)


class Kernel:
    """A planned pattern: call it like ``bl``, read ``.plan`` and ``.source``, ``.save(path)``.

    Made by :func:`kernel`.  Calls run the generated code for the planned shapes
    after one dict look-up and, with ``check=True``, jaxtyping's check of the
    annotations (skipped while torch.compile traces, where shapes are fixed at
    trace time).  A call with other sizes of ``dynamic`` axes plans once for
    them; any other change of size is a :class:`ShapeError` naming the axis and
    the size the kernel was planned for.
    """

    def __init__(
        self,
        pattern: str,
        shapes: Sequence[Sequence[int]],
        dtype: torch.dtype,
        device: torch.device,
        *,
        dynamic: Union[str, Iterable[str]] = (),
        check: bool = True,
        name: str = DEFAULT_NAME,
        options: planner.Options = planner.Options(),
        sizes: Optional[dict] = None,
    ):
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise EinplanError(f"a kernel's name must be a Python identifier, got {name!r}")
        self.pattern = pattern
        self.name = name
        self.check = bool(check)
        self.dtype = dtype
        self.device = torch.device(device)
        self._keywords = dict(sizes or {})
        self._options = options
        shapes = tuple(tuple(int(s) for s in shape) for shape in shapes)
        first = runtime.make_plan(pattern, shapes, dtype, self.device, self._keywords, self._options)
        self._resolved: Resolved = first.bound.resolved
        self.dynamic: tuple[str, ...] = _dynamic_names(dynamic, self._resolved)
        self.shapes = shapes
        self._free = self._size_free_axes(first, shapes)
        self._by_shapes: "OrderedDict[tuple, _Program]" = OrderedDict()
        self._calls: dict[tuple, Callable] = {}
        self._functions: dict[str, tuple[Callable, Optional[Callable]]] = {}
        self._original = self._program(first, shapes)
        self._by_shapes[shapes] = self._original
        self._arg_check: Optional[Callable] = None
        self._lock = threading.RLock()  # misses only: planning for new sizes

    # -- what a user reads ----------------------------------------------------------------

    @property
    def plan_object(self) -> planner.Plan:
        """The :class:`einplan.plan.Plan` for the planned shapes."""
        return self._original.plan

    @property
    def plan(self) -> str:
        """What ``explain`` shows for the planned shapes: primed form, sizes, path, steps, then
        the source of the function a call runs (named and annotated as in :attr:`source`)."""
        text = runtime.describe(self._original.plan)
        head, marker, _ = text.rpartition("\nsource:\n")
        return head + marker + self._original.function_source if marker else text

    @property
    def source(self) -> str:
        """The standalone module ``save`` writes; the function in it is what a call runs."""
        return _module([self._original], f"einplan kernel {self.name}: {self.pattern}")

    @property
    def sizes(self) -> dict[str, int]:
        """Planned size of each axis name (primes share their name's size)."""
        return {_base(i): s for i, s in self._original.plan.bound.sizes.items() if "[" not in i and not i.isdigit()}

    def save(self, path: Union[str, Path]) -> Path:
        """Write :attr:`source` to ``path`` (same kernel, same bytes); returns the path."""
        path = Path(path)
        path.write_bytes(self.source.encode("utf-8"))
        return path

    def __repr__(self) -> str:
        dynamic = f", dynamic={self.dynamic!r}" if self.dynamic else ""
        return (
            f"<einplan Kernel {self.name} '{self.pattern}' planned for "
            f"{sizes_text(self._original.plan.bound)}, {self.dtype}, {self.device}{dynamic}>"
        )

    # -- calling -----------------------------------------------------------------------------

    def __call__(self, *tensors: torch.Tensor):
        if runtime.is_compiling():
            return getattr(_TRACED, _kernel_program(self, _signature(tensors)))(*tensors)
        try:
            run = self._calls.get(tuple(map(runtime.metadata, tensors)))
        except AttributeError:  # not a tensor: _call_for says which
            run = None
        if run is None:
            run = self._call_for(tensors)
        try:
            return run(*tensors)
        except jaxtyping.TypeCheckError as error:
            raise ShapeError(self._check_message(tensors, error)) from None

    def _call_for(self, tensors) -> Callable:
        """A call whose signature was not seen: the function (checked if ``check``) for its sizes."""
        with self._lock:
            return self._remember_call(tensors)

    def _remember_call(self, tensors) -> Callable:
        program = self._program_for(tensors)
        function, checked = self._functions[program.function_source]
        run = checked if self.check else function
        if len(self._calls) >= 4 * MAX_PROGRAMS:
            self._calls.clear()
        self._calls[tuple(map(runtime.metadata, tensors))] = run
        return run

    def _program_for(self, tensors) -> _Program:
        """Check a call's tensors, then find or make the program for their sizes."""
        runtime._check_tensors(tensors)
        if tensors:
            self._check_kind(tensors[0].dtype, tensors[0].device)
        if self.check:
            try:
                self._args_checker()(*tensors)
            except jaxtyping.TypeCheckError as error:
                raise ShapeError(self._check_message(tensors, error)) from None
            except TypeError as error:  # wrong number of tensors
                raise ShapeError(self._mismatch([tuple(t.shape) for t in tensors]) or str(error)) from None
        return self._program_for_shapes(tuple(tuple(t.shape) for t in tensors))

    def _check_kind(self, dtype: torch.dtype, device: torch.device) -> None:
        if dtype != self.dtype:
            raise EinplanError(
                f"kernel {self.name!r} was planned for {self.dtype}, but the tensors are {dtype}; "
                f"make a kernel for {dtype} (einplan.kernel(..., dtype={dtype}))"
            )
        if torch.device(device).type != self.device.type:
            raise EinplanError(
                f"kernel {self.name!r} was planned for device {self.device}, but the tensors are on {device}; "
                f"make a kernel for that device (einplan.kernel(..., device={str(device)!r}))"
            )

    def _program_for_shapes(self, shapes: tuple) -> _Program:
        with self._lock:
            program = self._by_shapes.get(shapes)
            return program if program is not None else self._plan_for_shapes(shapes)

    def _plan_for_shapes(self, shapes: tuple) -> _Program:
        problem = self._mismatch(shapes)
        if problem:
            raise ShapeError(problem)
        plan = runtime.make_plan(self.pattern, shapes, self.dtype, self.device, self._keywords, self._options)
        if _structure(plan) != _structure(self._original.plan):
            raise EinplanError(self._structure_message(plan))
        body = _body(plan)
        program = next((p for p in self._by_shapes.values() if p.body == body), None)
        if program is None:
            program = self._program(plan, shapes)
        if len(self._by_shapes) >= MAX_PROGRAMS:
            oldest = next(s for s in self._by_shapes if s != self.shapes)
            del self._by_shapes[oldest]
            self._calls.clear()
        self._by_shapes[shapes] = program
        return program

    # -- building ------------------------------------------------------------------------------

    def _size_free_axes(self, plan: planner.Plan, shapes) -> frozenset:
        """Dynamic axes whose size the generated code does not depend on (same code at another size)."""
        free = set()
        body = _body(plan)
        for axis in self.dynamic:
            if axis.startswith("*") or axis == "...":
                continue
            planned = next(s for i, s in plan.bound.sizes.items() if _base(i) == axis)
            try:
                other = runtime.make_plan(
                    self.pattern,
                    _with_size(self._resolved, shapes, plan.bound, axis, planned + 1),
                    self.dtype,
                    self.device,
                    {k: v for k, v in self._keywords.items() if k != axis},
                    self._options,
                )
            except EinplanError:
                continue
            if _structure(other) == _structure(plan) and _body(other) == body:
                free.add(axis)
        return frozenset(free)

    def _program(self, plan: planner.Plan, shapes) -> _Program:
        params, returns = _annotations(plan, shapes, self._free)
        source = codegen.function(self.name, params, returns, _function_doc(plan), plan.statements)
        program = _Program(self.name, plan, shapes, self.dynamic, self._free, source, _body(plan))
        if source not in self._functions:
            module = _module([program], f"einplan kernel {self.name}: {self.pattern}")
            function = runtime.compile_source(module, self.name)
            self._functions[source] = (function, _jaxtyped(function) if self.check else None)
        return program

    def _args_checker(self) -> Callable:
        """jaxtyping's check of the planned annotations, with every dynamic axis left named."""
        if self._arg_check is None:
            params, _ = _annotations(self._original.plan, self.shapes, frozenset(self.dynamic))
            source = f"def {self.name}(" + ", ".join(f"{p}: {a}" for p, a in params) + ") -> None:\n    return None\n"
            self._arg_check = _jaxtyped(runtime.compile_source(source, self.name))
        return self._arg_check

    # -- messages ------------------------------------------------------------------------------

    def _where(self, base: str, shapes) -> str:
        for k, (items, shape) in enumerate(zip(self._resolved.inputs, shapes)):
            in_operand = any(a.base == base for a in axes_of(items)) or any(
                isinstance(i, Ell) and i.group == base for i in items
            )
            if in_operand:
                return f"operand {k} '{self._resolved.pattern.inputs[k].text}' has shape {tuple(shape)}"
        return f"shapes {[tuple(s) for s in shapes]}"

    def _mismatch(self, shapes) -> Optional[str]:
        """Why ``shapes`` cannot run on this kernel (the axis and its planned size), or None."""
        try:
            bound = bind(self._resolved, shapes, self.dtype, self.device, self._keywords)
        except EinplanError as error:
            return str(error)
        planned = self._original.plan.bound.sizes
        if self.dynamic:
            rule = f"only its dynamic axes ({', '.join(self.dynamic)}) may change size"
        else:
            rule = "it has no dynamic axes"
        for axis_id in list(planned) + [i for i in bound.sizes if i not in planned]:
            base = _base(axis_id)
            if base in self.dynamic or axis_id.isdigit():
                continue
            old, new = planned.get(axis_id), bound.sizes.get(axis_id)
            if old == new:
                continue
            if "[" in axis_id:
                label = f"dim {axis_id[axis_id.index('[') + 1:-1]} of {base!r}"
                if old is None or new is None:
                    count = sum(1 for i in planned if i.startswith(base + "["))
                    return (
                        f"{base!r} covers another number of dims here ({self._where(base, shapes)}) than the "
                        f"{count} kernel {self.name!r} was planned for; {rule}"
                    )
            else:
                label = f"axis {base!r}"
            return (
                f"{label} is {new} in this call ({self._where(base, shapes)}), but kernel {self.name!r} "
                f"was planned for {base}={old}; {rule}. "
                f"Make a kernel for these shapes, or pass dynamic=({base!r},)"
            )
        return None

    def _structure_message(self, plan: planner.Plan) -> str:
        def dyn(bound):
            sizes = {_base(i): s for i, s in bound.sizes.items() if _base(i) in self.dynamic}
            return ", ".join(f"{a}={s}" for a, s in sizes.items())

        old = self._original.plan
        return (
            f"kernel {self.name!r} was planned at {dyn(old.bound)} as: {_steps_text(old)}, path {list(old.path)}; "
            f"at {dyn(plan.bound)} the planner would choose: {_steps_text(plan)}, path {list(plan.path)}. "
            f"A kernel runs one plan: make another kernel for these sizes, or force one with lowering=..."
        )

    def _check_message(self, tensors, error: Exception) -> str:
        lines = [line.strip() for line in str(error).strip().splitlines()[:2] if line.strip()]
        lines = lines[1:] if len(lines) == 2 and lines[1].startswith("The problem") else lines
        shapes = [tuple(t.shape) for t in tensors]
        detail = self._mismatch(shapes)
        if detail is None:
            match = re.search(r"parameter '(x(\d+))'", str(error))
            where = f"operand {match.group(2)}" if match else "the result"
            detail = (
                f"jaxtyping rejects {where} of kernel {self.name!r} ('{self.pattern}') for shapes {shapes} "
                f"and dtype {tensors[0].dtype if tensors else None}"
            )
        return f"{detail}\n    jaxtyping: {' '.join(lines)}"


def _jaxtyped(function: Callable) -> Callable:
    from beartype import beartype

    return jaxtyping.jaxtyped(typechecker=beartype)(function)


def _dtype(value) -> Optional[torch.dtype]:
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value.removeprefix("torch."), None), torch.dtype):
        return getattr(torch, value.removeprefix("torch."))
    raise EinplanError(f"not a torch dtype: {value!r}")


def kernel(
    pattern: str,
    *tensors_or_shapes,
    device=None,
    dtype=None,
    dynamic: Union[str, Iterable[str]] = (),
    check: bool = True,
    name: str = DEFAULT_NAME,
    lowering: Optional[str] = None,
    memory_limit: Optional[int] = None,
    compiled: bool = False,
    **sizes: int,
) -> Kernel:
    """Plan ``pattern`` once for these tensors or shapes and return a callable :class:`Kernel`.

    >>> quad = kernel("b1 b2 n, n n, b1 b2 n -> b1 b2", l, A, l, dynamic="b1")
    >>> quad(l, A, l)                  # one dict look-up, then the generated code
    >>> quad(l[:10], A, l[:10])        # b1 is dynamic: planned once more, for b1=10
    >>> quad.save("quad.py")           # standalone: imports only torch and jaxtyping

    ``dtype`` and ``device`` default to the tensors' (float32 and cpu for
    shapes).  ``dynamic`` names axes (or ``...``/``*batch`` groups) that may
    change size between calls.  ``check=True`` runs jaxtyping's check on each
    call outside torch.compile.  ``name`` is the function's name in
    ``.source``; ``lowering``, ``memory_limit`` and axis sizes (``h=8``) are as
    for ``bl``.  ``compiled=True`` plans for code that torch.compile will trace
    (a broadcast multiply-sum then fuses into one loop), as ``bl`` does inside it.
    """
    shapes, dtype_, device_ = runtime._shapes_of(tensors_or_shapes, _dtype(dtype), device)
    return Kernel(
        pattern,
        shapes,
        dtype_,
        device_,
        dynamic=dynamic,
        check=check,
        name=name,
        options=planner.Options(lowering, memory_limit, bool(compiled)),
        sizes=sizes,
    )
