"""The ``einplan`` command's work: reading shapes and sizes, a torch.einsum reference, timing, and
each command (explain, codegen, bench, tune); :mod:`einplan.cli` holds the argument parser."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import plan as planner
from . import runtime, tuning
from .errors import EinplanError, PatternError, ShapeError
from .explain import describe
from .kernels import Kernel, kernel, module_source
from .letters import read
from .resolve import Ax, Comp, Ell, One, resolve
from .source import sizes_text

COMPILED_HELP = "plan for code that torch.compile will trace (a broadcast multiply-sum fuses into one loop)"


class UsageError(EinplanError):
    """Bad command-line input (a shape, a size, a kernel spec)."""


# --- reading shapes and sizes ---------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, ...]:
    """``80x20x64`` (also ``80,20,64`` or ``(80, 20, 64)``) -> ``(80, 20, 64)``; ``()`` -> ``()``."""
    stripped = text.strip().strip("()[]").strip()
    if not stripped:
        return ()
    parts = re.split(r"\s*[x×,*]\s*|\s+", stripped)
    if not all(p.isdigit() for p in parts):
        raise UsageError(f"bad shape {text!r}: write the sizes joined by x, e.g. 80x20x64 ('()' for a 0-d operand)")
    return tuple(int(p) for p in parts)


def parse_sizes(items: Sequence[str]) -> dict[str, int]:
    """``["b1=80", "b2=20,n=64"]`` -> ``{"b1": 80, "b2": 20, "n": 64}``."""
    sizes: dict[str, int] = {}
    for item in items:
        for word in re.split(r"[\s,]+", item.strip()):
            if not word:
                continue
            name, eq, value = word.partition("=")
            name, value = name.strip(), value.strip()
            if not eq or not name.isidentifier() or not value.isdigit():
                raise UsageError(f"bad size {word!r}: write axis=size, e.g. n=64")
            if name in sizes and sizes[name] != int(value):
                raise UsageError(f"axis {name!r} is given two sizes: {sizes[name]} and {value}")
            sizes[name] = int(value)
    return sizes


def shapes_from_sizes(pattern: str, sizes: dict[str, int]) -> list[tuple[int, ...]]:
    """Each operand's shape from axis sizes (composites multiply their parts)."""
    resolved = resolve(pattern)
    names = sorted(resolved.names)
    unknown = [n for n in sizes if n not in names]
    if unknown:
        raise PatternError(f"size given for axis {unknown[0]!r}, which '{pattern}' does not have (its axes: {', '.join(names)})")
    missing = [n for n in names if n not in sizes]
    if missing:
        given = " ".join(f"{n}={s}" for n, s in sizes.items())
        raise ShapeError(
            f"no size for axis {missing[0]!r} of '{pattern}': add {missing[0]}=... to --size" + (f" (given: {given})" if given else "")
        )
    for items in resolved.inputs:
        for item in items:
            if isinstance(item, Ell):
                raise ShapeError(f"'{pattern}' has {item.group!r}, whose number of dims sizes cannot tell: give the operand shapes with -s")
    return [operand_shape(items, sizes.__getitem__) for items in resolved.inputs]


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


def operands(pattern: str, shapes: Sequence[str], sizes: Sequence[str]) -> tuple[list[tuple[int, ...]], dict[str, Any]]:
    """Shapes and keyword sizes from ``-s`` and ``--size``: shapes win; sizes alone build them."""
    by_axis = parse_sizes(sizes or [])
    if shapes:
        return [parse_shape(s) for s in shapes], by_axis
    if not by_axis:
        count = len(resolve(pattern).inputs)
        raise UsageError(f"give the shapes of the {count} operand(s) with -s (e.g. -s 80x20x64) or the axis sizes with --size")
    return shapes_from_sizes(pattern, by_axis), {}


