"""Everything jaxtyping: dims words, the annotations of a function's parameters and return, the checks.

One set of rules writes every annotation einplan emits.  Without shapes, each
axis is named (``Float[Tensor, 'b1 b2 n']``): the code ``bl`` runs, for any
size.  With the planned shapes, each size is pinned (``'b1=80 b2=20 n=64'``,
which jaxtyping reads as the fixed size 64) except the names and groups left
*symbolic*: a kernel's dynamic axes that its code does not depend on.

Primes are dropped (a prime has its name's size); a name with a leading ``_``
means something else to jaxtyping, so it is written ``_`` (unchecked there;
einplan checks it).  A composite ``(h d)`` is written ``h*d`` once both names
are bound by earlier operands, else ``_``.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .bind import Bound
from .errors import ShapeError
from .resolve import Ax, Comp, Ell, Item, One, Resolved

MAX_CHECKED_OPERANDS = 128  # jaxtyping checks the first 128 operands; einplan checks all
NAMES = ("Bool", "Complex", "Float", "Int", "Int64", "Integer", "Shaped")  # what annotations may name
ARG_REDUCERS = ("argmax", "argmin")

NO_AXES: frozenset[str] = frozenset()


def jaxtyping_class(dtype: torch.dtype) -> str:
    """The jaxtyping dtype class that names ``dtype``'s kind."""
    if dtype.is_complex:
        return "Complex"
    if dtype.is_floating_point:
        return "Float"
    if dtype == torch.bool:
        return "Bool"
    return "Integer"


def annotation(kind: str, dims: str) -> str:
    """``Float[Tensor, 'b n']``."""
    return f"{kind}[Tensor, {dims!r}]"


def plain_name(name: str) -> bool:
    """A name jaxtyping binds as a dim: an identifier, not a keyword, no leading ``_``."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")


def dim_word(base: str) -> str:
    """A base name as a jaxtyping dim (``_`` for a name with a leading ``_``)."""
    return "_" if base.startswith("_") else base


def namespace() -> dict[str, Any]:
    """The names generated annotations use: ``torch``, ``Tensor`` and jaxtyping's dtype classes."""
    import jaxtyping

    space: dict[str, Any] = {"torch": torch, "Tensor": torch.Tensor}
    for kind in NAMES:
        space[kind] = getattr(jaxtyping, kind)
    return space


# --- dims ----------------------------------------------------------------------------------------


def _axis_word(base: str, size: int | None, symbolic: frozenset) -> str:
    if base.isdigit():
        return base
    if size is None or base in symbolic:
        return dim_word(base)
    return f"{base}={size}" if plain_name(base) else str(size)


def _group_words(group: str, sizes: Sequence[int] | None, symbolic: frozenset, output: bool) -> list[str]:
    if sizes is not None and group not in symbolic:
        return [str(s) for s in sizes]
    if group == "..." or group.startswith("*_"):
        return ["..."]
    return [group if output else "#" + group]  # '#': an input's group may broadcast


def _composite_word(item: Comp, size: int | None, symbolic: frozenset, named: set[str]) -> str:
    groups = [p.group for p in item.parts if isinstance(p, Ell)]
    if groups:  # (b ...): its size is a number once pinned, else unchecked here (einplan checks it)
        return str(size) if size is not None and not symbolic.intersection(groups) else "_"
    bases = [p.base if isinstance(p, Ax) else "1" for p in item.parts]
    if size is not None and not any(b in symbolic for b in bases):
        joined = "*".join(bases)
        return f"{joined}={size}" if all(b.isdigit() or plain_name(b) for b in bases) else str(size)
    known = all(b.isdigit() or (plain_name(b) and b in named) for b in bases)
    return "*".join(bases) if known else "_"


def _words(items: Sequence[Item], sizes: list | None, symbolic: frozenset, named: set[str], output: bool):
    """One operand's dims, and the names it binds (written as names)."""
    words: list[str] = []
    binds: set[str] = set()
    for item, size in zip(items, sizes if sizes is not None else [None] * len(items), strict=True):
        if isinstance(item, Ell):
            words.extend(_group_words(item.group, size, symbolic, output))
        elif isinstance(item, One):
            words.append("1")
        elif isinstance(item, Ax):
            word = _axis_word(item.base, size, symbolic)
            if word == item.base:
                binds.add(item.base)
            words.append(word)
        else:
            words.append(_composite_word(item, size, symbolic, named))
    return " ".join(words), binds


def _sizes_from_shape(items: Sequence[Item], shape: Sequence[int]) -> list:
    """Each item's size in ``shape``: an int, or a group's sizes."""
    fixed = sum(1 for item in items if not isinstance(item, Ell))
    sizes: list = []
    dim = 0
    for item in items:
        if isinstance(item, Ell):
            count = len(shape) - fixed
            sizes.append(tuple(shape[dim : dim + count]))
            dim += count
        else:
            sizes.append(shape[dim])
            dim += 1
    return sizes


def _output_sizes(bound: Bound) -> list:
    sizes: list = []
    for item in bound.resolved.output:
        if isinstance(item, Ell):
            sizes.append(bound.group_sizes[item.group])
        elif isinstance(item, One):
            sizes.append(1)
        elif isinstance(item, Ax):
            sizes.append(bound.sizes[item.id])
        else:
            ids = [
                i
                for p in item.parts
                for i in ((p.id,) if isinstance(p, Ax) else bound.groups.get(p.group, ()) if isinstance(p, Ell) else ())
            ]
            sizes.append(math.prod(bound.sizes[i] for i in ids))
    return sizes


