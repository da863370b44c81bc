"""The backward of chunked steps: one autograd function per step, looping over the same chunks.

Oracle: torch's own materialized form (the product by torch.einsum, then
torch.amax / torch.amin / torch.logsumexp / Tensor.mean / Tensor.sum), its
gradients by torch.autograd in float64.  Data: random, integer-valued (many
exact ties for a max/min), and rows holding inf, -inf and NaN.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import einplan
from einplan import CHUNKED, LOWERINGS
from einplan.runtime import plan_for

MiB = 2**20
LINUX = sys.platform.startswith("linux")

# (pattern, shapes, the materialized oracle on the inputs)
CASES = [
    ("q d, k d -> q | logsumexp k", [(300, 8), (700, 8)], lambda a, b: torch.logsumexp(a @ b.T, 1)),
    ("q d, k d -> q | max k", [(300, 8), (700, 8)], lambda a, b: torch.amax(a @ b.T, 1)),
    ("q d, k d -> q | min k", [(300, 8), (700, 8)], lambda a, b: torch.amin(a @ b.T, 1)),
    ("q d, k d -> q | mean k", [(300, 8), (700, 8)], lambda a, b: (a @ b.T).mean(1)),
    ("q d, k d -> | max q k", [(300, 8), (700, 8)], lambda a, b: torch.amax(a @ b.T)),
    ("q d, k d -> | min q k", [(300, 8), (700, 8)], lambda a, b: torch.amin(a @ b.T)),
    ("q d, k d -> | logsumexp q k", [(300, 8), (700, 8)], lambda a, b: torch.logsumexp((a @ b.T).flatten(), 0)),
    ("q d, k d -> | mean q k", [(300, 8), (700, 8)], lambda a, b: (a @ b.T).mean()),
    ("q d, k d -> q k", [(300, 8), (700, 8)], lambda a, b: a @ b.T),
    ("q d, k d -> k | logsumexp q", [(300, 8), (700, 8)], lambda a, b: torch.logsumexp(a @ b.T, 0)),
    ("b q d, b k d -> b | max q k", [(2, 300, 8), (2, 700, 8)], lambda a, b: torch.amax(a @ b.mT, (1, 2))),
    ("b q d, b k d -> b q | logsumexp k", [(2, 300, 8), (2, 700, 8)], lambda a, b: torch.logsumexp(a @ b.mT, 2)),
    ("b q d, b k d -> q | max b | logsumexp k", [(3, 200, 8), (3, 500, 8)], lambda a, b: torch.logsumexp(torch.amax(a @ b.mT, 0), 1)),
    ("q d, k d -> | max k | sum q", [(300, 8), (700, 8)], lambda a, b: torch.amax(a @ b.T, 1).sum()),
    ("i k, k j -> i | min j", [(400, 6), (6, 500)], lambda a, b: torch.amin(a @ b, 1)),
]
LIMITS = [64 * 2**10, MiB]  # both chunk every case


def _data(shapes, kind: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        tensors = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    else:  # integer values: many products tie exactly
        tensors = [torch.randint(-1, 2, s, generator=g).double() for s in shapes]
    if kind == "special":
        rows = tensors[0].view(-1, tensors[0].shape[-1])
        rows[3], rows[5], rows[7], rows[9, 0] = float("inf"), float("nan"), float("-inf"), float("-inf")
    return [t.requires_grad_() for t in tensors]


def _assert_same(got, want, what: str) -> None:
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN in other places"
    torch.testing.assert_close(got.nan_to_num(0), want.nan_to_num(0), rtol=1e-9, atol=1e-9, msg=what)


@pytest.mark.parametrize("kind", ["random", "ties", "special"])
@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradients_are_torchs_materialized_ones(case, limit, kind):
    pattern, shapes, oracle = case
    tensors = _data(shapes, kind, seed=len(pattern))
    plan = plan_for(pattern, *tensors, memory_limit=limit)
    assert [s.kind for s in plan.steps if s.kind == CHUNKED] and len(plan.functions) == 1, "not differentiated in chunks"
    got = einplan.bl(pattern, *tensors, memory_limit=limit)
    copies = [t.detach().clone().requires_grad_() for t in tensors]
    want = oracle(*copies)
    _assert_same(got.detach(), want.detach(), f"{pattern}: result")
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for k, (g, w) in enumerate(zip(torch.autograd.grad(got, tensors, weights), torch.autograd.grad(want, copies, weights), strict=True)):
        _assert_same(g, w, f"{pattern} ({kind}, limit {limit}): gradient of operand {k}")


def test_max_ties_split_evenly_as_torch_amax_on_every_path():
    """Four equal scores in one row, across tiles or inside one chunk: a quarter of g each."""
    b = torch.zeros(2000, 2, dtype=torch.float64)
    b[[3, 700, 1300, 1999], 0] = 1.0
    for limit in (2**12, MiB, None):
        a = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
        bb = b.clone().requires_grad_()
        (grad,) = torch.autograd.grad(einplan.bl("q d, k d -> q | max k", a, bb, memory_limit=limit).sum(), bb)
        assert grad[[3, 700, 1300, 1999], 0].tolist() == [0.25] * 4, f"limit {limit}"


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_every_forced_lowering_differentiates_in_chunks(lowering):
    a, b = _data([(50, 3), (60, 3)], "random", seed=2)
    pattern = "q d, k d -> q | logsumexp k"
    try:
        got = einplan.bl(pattern, a, b, lowering=lowering, memory_limit=2**10)
    except einplan.UnsupportedError:
        pytest.skip(f"{lowering} cannot compute this step")
    assert plan_for(pattern, a, b, lowering=lowering, memory_limit=2**10).functions
    copies = [t.detach().clone().requires_grad_() for t in (a, b)]
    want = torch.logsumexp(copies[0] @ copies[1].T, 1)
    for g, w in zip(torch.autograd.grad(got.sum(), (a, b)), torch.autograd.grad(want.sum(), copies), strict=True):
        _assert_same(g, w, lowering)


GRADCHECK = ["sum", "mean", "logsumexp", "max", "min"]


@pytest.mark.parametrize("reducer", GRADCHECK)
def test_gradcheck_through_the_chunked_path(reducer):
    a, b = _data([(20, 3), (30, 3)], "random", seed=4)
    pattern = "q d, k d -> q k" if reducer == "sum" else f"q d, k d -> q | {reducer} k"
    assert plan_for(pattern, a, b, memory_limit=2**9).functions
    call = lambda x, y: einplan.bl(pattern, x, y, memory_limit=2**9)  # noqa: E731
    assert torch.autograd.gradcheck(call, (a, b))
    if reducer not in ("max", "min"):  # a double backward records the backward's own ops
        assert torch.autograd.gradgradcheck(call, (a, b))


def test_a_double_backward_is_torchs():
    a, b = _data([(300, 4), (500, 4)], "random", seed=5)
    (g,) = torch.autograd.grad(einplan.bl("q d, k d -> q | logsumexp k", a, b, memory_limit=2**14).sum(), a, create_graph=True)
    (h,) = torch.autograd.grad(g.square().sum(), b)
    a2, b2 = [t.detach().clone().requires_grad_() for t in (a, b)]
    (g2,) = torch.autograd.grad(torch.logsumexp(a2 @ b2.T, 1).sum(), a2, create_graph=True)
    (h2,) = torch.autograd.grad(g2.square().sum(), b2)
    _assert_same(h, h2, "second derivative")


def test_argmax_has_no_gradient_as_in_torch():
    a, b = _data([(300, 4), (500, 4)], "random", seed=6)
    index = einplan.bl("q d, k d -> q | argmax k", a, b, memory_limit=2**12)
    assert index.dtype == torch.int64 and not index.requires_grad
    assert not plan_for("q d, k d -> q | argmax k", a, b, memory_limit=2**12).functions


def test_inference_plans_do_not_change():
    a, b = torch.randn(3000, 8), torch.randn(3000, 8)
    pattern = "q d, k d -> q | logsumexp k"
    assert not plan_for(pattern, a, b).functions
    with torch.no_grad():
        assert "autograd.Function" not in einplan.code(pattern, a.requires_grad_(), b)
    assert "autograd.Function" in einplan.code(pattern, a, b)
    assert einplan.code(pattern, a, b, grad=False) == einplan.code(pattern, a.detach(), b)


def test_explain_shows_the_backward_and_the_class():
    a, b = torch.randn(3000, 8, requires_grad=True), torch.randn(3000, 8)
    text = einplan.explain("q d, k d -> q | logsumexp k", a, b)
    assert "backward: over the same tiles: each tile's product recomputed, weighted by exp(s - logsumexp) * g" in text
    assert "class einplan_kernel_chunks0(torch.autograd.Function):" in text
    assert "def backward(ctx, grad" in text and "ctx.save_for_backward(x0, x1, result" in text


def test_a_saved_training_kernel_is_standalone(tmp_path):
    a, b = torch.randn(1500, 8, dtype=torch.float64), torch.randn(1400, 8, dtype=torch.float64)
    k = einplan.kernel("q d, k d -> q | max k", a, b, grad=True, name="hardest")
    path = k.save(tmp_path / "hardest_kernel.py")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        from hardest_kernel import hardest
        assert "einplan" not in sys.modules
        a = torch.randn(1500, 8, dtype=torch.float64, requires_grad=True)
        b = torch.randn(1400, 8, dtype=torch.float64, requires_grad=True)
        got = torch.autograd.grad(hardest(a, b).sum(), (a, b))
        want = torch.autograd.grad(torch.amax(a @ b.T, 1).sum(), (a, b))
        print(max((g - w).abs().max().item() for g, w in zip(got, want)))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) < 1e-12
    assert "torch.autograd.Function" in path.read_text()


def test_torch_compile_traces_the_function_with_no_graph_break():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    a, b = _data([(700, 8), (900, 8)], "random", seed=7)
    pattern = "q d, k d -> q | logsumexp k"

    @torch.compile(fullgraph=True, backend="eager")
    def loss(x, y):
        return einplan.bl(pattern, x, y, memory_limit=MiB).square().sum()

    got = torch.autograd.grad(loss(a, b), (a, b))
    want = torch.autograd.grad(einplan.bl(pattern, a, b, memory_limit=MiB).square().sum(), (a, b))
    assert not counters["graph_break"]
    assert plan_for(pattern, a, b, memory_limit=MiB, compiled=True).functions
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w, "compiled gradient")


PEAK_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from einplan import bl

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    pattern, m, n, d, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.manual_seed(0)
    a, b = torch.randn(m, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
    bl(pattern, a[:600], b[:600], memory_limit=limit).sum().backward()  # load kernels and plan machinery
    a.grad = b.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    before = status("VmRSS")
    bl(pattern, a, b, memory_limit=limit).sum().backward()
    gradients = (a.grad.numel() + b.grad.numel()) * a.element_size()
    print(status("VmHWM") - before - gradients)
    """
)


