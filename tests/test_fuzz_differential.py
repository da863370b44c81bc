"""Differential fuzzing: generated patterns with clauses, every lowering forced, several dtypes.

Each example is a pattern of 1 to 6 operands over up to 8 distinct axes of
sizes 0..4, with optional ``...`` (broadcast, kept or summed), diagonals,
matrix-chain links and primes, and (in the clause tests) a chain of clauses
``| sum/max/min/mean/logsumexp A`` applied left to right, optionally ending in
``| argmax/argmin A`` over one or more axes.

Oracle: torch.einsum for the sum-product to (output axes + clause axes), with
the einsum string from conftest's independent chain reading
(``einplan_to_einsum``), then torch's own reductions in clause order
(``torch.amax``, ``torch.amin``, ``Tensor.mean``, ``torch.logsumexp``,
``Tensor.sum``; argmax/argmin over several axes = flatten them in clause
order, argmax, unravel into one index tensor per axis).

Each test runs with the default plan and with every name in
``einplan.LOWERINGS`` forced.  A forced lowering may raise
``einplan.UnsupportedError`` when it cannot compute a step: that is counted as
"declined", and each lowering must compute a healthy share of the examples.
max/min/argmax/argmin over an axis of size 0 must raise ``einplan.EinplanError``
(torch raises too).  argmax/argmin results are compared by the values they
select (exact indices wherever the best value is unambiguous).  Gradients of
float64 results (no argmax) are compared with ``torch.autograd.grad`` of
``(output * fixed random weights).sum()``.

Dtypes: every example runs in float64, and most also in float32, int64 or
complex128, with only the clauses torch supports in that dtype (no mean on
int64; no max/min/argmax/argmin on complex).

CI runs the example counts in EXAMPLES (2910 in all), derandomized, and
reports the first failing example of each test as generated (unshrunk).  A
longer, randomized run with 20x the examples that shrinks failures:

    EINPLAN_FUZZ=long python -m pytest tests/test_fuzz_differential.py
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import NamedTuple

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import einplan
from conftest import (
    ALL_LOWERINGS,
    TOLERANCES,
    axis_base,
    chain_reading,
    einplan_to_einsum,
    lowering_id,
    operand_shapes,
    random_tensors,
)
from einplan import CHUNKED, ELEMENTWISE, FUSED, MATMUL, UNROLLED

# --- profiles ----------------------------------------------------------------------------------

LONG = os.environ.get("EINPLAN_FUZZ") == "long"
SCALE = 20 if LONG else 1
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

# CI: the first failing example of each test is reported as generated, without shrinking
# (shrinking these cases can take minutes); the long profile shrinks.
settings.register_profile(
    "einplan-fuzz-ci",
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=HEALTH,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.generate],
)
settings.register_profile("long", deadline=None, derandomize=False, database=None, suppress_health_check=HEALTH, print_blob=True)
PROFILE = settings.get_profile("long" if LONG else "einplan-fuzz-ci")

# Examples per test in CI (x SCALE in the long profile).  Each parametrized test runs
# once per entry of ALL_LOWERINGS (the default plan and the 4 lowerings):
#   sum-products 5 x 150 + clauses 5 x 150 + small patterns 5 x 150 + int64 clause chains
#   5 x 30 + size-0 extremes 5 x 30 = 2550 examples, each run in float64 and, for most,
#   in a second dtype; under a 256-byte memory limit, float64 with gradients: clause chains
#   2 x 120 (default plan, chunked forced) + sum-products 120 = 360 more.
EXAMPLES = {
    "sum_products": 150,
    "clauses": 150,
    "small": 150,
    "integer_clauses": 30,
    "empty_extremes": 30,
    "small_limits": 120,
    "small_limit_products": 120,
}


def _settings(kind: str) -> settings:
    return settings(PROFILE, max_examples=EXAMPLES[kind] * SCALE)


# --- generated patterns ------------------------------------------------------------------------

# Reducer words and Python keywords/builtins are valid axis names too.
NAMES = [
    "i",
    "j",
    "k",
    "n",
    "b1",
    "b2",
    "ab",
    "xy_z",
    "Q9",
    "_u",
    "in",
    "sum",
    "max",
    "argmax",
    "lambda",
    "torch",
    "None",
    "self",
    "t0",
    "Tensor",
]
SIZES = [0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4]  # size 0 about one axis in eleven
MAX_AXES = 8

REDUCERS = ("sum", "max", "min", "mean", "logsumexp")
ARG_REDUCERS = ("argmax", "argmin")
EXTREMES = ("max", "min", "argmax", "argmin")

F64, F32, I64, C128 = torch.float64, torch.float32, torch.int64, torch.complex128


class Scale(NamedTuple):
    bases: int  # at most this many base names (each maybe primed too; at most MAX_AXES axes)
    operands: int  # 1 to this many operands
    ranks: tuple[int, ...]  # named axes per operand, drawn from these (before diagonals/links)
    sizes: tuple[int, ...]  # axis sizes, drawn from these


LARGE = Scale(bases=6, operands=6, ranks=(1, 2, 2, 3, 3, 0, 4), sizes=SIZES)
# small patterns, many of them: the corners (size 0 and 1, 0-d operands) are dense here
SMALL = Scale(bases=3, operands=3, ranks=(1, 2, 0, 3), sizes=(0, 1, 2, 1, 3))


@st.composite
def _axes(draw, scale: Scale):
    """Up to MAX_AXES distinct axes (some primed, sharing their base's size) and the sizes."""
    bases = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=scale.bases, unique=True))
    sizes = {b: draw(st.sampled_from(scale.sizes)) for b in bases}
    axes = []
    for b in bases:
        for primes in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
            if len(axes) < MAX_AXES:
                axes.append(b + "'" * primes)
    return axes, sizes


