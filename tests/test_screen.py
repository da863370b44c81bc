"""The bfloat16 screen of a whole product's max/min/argmax/argmin (reductions._ScreenedExtreme).

A screen may only ever change the speed: every case here is checked against
torch on float32 inputs, with data built to stress the bound: planted pairs
closer than bfloat16 can tell apart, ties everywhere, every product negative,
NaN, inf, overflow and subnormal products, and more kept rows than one exact chunk.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import einplan
from einplan import cost
from einplan.plan import CHUNKED
from einplan.runtime import plan_for
from einplan.screen import BFLOAT16_UNIT, screen_error

MiB = 2**20
F32 = torch.float32
ROWS, COLUMNS, DEPTH = 2300, 1500, 16  # over the 8 MiB chunk budget: 2 x 2 tiles of 2048 x 1024
REDUCERS = ["max", "min", "argmax", "argmin"]


@pytest.fixture(autouse=True)
def screening(cpu_screen):
    return cpu_screen(True)


def _screened_step(pattern, *tensors_or_shapes, **options):
    plan = plan_for(pattern, *tensors_or_shapes, **options)
    (step,) = [s for s in plan.steps if s.kind == CHUNKED]
    return step


def _is_screened(pattern, *tensors_or_shapes, **options) -> bool:
    plan = plan_for(pattern, *tensors_or_shapes, **options)
    return any("screened in bfloat16" in s.description for s in plan.steps)


def _data(kind: str, reducer: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(ROWS, DEPTH, generator=g)
    b = torch.randn(COLUMNS, DEPTH, generator=g)
    sign = 1.0 if reducer.endswith("max") else -1.0
    if kind == "ties":  # small integers: exact products, the extreme repeats in many rows and tiles
        a, b = a.mul(1.5).round().clamp(-2, 2), b.mul(1.5).round().clamp(-2, 2)
    elif kind == "closer-than-bfloat16":  # the screen ranks row 2200 first, float32 ranks row 7
        a.mul_(0.01), b.mul_(0.01)
        a[7], b[1300], a[2200], b[5] = 0.0, 0.0, 0.0, 0.0
        a[7, 0], b[1300, 0] = 10.031 * sign, 1.0  # 10.031, screened as 10.0
        a[2200, 1], a[2200, 2], b[5, 1], b[5, 2] = 8.0313 * sign, 1.999 * sign, 1.0, 1.0  # 10.0303, screened as 10.0625
        bf16 = lambda x: torch.tensor(x).bfloat16()
        assert bf16(10.031) < (bf16(8.0313) + bf16(1.999)).bfloat16() and 10.031 > 8.0313 + 1.999
    elif kind == "scaled-apart":  # as above, rows scaled by 2^-90 and columns by 2^60: the rows'
        # squares underflow in float32, the columns' do not overflow, the products stay normal
        a, b = _data("closer-than-bfloat16", reducer, seed)
        a, b = a * 2.0**-90, b * 2.0**60
        assert torch.linalg.vector_norm(a, dim=1).amax() == 0 and torch.linalg.vector_norm(b, dim=1).isfinite().all()
    elif kind == "all-negative":  # every product < 0 for max (> 0 for min): every row is kept
        a, b = a.abs(), b.abs().mul(-sign)
    elif kind == "nan":
        a[1700, 3] = float("nan")
        b[1100, 2] = float("nan")
    elif kind == "inf":
        a[900, 0] = float("inf")
    elif kind == "overflow":  # products past float32's range
        a.mul_(3e19), b.mul_(3e19)
    elif kind == "subnormal":  # products below float32's normal range
        a.mul_(3e-20), b.mul_(3e-20)
    return a, b


def _first_flat(scores: torch.Tensor, reducer: str):
    flat = getattr(scores.flatten(), reducer)()
    return flat // scores.shape[1], flat % scores.shape[1]


KINDS = ["random", "ties", "closer-than-bfloat16", "scaled-apart", "all-negative", "nan", "inf", "overflow", "subnormal"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reducer", REDUCERS)
def test_screened_result_is_torchs(reducer, kind):
    pattern = f"m d, n d -> | {reducer} m n"
    a, b = _data(kind, reducer)
    step = _screened_step(pattern, a, b)
    assert "screened in bfloat16 in tiles of 2048 along m by 1024 along n" in step.description
    got = einplan.bl(pattern, a, b)
    scores = a @ b.T  # float32, as the exact pass computes it
    if reducer in ("max", "min"):
        want = getattr(torch, f"a{reducer}")(scores)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0, equal_nan=True)
    else:
        want = _first_flat(scores, reducer)
        assert [int(g) for g in got] == [int(w) for w in want], (kind, got, want)
        assert all(g.dtype == torch.int64 and g.shape == () for g in got)


def test_a_pair_the_screen_ranks_second_is_found_in_float32():
    a, b = _data("closer-than-bfloat16", "argmax")
    assert [int(t) for t in einplan.bl("m d, n d -> | argmax m n", a, b)] == [7, 1300]
    assert einplan.bl("m d, n d -> | max m n", a, b) == torch.tensor(10.031)


@pytest.mark.parametrize("reducer", ["argmax", "argmin"])
def test_ties_across_exact_chunks_keep_the_first_flat_index(reducer):
    # every product is the same: all 2300 rows are kept, more than one exact chunk holds
    a, b = torch.ones(ROWS, DEPTH), torch.ones(COLUMNS, DEPTH)
    source = einplan.code(f"m d, n d -> | {reducer} m n", a, b)
    assert "exact pass: up to 699 kept rows at a time" in source  # 2300 rows: four chunks
    assert [int(t) for t in einplan.bl(f"m d, n d -> | {reducer} m n", a, b)] == [0, 0]


@pytest.mark.parametrize("order", ["m n", "n m"])
@pytest.mark.parametrize("reducer", REDUCERS)
def test_rows_may_come_from_either_operand(reducer, order):
    pattern = f"m d, n d -> | {reducer} {order}"
    a, b = _data("ties", reducer, seed=3)
    a, b = a[:COLUMNS], torch.cat([b, b[:800]])  # n is the longer axis now
    assert _is_screened(pattern, a, b)
    scores = a @ b.T if order == "m n" else b @ a.T
    got = einplan.bl(pattern, a, b)
    if reducer in ("max", "min"):
        assert got == getattr(torch, f"a{reducer}")(scores)
    else:
        assert [int(g) for g in got] == [int(w) for w in _first_flat(scores, reducer)]


@pytest.mark.parametrize("reducer", ["max", "min"])
def test_a_call_autograd_records_is_differentiated_in_tiles_not_screened(reducer):
    a, b = [t.requires_grad_() for t in _data("random", reducer, seed=4)]
    pattern = f"m d, n d -> | {reducer} m n"
    with torch.no_grad():
        assert _is_screened(pattern, a, b)  # nothing to differentiate: the screen
    assert _is_screened(pattern, a, b, grad=False)
    assert not _is_screened(pattern, a, b)  # its backward recomputes the float32 tiles the forward used
    assert plan_for(pattern, a, b).functions
    got = einplan.bl(pattern, a, b)
    want = getattr(torch, f"a{reducer}")(a @ b.T)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for g, w in zip(torch.autograd.grad(got, (a, b)), torch.autograd.grad(want, (a, b)), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=0)


def test_the_bound_covers_every_rounding():
    u = BFLOAT16_UNIT
    # inputs (2u), output (u; 2u if a GEMM rounded toward zero), two float32 sums: a little over
    # 3u for short sums, with a margin of 1.5, and it grows with depth
    assert 4 * u + 2 * 16 * 2.0**-24 < screen_error(16) < 5 * u
    assert screen_error(10**6) > screen_error(16) + 2 * 10**6 * 2.0**-24
    a, b = torch.randn(4000, 128, dtype=torch.float64), torch.randn(4000, 128, dtype=torch.float64)
    exact = a @ b.T
    screened = (a.float().bfloat16().double() @ b.float().bfloat16().double().T).bfloat16().double()
    error = (screened - exact).abs() / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :])
    assert error.max() < screen_error(128)


# --- when the planner screens


def test_screen_needs_a_fast_bfloat16_gemm(cpu_screen):
    assert _is_screened("m d, n d -> | max m n", (20000, 128), (20000, 128))
    cpu_screen(False)
    assert not _is_screened("m d, n d -> | max m n", (20000, 128), (20000, 128))


@pytest.mark.parametrize(
    "pattern, shapes, options",
    [
        ("m d, n d -> | max m n", [(20000, 128), (20000, 128)], {"device": "cuda"}),  # a GPU keeps row chunks
        ("m d, n d -> | max m n", [(20000, 128), (20000, 128)], {"dtype": torch.float64}),
        ("m d, n d -> | max m n", [(20000, 128), (20000, 128)], {"memory_limit": 8 * MiB}),  # no room for the copies
        ("m d, n d -> | max m n", [(100, 128), (20000, 128)], {}),  # not chunked at all
        ("m d, n d -> | logsumexp m n", [(20000, 128), (20000, 128)], {}),  # needs every product
        ("m d, n d -> m | max n", [(20000, 128), (20000, 128)], {}),  # one max per row: no row to skip
        ("b m d, b n d -> | max b m n", [(2, 8000, 16), (2, 8000, 16)], {}),  # batched: not 2-D
    ],
)
def test_what_is_never_screened(pattern, shapes, options):
    assert not _is_screened(pattern, *shapes, **options)


def test_meta_tensors_are_not_screened():
    # shape inference on meta tensors: the screen's row selection needs data
    a, b = torch.empty(20000, 128, device="meta"), torch.empty(20000, 128, device="meta")
    assert not _is_screened("m d, n d -> | max m n", a, b)
    assert einplan.bl("m d, n d -> | max m n", a, b).shape == ()
    assert [t.shape for t in einplan.bl("m d, n d -> | argmax m n", a, b)] == [(), ()]


def test_compiled_code_is_not_screened():
    # the exact pass's trip count depends on the data: torch.compile would break the graph there
    assert not _is_screened("m d, n d -> | max m n", (20000, 128), (20000, 128), compiled=True)


@pytest.mark.parametrize("speedup, screened", [(1.4, False), (1.6, True), (2.2, True)])
def test_the_screen_needs_a_bfloat16_gemm_half_again_as_fast(monkeypatch, speedup, screened):
    from einplan import runtime

    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, screen_rate=speedup * cost.CPU.gemm_rate))
    runtime.clear_cache()
    assert _is_screened("m d, n d -> | max m n", (20000, 128), (20000, 128)) == screened


def test_screen_is_priced_at_the_bfloat16_rate(screening):
    step = _screened_step("m d, n d -> | max m n", (20000, 128), (20000, 128))
    chosen = [c for c in step.candidates if c.lowering == CHUNKED][0]
    gemm = 2.0 * 20000 * 20000 * 128
    assert chosen.estimate.gemm_flops == pytest.approx(gemm / 4 + 2.0 * 52 * 20000 * 128)
    assert step.estimate.memory <= 32 * MiB


# --- memory, measured


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs /proc/self/clear_refs (Linux)")
@pytest.mark.parametrize("pattern", ["m d, n d -> | max m n", "m d, n d -> | argmin m n"])
def test_screened_peak_stays_under_the_limit(pattern, tmp_path):
    from test_memory import PEAK_SCRIPT

    model = replace(cost.CPU, screen_rate=4.0 * cost.CPU.gemm_rate)
    (tmp_path / "device_models.json").write_text(json.dumps({"cpu": {"screen_rate": model.screen_rate}}))
    env = dict(os.environ, EINPLAN_CACHE_DIR=str(tmp_path))
    limit = 32 * MiB
    check = f"from einplan.runtime import plan_for; assert 'screened' in plan_for({pattern!r}, (8000, 64), (8000, 64), memory_limit={limit}).steps[-1].description"
    assert subprocess.run([sys.executable, "-c", check], env=env).returncode == 0
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, pattern, "8000", "8000", "64", str(limit)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    extra = int(result.stdout.strip().splitlines()[-1])
    # the full 8000 x 8000 float32 product would take 244 MiB
    assert extra <= limit, f"peak extra {extra / MiB:.1f} MiB over a {limit / MiB:.0f} MiB limit"
