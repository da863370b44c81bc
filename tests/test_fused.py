"""The fused lowering's Triton kernels against torch on the materialized product.

Without a CUDA device these run in Triton's interpreter (``TRITON_INTERPRET=1``,
set by conftest before triton is imported), on CPU tensors.  Sizes are small
and ragged (not multiples of any block), data is integer-valued where ties and
exact indices matter, so every comparison is exact or within float32 rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einplan
from einplan import fused
from einplan.runtime import plan_for

pytestmark = [
    pytest.mark.triton,
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # the interpreter's numpy on NaN and inf tiles
    pytest.mark.skipif(not fused.available(torch.device("cpu")), reason="needs triton (and TRITON_INTERPRET=1 on a CPU)"),
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REDUCERS = ("max", "min", "argmax", "argmin", "logsumexp", "sum", "mean")


def integers(*shape, dtype=torch.float32, low=-2, high=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=generator).to(dtype)


def reference(reducer, scores, dims):
    """torch's own reduction of the product (float64), as einplan returns it."""
    if reducer in ("argmax", "argmin"):
        if isinstance(dims, int):
            return getattr(scores, reducer)(dims)
        flat = scores.flatten(-len(dims))
        return torch.unravel_index(getattr(flat, reducer)(-1), tuple(scores.shape[-len(dims) :]))
    calls = {"max": torch.amax, "min": torch.amin, "logsumexp": torch.logsumexp, "sum": torch.sum, "mean": torch.mean}
    return calls[reducer](scores, dims)


def check(out, expected, dtype, reducer):
    if reducer in ("argmax", "argmin"):
        expected = expected if isinstance(expected, tuple) else (expected,)
        out = out if isinstance(out, tuple) else (out,)
        assert len(out) == len(expected)
        for got, want in zip(out, expected, strict=True):
            assert got.dtype == torch.int64
            assert torch.equal(got, want)
        return
    assert out.dtype == dtype
    want = expected.to(dtype)
    if reducer in ("max", "min", "sum"):  # integer products: exact before the final rounding
        torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)
    else:
        tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
        torch.testing.assert_close(out.double(), want.double(), rtol=tolerance, atol=tolerance, equal_nan=True)


def plan_kinds(pattern, *tensors, **options):
    return [step.kind for step in plan_for(pattern, *tensors, **options).steps]


# --- each reducer and dtype, rows reduced over their columns ----------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reducer", REDUCERS)
def test_row_reduction(reducer, dtype):
    q, k = integers(70, 20, dtype=dtype), integers(130, 20, dtype=dtype, seed=1)
    pattern = f"q d, k d -> q | {reducer} k"
    kinds = plan_kinds(pattern, q, k, lowering="fused")
    # a leading sum is part of the sum-product: k is summed before the matvec, nothing to fuse
    assert kinds == ["prepare", "matmul-broadcast"] if reducer == "sum" else kinds[0] == "fused"
    out = einplan.bl(pattern, q, k, lowering="fused")
    check(out, reference(reducer, q.double() @ k.double().T, 1), dtype, reducer)


@pytest.mark.parametrize("reducer", REDUCERS)
def test_whole_product(reducer):
    m, n = integers(67, 9), integers(150, 9, seed=2)
    pattern = f"m d, n d -> | {reducer} m n"
    assert (plan_kinds(pattern, m, n, lowering="fused")[0] == "fused") == (reducer != "sum")
    out = einplan.bl(pattern, m, n, lowering="fused")
    check(out, reference(reducer, m.double() @ n.double().T, (0, 1)), torch.float32, reducer)


@pytest.mark.parametrize("reducer", ("max", "argmin", "logsumexp", "mean"))
def test_reduce_the_first_operands_rows(reducer):
    """A clause over the first operand's axis: the kernel takes the operands the other way round."""
    q, k = integers(70, 20), integers(33, 20, seed=3)
    out = einplan.bl(f"q d, k d -> k | {reducer} q", q, k, lowering="fused")
    check(out, reference(reducer, q.double() @ k.double().T, 0), torch.float32, reducer)


