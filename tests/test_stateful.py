"""A stateful harness: sequences of bl calls, kernels, cache changes and grad modes, against torch.

Hypothesis drives a machine that interleaves calls of ``bl`` (random sizes,
memory limits, forced lowerings, with and without autograd), kernels with a
dynamic axis (made for inference or for training, called both ways), plan
cache resizes and clears.  Every result is compared with torch's materialized
form (torch.einsum, then torch's reduction), every float64 gradient with
torch's, and after every step the plan cache and the generated-source line
cache stay within their bounds.  CI runs it at a small scale, derandomized.
"""

from __future__ import annotations

import linecache

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import einplan
from einplan import CHUNKED, ELEMENTWISE, MATMUL, programs

# (pattern, einsum of the product, torch's reduction of it, operands as (axes, ...))
PATTERNS = [
    ("q d, k d -> q | logsumexp k", "qd,kd->qk", lambda s: torch.logsumexp(s, 1), ("qd", "kd")),
    ("q d, k d -> q | max k", "qd,kd->qk", lambda s: torch.amax(s, 1), ("qd", "kd")),
    ("q d, k d -> q | min k", "qd,kd->qk", lambda s: torch.amin(s, 1), ("qd", "kd")),
    ("q d, k d -> q | mean k", "qd,kd->qk", lambda s: s.mean(1), ("qd", "kd")),
    ("q d, k d -> | max q k", "qd,kd->qk", lambda s: torch.amax(s), ("qd", "kd")),
    ("q d, k d -> q k", "qd,kd->qk", lambda s: s, ("qd", "kd")),
    ("b q d, b k d -> b q | logsumexp k", "bqd,bkd->bqk", lambda s: torch.logsumexp(s, 2), ("bqd", "bkd")),
    ("q d, d e, k e -> q k", "qd,de,ke->qk", lambda s: s, ("qd", "de", "ke")),
]
EXTREMES = ("max", "min")
LIMITS = [None, 256, 4096, 2**20]
LOWERINGS = [None, None, MATMUL, ELEMENTWISE, CHUNKED]
LINE_SLACK = 64  # kernels' functions keep their lines too


def _einplan_lines() -> int:
    return sum(1 for name in linecache.cache if name.startswith("<einplan-"))


def _tensors(operands, sizes, dtype, seed, grad):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(sizes[a] for a in axes), generator=g, dtype=dtype).requires_grad_(grad) for axes in operands]


def _check(got, tensors, case, grad) -> None:
    pattern, equation, reduce, _ = case
    copies = [t.detach().clone().requires_grad_(grad) for t in tensors]
    want = reduce(torch.einsum(equation, *copies))
    tolerance = 1e-9 if tensors[0].dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.detach(), want.detach(), rtol=tolerance, atol=tolerance, msg=pattern)
    if grad:
        weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=want.dtype)
        for g, w in zip(torch.autograd.grad(got, tensors, weights), torch.autograd.grad(want, copies, weights), strict=True):
            torch.testing.assert_close(g, w, rtol=tolerance, atol=tolerance, msg=f"{pattern}: gradient")


class Calls(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.kernels: list = []
        self.lines = _einplan_lines()  # what earlier tests left

    @rule(
        case=st.sampled_from(PATTERNS),
        q=st.integers(0, 70),
        k=st.integers(0, 70),
        d=st.integers(1, 4),
        b=st.integers(1, 3),
        limit=st.sampled_from(LIMITS),
        lowering=st.sampled_from(LOWERINGS),
        double=st.booleans(),
        grad=st.sampled_from([True, True, False]),
        seed=st.integers(0, 2**16),
    )
    def call_bl(self, case, q, k, d, b, limit, lowering, double, grad, seed):
        pattern = case[0]
        if any(f"| {r}" in pattern for r in EXTREMES) and min(q, k) == 0:
            q, k = max(q, 1), max(k, 1)  # an extreme over nothing raises, as torch does
        sizes = {"q": q, "k": k, "d": d, "e": d + 1, "b": b}
        dtype = torch.float64 if double else torch.float32
        tensors = _tensors(case[3], sizes, dtype, seed, grad and double)
        try:
            got = einplan.bl(pattern, *tensors, lowering=lowering, memory_limit=limit)
        except einplan.UnsupportedError:
            assert lowering is not None, f"{pattern}: the default plan refused"
            return
        _check(got, tensors, case, grad and double)

    @rule(case=st.sampled_from(PATTERNS[:4]), q=st.integers(1, 60), train=st.booleans(), seed=st.integers(0, 2**16))
    def make_kernel(self, case, q, train, seed):
        sizes = {"q": q, "k": 50, "d": 3, "e": 4, "b": 2}
        tensors = _tensors(case[3], sizes, torch.float64, seed, train)
        made = einplan.kernel(case[0], *tensors, dynamic="q", memory_limit=4096, check=False)
        self.kernels.append((made, case))
        _check(made(*tensors), tensors, case, train)

    @precondition(lambda self: self.kernels)
    @rule(pick=st.integers(0, 100), q=st.integers(1, 60), grad=st.booleans(), seed=st.integers(0, 2**16))
    def call_kernel(self, pick, q, grad, seed):
        made, case = self.kernels[pick % len(self.kernels)]
        sizes = {"q": q, "k": 50, "d": 3, "e": 4, "b": 2}
        tensors = _tensors(case[3], sizes, torch.float64, seed, grad)
        try:
            got = made(*tensors)
        except einplan.EinplanError as error:  # another size may need another plan: said so, never wrong
            assert "A kernel runs one plan" in str(error), str(error)
            return
        _check(got, tensors, case, grad)

    @rule(case=st.sampled_from(PATTERNS[:2]), q=st.integers(1, 60), seed=st.integers(0, 2**16))
    def call_without_grad_mode(self, case, q, seed):
        sizes = {"q": q, "k": 600, "d": 3}
        tensors = _tensors(case[3], sizes, torch.float64, seed, True)
        with torch.no_grad():
            got = einplan.bl(case[0], *tensors, memory_limit=4096)
        assert not got.requires_grad
        _check(got, tensors, case, False)

    @rule(size=st.integers(1, 12))
    def resize_cache(self, size):
        programs.set_cache_size(size)

    @rule()
    def clear_cache(self):
        einplan.clear_cache()

    @invariant()
    def caches_stay_bounded(self):
        info = einplan.cache_info()
        assert info.currsize <= info.maxsize
        assert _einplan_lines() - self.lines <= info.maxsize + LINE_SLACK + 2 * len(self.kernels)

    def teardown(self):
        programs.set_cache_size(programs.CACHE_SIZE)


Calls.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_calls_against_torch = Calls.TestCase
