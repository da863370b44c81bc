"""The compiled written-out form: one sum of products per element of the tiny result axes,
stacked, which torch.compile fuses into one loop along the long axes.  Its code runs eagerly
too (a Kernel planned with compiled=True), so it is checked against torch.einsum in float64,
with gradients, on a table and on generated patterns."""

from __future__ import annotations

import math
import string

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import einplan
from conftest import assert_matches, random_tensors
from einplan import written_out
from einplan.runtime import plan_for

TABLE = [
    # seed 002's tiny batched matmuls, and a result axis of size 1
    ("b i j, b j k -> b i k", [(40, 2, 2), (40, 2, 2)]),
    ("b i j, b j k -> b i k", [(33, 3, 3), (33, 3, 3)]),
    ("b i j, b j k -> b i k", [(32, 4, 4), (32, 4, 4)]),
    ("b i j, b j k -> b i k", [(35, 1, 2), (35, 2, 3)]),
    # batched matvecs and dot products: a tiny axis in one operand only, or none at all
    ("b i j, b j -> b i", [(48, 8, 8), (48, 8)]),
    ("b i, b i -> b", [(64, 4), (64, 4)]),
    # one operand without the long axis: its terms are single elements
    ("b i, i j -> b j", [(36, 3), (3, 5)]),
    # two long axes, from different operands and in another order in one of them
    ("b i j, c j -> b c i", [(32, 2, 3), (33, 3)]),
    ("b c i j, c b j k -> c b i k", [(32, 33, 2, 2), (33, 32, 2, 2)]),
    # two summed axes
    ("b i j k, b j k -> b i", [(34, 2, 3, 2), (34, 3, 2)]),
]


def _kernel(pattern, tensors):
    return einplan.kernel(pattern, *tensors, compiled=True, lowering=einplan.UNROLLED, check=False)


def _einsum(pattern, tensors):
    """torch.einsum of a pattern of one-letter axis names."""
    return torch.einsum(pattern.replace(" ", ""), *tensors)


def _written_out(source: str, tiny: bool) -> bool:
    """Whether ``source`` is the compiled form: elements stacked (or, with no tiny result axis,
    one sum); the vector form adds its terms in place."""
    return "torch.stack" in source if tiny else "addcmul_" not in source


@pytest.mark.parametrize("pattern, shapes", TABLE, ids=[f"{p} {s[0]}" for p, s in TABLE])
def test_the_compiled_form_matches_einsum_and_its_gradients(pattern, shapes):
    tensors = random_tensors(shapes, torch.float64, seed=len(pattern))
    kernel = _kernel(pattern, tensors)
    want = _einsum(pattern, tensors)
    assert _written_out(kernel.source, tiny=any(n < written_out.VECTOR_MIN for n in want.shape)), kernel.source
    assert "contiguous" not in kernel.source  # no layout copies
    assert_matches(kernel(*tensors), want, pattern)
    leaves = [t.clone().requires_grad_() for t in tensors]
    assert torch.autograd.gradcheck(lambda *xs: kernel(*xs), leaves)


@pytest.mark.parametrize("layout", ["transposed", "strided", "expanded"])
def test_the_compiled_form_reads_operands_of_any_strides(layout):
    a, b = random_tensors([(40, 3, 3), (40, 3, 3)], torch.float64, seed=7)
    if layout == "transposed":
        a = a.transpose(0, 2).contiguous().transpose(0, 2)
    elif layout == "strided":
        b = torch.stack([b, -b], dim=-1)[..., 0]
    else:
        b = b[:1].expand(40, 3, 3)  # one matrix for every row, stride 0 along the batch
    kernel = _kernel("b i j, b j k -> b i k", (a, b))
    assert "torch.stack" in kernel.source
    assert_matches(kernel(a, b), torch.einsum("bij,bjk->bik", a, b), layout)


