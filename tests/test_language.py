"""The whole language against torch, einops and einx: composite axes, named
ellipsis, literal sizes, single-operand rearrange/reduce, and the README's
side-by-side table (every row of which runs here)."""

import pytest
import torch

import einplan
from einplan import bl

einops = pytest.importorskip("einops")
einx = pytest.importorskip("einx")

torch.manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# name: (einplan pattern, einplan args, kwargs, einops thunk, einx thunk, torch thunk)
X = rand(2, 3, 4)
W = rand(4, 5)
Q, K = rand(6, 8), rand(7, 8)
H = rand(2, 3, 4, 5)
S = rand(2, 12)
M1, M2 = rand(9, 3, 3), rand(9, 3, 3)

SIDE_BY_SIDE = {
    "matmul with a shared matrix": (
        "b n d, d e -> b n e",
        (X, W),
        {},
        lambda: einops.einsum(X, W, "b n d, d e -> b n e"),
        lambda: einx.dot("b n d, d e -> b n e", X, W),
        lambda: torch.einsum("bnd,de->bne", X, W),
    ),
    "batched matmul": (
        "b i j, b j k -> b i k",
        (M1, M2),
        {},
        lambda: einops.einsum(M1, M2, "b i j, b j k -> b i k"),
        lambda: einx.dot("b i j, b j k -> b i k", M1, M2),
        lambda: torch.einsum("bij,bjk->bik", M1, M2),
    ),
    "attention scores": (
        "q d, k d -> q k",
        (Q, K),
        {},
        lambda: einops.einsum(Q, K, "q d, k d -> q k"),
        lambda: einx.dot("q d, k d -> q k", Q, K),
        lambda: torch.einsum("qd,kd->qk", Q, K),
    ),
    "sum over an axis": (
        "b n d -> b d",
        (X,),
        {},
        lambda: einops.reduce(X, "b n d -> b d", "sum"),
        lambda: einx.sum("b [n] d", X),
        lambda: torch.einsum("bnd->bd", X),
    ),
    "max over an axis": (
        "b n d -> b d | max n",
        (X,),
        {},
        lambda: einops.reduce(X, "b n d -> b d", "max"),
        lambda: einx.max("b [n] d", X),
        lambda: X.amax(1),
    ),
    "mean over two axes": (
        "b n d -> b | mean n d",
        (X,),
        {},
        lambda: einops.reduce(X, "b n d -> b", "mean"),
        lambda: einx.mean("b [n d]", X),
        lambda: X.mean((1, 2)),
    ),
    "logsumexp of scores": (
        "q d, k d -> q | logsumexp k",
        (Q, K),
        {},
        lambda: torch.logsumexp(einops.einsum(Q, K, "q d, k d -> q k"), -1),
        lambda: einx.logsumexp("q [k]", einx.dot("q d, k d -> q k", Q, K)),
        lambda: torch.logsumexp(torch.einsum("qd,kd->qk", Q, K), -1),
    ),
    "transpose": (
        "b n d -> b d n",
        (X,),
        {},
        lambda: einops.rearrange(X, "b n d -> b d n"),
        lambda: einx.id("b n d -> b d n", X),
        lambda: torch.einsum("bnd->bdn", X),
    ),
    "merge heads": (
        "b h n d -> b n (h d)",
        (H,),
        {},
        lambda: einops.rearrange(H, "b h n d -> b n (h d)"),
        lambda: einx.id("b h n d -> b n (h d)", H),
        lambda: H.permute(0, 2, 1, 3).reshape(2, 4, 15),
    ),
    "split heads": (
        "b (h d) -> b h d",
        (S,),
        {"h": 3},
        lambda: einops.rearrange(S, "b (h d) -> b h d", h=3),
        lambda: einx.id("b (h d) -> b h d", S, h=3),
        lambda: S.reshape(2, 3, 4),
    ),
}


@pytest.mark.parametrize("name", sorted(SIDE_BY_SIDE))
def test_side_by_side_table(name):
    pattern, args, sizes, with_einops, with_einx, with_torch = SIDE_BY_SIDE[name]
    got = bl(pattern, *args, **sizes)
    for peer in (with_einops, with_einx, with_torch):
        torch.testing.assert_close(got, peer(), rtol=1e-12, atol=1e-12)


def test_readme_table_lists_every_row():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for pattern, *_ in SIDE_BY_SIDE.values():
        assert f"`{pattern.replace('|', chr(92) + '|')}`" in readme, pattern


# --- composite axes -----------------------------------------------------------------------


def test_split_with_sizes_from_another_operand():
    x, w = rand(5, 12), rand(3, 4, 7)
    expected = torch.einsum("bhd,hde->bhe", x.reshape(5, 3, 4), w)
    torch.testing.assert_close(bl("b (h d), h d e -> b h e", x, w), expected)


def test_split_with_keyword_size_and_nesting():
    x = rand(2, 24)
    got = bl("b ((h d) c) -> b c d h", x, h=2, d=3)
    torch.testing.assert_close(got, x.reshape(2, 2, 3, 4).permute(0, 3, 2, 1))


