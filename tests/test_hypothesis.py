"""Generated patterns and sizes, checked against torch.einsum with each lowering forced.

Two generators:

* ``plain_cases``: distinct names per operand, diagonals only for names no
  other operand has, optional ``...`` (broadcast, summed when the output drops
  it), primes, and names that are Python keywords or builtins.  Their einplan
  meaning is einsum's meaning with one letter per name.
* ``chain_cases``: names repeated inside an operand and present in others,
  i.e. matrix-chain links.  The torch.einsum string comes from the SPEC's chain
  reading implemented in conftest (``einplan_to_einsum``), not from einplan.

Tensors come contiguous, transposed or strided.  Every example runs with each
of ``einplan.LOWERINGS`` forced; a lowering that is not implemented yet skips
the test with einplan's message.  The unrolled lowering may decline a step (it
writes out contractions over a few static terms only), but must still compute
at least a fifth of the examples.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einplan
from conftest import (
    NOT_IMPLEMENTED,
    assert_matches,
    chain_reading,
    einplan_to_einsum,
    operand_shapes,
    random_tensors,
)

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
    "lambda",
    "torch",
    "def",
    "None",
    "self",
    "max",
    "x0",
    "t0",
    "Tensor",
    "print",
]

LAYOUTS = ("contiguous", "contiguous", "transposed", "strided")

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _probe(lowering: str) -> None:
    """Skip the whole test up front if the forced lowering is not implemented yet."""
    x = torch.ones(2, 3, dtype=torch.float64)
    try:
        einplan.bl("a b, b c -> a c", x, x.T, lowering=lowering)
    except einplan.UnsupportedError as error:
        if NOT_IMPLEMENTED in str(error):
            pytest.skip(f"{lowering}: {error}")
        raise


def _lay_out(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values, as a transposed or strided (non-contiguous) view."""
    if layout == "transposed" and tensor.dim() >= 2:
        return tensor.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "strided":
        wide = torch.zeros(tensor.shape + (2,), dtype=tensor.dtype)
        wide[..., 0] = tensor
        return wide[..., 0]
    return tensor


def _run(lowering: str, pattern: str, equation: str, shapes, layout: str) -> bool:
    """Compare with torch.einsum; False if a forced unrolled lowering declined the pattern."""
    tensors = [_lay_out(t, layout) for t in random_tensors(shapes, torch.float64, seed=len(pattern))]
    want = torch.einsum(equation, *tensors)
    context = f"{pattern!r} (einsum {equation!r}) shapes={shapes} {layout} lowering={lowering}"
    try:
        got = einplan.bl(pattern, *tensors, lowering=lowering)
    except einplan.UnsupportedError as error:
        if NOT_IMPLEMENTED in str(error):
            pytest.skip(f"{lowering}: {error}")
        if lowering == einplan.UNROLLED and "cannot compute" in str(error):
            # written-out arithmetic is for contractions over a few static terms only;
            # declining other steps is documented, a wrong number is not
            return False
        raise AssertionError(f"{context}: {error}") from error
    assert_matches(got, want, context)
    return True


def _check_all(lowering: str, cases) -> None:
    computed = []

    @SETTINGS
    @given(case=cases)
    def check(case):
        computed.append(_run(lowering, *case))

    check()
    # every lowering must actually compute a good share of the examples
    assert sum(computed) >= len(computed) // 5, f"{lowering} computed {sum(computed)} of {len(computed)}"


@st.composite
def _sizes_and_names(draw, max_bases: int = 5):
    bases = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=max_bases, unique=True))
    sizes = {b: draw(st.integers(0, 4)) for b in bases}
    # some names also come primed: the same size, another index
    axes = []
    for b in bases:
        axes.append(b)
        for primes in range(1, draw(st.integers(0, 2)) + 1):
            axes.append(b + "'" * primes)
    return sizes, axes


@st.composite
def _ellipsis(draw, operands: list[list[str]]):
    """Put '...' into some operands; return the dims each one covers (right-aligned broadcast)."""
    holders = [k for k in range(len(operands)) if draw(st.booleans()) and draw(st.booleans())]
    batch = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2))
    dims = {}
    for position, k in enumerate(holders):
        length = len(batch) if position == 0 else draw(st.integers(0, len(batch)))
        covered = batch[len(batch) - length :]
        covered = [1 if (d != 1 and draw(st.integers(0, 3)) == 0) else d for d in covered]
        dims[k] = covered
        where = draw(st.integers(0, len(operands[k])))
        operands[k].insert(where, "...")
    return dims


def _spell(operands, output) -> str:
    return ", ".join(" ".join(op) for op in operands) + " -> " + " ".join(output)


@st.composite
def plain_cases(draw):
    sizes, axes = draw(_sizes_and_names())
    count = draw(st.integers(1, 5))
    operands = [draw(st.lists(st.sampled_from(axes), max_size=3, unique=True)) for _ in range(count)]
    # diagonals: repeat a name that no other operand has
    for k, op in enumerate(operands):
        own = [a for a in op if not any(a in other for j, other in enumerate(operands) if j != k)]
        if own and draw(st.integers(0, 3)) == 0:
            a = draw(st.sampled_from(own))
            op.insert(draw(st.integers(0, len(op))), a)
    ellipsis_dims = draw(_ellipsis(operands))
    present = list(dict.fromkeys(a for op in operands for a in op if a != "..."))
    output = draw(st.permutations([a for a in present if draw(st.booleans())]))
    output = list(output)
    if ellipsis_dims and draw(st.booleans()):
        output.insert(draw(st.integers(0, len(output))), "...")
    letters = {a: chr(ord("a") + n) for n, a in enumerate(present)}
    spell = lambda tokens: "".join("..." if t == "..." else letters[t] for t in tokens)  # noqa: E731
    equation = ",".join(spell(op) for op in operands) + "->" + spell(output)
    layout = draw(st.sampled_from(LAYOUTS))
    return _spell(operands, output), equation, operand_shapes(operands, sizes, ellipsis_dims), layout


