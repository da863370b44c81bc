"""Elementwise passes: torch's CPU loop runs an op's two innermost merged dims per pass and counts
the rest one pass at a time, so a broadcast whose strides do not merge (a batch of tiny outer
products) pays per row of its batch; the cost model counts those passes and prices them."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from einplan import cost, tuning
from einplan.cost import Estimate, elementwise_passes
from einplan.plan import ELEMENTWISE, MATMUL
from einplan.runtime import plan_for

# the constants calibration measured on 2 cores of an AMD EPYC (CPU family 26), where the tiny
# outer products below were timed: elementwise-sum 3.3-3.6 ms at 262144 pairs (one pass a row),
# torch.bmm 1.2-1.3 ms; at 65536 x 8x8 elementwise-sum 1.2 ms, torch.bmm 3.8 ms
ZEN5 = dict(
    op_overhead=9.8e-7, gemm_rate=2.07e11, gemm_half=7.53, matrix_overhead=1.03e-8, bandwidth=8.66e10, cache_speedup=2.08,
    llc_bytes=32 * 2**20, llc_speedup=1.38, elementwise_rate=7.68e9, reduce_overhead=1.37e-9, column_rate=7.0e9,
    row_rate=6.2e10, loop_matrix=1.38e-9, loop_fma=8.2e-11, loop_output=7.7e-10, fresh_page=1.0e-6, pass_overhead=1.1e-8,
)  # fmt: skip


def contiguous(sizes):
    strides, step = [], 1
    for size in reversed(sizes):
        strides.append(step)
        step *= size
    return strides[::-1]


@pytest.mark.parametrize(
    "sizes, operands, passes",
    [
        # x[:, :, None] * y[:, None, :]: no two dims merge, one pass per row of the batch
        ((1000, 3, 3), [(3, 1, 0), (3, 0, 1)], 1000),
        # x[:, :, None] * w: the batch and i merge (x and the result step through them as one)
        ((1000, 3, 3), [(3, 1, 0), (0, 0, 1)], 0),
        # contiguous operands of the result's shape: one dim
        ((10, 20, 30), [(600, 30, 1), (600, 30, 1)], 0),
        # a size-1 dim merges with anything
        ((1000, 1, 3, 3), [(3, 3, 1, 0), (3, 3, 0, 1)], 1000),
        # the bmm of tiny matrices as a broadcast multiply (b, i, k, j): b and i merge for a, not for b
        ((64, 2, 2, 2), [(4, 2, 0, 1), (4, 0, 1, 2)], 128),
        ((5, 7), [(7, 1), (0, 1)], 0),  # two dims: one pass
        ((0, 3, 3), [(3, 1, 0), (3, 0, 1)], 0),  # empty: no pass
        ((4, 0, 3), [(3, 1, 0), (0, 0, 1)], 0),  # empty along an inner dim too
    ],
)
def test_passes_count_the_dims_past_the_two_innermost_merged(sizes, operands, passes):
    assert elementwise_passes(list(sizes), [contiguous(sizes), *map(list, operands)]) == passes


def test_passes_are_priced_per_pass():
    model = replace(cost.CPU, pass_overhead=2e-8)
    assert model.breakdown(Estimate(passes=1000))["elementwise passes"] == pytest.approx(2e-5)
    assert cost.CUDA.pass_overhead == 0  # a CUDA kernel indexes every dim itself


@pytest.mark.parametrize("rows, d, with_passes", [(262_144, 2, MATMUL), (262_144, 3, MATMUL), (65_536, 8, ELEMENTWISE)])
def test_tiny_outer_products_are_priced_by_their_passes(rows, d, with_passes, monkeypatch):
    """Priced by their passes, the broadcast loses to torch.bmm at 2 and 3 and wins at 8 (as
    measured); without them, it is priced as its memory traffic alone and wins at every size.
    (In a plan for calls autograd records, which has no slices: see tests/test_slices.py.)"""
    shapes = ((rows, d), (rows, d))
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **ZEN5))
    plan = plan_for("b i, b j -> b i j", *shapes, grad=True)
    assert plan.steps[0].kind == with_passes
    broadcast = next(c for c in plan.steps[0].candidates if c.lowering == ELEMENTWISE)
    assert broadcast.estimate.passes == rows
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **{**ZEN5, "pass_overhead": 0.0}))
    assert plan_for("b i, b j -> b i j", *shapes, grad=True).steps[0].kind == ELEMENTWISE


def test_compiled_products_make_no_passes(monkeypatch):
    """torch.compile writes its own loop over every dim."""
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **ZEN5))
    plan = plan_for("b i, b j -> b i j", (262_144, 2), (262_144, 2), compiled=True)
    broadcast = next(c for c in plan.steps[0].candidates if c.lowering == ELEMENTWISE)
    assert broadcast.estimate.passes == 0


def test_tuning_measures_a_pass_against_the_same_output_in_two_dims(monkeypatch):
    """The pass overhead is the outer product's time less the merged broadcast's, per row."""
    times = iter([5e-3, 1e-3])
    seen = []

    def timed(fn, repeat=15):
        seen.append(fn().shape)
        return next(times)

    rows = 1 << 15
    assert tuning._pass_overhead(timed, {"dtype": torch.float32}, quick=True) == pytest.approx(4e-3 / rows)
    assert seen == [torch.Size([rows, 2, 2])] * 2
    times = iter([1e-3, 2e-3])  # noise the other way: no negative cost
    assert tuning._pass_overhead(timed, {"dtype": torch.float32}, quick=True) == 0.0
