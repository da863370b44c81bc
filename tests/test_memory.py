"""Memory bounds, proved two ways: the planner's own accounting, and the
process's peak resident memory measured around a call in a fresh subprocess."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import einplan
from einplan import bl
from einplan.chunking import ONE_PASS_CHUNK_BYTES, ROW_TILE_BYTES
from einplan.plan import CHUNK_BYTES, CHUNKED
from einplan.runtime import plan_for

MiB = 2**20
LINUX = Path("/proc/self/clear_refs").exists()


WHOLE = ((20000, 128), (20000, 128))  # a 1.6 GB product
NARROW = ((20000, 128), (1000, 128))  # 80 MB, too narrow for tiles


@pytest.mark.parametrize(
    "pattern, shapes, cut",
    [
        # max/argmax of the whole product: tiles of a chunk's budget, read while still in cache
        ("m d, n d -> | max m n", WHOLE, "tiles"),
        ("m d, n d -> | argmax m n", WHOLE, "tiles"),
        # a product too narrow for tiles: each chunk is read once from matmul's reused buffer,
        # so it may take the larger one-pass chunk
        ("m d, n d -> | max m n", NARROW, "one-pass chunks"),
        ("m d, n d -> | argmax m n", NARROW, "one-pass chunks"),
        # a max/min/logsumexp that keeps the rows: chunks of rows, each in tiles of columns
        ("q d, k d -> q | logsumexp k", WHOLE, "row tiles"),
        ("q d, k d -> q | max k", WHOLE, "row tiles"),
        ("q d, k d -> q | argmin k", WHOLE, "chunks"),
        ("q d, k d -> k | mean q", WHOLE, "chunks"),
    ],
)
@pytest.mark.parametrize("limit", [1 * MiB, 8 * MiB, 256 * MiB])
@pytest.mark.parametrize("screen", [False, True], ids=["no-bf16-screen", "bf16-screen"])
def test_planner_accounting_keeps_chunks_under_the_limit(pattern, shapes, cut, limit, screen, cpu_screen):
    cpu_screen(screen)
    plan = plan_for(pattern, *shapes, memory_limit=limit)
    chunked = [s for s in plan.steps if s.kind == CHUNKED]
    assert chunked, "an intermediate over the chunk budget must be chunked"
    assert ("in tiles of" in chunked[0].description) == (cut in ("tiles", "row tiles")), chunked[0].description
    if "screened" in chunked[0].description:  # bfloat16 copies of the inputs, a tile, one exact chunk
        assert screen and cut == "tiles" and limit == 256 * MiB
        assert 8 * MiB < chunked[0].estimate.memory <= 32 * MiB
        return
    assert not (screen and cut == "tiles" and limit == 256 * MiB), "a screen fits: it should be planned"
    budget = min(limit, {"one-pass chunks": ONE_PASS_CHUNK_BYTES, "row tiles": ROW_TILE_BYTES}.get(cut, CHUNK_BYTES))
    assert chunked[0].estimate.memory <= budget <= limit
    if limit >= ONE_PASS_CHUNK_BYTES:  # the chunk uses most of its budget
        assert chunked[0].estimate.memory > budget / 2


@pytest.fixture
def without_triton(monkeypatch):
    """Plans as on a machine where triton does not import: no fused kernel, on any device."""
    monkeypatch.setattr(einplan.fused, "available", lambda device: False)


@pytest.mark.parametrize("device, cut", [("cpu", "in tiles of 2048 along m by 1024 along n"), ("cuda", "in chunks of 419 along m")])
def test_whole_product_max_is_tiled_for_a_cpu_only(device, cut, cpu_screen, without_triton):
    """Without a fused kernel (no triton): on CUDA one full-width chunk per GEMM, on a CPU tiles."""
    cpu_screen(False)
    plan = plan_for("m d, n d -> | max m n", *WHOLE, device=device)
    (step,) = [s for s in plan.steps if s.kind == CHUNKED]
    assert cut in step.description, step.description


@pytest.mark.parametrize(
    "device, compiled, cut",
    [
        ("cpu", False, "in tiles of 512 along q by 512 along k"),
        ("cpu", True, "in chunks of 52 along q"),
        ("cuda", False, "in chunks of 52 along q"),
    ],
)
def test_a_reduction_that_keeps_the_rows_is_tiled_for_eager_cpu_code_only(device, compiled, cut, without_triton):
    # torch.compile would unroll every tile of the loop; a GPU's GEMM wants the full-width chunk
    plan = plan_for("q d, k d -> q | logsumexp k", *WHOLE, device=device, compiled=compiled)
    (step,) = [s for s in plan.steps if s.kind == CHUNKED]
    assert cut in step.description, step.description


@pytest.mark.parametrize("limit", [16, 64, 200, 1000])
@pytest.mark.parametrize("reducer", ["logsumexp", "max"])
def test_row_tiles_narrow_to_fit_a_small_memory_limit(reducer, limit):
    # a logsumexp tile counts its temporary too: half as many columns as a max tile
    q, k = torch.randn(30, 3, dtype=torch.float64), torch.randn(600, 3, dtype=torch.float64)
    pattern = f"q d, k d -> q | {reducer} k"
    (step,) = [s for s in plan_for(pattern, q, k, memory_limit=limit).steps if s.kind == CHUNKED]
    assert "in tiles of" in step.description and step.estimate.memory <= limit, step.description
    want = torch.logsumexp(q @ k.T, 1) if reducer == "logsumexp" else (q @ k.T).amax(1)
    torch.testing.assert_close(bl(pattern, q, k, memory_limit=limit), want, rtol=1e-12, atol=1e-12)


def test_small_reductions_are_not_chunked():
    plan = plan_for("m d, n d -> | max m n", (20, 8), (30, 8))
    assert all(s.kind != CHUNKED for s in plan.steps)


def test_sum_product_whose_intermediate_exceeds_the_limit_is_chunked():
    plan = plan_for("m d, n d -> m n", (300, 4), (400, 4), memory_limit=64 * 1024)
    (step,) = [s for s in plan.steps if s.kind == CHUNKED]
    assert step.estimate.memory <= 64 * 1024
    a, b = torch.randn(300, 4, dtype=torch.float64), torch.randn(400, 4, dtype=torch.float64)
    torch.testing.assert_close(bl("m d, n d -> m n", a, b, memory_limit=64 * 1024), a @ b.T)


def test_output_that_cannot_fit_is_refused_before_allocation():
    with pytest.raises(einplan.EinplanError, match=r"would take .*GiB"):
        plan_for("m, n -> m n", (10**6,), (10**7,))


PEAK_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from einplan import bl

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    pattern, m, n, d, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.manual_seed(0)
    a, b = torch.randn(m, d), torch.randn(n, d)
    bl(pattern, a[:64], b[:64], memory_limit=limit)  # load the kernels and the plan machinery
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    before = status("VmRSS")
    out = bl(pattern, a, b, memory_limit=limit)
    peak = status("VmHWM")
    print(peak - before)
    """
)


