"""Held-out einops and einx patterns from those projects' test suites and docs.

tests/data/heldout_einops.txt holds one call per line: the original einops or einx
call, its einplan spelling, and the keyword sizes and input shapes for einplan (the
format is described at the top of that file).  Each line runs the original call and
einplan.bl on the same random inputs (float64; boolean for any/all; near 1 for prod): the
results of rearrange, repeat, einx.id, any and all must be equal, the others agree to 1e-12.
A line with a fourth column 'xfail: <reason>' records a known einplan defect; it must fail
(strict xfail), so that a fix shows up as an unexpected pass and the mark is removed.
"""

from __future__ import annotations

import re
import shlex
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

import einplan

einops = pytest.importorskip("einops")
einx = pytest.importorskip("einx")

DATA = Path(__file__).parent / "data" / "heldout_einops.txt"

EINOPS_FUNCTIONS = {"rearrange", "reduce", "repeat", "einsum", "EinMix"}
EINX_FUNCTIONS = {"id", "rearrange", "sum", "mean", "max", "min", "logsumexp", "prod", "any", "all", "dot"}
EINOPS_REDUCTIONS = {"min", "max", "sum", "mean", "logsumexp", "prod", "any", "all"}
# calls whose result must equal einops'/einx's exactly: they only move or copy elements, or are boolean
EXACT_FUNCTIONS = {("einops", "rearrange"), ("einops", "repeat"), ("einx", "id"), ("einx", "rearrange")}


def _value(text: str):
    """A keyword value of the original call: int, bool, tuple of ints or string."""
    if text in ("True", "False"):
        return text == "True"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"\d+(,\d+)+", text):
        return tuple(int(v) for v in text.split(","))
    return text


def _parse_call(text: str):
    """'einops.reduce "p" max h2=2' -> (library, function, pattern, reduction, kwargs)."""
    tokens = shlex.split(text)
    library, _, function = tokens[0].partition(".")
    pattern = tokens[1]
    reduction = None
    kwargs = {}
    for token in tokens[2:]:
        if "=" in token:
            key, _, value = token.partition("=")
            kwargs[key] = _value(value)
        else:
            assert reduction is None, f"two reductions in {text!r}"
            reduction = token
    return library, function, pattern, reduction, kwargs


def _parse_args(text: str):
    """'h2=2 w2=2 2x3x4 -' -> ({'h2': 2, 'w2': 2}, [(2, 3, 4), ()])."""
    sizes, shapes = {}, []
    for token in text.split():
        if "=" in token:
            key, _, value = token.partition("=")
            sizes[key] = int(value)
        elif token == "-":
            shapes.append(())
        else:
            shapes.append(tuple(int(v) for v in token.split("x")))
    return sizes, shapes


def _read():
    rows, source = [], None
    for number, line in enumerate(DATA.read_text().splitlines(), start=1):
        if line.startswith("#@ source:"):
            source = line[len("#@ source:") :].strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        call, pattern, args, *mark = line.split("\t")
        assert len(mark) <= 1, f"line {number} has more than four columns"
        xfail = None
        if mark:
            assert mark[0].startswith("xfail: ") and mark[0][len("xfail: ") :].strip(), f"line {number}: {mark[0]!r}"
            xfail = mark[0][len("xfail: ") :].strip()
        rows.append((number, source, call, pattern, args, xfail))
    return rows


ROWS = _read()


def _normalized(pattern: str) -> str:
    return " ".join(re.sub(r"(->|\(|\)|,|\[|\])", r" \1 ", pattern).split())


def _call_key(call: str):
    library, function, pattern, reduction, kwargs = _parse_call(call)
    return (library, function, _normalized(pattern), reduction, tuple(sorted(kwargs.items())))