def test_merge_in_output_and_input_together():
    x = rand(2, 6, 5)
    got = bl("b (h d) n -> b n (d h)", x, h=2)
    torch.testing.assert_close(got, x.reshape(2, 2, 3, 5).permute(0, 3, 2, 1).reshape(2, 5, 6))


def test_split_is_a_view():
    x = rand(4, 12)
    code = einplan.code("b (h d) -> b h d", x, h=3)
    assert "reshape" in code and "contiguous" not in code
    out = bl("b (h d) -> b h d", x, h=3)
    assert out.data_ptr() == x.data_ptr()


def test_split_that_does_not_divide_names_axis_and_sizes():
    with pytest.raises(einplan.ShapeError, match=r"\(h d\).*13"):
        bl("b (h d) -> b h d", rand(2, 13), h=3)


def test_unknown_split_asks_for_a_keyword():
    with pytest.raises(einplan.ShapeError, match="keyword"):
        bl("b (h d) -> b h d", rand(2, 12))


# --- named ellipsis -------------------------------------------------------------------------


def test_named_ellipsis_like_anonymous():
    x, a = rand(2, 3, 4), rand(4, 5)
    torch.testing.assert_close(bl("*batch n, n m -> *batch m", x, a), x @ a)


def test_two_named_groups_in_one_pattern():
    x, y = rand(2, 3, 4), rand(5, 4)
    got = bl("*rows n, *cols n -> *rows *cols", x, y)
    torch.testing.assert_close(got, torch.einsum("abn,cn->abc", x, y))


def test_named_ellipsis_broadcasts():
    x, y = rand(2, 1, 4), rand(3, 4)
    got = bl("*b n, *b n -> *b", x, y)
    torch.testing.assert_close(got, (x * y).sum(-1))


def test_named_ellipsis_summed_when_absent_from_output():
    x = rand(2, 3, 4)
    torch.testing.assert_close(bl("*b n -> n", x), x.sum((0, 1)))


# --- literal sizes ------------------------------------------------------------------------------


def test_literal_sizes_are_axes_of_that_size():
    x, a = rand(5, 3), rand(3, 3)
    torch.testing.assert_close(bl("b 3, 3 3 -> b 3", x, a), x @ a)


def test_literal_size_mismatch_is_a_shape_error():
    with pytest.raises(einplan.ShapeError, match="'3'"):
        bl("b 3 -> b 3", rand(2, 4))


def test_one_may_be_added_or_dropped():
    x = rand(2, 3)
    assert bl("b n -> b 1 n", x).shape == (2, 1, 3)
    torch.testing.assert_close(bl("b 1 n -> n b", x[:, None]), x.T)


def test_literal_one_on_a_bigger_dim_is_an_error():
    with pytest.raises(einplan.ShapeError, match="literal 1"):
        bl("b 1 n -> b n", rand(2, 2, 3))


# --- single-operand patterns ---------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, reference",
    [
        ("a b c -> c a b", lambda x: x.permute(2, 0, 1)),
        ("a b c -> a", lambda x: x.sum((1, 2))),
        ("a b c -> a c | max b", lambda x: x.amax(1)),
        ("a b c -> c | min a b", lambda x: x.amin((0, 1))),
        ("a b c -> b | mean a c", lambda x: x.mean((0, 2))),
        ("a b c -> a | logsumexp b c", lambda x: torch.logsumexp(x, (1, 2))),
        ("a b c -> a c | argmax b", lambda x: x.argmax(1)),
        ("a b c -> c a | argmin b", lambda x: x.argmin(1).T),
        ("a b c -> | sum a b c", lambda x: x.sum()),
        ("a b c -> c | sum a | max b", lambda x: x.sum(0).amax(0)),
    ],
)
def test_single_operand_rearrange_and_reduce(pattern, reference):
    x = rand(3, 4, 5)
    got = bl(pattern, x)
    want = reference(x)
    if want.dtype == torch.int64:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want)


def test_argmax_over_two_axes_returns_one_index_per_axis():
    x = rand(3, 4, 5)
    rows, cols = bl("a b c -> a | argmax b c", x)
    flat = x.reshape(3, 20).argmax(-1)
    assert torch.equal(rows, flat // 5) and torch.equal(cols, flat % 5)


def test_diagonal_and_trace():
    x = rand(2, 4, 4)
    torch.testing.assert_close(bl("b n n -> b n", x), torch.einsum("bii->bi", x))
    torch.testing.assert_close(bl("b n n -> b", x), torch.einsum("bii->b", x))


def test_jaxtyping_annotations_use_the_pattern_words():
    source = einplan.code("*batch n, n m -> *batch m", (2, 3, 4), (4, 5))
    assert "'#*batch n'" in source and "'*batch m'" in source
    source = einplan.code("b h n d -> b n (h d)", (2, 3, 4, 5))
    assert "'b n h*d'" in source


def test_composite_diagonal_as_einx_reads_it():
    x = rand(16)
    torch.testing.assert_close(bl("(a a) -> a", x), x.reshape(4, 4).diagonal())
    y = rand(3, 9)
    torch.testing.assert_close(bl("b (n n) -> b", y), torch.einsum("bii->b", y.reshape(3, 3, 3)))
    with pytest.raises(einplan.ShapeError, match="does not divide into 2 equal factors"):
        bl("(a a) -> a", rand(15))