@st.composite
def chain_cases(draw):
    sizes, axes = draw(_sizes_and_names(max_bases=3))
    linked = draw(st.sampled_from(axes))
    count = draw(st.integers(2, 5))
    operands = [draw(st.lists(st.sampled_from(axes), max_size=2, unique=True)) for _ in range(count)]
    # make `linked` a chain: twice (or three times) in one operand, present in another
    home = draw(st.integers(0, count - 1))
    other = draw(st.sampled_from([k for k in range(count) if k != home]))
    for _ in range(draw(st.integers(2, 3)) - operands[home].count(linked)):
        operands[home].insert(draw(st.integers(0, len(operands[home]))), linked)
    if linked not in operands[other]:
        operands[other].insert(draw(st.integers(0, len(operands[other]))), linked)
    if draw(st.booleans()):  # sometimes a second matrix in the chain
        third = draw(st.sampled_from([k for k in range(count) if k != home]))
        while operands[third].count(linked) < 2:
            operands[third].insert(draw(st.integers(0, len(operands[third]))), linked)
    ellipsis_dims = draw(_ellipsis(operands)) if draw(st.booleans()) else {}
    _, queue = chain_reading(operands)
    output = []
    for axis in dict.fromkeys(a for op in operands for a in op if a != "..."):
        if axis in queue:
            if queue[axis] and draw(st.booleans()):
                output.extend([axis] * len(queue[axis]))
        elif draw(st.booleans()):
            output.append(axis)
    output = list(draw(st.permutations(output)))
    if ellipsis_dims and draw(st.booleans()):
        output.insert(draw(st.integers(0, len(output))), "...")
    pattern = _spell(operands, output)
    layout = draw(st.sampled_from(LAYOUTS))
    return pattern, einplan_to_einsum(pattern), operand_shapes(operands, sizes, ellipsis_dims), layout


@pytest.mark.parametrize("lowering", einplan.LOWERINGS)
def test_plain_patterns_match_einsum(lowering):
    _probe(lowering)
    _check_all(lowering, plain_cases())


@pytest.mark.parametrize("lowering", einplan.LOWERINGS)
def test_chain_patterns_match_einsum(lowering):
    _probe(lowering)
    _check_all(lowering, chain_cases())


def test_generators_cover_the_interesting_cases():
    """The generators do produce ellipses, 0-d operands, primes, keywords, diagonals, 3+ operands."""
    seen = {"ellipsis": False, "scalar": False, "prime": False, "keyword": False, "diagonal": False, "many": False}

    @settings(max_examples=120, deadline=None, derandomize=True, database=None)
    @given(case=plain_cases())
    def look(case):
        pattern = case[0]
        operands = [op.split() for op in pattern.split("->")[0].split(",")]
        seen["ellipsis"] |= "..." in pattern
        seen["scalar"] |= any(not op for op in operands)
        seen["prime"] |= "'" in pattern
        seen["keyword"] |= any(w in ("in", "lambda", "def", "None") for op in operands for w in op)
        seen["diagonal"] |= any(len(op) != len(set(op)) for op in operands)
        seen["many"] |= len(operands) >= 3

    look()
    assert all(seen.values()), seen


# Batches of tiny products cut into chunks by a memory limit: the full chunks and the shorter last
# one may be lowered differently (unrolled lays a batch of 32 or more last, a shorter one not), and
# every chunk must still land in, or fold into, the same result.
BATCHED = {
    "b i j, b j k -> b i k": lambda p: p,
    "b i j, b j k -> b | logsumexp i k": lambda p: torch.logsumexp(p.flatten(1), -1),
    "b i j, b j k -> i k | max b": lambda p: p.amax(0),
    "b i j, b j k -> i k": lambda p: p.sum(0),
}


@pytest.mark.parametrize("lowering", einplan.LOWERINGS)
def test_chunked_batches_of_tiny_products_match_einsum(lowering):
    seen = {"chunks": 0, "shorter last chunk": 0, "declined": 0}

    @SETTINGS
    @given(
        pattern=st.sampled_from(sorted(BATCHED)),
        batch=st.integers(1, 600),
        ijk=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
        limit=st.sampled_from([64, 4096, 32768, 65536]),
    )
    def check(pattern, batch, ijk, limit):
        i, j, k = ijk
        x, y = random_tensors([(batch, i, j), (batch, j, k)], seed=batch)
        try:
            source = einplan.code(pattern, x, y, lowering=lowering, memory_limit=limit)
            got = einplan.bl(pattern, x, y, lowering=lowering, memory_limit=limit)
        except einplan.UnsupportedError:
            seen["declined"] += 1  # a forced lowering that cannot compute the step says so
            return
        seen["chunks"] += "for i in range" in source
        steps = re.findall(r"for i in range\(0, \w+\.shape\[\d\], (\d+)\)", source)
        seen["shorter last chunk"] += any(batch % int(rows) for rows in steps)  # the one loop body serves it
        assert_matches(got, BATCHED[pattern](torch.einsum("bij,bjk->bik", x, y)), f"{pattern} b={batch} {ijk} limit={limit}")

    check()
    assert seen["chunks"] >= 15, seen
    assert seen["shorter last chunk"] >= 5, seen
