"""Many threads share the plan cache: every result exact, no exception, bounded cache.

Inputs are small integers, so each result equals its torch.einsum reference
exactly whatever the summation order.
"""

from __future__ import annotations

import random
import threading

import torch

import einplan

THREADS = 8
CALLS = 1000


def ints(*shape, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=generator).to(dtype)


def _signatures():
    """(pattern, tensors, sizes, lowering, reference) over mixed patterns, shapes, dtypes."""
    cases = []
    seed = 0
    for n in (1, 2, 3, 4):
        for b in (1, 3):
            seed += 1
            x, A = ints(b, n, seed=seed), ints(n + 1, n, seed=seed + 100)
            cases.append(("b n, m n -> b m", (x, A), {}, None, torch.einsum("bn,mn->bm", x, A)))
            cases.append(("b n, m n -> b m", (x, A), {}, einplan.ELEMENTWISE, torch.einsum("bn,mn->bm", x, A)))
            l = ints(b, 2, n, dtype=torch.int64, seed=seed + 200)
            M = ints(n, n, dtype=torch.int64, seed=seed + 300)
            cases.append(("b1 b2 n, n n, b1 b2 n -> b1 b2", (l, M, l), {}, None, torch.einsum("abn,nm,abm->ab", l, M, l)))
            y = ints(b, n, n, dtype=torch.float32, seed=seed + 400)
            cases.append(("b n n -> b", (y,), {}, None, torch.einsum("bii->b", y)))
            cases.append(("... i, ... i -> ...", (x, x), {}, None, torch.einsum("...i,...i->...", x, x)))
            B = ints(b, n, 2, seed=seed + 500)
            C = ints(b, 2, 3, seed=seed + 600)
            cases.append(("b i j, b j k -> b i k", (B, C), {}, einplan.MATMUL, torch.einsum("bij,bjk->bik", B, C)))
            q, k = ints(n + 1, 3, seed=seed + 700), ints(4, 3, seed=seed + 800)
            cases.append(("q d, k d -> q | max k", (q, k), {}, None, torch.einsum("qd,kd->qk", q, k).amax(1)))
            z = ints(b, 2 * n, seed=seed + 900)
            W = ints(2, n, 3, seed=seed + 1000)
            cases.append(("b (h d), h d e -> b h e", (z, W), {"h": 2}, None, torch.einsum("bhd,hde->bhe", z.reshape(b, 2, n), W)))
    return cases


def test_threads_share_the_plan_cache():
    cases = _signatures()
    assert len({(c[0], tuple(tuple(t.shape) for t in c[1]), c[3], c[1][0].dtype) for c in cases}) >= 40
    einplan.clear_cache()
    barrier = threading.Barrier(THREADS)
    failures: list[str] = []
    done = [0] * THREADS

    def work(index: int) -> None:
        rng = random.Random(index)
        try:
            barrier.wait()
            for _ in range(CALLS):
                pattern, tensors, sizes, lowering, expected = rng.choice(cases)
                result = einplan.bl(pattern, *tensors, lowering=lowering, **sizes)
                if result.dtype != expected.dtype or result.shape != expected.shape or not torch.equal(result, expected):
                    failures.append(f"thread {index}: wrong result for {pattern!r} {[tuple(t.shape) for t in tensors]}")
                done[index] += 1
        except Exception as error:  # noqa: BLE001 - any exception is a failure
            failures.append(f"thread {index}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    assert failures == []
    assert done == [CALLS] * THREADS
    info = einplan.cache_info()
    assert info.maxsize is not None and info.maxsize > 0
    assert info.currsize <= info.maxsize
    assert info.currsize <= len(cases)  # one plan per signature, however many threads asked
    assert info.hits + info.misses >= THREADS * CALLS


def test_many_distinct_shapes_keep_the_cache_bounded():
    """Distinct shapes add plans only up to the documented limit (LRU)."""
    einplan.clear_cache()
    maxsize = einplan.cache_info().maxsize
    assert isinstance(maxsize, int) and maxsize > 0
    for n in range(1, 200):
        einplan.bl("i, i -> ", ints(n), ints(n))
    info = einplan.cache_info()
    assert info.currsize == min(199, maxsize)
    assert info.currsize <= info.maxsize


def test_errors_in_threads_stay_in_their_thread():
    """A thread whose calls fail does not disturb the others' results."""
    x, A = ints(3, 4), ints(5, 4, seed=1)
    expected = torch.einsum("bn,mn->bm", x, A)
    failures: list[str] = []
    barrier = threading.Barrier(4)

    def good() -> None:
        barrier.wait()
        for _ in range(100):
            if not torch.equal(einplan.bl("b n, m n -> b m", x, A), expected):
                failures.append("wrong result")

    def bad() -> None:
        barrier.wait()
        for _ in range(100):
            try:
                einplan.bl("b n, m n -> b m", x, ints(5, 3))
            except einplan.ShapeError:
                continue
            failures.append("no ShapeError")

    threads = [threading.Thread(target=f) for f in (good, bad, good, bad)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []


def test_cache_is_lru_with_a_settable_limit():
    from einplan import runtime

    try:
        runtime.set_cache_size(16)
        x = torch.ones(2, 3)
        for n in range(1, 60):
            einplan.bl("a b, b c -> a c", x[:, :1].expand(2, n).contiguous(), torch.ones(n, 2))
            assert einplan.cache_info().currsize <= 16
        assert einplan.cache_info().currsize == 16
        # the most recent signature is still cached: calling it again is a hit
        hits = einplan.cache_info().hits
        einplan.bl("a b, b c -> a c", torch.ones(2, 59), torch.ones(59, 2))
        assert einplan.cache_info().hits == hits + 1
    finally:
        runtime.set_cache_size(runtime.CACHE_SIZE)