def parse_memory(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[bB]?\s*", text)
    if not match:
        raise UsageError(f"bad memory limit {text!r}: bytes, optionally with k, M or G (e.g. 64M)")
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ")


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _device(name: str) -> torch.device:
    """The device to plan for.  Planning reads shapes and the device's constants only, so a CUDA
    device (``cuda``, ``cuda:1``) needs no GPU here; see :func:`_running_device` for commands that run."""
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"bad device {name!r}: {error}") from None


def _running_device(name: str, work: str) -> torch.device:
    """The device a command runs kernels on (``work``: what it does there); it must exist here."""
    device = _device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"this machine has no CUDA device, and {work} on {name!r} needs one; explain and codegen plan for it without one"
            )
        if device.index is not None and device.index >= count:
            raise UsageError(f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; {work} needs {name!r}")
    return device


# --- a reference through torch.einsum -------------------------------------------------------------


def einsum_reference(plan: planner.Plan) -> tuple[str, Callable]:
    """``torch.einsum`` for a plan's pattern (views, einsum, then the clauses): equation and function."""
    bound = plan.bound
    letters: dict[str, str] = {}

    def letter(axis_id: str) -> str:
        if axis_id not in letters:
            if len(letters) >= 52:
                raise UsageError("torch.einsum takes at most 52 distinct axes")
            letters[axis_id] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[len(letters)]
        return letters[axis_id]

    inputs = ["".join(letter(a) for a in op.axes) for op in bound.operands]
    clause_axes = [a for _, ids in bound.clauses for a in ids]
    layout = list(bound.output_axes) + clause_axes
    equation = ",".join(inputs) + "->" + "".join(letter(a) for a in layout)

    def run(*tensors):
        views = [t if op.view_shape is None else t.reshape(op.view_shape) for t, op in zip(tensors, bound.operands, strict=True)]
        values = [torch.einsum(equation, *views)]
        axes = list(layout)
        for reducer, ids in bound.clauses:
            (value,) = values
            dims = tuple(axes.index(a) for a in ids)
            rest = [a for a in axes if a not in ids]
            if reducer == "sum":
                values = [value.sum(dims)]
            elif reducer == "mean":
                values = [value.mean(dims)]
            elif reducer == "max":
                values = [torch.amax(value, dims)]
            elif reducer == "min":
                values = [torch.amin(value, dims)]
            elif reducer == "logsumexp":
                values = [torch.logsumexp(value, dims)]
            else:
                moved = value.permute(*[axes.index(a) for a in rest], *dims)
                flat = moved.reshape(*moved.shape[: len(rest)], -1)
                index = flat.argmax(-1) if reducer == "argmax" else flat.argmin(-1)
                shape = tuple(bound.sizes[a] for a in ids)
                values = list(torch.unravel_index(index, shape)) if len(ids) > 1 else [index]
            axes = rest
        order = [axes.index(a) for a in bound.output_axes]
        out = [v.permute(*order) if order else v for v in values]
        if bound.output_shape is not None:
            out = [v.reshape(bound.output_shape) for v in out]
        return out[0] if len(out) == 1 else tuple(out)

    return equation, run


# --- timing -----------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable, args, device: torch.device, repeat: int = 5, budget: float = 0.02) -> float:
    """Best seconds per call: batches of calls long enough to time, best of ``repeat``."""
    fn(*args)
    _sync(device)
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn(*args)
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= budget or number >= 1 << 20:
            break
        number *= 2 if elapsed <= 0 else max(2, min(10, int(budget / elapsed) + 1))
    best = elapsed / number
    for _ in range(repeat - 1):
        start = time.perf_counter()
        for _ in range(number):
            fn(*args)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / number)
    return best


def random_tensors(shapes, dtype: torch.dtype, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        if dtype == torch.bool:
            t = torch.rand(shape, generator=generator) < 0.5
        elif dtype.is_floating_point or dtype.is_complex:
            wide = torch.complex128 if dtype.is_complex else torch.float64
            t = torch.randn(shape, generator=generator, dtype=wide)
            t = t.to(dtype)
        else:
            t = torch.randint(-3 if dtype != torch.uint8 else 0, 4, shape, generator=generator).to(dtype)
        out.append(t.to(device))
    return out


def _human_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:8.2f} {unit}"
    return f"{seconds / 1e-9:8.1f} ns"