@st.composite
def _ellipsis(draw, operands: list[list[str]]) -> dict[int, list[int]]:
    """Put '...' into some operands; the dims each covers (right-aligned, 1s broadcast)."""
    if not draw(st.booleans()):
        return {}
    holders = [k for k in range(len(operands)) if draw(st.booleans())]
    batch = draw(st.lists(st.sampled_from([0, 1, 2, 3, 3]), max_size=2))
    dims = {}
    for position, k in enumerate(holders):
        length = len(batch) if position == 0 else draw(st.integers(0, len(batch)))
        covered = batch[len(batch) - length :]
        covered = [1 if (d != 1 and draw(st.integers(0, 3)) == 0) else d for d in covered]
        dims[k] = covered
        operands[k].insert(draw(st.integers(0, len(operands[k]))), "...")
    return dims


@st.composite
def _operands(draw, axes: list[str], scale: Scale):
    """1-6 operands; some names repeated inside one operand (a diagonal, or a chain link)."""
    count = draw(st.sampled_from(range(1, scale.operands + 1)))
    operands = []
    for _ in range(count):
        rank = min(draw(st.sampled_from(scale.ranks)), len(axes))
        operands.append(draw(st.lists(st.sampled_from(axes), min_size=rank, max_size=rank, unique=True)))
    for op in operands:
        if op and draw(st.integers(0, 3)) == 0:
            name = draw(st.sampled_from(op))
            for _ in range(draw(st.sampled_from([1, 1, 2]))):
                op.insert(draw(st.integers(0, len(op))), name)
    return operands


def _spell(operands, output, clauses) -> str:
    text = ", ".join(" ".join(op) for op in operands) + " -> " + " ".join(output)
    for reducer, axes in clauses:
        text += f" | {reducer} " + " ".join(axes)
    return text.replace("  ", " ").strip()