def test_each_element_is_one_line_and_the_result_is_stacked_last():
    a, b = torch.zeros(64, 2, 3), torch.zeros(64, 3, 2)
    source = _kernel("b i j, b j k -> b i k", (a, b)).source
    lines = [line.strip() for line in source.splitlines() if "written out:" in line]
    assert lines[0] == "e0 = x0[:, 0, 0] * x1[:, 0, 0] + x0[:, 0, 1] * x1[:, 1, 0] + x0[:, 0, 2] * x1[:, 2, 0]  # written out: i=0, k=0"
    assert len(lines) == 4
    assert "torch.stack((e0, e1, e2, e3), -1).unflatten(-1, (2, 2))" in source


@pytest.mark.parametrize(
    "pattern, shapes, why",
    [
        ("b i j, b j k -> b i k", [(64, 5, 5), (64, 5, 5)], "125 products a row"),
        ("b i, b i -> b", [(64, 16), (64, 16)], "a sum a vector long"),
        ("b i j, b j k -> b i k", [(8, 2, 2), (8, 2, 2)], "no long axis"),
    ],
)
def test_the_compiled_form_declines(pattern, shapes, why):
    source = einplan.code(pattern, *shapes, compiled=True, lowering=einplan.UNROLLED)
    assert "torch.stack" not in source and "addcmul_" in source, why


def test_eager_plans_keep_the_vector_form():
    a = torch.zeros(64, 2, 2)
    source = einplan.code("b i j, b j k -> b i k", a, a, lowering=einplan.UNROLLED)
    assert "addcmul_" in source and "written out" not in source


def test_the_estimate_reads_each_operand_once_and_allocates_only_the_result():
    plan = plan_for("b i j, b j k -> b i k", (262144, 3, 3), (262144, 3, 3), compiled=True, lowering=einplan.UNROLLED)
    (step,) = [s for s in plan.steps if s.kind == einplan.UNROLLED]
    elements = 262144 * 9
    assert step.estimate.bytes == 3 * elements * 4
    assert step.estimate.ops == 1 and step.estimate.allocations == (elements * 4,)
    assert step.estimate.elementwise == 262144 * 27 * written_out.PRODUCT_COST


def test_inductor_compiles_the_written_out_form():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(512, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    assert "torch.stack" in einplan.code("b i j, b j k -> b i k", a, b, compiled=True)
    compiled = torch.compile(lambda x, y: einplan.bl("b i j, b j k -> b i k", x, y), fullgraph=True)
    torch.testing.assert_close(compiled(a, b), torch.bmm(a, b), rtol=1e-12, atol=1e-12)


@st.composite
def _cases(draw):
    """A long axis (32-40) in one operand or both, up to two tiny kept axes in one operand and
    one in the other, one or two summed axes (sizes 1-3), each operand's axes in a drawn order."""
    names = iter(string.ascii_lowercase)
    long_ = next(names)
    summed = [next(names) for _ in range(draw(st.integers(1, 2)))]
    tiny_a = [next(names) for _ in range(draw(st.integers(0, 2)))]
    tiny_b = [next(names) for _ in range(draw(st.integers(0, 1)))]
    sizes = {long_: draw(st.integers(32, 40))} | {x: draw(st.integers(1, 3)) for x in summed + tiny_a + tiny_b}
    where = draw(st.sampled_from(["a", "b", "both"]))
    a = draw(st.permutations(summed + tiny_a + ([long_] if where in ("a", "both") else [])))
    b = draw(st.permutations(summed + tiny_b + ([long_] if where in ("b", "both") else [])))
    out = draw(st.permutations([long_] + tiny_a + tiny_b))
    products = math.prod(sizes[x] for x in summed + tiny_a + tiny_b)
    pattern = f"{' '.join(a)}, {' '.join(b)} -> {' '.join(out)}"
    return pattern, [tuple(sizes[x] for x in a), tuple(sizes[x] for x in b)], bool(tiny_a + tiny_b), products


@settings(max_examples=60, deadline=None, derandomize=True)
@given(case=_cases())
def test_generated_patterns_match_einsum(case):
    pattern, shapes, tiny, products = case
    tensors = random_tensors(shapes, torch.float64, seed=len(pattern))
    kernel = _kernel(pattern, tensors)
    assert _written_out(kernel.source, tiny) == (products <= written_out.WRITTEN_OUT_PRODUCTS), kernel.source
    assert_matches(kernel(*tensors), _einsum(pattern, tensors), pattern)