@pytest.mark.skipif(not LINUX, reason="needs /proc/self/clear_refs (Linux)")
@pytest.mark.parametrize("pattern", ["q d, k d -> q | logsumexp k", "q d, k d -> q | max k", "q d, k d -> | max q k"])
def test_forward_and_backward_of_a_4_gib_product_stay_under_64_mib(pattern):
    m = n = 32768  # the float32 q x k product alone is 4 GiB; torch's forward + backward keeps more
    assert m * n * 4 >= 4 * 2**30
    limit = 64 * MiB
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, pattern, str(m), str(n), "8", str(limit)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    extra = int(result.stdout.split()[-1])
    assert extra <= limit, f"peak extra {extra / MiB:.1f} MiB beyond inputs and gradients, over {limit / MiB:.0f} MiB"


def test_a_kernel_planned_for_inference_trains_through_its_twin():
    """Made from tensors that need no gradient, called under autograd: the backward still runs in
    chunks and splits max ties evenly, as torch.amax (autograd through the inference loops would
    split them between the running max and each tile)."""
    b = torch.zeros(2000, 2, dtype=torch.float64)
    b[[3, 700, 1300, 1999], 0] = 1.0
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    hardest = einplan.kernel("q d, k d -> q | max k", a, b, memory_limit=2**12)
    assert not hardest.plan_object.functions and hardest.training().plan_object.functions
    leaf = b.clone().requires_grad_()
    (grad,) = torch.autograd.grad(hardest(a, leaf).sum(), leaf)
    assert grad[[3, 700, 1300, 1999], 0].tolist() == [0.25] * 4
    assert hardest(a, b).item() == 1.0  # without autograd: the inference plan

    @torch.compile(fullgraph=True, backend="eager")
    def compiled(x, y):
        return hardest(x, y).sum()

    (grad,) = torch.autograd.grad(compiled(a, leaf), leaf)
    assert grad[[3, 700, 1300, 1999], 0].tolist() == [0.25] * 4