def dims(resolved: Resolved, bound: Bound | None = None, shapes=None, symbolic: frozenset = NO_AXES) -> tuple[tuple[str, ...], str]:
    """jaxtyping dims of each input and of the output.

    Without ``bound`` and ``shapes`` every axis is named; with them, each size
    is pinned except the names and groups in ``symbolic``.
    """
    pinned = bound is not None and shapes is not None
    named: set[str] = set()
    inputs = []
    for k, items in enumerate(resolved.inputs):
        sizes = _sizes_from_shape(items, shapes[k]) if pinned else None
        words, binds = _words(items, sizes, symbolic, named, output=False)
        inputs.append(words)
        named |= binds
    out_sizes = _output_sizes(bound) if pinned and bound is not None else None
    output, _ = _words(resolved.output, out_sizes, symbolic, named, output=True)
    return tuple(inputs), output


def return_annotation(bound: Bound, count: int, output_dims: str) -> str:
    """The result's annotation: int64 indices (a tuple of ``count``) after an argmax/argmin, else the dtype's."""
    reducers = [r for r, _ in bound.clauses]
    if reducers and reducers[-1] in ARG_REDUCERS:
        one = annotation("Int64", output_dims)
        return one if count == 1 else "tuple[" + ", ".join([one] * count) + "]"
    return annotation(jaxtyping_class(bound.dtype), output_dims)


def annotate(
    bound: Bound, params: Sequence[str], count: int, shapes=None, symbolic: frozenset = NO_AXES
) -> tuple[list[tuple[str, str]], str]:
    """Each parameter's annotation and the return's, for a function returning ``count`` tensors.

    Shape-free without ``shapes``; with them, pinned except ``symbolic`` (see :func:`dims`).
    """
    kind = jaxtyping_class(bound.dtype)
    inputs, output = dims(bound.resolved, bound if shapes is not None else None, shapes, symbolic)
    params_ = [(param, annotation(kind, words)) for param, words in zip(params, inputs, strict=True)]
    return params_, return_annotation(bound, count, output)


# --- checks ----------------------------------------------------------------------------------------


def jaxtyped(function: Callable) -> Callable:
    """``function`` with jaxtyping's check of its annotations on each call."""
    import jaxtyping
    from beartype import beartype

    return jaxtyping.jaxtyped(typechecker=beartype)(function)


@functools.lru_cache(maxsize=512)
def _checker(input_dims: tuple[str, ...], kind: str) -> Callable:
    import jaxtyping

    cls = getattr(jaxtyping, kind)
    hint = tuple.__class_getitem__(tuple(cls[torch.Tensor, words] for words in input_dims))

    def check(operands):
        return None

    check.__annotations__ = {"operands": hint}
    return jaxtyped(check)


def jaxtyping_check(resolved: Resolved, shapes, dtype: torch.dtype) -> None:
    """Check shapes against the shape-free annotations, on meta tensors (no data)."""
    input_dims, _ = dims(resolved)
    if not input_dims:
        return
    # zero strides: a fake never needs storage, so no shape's size can overflow it
    fakes = tuple(torch.empty_strided(tuple(s), (0,) * len(s), dtype=dtype, device="meta") for s in shapes)
    checked = input_dims
    if len(checked) > MAX_CHECKED_OPERANDS:  # the type checker refuses huge tuple hints
        checked, fakes = checked[:MAX_CHECKED_OPERANDS], fakes[:MAX_CHECKED_OPERANDS]
    try:
        _checker(checked, jaxtyping_class(dtype))(fakes)
    except Exception as error:  # jaxtyping raises TypeCheckError (a TypeError) and others
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ShapeError(
            f"jaxtyping rejects the shapes {[tuple(s) for s in shapes]} for '{resolved.pattern.source}' ({', '.join(input_dims)}): {first}"
        ) from None


def argument_checker(name: str, params: Sequence[tuple[str, str]]) -> Callable:
    """A function ``name(x0, ...)`` that only checks its arguments against ``params``' annotations."""
    if not name.isidentifier() or not all(p.isidentifier() for p, _ in params):
        raise ValueError(f"not a function or parameter name in {name}({params})")
    source = f"def {name}(" + ", ".join(f"{p}: {a}" for p, a in params) + ") -> None:\n    return None\n"
    space = namespace()
    exec(compile(source, f"<einplan-check-{name}>", "exec"), space)
    return jaxtyped(space[name])


def rejection(error: Exception) -> str:
    """jaxtyping's reason for rejecting a call, in one line."""
    lines = [line.strip() for line in str(error).strip().splitlines()[:2] if line.strip()]
    lines = lines[1:] if len(lines) == 2 and lines[1].startswith("The problem") else lines
    return " ".join(lines)


def rejected_operand(error: Exception) -> int | None:
    """The index of the parameter (``x2``) jaxtyping rejected, or None (the result)."""
    match = re.search(r"parameter 'x(\d+)'", str(error))
    return int(match.group(1)) if match else None