# --- batches, several axes, layouts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "dims"),
    [
        ("b q d, b k d -> b q | logsumexp k", 2),
        ("b m d, b n d -> b | max m n", (1, 2)),
        ("b m d, b n d -> b | argmax m n", (1, 2)),
        ("b q d, b k d -> q b | argmin k", 2),
    ],
)
def test_batched(pattern, dims):
    a, b = integers(3, 70, 17), integers(3, 90, 17, seed=4)
    reducer = pattern.split("| ")[1].split()[0]
    out = einplan.bl(pattern, a, b, lowering="fused")
    expected = reference(reducer, a.double() @ b.double().mT, dims)
    if pattern.startswith("b q d, b k d -> q b"):
        expected = expected.T
    check(out, expected, torch.float32, reducer)


def test_heads_on_transposed_views():
    """Attention's layout, operands that are permuted views: strides carry them, no copy needed."""
    q = integers(2, 40, 3, 16).transpose(1, 2)  # b h q d, not contiguous
    k = integers(2, 50, 3, 16, seed=5).transpose(1, 2)
    out = einplan.bl("b h q d, b h k d -> b h q | logsumexp k", q, k, lowering="fused")
    check(out, torch.logsumexp(q.double() @ k.double().mT, -1), torch.float32, "logsumexp")


def test_argmax_over_two_column_axes():
    q, k = integers(30, 8), integers(5, 13, 8, seed=6)
    out = einplan.bl("q d, k1 k2 d -> q | argmax k1 k2", q, k, lowering="fused")
    scores = torch.einsum("qd,abd->qab", q.double(), k.double())
    check(out, reference("argmax", scores, (1, 2)), torch.float32, "argmax")


def test_argmin_over_every_row_and_column_axis():
    m, n = integers(4, 6, 8), integers(70, 8, seed=7)
    out = einplan.bl("m1 m2 d, n d -> | argmin m1 m2 n", m, n, lowering="fused")
    scores = torch.einsum("xyd,nd->xyn", m.double(), n.double())
    check(out, reference("argmin", scores, (0, 1, 2)), torch.float32, "argmin")


def test_clauses_after_the_fused_one():
    q, k = torch.randn(50, 12), torch.randn(70, 12)
    out = einplan.bl("q d, k d -> | logsumexp k | mean q", q, k, lowering="fused")
    torch.testing.assert_close(out.double(), torch.logsumexp(q.double() @ k.double().T, 1).mean(), rtol=1e-5, atol=1e-5)


def test_random_floats():
    q, k = torch.randn(100, 24), torch.randn(200, 24)
    for reducer in ("max", "logsumexp", "sum"):
        out = einplan.bl(f"q d, k d -> q | {reducer} k", q, k, lowering="fused")
        want = reference(reducer, q.double() @ k.double().T, 1)
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-4)


# --- ties, NaN and infinities: torch's rules --------------------------------------------------


def test_ties_keep_the_first_index():
    q = torch.ones(5, 4)
    k = torch.ones(130, 4)  # every score ties
    assert torch.equal(einplan.bl("q d, k d -> q | argmax k", q, k, lowering="fused"), torch.zeros(5, dtype=torch.int64))
    k[77] = 2.0  # one winner in the second tile of columns, then a tie in the third
    k[129] = 2.0
    assert torch.equal(einplan.bl("q d, k d -> q | argmax k", q, k, lowering="fused"), torch.full((5,), 77))
    rows = einplan.bl("m d, n d -> | argmax m n", q, k, lowering="fused")
    assert (rows[0].item(), rows[1].item()) == (0, 77)


@pytest.mark.parametrize("reducer", ("max", "min", "argmax", "argmin", "logsumexp", "sum"))
def test_nan_and_infinities(reducer):
    q = integers(6, 4, low=1, high=3)
    k = integers(100, 4, low=1, high=3, seed=8)
    q[1, 0] = float("nan")  # a whole row of NaN
    q[2, 0] = float("inf")  # a row of +inf
    q[3, 0] = float("-inf")  # a row of -inf
    k[70, 2] = float("nan")  # a NaN column, in the second tile of columns
    for columns in (k, k[:60]):  # with the NaN column, and rows of NaN, +inf and -inf alone
        scores = q.double() @ columns.double().T
        out = einplan.bl(f"q d, k d -> q | {reducer} k", q, columns, lowering="fused")
        check(out, reference(reducer, scores, 1), torch.float32, reducer)
    whole = einplan.bl(f"m d, n d -> | {reducer} m n", q[2:], k[:60], lowering="fused")
    check(whole, reference(reducer, q[2:].double() @ k[:60].double().T, (0, 1)), torch.float32, reducer)


