"""The forms einops code writes, checked against einops itself.

Created output axes (einops' ``repeat``), the anonymous axis ``()``, a group inside a composite
(``b (...) c``), clauses over a group (``| mean ...``, ``| mean r`` for ``*r``) and the
``prod``/``any``/``all`` reducers: each against einops.repeat / einops.reduce /
einops.rearrange (float64, exact or to 1e-12), on tables and on hypothesis-generated patterns,
with gradients and with each lowering forced where a contraction comes first.
"""

from __future__ import annotations

import einops
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einplan
from conftest import ALL_LOWERINGS, assert_matches, call_bl, lowering_id, random_tensors
from einplan import EinplanError, PatternError, ShapeError

# --- tables against einops --------------------------------------------------------------------

# (einops pattern, einplan pattern, input shape, sizes)
REPEATS = [
    ("n d -> b n d", "n d -> b n d", (3, 4), {"b": 2}),
    ("b kvh n d -> b (r kvh) n d", "b kvh n d -> b (r kvh) n d", (2, 3, 5, 4), {"r": 4}),
    ("b kvh n d -> b (kvh r) n d", "b kvh n d -> b (kvh r) n d", (2, 3, 5, 4), {"r": 3}),
    ("h w -> h w 3", "h w -> h w 3", (3, 4), {}),
    ("h w -> (h h2) (w w2)", "h w -> (h h2) (w w2)", (3, 4), {"h2": 2, "w2": 3}),
    ("h w -> (h 2) (w 3)", "h w -> (h 2) (w 3)", (3, 4), {}),
    ("c -> b c", "c -> b c", (5,), {"b": 0}),
    ("c -> c b", "c -> c b", (0,), {"b": 3}),
    ("b c -> b c r", "b c -> b c r", (2, 3), {"r": 1}),
    ("b c -> r b c s", "b c -> r b c s", (2, 3), {"r": 2, "s": 3}),
    ("b n -> n b r", "b n -> n b r", (2, 3), {"r": 2}),
    ("b ... -> b r ...", "b ... -> b r ...", (2, 3, 4), {"r": 2}),
    ("... -> r ...", "*batch -> r *batch", (2, 3), {"r": 2}),
    ("b c -> b () c r", "b c -> b () c r", (2, 3), {"r": 2}),
]


@pytest.mark.parametrize("einops_pattern, pattern, shape, sizes", REPEATS, ids=[r[1] for r in REPEATS])
def test_repeat_matches_einops(einops_pattern, pattern, shape, sizes):
    (x,) = random_tensors([shape])
    want = einops.repeat(x, einops_pattern, **sizes)
    got = einplan.bl(pattern, x, **sizes)
    assert got.shape == want.shape and torch.equal(got, want), pattern


def test_repeat_is_a_view_unless_a_merge_needs_a_copy():
    x = torch.randn(3, 4, dtype=torch.float64)
    view = einplan.bl("n d -> b n d", x, b=2)
    assert view.data_ptr() == x.data_ptr() and view.stride(0) == 0
    assert "a view, no copy" in einplan.code("n d -> b n d", x, b=2)
    y = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    copy = einplan.bl("b kvh n d -> b (r kvh) n d", y, r=4)
    assert copy.data_ptr() != y.data_ptr() and copy.is_contiguous()
    assert "a copy, since (r kvh) merges a created axis" in einplan.code("b kvh n d -> b (r kvh) n d", y, r=4)


# (einops pattern, reduction, einplan pattern, input shape)
REDUCES = [
    ("b ... -> b", "mean", "b ... -> b | mean ...", (2, 3, 4, 5)),
    ("b ... -> b", "mean", "b *r -> b | mean r", (2, 3, 4, 5)),
    ("b ... -> b", "mean", "b *r -> b | mean *r", (2, 3, 4)),
    ("b ... -> b", "sum", "b ... -> b | sum ...", (2, 3, 4)),
    ("b ... -> b", "max", "b ... -> b | max ...", (2, 3, 4)),
    ("b ... -> b", "min", "b *r -> b | min r", (2, 3, 4)),
    ("b ... -> b", "prod", "b ... -> b | prod ...", (2, 3, 4)),
    ("b ... -> b", "mean", "b ... -> b | mean ...", (3,)),
    ("b ... c -> b c", "max", "b ... c -> b c | max ...", (2, 3, 4, 5)),
    ("b h w -> b", "prod", "b h w -> b | prod h w", (2, 3, 4)),
    ("b h w -> w", "prod", "b h w -> w | prod b h", (2, 3, 4)),
    ("b h w -> b h", "prod", "b h w -> b h | prod w", (2, 0, 4)),
    ("b h w -> b w", "prod", "b h w -> b w | prod h", (2, 0, 4)),
    ("b h w c -> b () () c", "max", "b h w c -> b () () c | max h w", (2, 3, 4, 5)),
    ("b c h w -> b c", "mean", "b c (h) (w) -> b c | mean h w", (2, 3, 4, 5)),
    ("(b1 b2) c -> b1 c", "sum", "(b1 b2) c -> b1 c | sum b2", (6, 4)),
]


