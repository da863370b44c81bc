"""A step before the last that would exceed the limit: the rest of the path runs in chunks of one axis.

Results and gradients against torch.einsum (float64) on chains of three and four operands, under
limits that cut them; the peak memory of ``a i, a j, i j ->`` at 4096^3 measured in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import einplan
from einplan import CHUNKED
from einplan.runtime import plan_for

MiB = 2**20
CHAINS = [
    ("a i, a j, i j ->", "ai,aj,ij->", [(30, 40), (30, 50), (40, 50)]),
    ("a i, a j, i j -> i", "ai,aj,ij->i", [(30, 40), (30, 50), (40, 50)]),
    ("a i, a j, i j -> a", "ai,aj,ij->a", [(30, 40), (30, 50), (40, 50)]),
    ("i k, k l, l j -> i j", "ik,kl,lj->ij", [(40, 30), (30, 60), (60, 20)]),
    ("a i, a j, i j, j ->", "ai,aj,ij,j->", [(30, 40), (30, 50), (40, 50), (50,)]),
]


@pytest.mark.parametrize("limit", [256, 2048])
@pytest.mark.parametrize("chain", CHAINS, ids=[c[0] for c in CHAINS])
def test_the_rest_of_the_path_in_chunks_is_einsums(chain, limit):
    pattern, equation, shapes = chain
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    plan = plan_for(pattern, *tensors, memory_limit=limit)
    (step,) = [s for s in plan.steps if s.kind == CHUNKED]
    assert "the rest of the path" in step.description
    assert step.estimate.memory <= limit or "chunks of 1 along" in step.description  # one row is the least a chunk holds
    got = einplan.bl(pattern, *tensors, memory_limit=limit)
    want = torch.einsum(equation, *tensors)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad(got.sum(), tensors), torch.autograd.grad(want.sum(), tensors), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


CLAUSE_CHAINS = [
    ("a i, a j, i j -> i | max j", lambda t: torch.einsum("ai,aj,ij->ij", *t).amax(1)),
    ("a i, a j, i j -> i | logsumexp j", lambda t: torch.einsum("ai,aj,ij->ij", *t).logsumexp(1)),
    ("a i, a j, i j -> i | mean j", lambda t: torch.einsum("ai,aj,ij->ij", *t).mean(1)),
    ("a i, a j, i j -> j | min i", lambda t: torch.einsum("ai,aj,ij->ij", *t).amin(0)),
]


@pytest.mark.parametrize("chain", CLAUSE_CHAINS, ids=[c[0] for c in CLAUSE_CHAINS])
def test_clauses_run_on_each_chunk_of_the_rest_of_the_path(chain):
    """The cut axis is one the clauses keep: each chunk's rows are reduced before they are written."""
    pattern, reference = chain
    g = torch.Generator().manual_seed(4)
    tensors = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in [(30, 40), (30, 50), (40, 50)]]
    plan = plan_for(pattern, *tensors, memory_limit=2048)
    (step,) = plan.steps
    assert step.kind == CHUNKED and "the rest of the path and its clauses" in step.description
    got = einplan.bl(pattern, *tensors, memory_limit=2048)
    want = reference(tensors)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad(got.sum(), tensors), torch.autograd.grad(want.sum(), tensors), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    index = einplan.bl("a i, a j, i j -> i | argmax j", *(t.detach() for t in tensors), memory_limit=2048)
    assert torch.equal(index, torch.einsum("ai,aj,ij->ij", *(t.detach() for t in tensors)).argmax(1))


def test_a_clause_over_every_axis_keeps_the_last_step_in_chunks():
    """No axis survives ``| max i j``: the chain keeps its first step whole and chunks the last."""
    tensors = [torch.randn(s, dtype=torch.float64) for s in [(30, 40), (30, 50), (40, 50)]]
    plan = plan_for("a i, a j, i j -> | max i j", *tensors, memory_limit=2048)
    assert all("the rest of the path" not in s.description for s in plan.steps)
    got = einplan.bl("a i, a j, i j -> | max i j", *tensors, memory_limit=2048)
    torch.testing.assert_close(got, torch.einsum("ai,aj,ij->ij", *tensors).amax())


@pytest.mark.parametrize(
    ("pattern", "equation", "shapes"),
    [
        ("b n, n n, b n -> b", "bn,nm,bm->b", [(10, 60), (60, 60), (10, 60)]),
        ("a b, b c, c d -> a d", "ab,bc,cd->ad", [(10, 30), (30, 50), (50, 8)]),
    ],
)
def test_a_forced_lowering_whose_own_temporary_exceeds_the_limit(pattern, equation, shapes):
    """Forced elementwise-sum broadcasts a product larger than the limit while every step's result
    fits: nothing to cut, the forced plan runs (it raised StopIteration)."""
    tensors = [torch.randn(s, dtype=torch.float64) for s in shapes]
    got = einplan.bl(pattern, *tensors, lowering="elementwise-sum", memory_limit=8192)
    torch.testing.assert_close(got, torch.einsum(equation, *tensors), rtol=1e-10, atol=1e-10)


def test_without_a_limit_the_chain_is_one_step_each():
    kinds = [s.kind for s in plan_for("a i, a j, i j ->", (30, 40), (30, 50), (40, 50)).steps]
    assert CHUNKED not in kinds


PEAK_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from einplan import bl

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    n, limit, pattern = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.randn(n, n)
    bl(pattern, a[:64, :64], b[:64, :64], c[:64, :64], memory_limit=limit)  # load the plan machinery
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    got = bl(pattern, a, b, c, memory_limit=limit)
    peak = status("VmHWM") - before
    product = (a.T @ b) * c
    want = product.amax(1) if "| max j" in pattern else product.sum()
    print(peak, float(got.sum()), float(want.sum()))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self/clear_refs (Linux)")
@pytest.mark.parametrize("pattern", ["a i, a j, i j ->", "a i, a j, i j -> i | max j"])
def test_a_three_operand_chain_stays_under_the_limit(pattern):
    """Its first step's i x j intermediate alone is 64 MiB at 4096^3; under 8 MiB it is never whole,
    with or without a clause after it."""
    limit = 8 * MiB
    command = [sys.executable, "-c", PEAK_SCRIPT, "4096", str(limit), pattern]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    extra, got, want = (float(x) for x in result.stdout.split())
    assert abs(got - want) <= 1e-3 * abs(want) + 1.0
    # as in test_memory: the slack is the GEMM library's own workspace and the allocator's
    assert extra <= limit + 8 * MiB, f"peak extra {extra / MiB:.1f} MiB over a {limit / MiB:.0f} MiB limit"