def test_every_score_minus_infinity():
    q, k = torch.full((3, 2), float("-inf")), torch.ones(20, 2)
    assert torch.equal(einplan.bl("q d, k d -> q | logsumexp k", q, k, lowering="fused"), torch.full((3,), float("-inf")))
    assert torch.equal(einplan.bl("q d, k d -> q | argmax k", q, k, lowering="fused"), torch.zeros(3, dtype=torch.int64))


# --- gradients: the chunked backward behind the fused forward ---------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "q d, k d -> q | logsumexp k",
        "q d, k d -> q | max k",
        "q d, k d -> | min q k",
        "b q d, b k d -> b | logsumexp q k",
        "q d, k d -> q | mean k",
        "q d, k d -> | max k | logsumexp q",
    ],
)
def test_gradients_match_the_materialized_product(pattern):
    batched = pattern.startswith("b ")
    shape = (2,) if batched else ()
    q64 = integers(*shape, 40, 6, seed=9).double().requires_grad_()
    k64 = integers(*shape, 70, 6, seed=10).double().requires_grad_()
    q, k = (t.detach().float().requires_grad_() for t in (q64, k64))
    kinds = plan_kinds(pattern, q, k, lowering="fused", grad=True)
    assert kinds[0] == "fused"
    assert "Triton kernel" in einplan.code(pattern, q, k, lowering="fused", grad=True)
    out = einplan.bl(pattern, q, k, lowering="fused")
    expected = einplan.bl(pattern, q64, k64, lowering="matmul-broadcast")
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    g = torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape)
    (out * g).sum().backward()
    (expected * g.double()).sum().backward()
    torch.testing.assert_close(q.grad.double(), q64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k.grad.double(), k64.grad, rtol=1e-5, atol=1e-5)


def test_max_gradient_splits_ties_evenly():
    q = torch.ones(1, 2, requires_grad=True)
    k = torch.ones(4, 2)
    einplan.bl("q d, k d -> q | max k", q, k, lowering="fused").sum().backward()
    torch.testing.assert_close(q.grad, torch.ones(1, 2))  # each of 4 ties gets 1/4 of g, times k's row of ones, 4 times


# --- the planner, the code, the module ----------------------------------------------------------


def test_cuda_plans_choose_fused():
    shapes = ((20000, 128), (20000, 128))
    for pattern in ("m d, n d -> | max m n", "q d, k d -> q | logsumexp k", "m d, n d -> | argmax m n"):
        plan = plan_for(pattern, *shapes, device="cuda")
        assert plan.steps[0].kind == "fused"
        assert "stays on chip" in einplan.explain(pattern, *shapes, device="cuda")
    small = plan_for("q d, k d -> q | logsumexp k", (20, 16), (30, 16), device="cuda")
    assert small.steps[0].kind != "fused"  # one tiny matmul is cheaper than a kernel of its own here


def test_code_for_torch_compile_keeps_the_chunked_form():
    """torch.compile cannot trace Triton's interpreter, and the kernel inside a compiled graph is
    not yet checked on a GPU: the compiled plan does without it unless forced on CUDA."""
    shapes = ((20000, 128), (20000, 128))
    assert "fused" not in plan_kinds("m d, n d -> | max m n", *shapes, device="cuda", compiled=True)
    assert plan_kinds("m d, n d -> | max m n", *shapes, device="cuda", compiled=True, lowering="fused")[0] == "fused"
    q, k = integers(70, 16), integers(90, 16, seed=12)
    compiled = torch.compile(lambda q, k: einplan.bl("q d, k d -> q | logsumexp k", q, k, lowering="fused"))
    torch.testing.assert_close(compiled(q, k), torch.logsumexp(q @ k.T, 1))


def test_cpu_plans_never_choose_it_unforced():
    assert "fused" not in plan_kinds("m d, n d -> | max m n", (2000, 64), (2000, 64))


@pytest.mark.parametrize(
    ("pattern", "shapes"),
    [
        ("b n, b n -> b", ((4, 5), (4, 5))),  # no clause
        ("q d, k d -> | logsumexp q k", ((0, 3), (4, 3))),  # size 0
        ("q, k -> | max q k", ((3,), (4,))),  # nothing contracted
        ("b q d, b k d -> q | max b k", ((2, 3, 4), (2, 5, 4))),  # a batch axis reduced
    ],
)
def test_forced_where_it_cannot_apply_falls_back(pattern, shapes):
    assert "fused" not in plan_kinds(pattern, *shapes, lowering="fused")