@st.composite
def cases(draw, with_clauses: bool | None, dtypes, scale: Scale = LARGE, min_clauses: int = 1):
    """(pattern, einsum equation to output+clause axes, shapes, clauses, dtype, sizes per base name).

    Every example runs in float64; ``dtype`` is the other dtype it also runs in
    (float64: none), and its clauses are ones torch supports in that dtype.
    ``with_clauses=None``: clauses or not, drawn.  With clauses, at least ``min_clauses``
    of them wherever there are that many axes to reduce.
    """
    if with_clauses is None:
        with_clauses = draw(st.booleans())
    axes, sizes = draw(_axes(scale))
    operands = draw(_operands(axes, scale))
    ellipsis_dims = draw(_ellipsis(operands))
    _, queue = chain_reading(operands)
    chains = set(queue)
    dtype = draw(st.sampled_from(dtypes))

    present = list(dict.fromkeys(a for op in operands for a in op if a != "..."))
    output, reducible = [], []
    for axis in present:
        if axis in chains:
            # a chain name in the output takes every index the chain leaves over (SPEC 3)
            if queue[axis] and draw(st.booleans()):
                output.extend([axis] * len(queue[axis]))
            continue
        role = draw(st.sampled_from(["out", "reduce", "reduce", "sum"] if with_clauses else ["out", "sum"]))
        if role == "out":
            output.append(axis)
        elif role == "reduce":
            reducible.append(axis)
    # a clause test without a clause would be a sum-product test: reduce more axes anyway
    free = [a for a in present if a not in chains and a not in reducible]
    while with_clauses and len(reducible) < min_clauses and free:
        axis = free.pop(draw(st.integers(0, len(free) - 1)))
        reducible.append(axis)
        if axis in output:
            output.remove(axis)
    output = list(draw(st.permutations(output)))
    if ellipsis_dims and draw(st.booleans()):
        output.insert(draw(st.integers(0, len(output))), "...")

    clauses = []
    if with_clauses and reducible:
        reducible = list(draw(st.permutations(reducible)))
        allowed = SUPPORTED[dtype]
        while reducible:
            take = min(draw(st.sampled_from([1, 2, 2, 3])), len(reducible) - max(0, min_clauses - len(clauses) - 1))
            take = max(take, 1)
            group, reducible = reducible[:take], reducible[take:]
            arg = [r for r in allowed if r in ARG_REDUCERS]
            if not reducible and arg and draw(st.integers(0, 3)) == 0:  # argmax/argmin: last only
                reducer = draw(st.sampled_from(arg))
            else:
                reducer = draw(st.sampled_from([r for r in allowed if r in REDUCERS]))
            clauses.append((reducer, tuple(group)))
    clause_axes = [a for _, group in clauses for a in group]

    pattern = _spell(operands, output, clauses)
    equation = einplan_to_einsum(_spell(operands, output + clause_axes, []))
    shapes = operand_shapes(operands, sizes, ellipsis_dims)
    return pattern, equation, shapes, tuple(clauses), dtype, sizes


# --- tensors ------------------------------------------------------------------------------------

LAYOUTS = ("contiguous", "contiguous", "transposed", "strided", "expanded")