def _close(a, b) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        return isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) and all(map(_close, a, b))
    if a.shape != b.shape:
        return False
    if a.dtype.is_floating_point or a.dtype.is_complex:
        tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(a.dtype, 1e-4)
        scale = max(1.0, float(b.abs().max()) if b.numel() else 1.0)
        return bool(torch.allclose(a, b, rtol=tol, atol=tol * scale))
    return bool(torch.equal(a, b))


# --- commands ------------------------------------------------------------------------------------------


def _spelled(pattern: str, einsum: bool) -> str:
    """The einplan pattern whose axes the shapes and sizes name: a torch.einsum equation spelled one axis per letter."""
    return read(pattern).text() if einsum else pattern


def cmd_explain(args) -> int:
    shapes, sizes = operands(_spelled(args.pattern, args.einsum), args.shape, args.size)
    plan = runtime.plan_for(
        args.pattern,
        *shapes,
        dtype=_dtype(args.dtype),
        device=_device(args.device),
        lowering=args.lowering,
        memory_limit=parse_memory(args.memory_limit),
        compiled=args.compiled,
        grad=args.grad,
        einsum=args.einsum,
        **sizes,
    )
    print(describe(plan, args.pattern if args.einsum else None))
    return 0


def _kernel_specs(args) -> list[tuple[str, str, list, dict]]:
    """(name, pattern, shapes, sizes) for the positional pattern and each --kernel."""
    specs = []
    if args.pattern is not None:
        shapes, sizes = operands(_spelled(args.pattern, args.einsum), args.shape, args.size)
        specs.append((args.name, args.pattern, shapes, sizes))
    elif args.shape or args.size:
        raise UsageError("-s/--size belong to a PATTERN; with --kernel, put the shapes after ':' in the spec")
    for spec in args.kernel or []:
        name, eq, rest = spec.partition("=")
        pattern, colon, shape_text = rest.partition(":")
        name, pattern, shape_text = name.strip(), pattern.strip(), shape_text.strip()
        if not eq or not colon or not name or not pattern:
            raise UsageError(
                f"bad --kernel {spec!r}: write NAME=PATTERN:SHAPES, e.g. "
                f"'dot = b n, b n -> b : 100x64 100x64' or 'dot = b n, b n -> b : b=100 n=64'"
            )
        words = [w for w in re.split(r"[\s,]+", shape_text) if w]
        if any("=" in w for w in words):
            shapes, sizes = operands(_spelled(pattern, args.einsum), [], words)
        else:
            shapes, sizes = operands(_spelled(pattern, args.einsum), words, [])
        specs.append((name, pattern, shapes, sizes))
    if not specs:
        raise UsageError("nothing to generate: give a PATTERN with its shapes, or --kernel NAME=PATTERN:SHAPES")
    return specs


