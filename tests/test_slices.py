"""A broadcast product written one slice of a short axis at a time (einplan.slices).

The planner writes a product in slices where its broadcast makes one pass of torch's loop per
row and the slices make none; these tests pin a CPU model on which passes cost much and ops
little, so that products of a few rows are written in slices, and check the results against
torch.einsum in float64.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import einplan
from conftest import einplan_to_einsum
from einplan import cost, slices
from einplan.plan import ELEMENTWISE, MATMUL
from einplan.runtime import plan_for

SLICING = {"op_overhead": 1e-9, "pass_overhead": 1e-7}

SLICED = [
    ("b i, b j -> b i j", [(300, 2), (300, 3)], "j"),
    ("b i, b j -> b j i", [(300, 2), (300, 3)], "i"),  # the result's innermost axis is i
    ("b i, j b -> b i j", [(200, 4), (3, 200)], "j"),  # the batch last in one operand
    ("b i, b j k -> b i j k", [(100, 3), (100, 2, 2)], "i"),  # the innermost two merge: i is fixed
]


@pytest.fixture
def slicing(shipped_cost_model, monkeypatch):
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **SLICING))


def operands(shapes, seed=0, requires_grad=False, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    if not dtype.is_floating_point:
        return [torch.randint(-5, 5, s, generator=gen, dtype=dtype) for s in shapes]
    return [torch.randn(*s, generator=gen, dtype=dtype, requires_grad=requires_grad) for s in shapes]


def einsum_of(pattern: str, tensors):
    return torch.einsum(einplan_to_einsum(pattern), *tensors)


@pytest.mark.parametrize("pattern, shapes, axis", SLICED, ids=[p for p, _, _ in SLICED])
@pytest.mark.parametrize("forced", [None, ELEMENTWISE])
def test_slices_match_einsum(slicing, pattern, shapes, axis, forced):
    text = einplan.code(pattern, *shapes, dtype=torch.float64, lowering=forced)
    assert f"one slice of {axis} at a time" in text
    sizes = {
        a: n
        for operand, shape in zip(pattern.split("->")[0].split(","), shapes, strict=True)
        for a, n in zip(operand.split(), shape, strict=True)
    }
    assert text.count("out=") == sizes[axis]
    step = plan_for(pattern, *shapes, dtype=torch.float64, lowering=forced).steps[0]
    assert step.kind == ELEMENTWISE and step.estimate.passes == 0
    tensors = operands(shapes)
    torch.testing.assert_close(einplan.bl(pattern, *tensors, lowering=forced), einsum_of(pattern, tensors), rtol=0, atol=0)


def test_one_multiply_per_index_of_the_axis(slicing):
    text = einplan.code("b i, b j -> b i j", (300, 2), (300, 3), dtype=torch.float64)
    assert text.count("torch.mul(") == 3 and "out=t0[:, :, 2]" in text


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(0, 300), i=st.integers(1, 5), j=st.integers(1, 5), seed=st.integers(0, 3))
def test_slices_match_einsum_at_generated_sizes(batch, i, j, seed):
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **SLICING))
        tensors = operands([(batch, i), (batch, j)], seed)
        got = einplan.bl("b i, b j -> b i j", *tensors)
        torch.testing.assert_close(got, tensors[0][:, :, None] * tensors[1][:, None, :], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float32])
def test_slices_keep_the_dtype(slicing, dtype):
    tensors = operands([(200, 3), (200, 2)], dtype=torch.int64 if dtype == torch.bool else dtype)
    if dtype == torch.bool:
        tensors = [t > 0 for t in tensors]
    assert "one slice of" in einplan.code("b i, b j -> b i j", *tensors)
    got = einplan.bl("b i, b j -> b i j", *tensors)
    assert got.dtype == dtype
    assert torch.equal(got, tensors[0][:, :, None] * tensors[1][:, None, :])


def test_strided_and_expanded_operands(slicing):
    base = torch.randn(400, 6, dtype=torch.float64)
    x = base[::2, ::2]  # steps in both dims
    y = torch.randn(1, 3, dtype=torch.float64).expand(200, 3)  # stride 0 along the batch
    assert "one slice of" in einplan.code("b i, b j -> b i j", x, y)
    torch.testing.assert_close(einplan.bl("b i, b j -> b i j", x, y), x[:, :, None] * y[:, None, :], rtol=0, atol=0)


def test_a_call_autograd_records_takes_a_plan_without_slices(slicing):
    pattern, shapes, _ = SLICED[0]
    assert "one slice of" not in einplan.code(pattern, *shapes, dtype=torch.float64, grad=True)
    assert plan_for(pattern, *operands(shapes)).grad_matters
    a, b = operands(shapes, requires_grad=True)
    got = einplan.bl(pattern, a, b)
    weight = torch.randn(got.shape, dtype=torch.float64)
    (got * weight).sum().backward()
    a2, b2 = (x.detach().clone().requires_grad_() for x in (a, b))
    ((a2[:, :, None] * b2[:, None, :]) * weight).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-12, atol=1e-12)


def test_gradcheck_through_a_kernel(slicing):
    a, b = operands([(7, 2), (7, 3)], requires_grad=True)
    kernel = einplan.kernel("b i, b j -> b i j", a, b)
    assert torch.autograd.gradcheck(kernel, (a, b))


def test_slices_decline_where_they_do_not_apply(slicing):
    shapes = [(300, 2), (300, 3)]
    for options in ({"compiled": True}, {"device": "cuda"}, {"grad": True}):
        assert "one slice of" not in einplan.code("b i, b j -> b i j", *shapes, dtype=torch.float64, **options)
    # a broadcast that merges into two dims makes no passes: written whole
    assert "one slice of" not in einplan.code("b i, j -> b i j", (300, 2), (3,), dtype=torch.float64)
    # an axis longer than SLICE_MAX is not fixed
    long = slices.SLICE_MAX + 1
    assert "one slice of" not in einplan.code("b i, b j -> b i j", (300, long), (300, long), dtype=torch.float64)
    # something summed: the multiply-sum
    assert "one slice of" not in einplan.code("b i, b j -> b", (300, 2), (300, 2), dtype=torch.float64)


def test_the_estimate_counts_each_multiply(slicing):
    plan = plan_for("b i, b j -> b i j", (300, 2), (300, 3), dtype=torch.float64)
    estimate = plan.steps[0].estimate
    rows = 300 * 2 * 3
    # three ops and the result's allocation; the first operand read once per index, the second's
    # column (with a stride: it is its innermost axis) once, the result written with a stride
    assert estimate.ops == 4 and estimate.passes == 0 and estimate.allocations == (rows * 8,)
    strided = 1 + min(3, 64 // 8) / 2
    assert estimate.bytes == pytest.approx((3 * 600 + 900 * strided + rows * strided) * 8)
    assert estimate.elementwise == pytest.approx(rows * slices.SHORT_ROW / 2)


def test_slices_win_only_where_they_cost_less(shipped_cost_model, monkeypatch):
    """Priced as passes of torch's loop, the broadcast of 262144 outer products of pairs costs more
    than the slices' two multiplies; where passes cost nothing, the broadcast is cheaper (it writes
    its result once, with no stride)."""
    shapes = [(262_144, 2), (262_144, 2)]
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, pass_overhead=1e-8))
    step = plan_for("b i, b j -> b i j", *shapes).steps[0]
    assert step.kind == ELEMENTWISE and "one slice of" in einplan.code("b i, b j -> b i j", *shapes)
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, pass_overhead=0.0))
    assert "one slice of" not in einplan.code("b i, b j -> b i j", *shapes, lowering=ELEMENTWISE)
    assert MATMUL in {c.lowering for c in step.candidates}