def _values(shapes, dtype, seed: int) -> list[torch.Tensor]:
    """Random values: randn for floats, small ints, complex with both parts random."""
    if dtype.is_floating_point:
        return random_tensors(shapes, dtype, seed)
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_complex:
        return [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
    return [torch.randint(-4, 5, s, generator=generator, dtype=dtype) for s in shapes]


def _leaf_shape(shape, layout):
    """The shape of the stored tensor: an expanded input stores size 1 on its first dim > 1."""
    if layout == "expanded":
        for d, size in enumerate(shape):
            if size > 1:
                return shape[:d] + (1,) + shape[d + 1 :]
    return shape


def _lay_out(leaf: torch.Tensor, shape, layout: str) -> torch.Tensor:
    """The operand as einplan sees it: a (differentiable) view of ``leaf`` with ``shape``."""
    if layout == "transposed" and leaf.dim() >= 2:
        return leaf.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "strided":
        return torch.stack([leaf, torch.zeros_like(leaf)], -1)[..., 0]
    if layout == "expanded":
        return leaf.expand(shape)
    return leaf


def _inputs(shapes, dtype, seed, layouts, alias, grad):
    """Leaves (unique tensors, for autograd) and the operands built from them.

    ``alias[k] = j`` passes operand j's tensor again as operand k (same shape).
    """
    leaf_shapes = [_leaf_shape(s, layouts[k]) for k, s in enumerate(shapes)]
    leaves = _values(leaf_shapes, dtype, seed)
    if grad:
        leaves = [t.requires_grad_() for t in leaves]
    operands = [_lay_out(leaf, s, layouts[k]) for k, (leaf, s) in enumerate(zip(leaves, shapes, strict=True))]
    for k, j in alias.items():
        operands[k] = operands[j]
    used = [leaf for k, leaf in enumerate(leaves) if k not in alias]
    return used, operands


# --- oracle -------------------------------------------------------------------------------------


class Empty(Exception):
    """torch refuses a max/min/argmax/argmin over zero elements."""


def _oracle(equation, tensors, clauses, n_out):
    """torch.einsum to (output + clause axes), then torch's reductions in clause order.

    Returns (result, before): ``before`` is the value the last clause reduces.
    """
    value = torch.einsum(equation, *tensors)
    before = value
    for reducer, axes in clauses:
        dims = tuple(range(n_out, n_out + len(axes)))
        before = value
        if reducer in EXTREMES and math.prod(value.shape[d] for d in dims) == 0:
            with pytest.raises((RuntimeError, IndexError)):  # torch refuses too
                _torch_reduce(value, reducer, dims, n_out)
            raise Empty(reducer)
        value = _torch_reduce(value, reducer, dims, n_out)
    return value, before


def _torch_reduce(value, reducer, dims, n_out):
    if reducer == "sum":
        return value.sum(dims)
    if reducer == "mean":
        return value.mean(dims)
    if reducer == "max":
        return torch.amax(value, dims)
    if reducer == "min":
        return torch.amin(value, dims)
    if reducer == "logsumexp":
        return torch.logsumexp(value, dims)
    # argmax / argmin: the reduced axes are the trailing ones (the last clause)
    clause_shape = tuple(value.shape[n_out:])
    flat = value.reshape(tuple(value.shape[:n_out]) + (math.prod(clause_shape),))
    index = getattr(flat, reducer)(-1)
    if len(clause_shape) == 1:
        return index
    return tuple(torch.unravel_index(index, clause_shape))


def _torch_has(dtype, reducer) -> bool:
    try:
        _torch_reduce(torch.ones(2, 3, dtype=dtype), reducer, (1,), 1)
    except (RuntimeError, NotImplementedError):
        return False
    return True


# The clauses torch computes in each dtype (torch.einsum itself supports all four on CPU).
# torch 2.x: everything for floats; no mean for int64; only sum, mean, logsumexp for complex.
SUPPORTED = {d: tuple(r for r in REDUCERS + ARG_REDUCERS if _torch_has(d, r)) for d in (F64, F32, I64, C128)}
assert SUPPORTED[F64] == REDUCERS + ARG_REDUCERS, SUPPORTED


# --- comparisons --------------------------------------------------------------------------------


def _tolerance(dtype):
    if dtype.is_complex:
        return TOLERANCES[F64] if dtype == C128 else TOLERANCES[F32]
    return TOLERANCES[dtype]


def assert_same(got, want: torch.Tensor, context: str) -> None:
    """Same type, shape and dtype; ints exact; floats within tolerance, nan/inf in the same places.

    The tolerance scales with the largest finite magnitude (an -inf from an empty
    logsumexp must not make every tolerance infinite).
    """
    assert isinstance(got, torch.Tensor), f"{context}: einplan returned {type(got).__name__}, torch a Tensor"
    assert got.shape == want.shape, f"{context}: shape {tuple(got.shape)} != torch {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{context}: dtype {got.dtype} != torch {want.dtype}"
    if not (want.dtype.is_floating_point or want.dtype.is_complex):
        assert torch.equal(got, want), f"{context}\n got {got}\nwant {want}"
        return
    rtol, atol = _tolerance(want.dtype)
    got, want = got.detach(), want.detach()
    finite = want[torch.isfinite(want)]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale, equal_nan=True, msg=lambda m: f"{context}\n{m}")


