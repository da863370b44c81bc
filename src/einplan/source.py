"""Stage 5: a plan as source text, and source text as a function.

``render`` writes one annotated function for a plan (the code ``bl`` runs and
``code`` shows: every axis named in its annotations; a kernel's: sizes pinned,
its size-free dynamic axes named).  ``module_text`` writes the standalone
module a kernel saves (imports only torch and jaxtyping, and threading where
its code keeps buffers between calls).  ``compile_source``
executes generated source, registered with linecache so that tracebacks show
its lines.
"""

from __future__ import annotations

import hashlib
import linecache
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import codegen
from . import plan as planner
from .bind import Bound
from .signatures import NO_AXES, annotate, namespace
from .version import __version__

FUNCTION_NAME = "einplan_kernel"


def function_doc(plan: planner.Plan) -> str:
    """The docstring of a plan's function: the pattern and its primed form."""
    resolved = plan.bound.resolved
    return f"{resolved.pattern.text}  (primed: {resolved.primed})"


def body(plan: planner.Plan) -> str:
    """The function's statements alone (and its autograd functions'): two plans with one body run the same code."""
    classes = [codegen.definition(f) for f in plan.functions]
    return "\n".join([*classes, *codegen.statements(plan.statements)])


def render(plan: planner.Plan, name: str = FUNCTION_NAME, shapes=None, symbolic: frozenset = NO_AXES) -> str:
    """The plan as one annotated Python function.

    Without ``shapes`` its annotations name every axis; with the planned shapes
    they pin each size except the axes in ``symbolic``.
    """
    params, returns = annotate(plan.bound, plan.inputs, len(plan.returns), shapes, symbolic)
    return codegen.function(name, params, returns, function_doc(plan), plan.statements, plan.functions)


TRITON_MARK = "@triton.jit\n"
TRITON_HEADER = "import triton\nimport triton.language as tl\n"


def triton_names() -> dict:
    """``triton`` and ``tl``, for source that defines a Triton kernel (imported only then)."""
    import triton
    import triton.language as tl

    return {"triton": triton, "tl": tl}


# The kept buffers of every function einplan compiles (a saved module keeps its own): one pool,
# so that its size is that of the largest plan's temporaries, not of every plan cached.
KEPT_BUFFERS = threading.local()


def release_buffers() -> None:
    """Drop this thread's kept buffers (the next call that keeps one allocates it again)."""
    vars(KEPT_BUFFERS).clear()


# How many live functions were compiled from each linecache entry: the entry goes with the last.
_LINES_USED: dict[str, int] = {}
_LINES_LOCK = threading.Lock()


def _release_lines(filename: str) -> None:
    with _LINES_LOCK:
        left = _LINES_USED.get(filename, 0) - 1
        if left > 0:
            _LINES_USED[filename] = left
        else:
            _LINES_USED.pop(filename, None)
            linecache.cache.pop(filename, None)


def compile_source(source: str, name: str = FUNCTION_NAME, names: dict | None = None) -> Callable:
    """Exec generated source; register it in linecache so tracebacks show real lines.

    The entry lives as long as a function compiled from it does: a program dropped from the
    plan cache, or a kernel's function dropped from its table, takes its lines with it once it
    is collected (functions with one source share one entry).  ``names``: what else the source
    may name (a rank's function on DTensors: ``einplan``, ``collectives``, DTensor's classes)."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    filename = f"<einplan-{digest}>"
    with _LINES_LOCK:
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        _LINES_USED[filename] = _LINES_USED.get(filename, 0) + 1
    space = namespace()
    space.update(threading=threading, **{codegen.KEPT_POOL: KEPT_BUFFERS})
    if TRITON_MARK in source:  # a fused step's kernel: its module imports triton too
        space.update(triton_names())
    space.update(names or {})
    try:
        exec(compile(source, filename, "exec"), space)
        function = space[name]
    except BaseException:
        _release_lines(filename)
        raise
    weakref.finalize(function, _release_lines, filename)
    return function


# --- what a module's docstring says about each function ---------------------------------------------


def sizes_text(bound: Bound) -> str:
    """``b1=80, b2=20, n=64, ...=(3, 4)``: one size per name (primes share it), then the groups."""
    named = [f"{n}={s}" for n, s in bound.named_sizes.items()]
    groups = [f"{g}={s}" for g, s in bound.group_sizes.items() if s]
    return ", ".join(named + groups) or "(none)"


def steps_text(plan: planner.Plan) -> str:
    """``matmul-broadcast (b n, m n -> b m); ...``: each step's lowering and its pattern form."""
    return "; ".join(f"{s.kind} ({s.description})" for s in plan.steps) or "(none)"


@dataclass(frozen=True)
class Entry:
    """One function of a module: its name and plan, the shapes and dynamic axes it was made for,
    the dynamic axes its code does not depend on (named, not pinned), and its source."""

    name: str
    plan: planner.Plan
    shapes: tuple[tuple[int, ...], ...]
    dynamic: tuple[str, ...]
    symbolic: frozenset
    source: str


def entry_doc(entry: Entry) -> str:
    """The lines of a module's docstring that describe one function."""
    bound = entry.plan.bound
    resolved = bound.resolved
    fixed = ", ".join(entry.dynamic) if entry.dynamic else "none"
    if entry.dynamic:
        shared = [a for a in entry.dynamic if a in entry.symbolic]
        fixed += f" (size-independent code: {', '.join(shared)})" if shared else " (this function: the sizes above)"
    params = ", ".join(entry.plan.inputs)
    return "\n".join(
        [
            f"{entry.name}({params})",
            f"    pattern:  {resolved.pattern.text}",
            f"    primed:   {resolved.primed}",
            f"    sizes:    {sizes_text(bound)}",
            f"    shapes:   {', '.join(str(tuple(s)) for s in entry.shapes)}",
            f"    dynamic:  {fixed}",
            f"    dtype:    {bound.dtype}",
            f"    device:   {bound.device}",
            f"    steps:    {steps_text(entry.plan)}",
        ]
    )


def module_text(entries: Sequence[Entry], title: str) -> str:
    """A standalone module: a docstring describing each function, the imports, then the functions."""
    names = [e.name for e in entries]
    first = names[0]
    triton = any(TRITON_MARK in e.source for e in entries)
    kept = any(codegen.KEPT_POOL in e.source for e in entries)
    libraries = ["torch", "jaxtyping"] + ["triton"] * triton + ["threading"] * kept
    imports = ", ".join(libraries[:-1]) + " and " + libraries[-1]
    doc = [
        title,
        "",
        f"Generated by einplan {__version__}; this module imports only {imports}.",
        "",
        *("\n".join([entry_doc(e), ""]) for e in entries),
        "Each function was planned for the sizes listed, and its code may bake them in",
        "(reshapes, chunk counts); its jaxtyping annotations pin them (``n=64`` is a",
        "fixed size 64).  To check shapes on every call, wrap a function with jaxtyping:",
        "",
        "    from beartype import beartype",
        "    from jaxtyping import jaxtyped",
        f"    {first}_checked = jaxtyped(typechecker=beartype)({first})",
    ]
    text = '"""' + "\n".join(doc).replace("\\", "\\\\").replace('"""', '\\"\\"\\"') + '\n"""\n\n'
    text += ("import threading\n" if kept else "") + codegen.HEADER + (TRITON_HEADER if triton else "") + "\n"
    text += codegen.KEPT_POOL_SOURCE if kept else ""
    text += "__all__ = [" + ", ".join(repr(n) for n in names) + "]\n"
    for entry in entries:
        text += "\n\n" + entry.source
    return text
