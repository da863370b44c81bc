"""The unrolled lowering in blocks of a long axis, each block laid out and summed while in cache.

The planner cuts a step into blocks from the device's cache size; these tests pin a CPU model
with a 32 KiB cache, so that steps of a few hundred rows run in several blocks (the last one
shorter), and check the results against torch.einsum in float64.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import einplan
from conftest import einplan_to_einsum
from einplan import cost
from einplan.lowerings import UNROLLED
from einplan.runtime import plan_for

SMALL_CACHE = {"cache_bytes": 32 * 2**10, "llc_bytes": 0.0, "op_overhead": 1e-9}

BLOCKED = [
    ("b i j, b j k -> b i k", [(1000, 3, 3), (1000, 3, 3)]),
    ("b i j, b j k -> b i k", [(1024, 2, 2), (1024, 2, 2)]),  # blocks that divide the axis exactly
    ("b i j, b j -> b i", [(700, 4, 4), (700, 4)]),
    ("i j b, b j k -> b i k", [(3, 2, 900), (900, 2, 3)]),  # the long axis last in one operand
    ("b i j, j k -> b i k", [(800, 3, 2), (2, 3)]),  # an operand without it: used whole in every block
    ("b c i j, c b j -> c b i", [(64, 40, 2, 3), (40, 64, 3)]),  # two long axes: blocks of the outer one
]


@pytest.fixture
def small_cache(shipped_cost_model, monkeypatch):
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **SMALL_CACHE))


def operands(shapes, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=requires_grad) for s in shapes]


def einsum_of(pattern: str, tensors):
    return torch.einsum(einplan_to_einsum(pattern), *tensors)


@pytest.mark.parametrize("pattern, shapes", BLOCKED, ids=[p + str(s[0]) for p, s in BLOCKED])
def test_blocks_match_einsum(small_cache, pattern, shapes):
    text = einplan.code(pattern, *shapes, dtype=torch.float64, lowering=UNROLLED)
    assert "blocks of" in text and "out=" in text
    tensors = operands(shapes)
    torch.testing.assert_close(einplan.bl(pattern, *tensors, lowering=UNROLLED), einsum_of(pattern, tensors), rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(0, 400), i=st.integers(1, 4), j=st.integers(1, 4), k=st.integers(1, 4), seed=st.integers(0, 3))
def test_blocks_match_einsum_at_generated_sizes(batch, i, j, k, seed):
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **SMALL_CACHE))
        tensors = operands([(batch, i, j), (batch, j, k)], seed)
        got = einplan.bl("b i j, b j k -> b i k", *tensors, lowering=UNROLLED)
        torch.testing.assert_close(got, torch.bmm(*tensors), rtol=1e-12, atol=1e-12)


def test_a_call_autograd_records_takes_a_plan_without_blocks(small_cache):
    pattern, shapes = BLOCKED[0]
    assert "blocks of" not in einplan.code(pattern, *shapes, dtype=torch.float64, lowering=UNROLLED, grad=True)
    assert plan_for(pattern, *operands(shapes), lowering=UNROLLED).grad_matters
    a, b = operands(shapes, requires_grad=True)
    got = einplan.bl(pattern, a, b, lowering=UNROLLED)
    got.backward(torch.ones_like(got))
    a2, b2 = (x.detach().clone().requires_grad_() for x in (a, b))
    torch.bmm(a2, b2).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-12, atol=1e-12)
    small = operands([(40, 2, 3), (40, 3, 2)], requires_grad=True)
    kernel = einplan.kernel("b i j, b j k -> b i k", (40, 2, 3), (40, 3, 2), dtype=torch.float64, lowering=UNROLLED)
    assert torch.autograd.gradcheck(lambda x, y: kernel(x, y), small)


def test_no_blocks_when_the_step_fits_the_last_level_cache_or_for_compile_or_cuda(small_cache, monkeypatch):
    pattern, shapes = BLOCKED[0]
    assert "blocks of" not in einplan.code(pattern, *shapes, dtype=torch.float64, lowering=UNROLLED, compiled=True)
    assert "blocks of" not in einplan.code(pattern, *shapes, dtype=torch.float64, lowering=UNROLLED, device="cuda")
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **{**SMALL_CACHE, "llc_bytes": 2**20}))
    assert "blocks of" not in einplan.code(pattern, *shapes, dtype=torch.float64, lowering=UNROLLED)


def test_the_blocked_estimate(small_cache):
    """1024 2x2 float64 products in blocks of 128 rows (a row: two laid-out copies and the
    result, 96 bytes; half of the 32 KiB cache holds 170): 8 blocks of 2 copies and 2 terms."""
    pattern, shapes = BLOCKED[1]
    assert "blocks of 128 along b" in einplan.code(pattern, *shapes, dtype=torch.float64, lowering=UNROLLED)
    e = plan_for(pattern, *shapes, dtype=torch.float64, lowering=UNROLLED).steps[0].estimate
    out = 1024 * 4 * 8
    assert e.allocations == (out,)  # the result only: each block's copies are small
    assert e.memory == out + 2 * 128 * 4 * 8
    assert e.ops == 8 * 4 + 1
    assert e.bytes == 3 * out  # memory reads each operand once and writes the result once
    assert e.cached_bytes == (2 * 2 * 4096 + 2 * (2 * 4096 + 2 * 2048)) * 8  # the copies, and each term's traffic


def test_copies_that_read_rows_beyond_a_cache_line_stream_their_gathered_reads(small_cache):
    """8x8 float32 rows lie 256 bytes apart: a transposing copy's reads drag whole lines from
    memory (9x the bytes, as when laid out whole); the vectors' rows, 32 bytes apart, do not."""
    text = einplan.code("b i j, b j -> b i", (1000, 8, 8), (1000, 8), lowering=UNROLLED)
    assert "blocks of 32 along b" in text
    e = plan_for("b i j, b j -> b i", (1000, 8, 8), (1000, 8), lowering=UNROLLED).steps[0].estimate
    assert e.bytes == (8000 + 64000 * 9 + 8000) * 4


def test_blocks_read_strided_and_broadcast_operands(small_cache):
    """A transposed view, a slice with a step and a stride-0 (expanded) operand, cut into blocks."""
    a, b = operands([(3, 3, 1000), (1, 3, 3)])
    c = operands([(2000, 3, 3)], seed=1)[0]
    for x, y in [(a.permute(2, 0, 1), b.expand(1000, 3, 3)), (c[::2], a.permute(2, 1, 0))]:
        assert "blocks of" in einplan.code("b i j, b j k -> b i k", x, y, lowering=UNROLLED)
        torch.testing.assert_close(einplan.bl("b i j, b j k -> b i k", x, y, lowering=UNROLLED), torch.bmm(x, y), rtol=1e-12, atol=1e-12)