def assert_same_choice(got, want, before, reducer, n_out, context) -> None:
    """argmax/argmin: int64 indices in range that select the best value (up to rounding);
    exactly torch's indices wherever the best value is ahead of the runner-up by more
    than the tolerance."""
    clause_shape = tuple(before.shape[n_out:])
    out_shape = tuple(before.shape[:n_out])
    if len(clause_shape) == 1:
        assert isinstance(got, torch.Tensor), f"{context}: argmax over one axis returned {type(got).__name__}"
        parts = (got,)
    else:
        assert isinstance(got, tuple), f"{context}: argmax over {len(clause_shape)} axes returned {type(got).__name__}"
        assert len(got) == len(clause_shape), f"{context}: {len(got)} index tensors for {len(clause_shape)} axes"
        parts = got
    flat_index = torch.zeros(out_shape, dtype=torch.int64)
    for part, size in zip(parts, clause_shape, strict=True):
        assert isinstance(part, torch.Tensor), f"{context}: index is a {type(part).__name__}"
        assert part.dtype == torch.int64, f"{context}: index dtype {part.dtype}"
        assert part.shape == out_shape, f"{context}: index shape {tuple(part.shape)} != {out_shape}"
        assert bool(((part >= 0) & (part < size)).all()), f"{context}: index out of range 0..{size - 1}: {part}"
        flat_index = flat_index * size + part
    count = math.prod(clause_shape)
    flat = before.detach().reshape(out_shape + (count,))
    chosen = flat.gather(-1, flat_index.unsqueeze(-1)).squeeze(-1)
    best = flat.amax(-1) if reducer == "argmax" else flat.amin(-1)
    assert_same(chosen, best, f"{context}: the value at einplan's {reducer}")

    want_parts = (want,) if isinstance(want, torch.Tensor) else want
    want_flat = torch.zeros(out_shape, dtype=torch.int64)
    for part, size in zip(want_parts, clause_shape, strict=True):
        want_flat = want_flat * size + part
    if count >= 2:
        ordered = flat.sort(-1, descending=reducer == "argmax").values
        gap = (ordered[..., 0] - ordered[..., 1]).abs()
        if flat.dtype.is_floating_point:
            rtol, atol = _tolerance(flat.dtype)
            scale = max(1.0, float(flat.abs().max())) if flat.numel() else 1.0
            clear = gap > 4 * (atol + rtol) * scale
        else:
            clear = gap > 0
    else:
        clear = torch.ones(out_shape, dtype=torch.bool)
    assert torch.equal(flat_index[clear], want_flat[clear]), (
        f"{context}: {reducer} indices differ where the best value is unambiguous\n got {flat_index}\nwant {want_flat}"
    )


# --- one example --------------------------------------------------------------------------------


def _call(pattern, operands, lowering, memory_limit=None):
    """einplan.bl; None if a forced lowering declines with UnsupportedError."""
    try:
        return einplan.bl(pattern, *operands, lowering=lowering, memory_limit=memory_limit)
    except einplan.UnsupportedError:
        if lowering is None:
            raise
        return None


def _n_out(equation: str, shapes, clauses) -> int:
    """Dims of the einsum result that belong to the output (the rest are clause axes)."""
    n_clause = sum(len(axes) for _, axes in clauses)
    return len(torch.einsum(equation, *[torch.zeros(s) for s in shapes]).shape) - n_clause