@pytest.mark.parametrize("einops_pattern, reduction, pattern, shape", REDUCES, ids=[r[2] for r in REDUCES])
def test_reduce_matches_einops(einops_pattern, reduction, pattern, shape):
    (x,) = random_tensors([shape])
    sizes = {"b1": 2} if "b1" in pattern else {}
    want = einops.reduce(x, einops_pattern, reduction, **sizes)
    assert_matches(einplan.bl(pattern, x, **sizes), want, pattern)


@pytest.mark.parametrize("reduction", ["any", "all"])
@pytest.mark.parametrize("pattern", ["b h w -> b | {} h w", "b ... -> b | {} ...", "b *r -> | {} b r"])
def test_any_and_all_match_einops(pattern, reduction):
    x = torch.randn(3, 4, 5) > 0.3
    x[0] = True
    einops_pattern = {"b h w -> b | {} h w": "b h w -> b", "b ... -> b | {} ...": "b ... -> b", "b *r -> | {} b r": "b ... ->"}[pattern]
    want = einops.reduce(x, einops_pattern, reduction)
    got = einplan.bl(pattern.format(reduction), x)
    assert got.dtype == torch.bool and torch.equal(got, want)
    floats = x.double()  # on numbers: true where nonzero, as torch.any
    assert torch.equal(
        einplan.bl(pattern.format(reduction), floats), getattr(torch, reduction)(floats.flatten(1 if "-> b" in pattern else 0), -1)
    )


REARRANGES = [
    ("b ... c -> b (...) c", "b ... c -> b (...) c", (2, 3, 4, 5)),
    ("b ... c -> b (...) c", "b ... c -> b (...) c", (2, 5)),
    ("... c -> (...) c", "*batch c -> (*batch) c", (2, 3, 4)),
    ("b ... -> (b ...)", "b ... -> (b ...)", (2, 3, 4)),
    ("b ... c -> (c ...) b", "b ... c -> (c ...) b", (2, 3, 4, 5)),
    ("b c -> b c () ()", "b c -> b c () ()", (2, 3)),
    ("b c () () -> b c", "b c () () -> b c", (2, 3, 1, 1)),
    ("b () c -> (b c)", "b () c -> (b c)", (2, 1, 3)),
]


@pytest.mark.parametrize("einops_pattern, pattern, shape", REARRANGES, ids=[r[1] for r in REARRANGES])
def test_rearrange_matches_einops(einops_pattern, pattern, shape):
    (x,) = random_tensors([shape])
    want = einops.rearrange(x, einops_pattern)
    got = einplan.bl(pattern, x)
    assert got.shape == want.shape and torch.equal(got, want)


def test_a_group_inside_an_input_composite_takes_its_dims_from_a_bare_occurrence():
    x, y = random_tensors([(6, 4), (3, 4)])
    got = einplan.bl("(b ...) c, ... c -> b ...", x, y, b=2)
    want = torch.einsum("bic,ic->bi", x.reshape(2, 3, 4), y)
    assert_matches(got, want)
    with pytest.raises(ShapeError, match=r"the dims of '\.\.\.' inside \(b \.\.\.\) of operand 0 .* cannot be read off one dim"):
        einplan.bl("(b ...) c -> b ... c", x, b=2)


# --- with a contraction first: every lowering forced ------------------------------------------------

CONTRACTIONS = [
    ("b n, n m -> b r m", [(3, 4), (4, 5)], {"r": 2}, lambda a, b: (a @ b)[:, None].expand(3, 2, 5)),
    ("b n, n m -> (r b) m", [(3, 4), (4, 5)], {"r": 2}, lambda a, b: (a @ b).repeat(2, 1)),
    ("a k, k c -> a | prod c", [(3, 4), (4, 5)], {}, lambda a, b: (a @ b).prod(1)),
    ("a k, k c -> c | prod a", [(3, 4), (4, 5)], {}, lambda a, b: (a @ b).prod(0)),
    ("b i j, b j k -> b | prod i k", [(2, 3, 4), (2, 4, 3)], {}, lambda a, b: (a @ b).prod(2).prod(1)),
    ("q d, k d -> q | any k", [(4, 3), (5, 3)], {}, lambda a, b: (a @ b.T).any(1)),
    ("q d, k d -> q r | all k", [(4, 3), (5, 3)], {"r": 2}, lambda a, b: (a @ b.T).all(1)[:, None].expand(4, 2)),
    ("b *r d, d -> b | mean r", [(2, 3, 4, 5), (5,)], {}, lambda a, b: (a @ b).mean((1, 2))),
    ("b ... d, d -> b | max ...", [(2, 3, 4, 5), (5,)], {}, lambda a, b: (a @ b).amax((1, 2))),
]


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
@pytest.mark.parametrize("pattern, shapes, sizes, reference", CONTRACTIONS, ids=[c[0] for c in CONTRACTIONS])
def test_forms_after_a_contraction_under_each_lowering(pattern, shapes, sizes, reference, lowering):
    if lowering == einplan.FUSED:
        pytest.importorskip("triton")
    tensors = random_tensors(shapes)
    want = reference(*tensors)
    got = call_bl(pattern, *tensors, lowering=lowering, **sizes)
    if want.dtype == torch.bool:
        assert got.dtype == torch.bool and torch.equal(got, want)
    else:
        assert_matches(got, want, f"{pattern} lowering={lowering}")