def test_a_gradient_contraction_over_the_chunked_axis_is_not_unrolled():
    """The gradient of the operand without the cut axis sums over it: its length in the last, shorter
    chunk is known only at run time, so no lowering may write one term per index of it."""
    pattern = "j, j i -> i | max j"
    a, b = _data([(3,), (3, 3)], "random", seed=8)
    got = einplan.bl(pattern, a, b, lowering=CHUNKED)
    assert plan_for(pattern, a, b, lowering=CHUNKED).functions
    copies = [t.detach().clone().requires_grad_() for t in (a, b)]
    want = torch.amax(copies[0][:, None] * copies[1], 0)
    for g, w in zip(torch.autograd.grad(got.sum(), (a, b)), torch.autograd.grad(want.sum(), copies), strict=True):
        _assert_same(g, w, pattern)


def test_only_the_gradients_autograd_needs_are_contracted():
    a, b = _data([(300, 4), (700, 4)], "random", seed=9)
    b = b.detach()  # a fixed bank of keys
    pattern = "q d, k d -> q | logsumexp k"
    assert "if ctx.needs_input_grad[1]:" in einplan.code(pattern, a, b, memory_limit=2**14)
    (got,) = torch.autograd.grad(einplan.bl(pattern, a, b, memory_limit=2**14).sum(), a)
    copy = a.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(torch.logsumexp(copy @ b.T, 1).sum(), copy)
    _assert_same(got, want, "gradient of the queries")