def run_example(case, lowering, layouts, alias, seed, memory_limit=None) -> list[str]:
    """Check one example in float64, then in its other dtype if it has one."""
    dtypes = [F64] if case[4] == F64 else [F64, case[4]]
    return [run_in(case, dtype, lowering, layouts, alias, seed, memory_limit) for dtype in dtypes]


def run_in(case, dtype, lowering, layouts, alias, seed, memory_limit=None) -> str:
    """Check one example in one dtype; 'computed', 'declined' or 'raised' (an expected EinplanError)."""
    pattern, equation, shapes, clauses, _, _ = case
    context = (
        f"pattern {pattern!r} shapes={shapes} dtype={dtype} lowering={lowering_id(lowering)} memory_limit={memory_limit} "
        f"layouts={layouts} alias={alias} (oracle: einsum {equation!r}, clauses {list(clauses)})"
    )
    n_out = _n_out(equation, shapes, clauses)
    has_arg = any(r in ARG_REDUCERS for r, _ in clauses)
    grad = dtype == F64 and not has_arg
    leaves, operands = _inputs(shapes, dtype, seed, layouts, alias, grad)

    try:
        want, before = _oracle(equation, operands, clauses, n_out)
    except Empty:
        try:
            got = einplan.bl(pattern, *operands, lowering=lowering)
        except einplan.EinplanError:
            return "raised"
        except Exception as error:
            raise AssertionError(f"{context}: expected EinplanError, got {type(error).__name__}: {error}") from error
        raise AssertionError(f"{context}: expected EinplanError (an extreme over size 0), got {got!r}") from None

    try:
        got = _call(pattern, operands, lowering, memory_limit)
    except Exception as error:  # any exception here is a failure, reported with the case
        raise AssertionError(f"{context}: einplan raised {type(error).__name__}: {error}") from error
    if got is None:
        return "declined"

    if has_arg:
        reducer = clauses[-1][0]
        assert_same_choice(got, want, before, reducer, n_out, context)
        return "computed"
    assert_same(got, want, context)

    if grad and bool(torch.isfinite(want).all()):
        weights = random_tensors([tuple(want.shape)], F64, seed + 1)[0]
        assert got.requires_grad, f"{context}: einplan's result carries no gradient"
        want_grads = torch.autograd.grad((want * weights).sum(), leaves, allow_unused=True)
        got_grads = torch.autograd.grad((got * weights).sum(), leaves, allow_unused=True)
        for k, (g, w, leaf) in enumerate(zip(got_grads, want_grads, leaves, strict=True)):
            g = torch.zeros_like(leaf) if g is None else g
            w = torch.zeros_like(leaf) if w is None else w
            assert_same(g, w, f"{context}: gradient of leaf {k}")
    return "computed"


# stride-0 (expanded) and aliased inputs repeat values: ties for max/min/argmax/argmin
TIE_FREE_LAYOUTS = ("contiguous", "contiguous", "transposed", "strided")


@st.composite
def _extras(draw, case):
    """Layout per operand, operands passed twice (same tensor), the data seed."""
    shapes, clauses = case[2], case[3]
    tie_free = any(r in EXTREMES for r, _ in clauses)
    layouts = tuple(draw(st.sampled_from(TIE_FREE_LAYOUTS if tie_free else LAYOUTS)) for _ in shapes)
    alias = {}
    if not tie_free:
        for k in range(1, len(shapes)):
            same = [j for j in range(k) if shapes[j] == shapes[k] and j not in alias]
            if same and draw(st.integers(0, 2)) == 0:
                alias[k] = draw(st.sampled_from(same))
    return layouts, alias, draw(st.integers(0, 2**20))


# --- tests --------------------------------------------------------------------------------------