@pytest.mark.parametrize("pattern", ["a k, k c -> a | prod c", "a k, k c -> a | all c", "a k, k c -> a r | prod c"])
def test_prod_any_all_go_in_chunks_of_kept_rows_under_a_small_memory_limit(pattern):
    a, b = random_tensors([(64, 8), (8, 512)])
    sizes = {"r": 2} if " r " in pattern else {}
    source = einplan.code(pattern, a, b, memory_limit=64 * 1024, **sizes)
    assert "for i in range(" in source and "chunks of" in source
    reducer = pattern.split("|")[1].split()[0]
    want = getattr(a @ b, reducer)(1)
    got = einplan.bl(pattern, a, b, memory_limit=64 * 1024, **sizes)
    got = got[:, 0] if sizes else got
    assert torch.equal(got, want) if want.dtype == torch.bool else torch.allclose(got, want, rtol=1e-12, atol=0)


def test_a_whole_product_prod_is_computed_in_full_not_folded():
    """prod/any/all have no running form: a clause over every axis is never cut along its axes."""
    a, b = random_tensors([(8, 4), (4, 16)])
    got = einplan.bl("a k, k c -> | prod a c", a, b, memory_limit=256)
    assert torch.allclose(got, (a @ b).prod(), rtol=1e-12, atol=0)


# --- gradients ------------------------------------------------------------------------------------

GRADIENTS = [
    ("n d -> b n d", [(3, 4)], {"b": 2}),
    ("b kvh n d -> b (r kvh) n d", [(2, 3, 2, 2)], {"r": 2}),
    ("b ... -> b | prod ...", [(2, 3, 4)], {}),
    ("b *r -> b | mean r", [(2, 3, 4)], {}),
    ("b ... c -> b c | max ...", [(2, 3, 4, 2)], {}),
    ("a k, k c -> a r | prod c", [(3, 4), (4, 5)], {"r": 2}),
    ("b *r d, d -> b | logsumexp r", [(2, 3, 2, 4), (4,)], {}),
]


@pytest.mark.parametrize("pattern, shapes, sizes", GRADIENTS, ids=[g[0] for g in GRADIENTS])
def test_gradients(pattern, shapes, sizes):
    tensors = [t.requires_grad_() for t in random_tensors(shapes)]
    assert torch.autograd.gradcheck(lambda *ts: einplan.bl(pattern, *ts, **sizes), tensors)


def test_gradients_equal_the_written_out_forms():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    einplan.bl("b ... -> b r | prod ...", x, r=3).sum().backward()
    mine = x.grad.clone()
    x.grad = None
    x.prod(2).prod(1)[:, None].expand(2, 3).sum().backward()
    torch.testing.assert_close(mine, x.grad, rtol=1e-12, atol=1e-12)


# --- hypothesis: random repeat and reduce patterns against einops -----------------------------------

NAMES = ("a", "b", "c", "d", "e")


@st.composite
def repeat_cases(draw):
    count = draw(st.integers(0, 3))
    axes = list(NAMES[:count])
    sizes = [draw(st.integers(0, 3)) for _ in axes]
    output = draw(st.permutations(axes)) if axes else []
    new = [f"r{k}" for k in range(draw(st.integers(1, 2)))]
    for name in new:
        output.insert(draw(st.integers(0, len(output))), name)
    new_sizes = {name: draw(st.integers(0, 3)) for name in new}
    words = list(output)
    if len(words) >= 2 and draw(st.booleans()):  # merge two neighbours into a composite
        k = draw(st.integers(0, len(words) - 2))
        words[k : k + 2] = [f"({words[k]} {words[k + 1]})"]
    return f"{' '.join(axes)} -> {' '.join(words)}", tuple(sizes), new_sizes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repeat_cases())
def test_hypothesis_repeat_matches_einops(case):
    pattern, shape, sizes = case
    (x,) = random_tensors([shape])
    want = einops.repeat(x, pattern, **sizes)
    got = einplan.bl(pattern, x, **sizes)
    assert got.shape == want.shape and torch.equal(got, want), pattern


