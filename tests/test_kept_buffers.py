"""Kept buffers: a temporary copy of a few MB is written into a buffer kept between calls.

glibc can hand a freed allocation of a few MB back to the system, and every call then faults
its pages in anew (seed 002's 2x2 batch: about 3 000 page faults a call).  The unrolled
lowering's layout copies go into a per-thread buffer instead, except while autograd records
the step (it may save the copy) and under torch.compile; tested here against torch.bmm.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import replace

import pytest
import torch

import einplan
from einplan import cost, source
from einplan.contraction import KEEP_MAX, KEEP_MIN

TINY = "b i j, b j k -> b i k"
BIG = KEEP_MIN // (4 * 4)  # a batch of 2x2 float32 matrices whose copies are exactly KEEP_MIN bytes


def pair(batch: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 2, 2, generator=gen, dtype=dtype) for _ in range(2)]


def kept_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "_kept(x" in line]


def buffers() -> dict:
    return vars(source.KEPT_BUFFERS)


# a CPU whose last-level cache holds these steps: their copies are laid out whole, not in blocks
HOLDS_THEM = {"llc_bytes": 32 * 2**20, "llc_speedup": 2.0}


@pytest.fixture
def whole_steps(shipped_cost_model, monkeypatch):
    """The shipped constants on a CPU with a 32 MiB last-level cache."""
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **HOLDS_THEM))


@pytest.fixture(autouse=True)
def fresh_pool():
    einplan.clear_cache()
    yield
    einplan.clear_cache()


def test_copies_of_a_few_mb_are_kept_and_small_or_huge_ones_are_not(whole_steps):
    assert len(kept_lines(einplan.code(TINY, (BIG, 2, 2), (BIG, 2, 2), lowering="unrolled"))) == 2
    assert kept_lines(einplan.code(TINY, (BIG - 1, 2, 2), (BIG - 1, 2, 2), lowering="unrolled")) == []
    huge = KEEP_MAX // 16 + 1
    assert kept_lines(einplan.code(TINY, (huge, 2, 2), (huge, 2, 2), lowering="unrolled")) == []


def test_a_device_whose_fresh_memory_costs_nothing_keeps_no_buffer(monkeypatch, shipped_cost_model):
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, fresh_page=0.0, **HOLDS_THEM))
    source_text = einplan.code(TINY, (BIG, 2, 2), (BIG, 2, 2), lowering="unrolled")
    assert kept_lines(source_text) == [] and ".contiguous()" in source_text


def test_repeated_calls_reuse_one_buffer_and_stay_exact(whole_steps):
    first = pair(BIG, 1, torch.float64)
    got = einplan.bl(TINY, *first, lowering="unrolled")
    torch.testing.assert_close(got, torch.bmm(*first), rtol=1e-12, atol=1e-12)
    pointers = {key: flat.data_ptr() for key, flat in buffers().items()}
    assert len(pointers) == 2
    second = pair(BIG, 2, torch.float64)
    again = einplan.bl(TINY, *second, lowering="unrolled")
    torch.testing.assert_close(again, torch.bmm(*second), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, torch.bmm(*first), rtol=1e-12, atol=1e-12)  # the first result is its own
    assert {key: flat.data_ptr() for key, flat in buffers().items()} == pointers


def test_a_smaller_call_uses_part_of_a_larger_buffer_and_a_larger_one_grows_it(whole_steps):
    for batch in (2 * BIG, BIG, 3 * BIG, BIG):
        a, b = pair(batch, batch)
        torch.testing.assert_close(einplan.bl(TINY, a, b, lowering="unrolled"), torch.bmm(a, b), rtol=1e-5, atol=1e-5)
    assert {flat.numel() for flat in buffers().values()} == {3 * BIG * 4}


def test_autograd_gets_fresh_copies_so_two_recorded_calls_both_differentiate(whole_steps):
    a1, b = pair(BIG, 3, torch.float64)
    a2, _ = pair(BIG, 4, torch.float64)
    b.requires_grad_(True)
    total = einplan.bl(TINY, a1, b, lowering="unrolled").sum() + einplan.bl(TINY, a2, b, lowering="unrolled").sum()
    total.backward()
    leaf = b.detach().requires_grad_(True)
    (torch.bmm(a1, leaf).sum() + torch.bmm(a2, leaf).sum()).backward()
    torch.testing.assert_close(b.grad, leaf.grad, rtol=1e-12, atol=1e-12)
    assert buffers() == {}


def test_inference_mode_then_normal_mode(whole_steps):
    a, b = pair(BIG, 5)
    with torch.inference_mode():
        inside = einplan.bl(TINY, a, b, lowering="unrolled")
    outside = einplan.bl(TINY, a, b, lowering="unrolled")
    torch.testing.assert_close(inside, torch.bmm(a, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outside, torch.bmm(a, b), rtol=1e-5, atol=1e-5)


def test_each_thread_has_its_own_buffers(whole_steps):
    errors: list[float] = []
    start = threading.Barrier(2)

    def work(seed: int) -> None:
        start.wait()
        for k in range(5):
            a, b = pair(BIG, 10 * seed + k)
            errors.append(float((einplan.bl(TINY, a, b, lowering="unrolled") - torch.bmm(a, b)).abs().max()))

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 10 and max(errors) < 1e-5
    assert buffers() == {}  # this thread called nothing


def test_clear_cache_drops_this_threads_buffers(whole_steps):
    einplan.bl(TINY, *pair(BIG), lowering="unrolled")
    assert buffers()
    einplan.clear_cache()
    assert buffers() == {}


def test_a_saved_kernel_keeps_its_buffers_standalone(tmp_path, whole_steps):
    a, b = pair(BIG, 6)
    saved = einplan.kernel(TINY, a, b, lowering="unrolled").save(tmp_path / "tiny_kernel.py")
    text = saved.read_text()
    assert "imports only torch, jaxtyping and threading" in text and "einplan_buffers = threading.local()" in text
    spec = importlib.util.spec_from_file_location("tiny_kernel", saved)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for seed in (6, 7):
        a, b = pair(BIG, seed)
        torch.testing.assert_close(module.einplan_kernel(a, b), torch.bmm(a, b), rtol=1e-5, atol=1e-5)
    assert len(vars(module.einplan_buffers)) == 2 and buffers() == {}


def test_torch_compile_traces_fresh_copies(whole_steps):
    a, b = pair(BIG, 8)
    compiled = torch.compile(lambda x, y: einplan.bl(TINY, x, y, lowering="unrolled"), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(a, b), torch.bmm(a, b), rtol=1e-5, atol=1e-5)
    assert buffers() == {}