# A lowering must compute at least this share of the examples it is given; the shares
# leave room for the examples other hypothesis versions draw (declining is
# raising einplan.UnsupportedError when forced).  The unrolled lowering writes out contractions
# over a few static terms only, so it declines outer products and large steps: clauses keep
# their axes in the sum-product, so most steps of clause patterns are outer products.
HEALTHY_SHARE = {None: 1.0, MATMUL: 0.9, ELEMENTWISE: 0.9, CHUNKED: 0.9, FUSED: 0.9}
UNROLLED_SHARE = {"sum_products": 0.15, "small": 0.25, "clauses": 0.1, "integer_clauses": 0.05}


def _fuzz(kind, lowering, strategy, memory_limit=None):
    outcomes = Counter()
    examples = []

    @_settings(kind)
    @given(data=st.data(), case=strategy)
    def check(data, case):
        layouts, alias, seed = data.draw(_extras(case))
        outcomes.update(run_example(case, lowering, layouts, alias, seed, memory_limit))
        examples.append(case[0])

    check()
    print(f"{kind} {lowering_id(lowering)}: {len(examples)} examples, {dict(outcomes)}")
    assert len(examples) >= 0.9 * EXAMPLES[kind] * SCALE, f"only {len(examples)} examples ran: {dict(outcomes)}"
    attempted = outcomes["computed"] + outcomes["declined"]
    share = UNROLLED_SHARE.get(kind, 0.0) if lowering == UNROLLED else HEALTHY_SHARE[lowering]
    assert outcomes["computed"] >= share * attempted, (
        f"{lowering_id(lowering)} computed {outcomes['computed']} of {attempted}: {dict(outcomes)}"
    )
    return outcomes


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
def test_sum_products_match_einsum(lowering):
    """No clauses: float64 (with gradients), and float32, int64 or complex128; transposed, strided,
    expanded and aliased inputs."""
    _fuzz("sum_products", lowering, cases(False, [F64, F32, I64, C128]))


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
def test_clauses_match_torch_reductions(lowering):
    """Clause chains in float64 (with gradients), and float32, int64 or complex128."""
    _fuzz("clauses", lowering, cases(True, [F64, F64, F32, I64, C128]))


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
def test_small_patterns_match_torch(lowering):
    """1-3 operands over at most 3 names, sizes 0..3, with or without clauses, every dtype."""
    _fuzz("small", lowering, cases(None, [F64, F32, I64, C128], SMALL))


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
def test_integer_clause_chains(lowering):
    """Chains of 2+ clauses on int64 (each example also in float64): torch's dtypes carry
    through the chain, e.g. logsumexp of int64 is float32, and later clauses reduce that float."""
    either = st.one_of(cases(True, [I64], SMALL, min_clauses=2), cases(True, [I64], min_clauses=2))
    _fuzz("integer_clauses", lowering, either.filter(lambda case: len(case[3]) >= 2))


@pytest.mark.parametrize("lowering", [None, CHUNKED], ids=lowering_id)
def test_gradients_under_a_small_memory_limit(lowering):
    """Clause chains in float64 under a 256-byte memory limit: the last step of most runs in chunks,
    as an autograd function whose backward runs over the same chunks; its gradients are torch's."""
    _fuzz("small_limits", lowering, cases(True, [F64]), memory_limit=256)


def test_sum_products_under_a_small_memory_limit():
    """Sum-products of up to six operands under a 256-byte limit: a step before the last that would
    exceed it runs the rest of the path in chunks of one axis; results and gradients are torch's."""
    _fuzz("small_limit_products", None, cases(False, [F64]), memory_limit=256)