@st.composite
def reduce_cases(draw):
    count = draw(st.integers(1, 4))
    axes = list(NAMES[:count])
    reduction = draw(st.sampled_from(["sum", "mean", "max", "min", "prod"]))
    low = 1 if reduction in ("max", "min", "mean") else 0
    shape = tuple(draw(st.integers(low, 3)) for _ in axes)
    kept = draw(st.lists(st.sampled_from(axes), unique=True, max_size=count - 1))
    order = draw(st.permutations(kept)) if kept else []
    dropped = [a for a in axes if a not in kept]
    return axes, order, dropped, reduction, shape


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reduce_cases())
def test_hypothesis_reduce_matches_einops(case):
    axes, order, dropped, reduction, shape = case
    (x,) = random_tensors([shape])
    want = einops.reduce(x, f"{' '.join(axes)} -> {' '.join(order)}", reduction)
    pattern = f"{' '.join(axes)} -> {' '.join(order)} | {reduction} {' '.join(dropped)}"
    assert_matches(einplan.bl(pattern, x), want, pattern)
    grouped = f"{' '.join(a for a in axes if a in order)} *rest -> {' '.join(order)} | {reduction} rest"
    moved = x.permute([axes.index(a) for a in axes if a in order] + [axes.index(a) for a in dropped])
    assert_matches(einplan.bl(grouped, moved), want, grouped)


# --- errors -------------------------------------------------------------------------------------------


def test_a_created_axis_needs_its_size():
    x = torch.ones(2, 3)
    with pytest.raises(PatternError, match=r"output axis 'b' is in no input: to create it .* give its size, e.g. b=2"):
        einplan.bl("n d -> b n d", x)
    with pytest.raises(PatternError, match="output axis 'n' is in no input \\(the inputs have n'\\)"):
        einplan.bl("n' d -> n d", x)


def test_an_argmax_over_a_group_of_no_dims_is_refused():
    with pytest.raises(ShapeError, match="covers no dims"):
        einplan.bl("b ... -> b | argmax ...", torch.ones(3))


def test_a_group_reduced_in_full_keeps_torchs_argmax_over_its_dims():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    index = einplan.bl("b *r -> b | argmax r", x)
    assert isinstance(index, tuple) and len(index) == 2
    flat = x.flatten(1).argmax(1)
    assert torch.equal(index[0] * 4 + index[1], flat)


def test_errors_are_einplan_errors():
    with pytest.raises(EinplanError):
        einplan.bl("b -> b | prod *r", torch.ones(2))


def test_explain_shows_the_repeat_and_the_group_clause():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    text = einplan.explain("b *r -> b s | prod r", x, s=3)
    assert "primed:   b *r -> b s | prod *r" in text
    steps = [line.split() for line in text.splitlines() if line.strip()[:2] in ("0.", "1.")]
    assert steps[0][1:] == ["reduce", "b", "*r", "->", "b"] and steps[1][1:] == ["repeat", "b", "->", "b", "s"]
    assert "expand((-1, 3))" in text and "a view, no copy" in text


@pytest.mark.parametrize("pattern", ["h w c -> (2 h) (2 w) c", "h w c -> 2 h 2 w c", "h w c -> (2 h) w c 2"])
def test_equal_literals_created_in_the_output_are_separate_axes(pattern):
    """As einops' anonymous axes: '(2 h) (2 w)' doubles both h and w."""
    (x,) = random_tensors([(4, 5, 3)])
    assert torch.equal(einplan.bl(pattern, x), einops.repeat(x, pattern))


@st.composite
def rearrange_cases(draw):
    """A batch axis, an ellipsis of 0-3 dims and a last axis, with '()' inserted on either side and
    the ellipsis merged into a composite in the output, as einops writes them."""
    group = tuple(draw(st.integers(0, 3)) for _ in range(draw(st.integers(0, 3))))
    b, c = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    left = ["b", "...", "c"]
    shape = [b, *group, c]
    if draw(st.booleans()):
        k = draw(st.integers(0, 2))
        left.insert(k, "()")
        shape.insert(k if k < 2 else len(shape) - 1, 1)
    right = draw(st.sampled_from(["b (...) c", "(b ...) c", "b (c ...)", "(...) b c", "b () (...) c ()", "(b ... c)"]))
    return " ".join(left), right, tuple(shape)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rearrange_cases())
def test_hypothesis_anonymous_axes_and_merged_groups_match_einops(case):
    left, right, shape = case
    (x,) = random_tensors([shape])
    pattern = f"{left} -> {right}"
    want = einops.rearrange(x, pattern)
    got = einplan.bl(pattern, x)
    assert got.shape == want.shape and torch.equal(got, want), pattern
