"""bl and kernels inside torch.compile(fullgraph=True): no graph break, no recompile, autograd as eager.

Compiling is slow on a small CPU, so most tests use the "aot_eager" backend
(dynamo + AOTAutograd, the same tracing and autograd path, without inductor's
code generation); one test runs the default inductor backend.
"""

from __future__ import annotations

import pytest
import torch

import einplan
from einplan import bl

dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402

QUAD = "b1 b2 n, n n, b1 b2 n -> b1 b2"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()
    counters.clear()


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def assert_same_as_eager(compiled, f, *inputs) -> None:
    """The compiled function's value and gradients equal eager ``f``'s."""
    out = compiled(*inputs)
    grads = torch.autograd.grad(out, inputs)
    expected = f(*inputs)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, torch.autograd.grad(expected, inputs), strict=True):
        torch.testing.assert_close(got, want)


def test_trace_time_lookup_is_marked_like_assume_constant_result():
    import sys

    tracing = sys.modules["einplan.tracing"]
    marked = torch.compiler.assume_constant_result(lambda: 0)
    for fn in (tracing._bl_program, tracing._call_program):
        assert vars(fn).keys() >= {k for k in vars(marked)}
        assert all(getattr(fn, k) == v for k, v in vars(marked).items())


def test_bl_fullgraph_no_break_no_recompile_and_autograd():
    def f(l, A, x, W):
        quad = bl(QUAD, l, A, l)
        heads = bl("b (h d), h d e -> b h e", x, W, h=2)
        return quad.sin().sum() + heads.square().sum()

    g = torch.Generator().manual_seed(0)
    l = torch.randn(6, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    A = torch.randn(8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")

    assert_same_as_eager(compiled, f, l, A, x, W)
    assert graphs() == 1 and graph_breaks() == 0

    for _ in range(3):
        compiled(l, A, x, W)
    assert graphs() == 1, "recompiled for the same shapes"

    # a new batch size re-specialises (the generated code bakes sizes in) and stays correct
    for rows in (4, 9):
        l2 = torch.randn(rows, 3, 8, dtype=torch.float64)
        torch.testing.assert_close(compiled(l2, A, x, W), f(l2, A, x, W))
    assert graph_breaks() == 0

    explanation = dynamo.explain(f)(l, A, x, W)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_kernel_fullgraph_dynamic_axis_errors_and_autograd():
    g = torch.Generator().manual_seed(1)
    l = torch.randn(6, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    A = torch.randn(8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    # check=True: skipped while tracing; a forced lowering keeps one plan at every b1
    quad = einplan.kernel(QUAD, l, A, l, dynamic="b1", lowering=einplan.MATMUL)

    def f(l, A):
        return quad(l, A, l).exp().mean()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert_same_as_eager(compiled, f, l, A)
    for _ in range(3):
        compiled(l, A)
    assert graphs() == 1 and graph_breaks() == 0

    l2 = torch.randn(2, 3, 8, dtype=torch.float64)  # b1 is dynamic
    torch.testing.assert_close(compiled(l2, A), f(l2, A))
    # a shape the kernel cannot serve: the traced call raises the einplan error, which
    # fullgraph reports (without fullgraph the call falls back to eager, which raises it)
    with pytest.raises(Exception, match=r"ShapeError\(\"axis 'b2' is 4 in this call"):
        compiled(torch.randn(6, 4, 8, dtype=torch.float64), A)


def test_inductor_kernel_and_bl():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(64, 2, 2, generator=g, requires_grad=True)
    b = torch.randn(64, 2, 2, generator=g, requires_grad=True)
    tiny = einplan.kernel("b i j, b j k -> b i k", a, b)

    def f(a, b):
        return tiny(a, b).sum() + bl("b i j, b i j -> b", a, b).sum()

    compiled = torch.compile(f, fullgraph=True)
    assert_same_as_eager(compiled, f, a, b)
    compiled(a, b)
    assert graphs() == 1 and graph_breaks() == 0


def test_bl_under_compile_uses_the_plan_made_for_fused_code():
    """Inside torch.compile, tiny batched products are written out per element (one fused
    loop over the batch), not torch.bmm; the eager call keeps its own plan."""
    seen = []

    def capture(gm, example_inputs):
        seen.append({str(node.target) for node in gm.graph.nodes if node.op in ("call_function", "call_method")})
        return gm.forward

    g = torch.Generator().manual_seed(0)
    a = torch.randn(512, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(512, 3, 3, generator=g, dtype=torch.float64)
    compiled = torch.compile(lambda a, b: bl("b i j, b j k -> b i k", a, b), fullgraph=True, backend=capture)
    torch.testing.assert_close(compiled(a, b), torch.einsum("bij,bjk->bik", a, b), rtol=1e-12, atol=1e-12)
    (targets,) = seen
    assert not any("matmul" in t or "bmm" in t for t in targets), targets
    assert any("mul" in t for t in targets) and any("stack" in t for t in targets), targets
    assert "torch.matmul" in einplan.code("b i j, b j k -> b i k", a, b)
    assert "torch.matmul" not in einplan.code("b i j, b j k -> b i k", a, b, compiled=True)