@st.composite
def empty_extreme_cases(draw):
    """A clause chain with a max/min/argmax/argmin over an axis of size 0."""
    either = st.one_of(cases(True, [F64, F32, I64], SMALL), cases(True, [F64, F32, I64]))
    pattern, equation, shapes, clauses, dtype, sizes = draw(either.filter(lambda case: case[3]))
    extremes = [k for k, (r, _) in enumerate(clauses) if r in EXTREMES]
    if not extremes:
        # make one clause an extreme (argmax/argmin only the last one)
        reducer = draw(st.sampled_from(EXTREMES))
        k = len(clauses) - 1 if reducer in ARG_REDUCERS else draw(st.integers(0, len(clauses) - 1))
        clauses = clauses[:k] + ((reducer, clauses[k][1]),) + clauses[k + 1 :]
        extremes = [k]
    emptied = axis_base(draw(st.sampled_from(clauses[draw(st.sampled_from(extremes))][1])))
    # the chosen axis (and its primes) gets size 0 in every operand
    head, tail = pattern.split("|")[0].split("->")
    operands = [op.split() for op in head.split(",")]
    new_sizes = {b: (0 if b == emptied else s) for b, s in sizes.items()}
    new_shapes = [operand_shapes([op], new_sizes, {0: _ellipsis_dims(op, shape)})[0] for op, shape in zip(operands, shapes, strict=True)]
    return _spell(operands, tail.split(), clauses), equation, new_shapes, clauses, dtype, new_sizes


def _ellipsis_dims(op, shape):
    """The dims '...' covers in an operand of ``shape``."""
    if "..." not in op:
        return []
    start = op.index("...")
    return list(shape[start : start + len(shape) - (len(op) - 1)])


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
def test_extremes_over_size_zero_raise(lowering):
    """max/min/argmax/argmin over a size-0 axis: torch raises, einplan raises EinplanError."""
    outcomes = _fuzz("empty_extremes", lowering, empty_extreme_cases())
    assert outcomes["raised"] == sum(outcomes.values()), dict(outcomes)


def test_generators_cover_the_interesting_cases():
    """The generator does produce what the fuzzing claims to cover."""
    seen = Counter()

    # the same 200 generated examples in every profile: this checks the generator, not einplan
    @settings(
        max_examples=200,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=HEALTH,
    )
    @given(case=cases(True, [F64, F64, F32, I64, C128]), plain=cases(False, [F64, F32, I64, C128]))
    def look(case, plain):
        for pattern, _, shapes, clauses, dtype, _sizes in (case, plain):
            head = pattern.split("|")[0]
            operands = [op.split() for op in head.split("->")[0].split(",")]
            axes = {a for op in operands for a in op if a != "..."}
            dims = {d for shape in shapes for d in shape}
            seen[f"operands={len(operands)}"] += 1
            seen["axes>=7"] += len(axes) >= 7
            seen["size 0"] += 0 in dims
            seen["size 1"] += 1 in dims
            seen["size 4"] += 4 in dims
            seen["ellipsis"] += "..." in head
            seen["ellipsis kept"] += "..." in head.split("->")[1]
            seen["prime"] += "'" in head
            seen["repeat"] += any(len(op) != len(set(op)) for op in operands)
            seen["0-d operand"] += any(not op for op in operands)
            seen[str(dtype)] += 1
            seen["clauses>=2"] += len(clauses) >= 2
            seen["chain link"] += bool(chain_reading(operands)[1])
            for reducer, group in clauses:
                seen[reducer] += 1
                several = len(group) >= 2
                seen["argmax/argmin several axes"] += reducer in ARG_REDUCERS and several
                seen["sum/max/min/mean/logsumexp several axes"] += reducer in REDUCERS and several

    look()
    wanted = (
        [f"operands={n}" for n in range(1, 7)]
        + [
            "axes>=7",
            "size 0",
            "size 1",
            "size 4",
            "ellipsis",
            "ellipsis kept",
            "prime",
            "repeat",
            "chain link",
            "0-d operand",
            str(F64),
            str(F32),
            str(I64),
            str(C128),
            "clauses>=2",
        ]
        + list(REDUCERS)
        + list(ARG_REDUCERS)
        + ["argmax/argmin several axes", "sum/max/min/mean/logsumexp several axes"]
    )
    missing = [w for w in wanted if not seen[w]]
    assert not missing, f"never generated: {missing}; seen {dict(seen)}"