def _peak_extra(pattern, m, n, d, limit):
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, pattern, str(m), str(n), str(d), str(limit)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not LINUX, reason="needs /proc/self/clear_refs (Linux)")
@pytest.mark.parametrize("pattern", ["m d, n d -> | max m n", "m d, n d -> | argmax m n", "m d, n d -> m | logsumexp n"])
def test_measured_peak_stays_under_the_limit(pattern):
    # the full 8000 x 8000 float32 product would take 244 MiB
    limit = 32 * MiB
    extra = _peak_extra(pattern, 8000, 8000, 64, limit)
    assert extra <= limit + 8 * MiB, f"peak extra {extra / MiB:.1f} MiB over a {limit / MiB:.0f} MiB limit"


@pytest.mark.skipif(not LINUX, reason="needs /proc/self/clear_refs (Linux)")
def test_a_32_gb_intermediate_completes_under_the_limit():
    # 92 682^2 float32 scores would take 32 GiB, more than this machine has
    m = n = 92682
    limit = 64 * MiB
    plan = plan_for("m d, n d -> | max m n", (m, 2), (n, 2), memory_limit=limit)
    full = m * n * 4
    assert full > 32 * 2**30 * 0.999
    (step,) = [s for s in plan.steps if s.kind == CHUNKED]
    assert step.estimate.memory <= limit
    extra = _peak_extra("m d, n d -> | max m n", m, n, 2, limit)
    assert extra <= limit + 8 * MiB, f"peak extra {extra / MiB:.1f} MiB"