def cmd_codegen(args) -> int:
    dtype, device = _dtype(args.dtype), _device(args.device)
    memory_limit = parse_memory(args.memory_limit)
    kernels: list[Kernel] = []
    for name, pattern, shapes, sizes in _kernel_specs(args):
        kernels.append(
            kernel(
                pattern,
                *shapes,
                dtype=dtype,
                device=device,
                name=name,
                check=False,
                lowering=args.lowering,
                memory_limit=memory_limit,
                compiled=args.compiled,
                grad=args.grad,
                einsum=args.einsum,
                **sizes,
            )
        )
    text = module_source(kernels, title=args.title)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        try:
            with open(args.output, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
        except OSError as error:
            raise UsageError(f"cannot write {args.output!r}: {error.strerror or error}") from None
        listed = ", ".join(f"{k.name} ({k.pattern})" for k in kernels)
        print(f"wrote {len(kernels)} kernel(s) to {args.output}: {listed}")
    return 0


def cmd_bench(args) -> int:
    dtype, device = _dtype(args.dtype), _running_device(args.device, "timing kernels")
    if device.type == "meta":
        raise UsageError("bench runs the code, and the meta device holds no data: plan for meta with explain or codegen")
    memory_limit = parse_memory(args.memory_limit)
    shapes, sizes = operands(args.pattern, args.shape, args.size)
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    default = kernel(args.pattern, *shapes, dtype=dtype, device=device, check=False, memory_limit=memory_limit, **sizes)
    tensors = random_tensors(default.shapes, dtype, device)
    equation, reference = einsum_reference(default.plan_object)
    try:
        expected = reference(*tensors)
    except (RuntimeError, NotImplementedError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"torch.einsum cannot compute {equation!r} for {dtype} on {device} ({first}), so bench has no reference to check against"
        ) from None
    kinds = [s.kind for s in default.plan_object.steps if s.estimate is not None] or ["no contraction"]
    rows: list[tuple[str, float | None, str]] = []
    for lowering in planner.LOWERINGS:
        try:
            forced = kernel(
                args.pattern, *shapes, dtype=dtype, device=device, check=False, lowering=lowering, memory_limit=memory_limit, **sizes
            )
        except EinplanError as error:
            rows.append((lowering, None, str(error).splitlines()[0]))
            continue
        rows.append((lowering, *_measure(forced, tensors, expected, device, args.repeat)))
    rows.append((f"default ({', '.join(kinds)})", *_measure(default, tensors, expected, device, args.repeat)))
    rows.append(("torch.einsum", *_measure(reference, tensors, expected, device, args.repeat)))

    print(f"pattern:  {args.pattern}")
    print(f"primed:   {default.plan_object.bound.resolved.primed}")
    print(f"sizes:    {sizes_text(default.plan_object.bound)}")
    threads = f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
    print(f"shapes:   {', '.join(str(s) for s in default.shapes)}   {dtype} on {device}{threads}")
    then = "  then the clauses" if default.plan_object.bound.clauses else ""
    print(f"einsum:   torch.einsum({equation!r}, ...){then}")
    print()
    timed = [k for k, (_, seconds, _) in enumerate(rows) if seconds is not None]
    seconds_of = {k: rows[k][1] or 0.0 for k in timed}
    winner = min(timed, key=seconds_of.__getitem__)
    best = seconds_of[winner]
    width = max(len(r[0]) for r in rows) + 2
    print(f"  {'':{width}}{'time/call':>12}  {'vs best':>8}  result")
    for k, (label, seconds, note) in enumerate(rows):
        if seconds is None:
            print(f"  {label:{width}}{'n/a':>12}  {'':>8}  {note}")
            continue
        mark = "*" if k == winner else " "
        print(f"{mark} {label:{width}}{_human_time(seconds):>12}  {seconds / best:7.2f}x  {note}")
    print("\n(* the fastest; n/a: that lowering cannot compute this pattern, its error is shown)")
    return 0


def _measure(fn, tensors, expected, device, repeat) -> tuple[float, str]:
    out = fn(*tensors)
    note = "matches einsum" if _close(out, expected) else "DIFFERS from einsum"
    return time_call(fn, tensors, device, repeat=repeat), note


def cmd_tune(args) -> int:
    device = str(_running_device(args.device, "measuring its constants"))
    print(f"einplan tune: measuring the cost model's constants on {args.device} ...", flush=True)
    model, path = tuning.tune(device, quick=args.quick)
    for field, value in dataclasses.asdict(model).items():
        print(f"  {field:<18} {value:.4g}" if isinstance(value, float) else f"  {field:<18} {value}")
    if model.kind == "cuda":
        print(f"stored in {path}; later CUDA plans use these constants (on a machine with this GPU, by its name)")
    else:
        print(f"stored in {path}; later runs plan with these constants")
    return 0