def test_file_is_large_and_consistent():
    """At least 150 lines from both libraries; every line parses; no call repeats with the same shapes."""
    assert len(ROWS) >= 150, len(ROWS)
    libraries = Counter(_parse_call(r[2])[0] for r in ROWS)
    assert libraries["einops"] >= 50 and libraries["einx"] >= 50, libraries
    keys = Counter((_call_key(r[2]), tuple(_parse_args(r[4])[1])) for r in ROWS)
    repeated = [k for k, n in keys.items() if n > 1]
    assert not repeated, repeated
    for number, source, call, pattern, args, _ in ROWS:
        assert source, f"line {number} has no source"
        library, function, _, reduction, _ = _parse_call(call)
        if library == "einops":
            assert function in EINOPS_FUNCTIONS, f"line {number}: {function}"
            assert (reduction is not None) == (function == "reduce"), f"line {number}"
            assert reduction is None or reduction in EINOPS_REDUCTIONS, f"line {number}: {reduction}"
        else:
            assert library == "einx" and function in EINX_FUNCTIONS, f"line {number}: {call}"
            assert reduction is None, f"line {number}"
        sizes, shapes = _parse_args(args)
        assert shapes, f"line {number} has no input shape"
        assert pattern.count(",") + 1 == len(shapes), f"line {number}: {len(shapes)} shapes for {pattern!r}"


def _kind(call: str) -> str:
    """'bool' for any/all (inputs are booleans), 'prod' for prod, else 'float'."""
    library, function, _, reduction, _ = _parse_call(call)
    how = reduction if library == "einops" else function
    return {"any": "bool", "all": "bool", "prod": "prod"}.get(how, "float")


def _exact(call: str) -> bool:
    library, function, *_ = _parse_call(call)
    return (library, function) in EXACT_FUNCTIONS or _kind(call) == "bool"


def _inputs(shapes, seed, kind="float"):
    """Random float64 inputs; booleans (half true) for any/all; 1 + N(0, 0.01) for prod, so that
    a product of hundreds of elements stays far from 0 and the comparison to 1e-12 means something."""
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    if kind == "bool":
        return [t > 0 for t in tensors]
    if kind == "prod":
        return [1 + t / 10 for t in tensors]
    return tensors


def _logsumexp(x, axes):
    # einops' own test passes this callable as the reduction
    return x.logsumexp(axes)


def _original(call: str, tensors):
    library, function, pattern, reduction, kwargs = _parse_call(call)
    if library == "einops":
        if function == "rearrange":
            return einops.rearrange(tensors[0], pattern, **kwargs)
        if function == "reduce":
            how = _logsumexp if reduction == "logsumexp" else reduction
            return einops.reduce(tensors[0], pattern, how, **kwargs)
        if function == "repeat":
            return einops.repeat(tensors[0], pattern, **kwargs)
        if function == "einsum":
            return einops.einsum(*tensors, pattern)
        if function == "EinMix":
            from einops.layers.torch import EinMix

            layer = EinMix(pattern, **kwargs).double()
            with torch.no_grad():
                layer.weight.copy_(tensors[1])
                return layer(tensors[0])
    if library == "einx":
        return getattr(einx, function)(pattern, *tensors, **kwargs)
    raise AssertionError(f"unknown call {call!r}")


def _param(row):
    number, pattern, xfail = row[0], row[3], row[5]
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(row, id=f"L{number}-{pattern}", marks=marks)


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_heldout_einops(row):
    number, source, call, pattern, args, _ = row
    sizes, shapes = _parse_args(args)
    tensors = _inputs(shapes, seed=number, kind=_kind(call))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # einx deprecates keepdims=True, EinMix warns about init
        want = _original(call, tensors)
    got = einplan.bl(pattern, *tensors, **sizes)
    if _exact(call):
        where = f"line {number} ({source}): {call} as {pattern!r} {args}"
        assert got.dtype == want.dtype and got.shape == want.shape, f"{where}: {got.dtype} {got.shape} != {want.dtype} {want.shape}"
        assert torch.equal(got, want), f"{where}: values differ"
        return
    torch.testing.assert_close(
        got,
        want,
        rtol=1e-12,
        atol=1e-12,
        msg=lambda m: f"line {number} ({source}): {call} as {pattern!r} {args}\n{m}",
    )