def test_float64_falls_back():
    q, k = torch.randn(5, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    assert "fused" not in plan_kinds("q d, k d -> q | max k", q, k, lowering="fused")
    torch.testing.assert_close(einplan.bl("q d, k d -> q | max k", q, k, lowering="fused"), (q @ k.T).amax(1))


def test_tf32_follows_torch():
    text = einplan.code("q d, k d -> q | max k", (4, 16), (5, 16), lowering="fused")
    assert "torch.get_float32_matmul_precision() == 'highest'" in text
    half = einplan.code("q d, k d -> q | max k", (4, 16), (5, 16), dtype=torch.float16, lowering="fused")
    assert "PRECISION='ieee'" in half


def test_only_a_module_with_a_kernel_imports_triton(tmp_path):
    with_kernel = einplan.kernel("q d, k d -> q | logsumexp k", (70, 20), (130, 20), lowering="fused", name="scores_lse")
    plain = einplan.kernel("q d, k d -> q k", (70, 20), (130, 20), name="scores")
    assert "import triton\n" in with_kernel.source and "@triton.jit" in with_kernel.source
    assert "triton" not in plain.source
    path = with_kernel.save(tmp_path / "scores_lse.py")
    q, k = integers(70, 20), integers(130, 20, seed=11)
    torch.save((q, k), tmp_path / "inputs.pt")
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import scores_lse; "
        "q, k = torch.load(sys.argv[2]); print(float((scores_lse.scores_lse(q, k) - torch.logsumexp(q @ k.T, 1)).abs().max()))"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(tmp_path / "inputs.pt")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 1e-4
    assert path.read_text().count("@triton.jit") == 1


def test_kernel_source_holds_no_pattern_text():
    """The template takes a generated name and nothing else from a plan."""
    from einplan.triton_source import kernel_source

    with pytest.raises(ValueError):
        kernel_source("x); import os #", "max", False)
    text = kernel_source("k0", "argmax", False)
    assert text.startswith("@triton.jit\ndef k0(a, b, value, index,")


# --- generated shapes ---------------------------------------------------------------------------


@st.composite
def fused_cases(draw):
    """A pattern the kernel takes: batch axes, row and column axes, contracted axes, one clause
    over every column axis (and, for a whole-product form, every row axis), sizes 1 to 40."""

    def axes(prefix, low, high):
        return [f"{prefix}{k}" for k in range(draw(st.integers(low, high)))]

    batch, rows, cols, summed = axes("b", 0, 1), axes("r", 0, 2), axes("c", 1, 2), axes("d", 1, 2)
    sizes = {a: draw(st.integers(1, 40 if a[0] in "rc" else 5)) for a in batch + rows + cols + summed}
    reducer = draw(st.sampled_from(("max", "min", "argmax", "argmin", "logsumexp", "mean")))
    whole = draw(st.booleans()) and bool(rows)
    ids = rows + cols if whole else cols
    kept = batch + ([] if whole else rows)
    pattern = f"{' '.join(batch + rows + summed)}, {' '.join(batch + cols + summed)} -> {' '.join(kept)} | {reducer} {' '.join(ids)}"
    return pattern, sizes, batch, rows, cols, summed, reducer, ids


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(fused_cases())
def test_generated_shapes_match_torch(case):
    pattern, sizes, batch, rows, cols, summed, reducer, ids = case
    a = integers(*(sizes[x] for x in batch + rows + summed), seed=len(pattern))
    b = integers(*(sizes[x] for x in batch + cols + summed), seed=len(pattern) + 1)
    assert plan_kinds(pattern, a, b, lowering="fused")[0] == "fused"
    out = einplan.bl(pattern, a, b, lowering="fused")
    letters = {x: chr(97 + k) for k, x in enumerate(batch + rows + cols + summed)}
    spell = lambda names: "".join(letters[x] for x in names)  # noqa: E731
    scores = torch.einsum(
        f"{spell(batch + rows + summed)},{spell(batch + cols + summed)}->{spell(batch + rows + cols)}", a.double(), b.double()
    )
    end = len(batch) + len(rows) + len(cols)
    dims = tuple(range(end - len(ids), end))  # the clause's axes are the last of the product
    want = reference(reducer, scores, dims if len(dims) > 1 else dims[0])
    check(out, want, torch.float32, reducer)
