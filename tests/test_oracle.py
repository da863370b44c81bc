"""A table of patterns from the SPEC and the seed documents, checked against torch.einsum.

Every row is an einplan pattern, the torch.einsum string that means the same
thing (distinct letters where einplan reads a chain), and shapes.  Each row runs
in float64 with the default plan and with every lowering forced (a forced
unrolled lowering may decline a step; that skips).  Seed recipes are also
checked against the seed's own matmul spelling.
"""

from __future__ import annotations

import re

import pytest
import torch

import einplan
from conftest import (
    ALL_LOWERINGS,
    IMPLEMENTED,
    assert_matches,
    call_bl,
    einplan_to_einsum,
    lowering_id,
    random_tensors,
)
from einplan.chunking import TILE_COLUMNS, TILE_WIDTH

F64 = torch.float64

# (id, einplan pattern, torch.einsum equation, shapes)
TABLE = [
    # --- SPEC, the pattern language ------------------------------------------------------
    ("spec-shared-A", "b n, m n -> b m", "bn,mn->bm", [(5, 4), (3, 4)]),
    ("spec-batched-dot", "b1 b2 n, b1 b2 n -> b1 b2", "xyn,xyn->xy", [(3, 2, 4), (3, 2, 4)]),
    ("spec-quadratic-form", "b1 b2 n, n n, b1 b2 n -> b1 b2", "xyn,nm,xym->xy", [(3, 2, 4), (4, 4), (3, 2, 4)]),
    ("spec-bmm", "b i j, b j k -> b i k", "bij,bjk->bik", [(3, 2, 5), (3, 5, 4)]),
    ("spec-bmm-2x2", "b i j, b j k -> b i k", "bij,bjk->bik", [(7, 2, 2), (7, 2, 2)]),
    ("spec-bmm-3x3", "b i j, b j k -> b i k", "bij,bjk->bik", [(7, 3, 3), (7, 3, 3)]),
    ("spec-ellipsis-dot", "... i, ... i -> ...", "...i,...i->...", [(2, 3, 4), (3, 4)]),
    ("spec-ellipsis-dot-broadcast", "... i, ... i -> ...", "...i,...i->...", [(2, 1, 4), (5, 4)]),
    ("spec-ellipsis-dot-no-batch", "... i, ... i -> ...", "...i,...i->...", [(4,), (4,)]),
    ("spec-diagonal", "n n -> n", "ii->i", [(4, 4)]),
    ("spec-batched-trace", "b n n -> b", "bii->b", [(3, 4, 4)]),
    # --- SPEC, meaning: primes and chains ------------------------------------------------
    ("spec-primes-quadratic", "b n, n n', b n' -> b", "bn,nm,bm->b", [(5, 3), (3, 3), (5, 3)]),
    ("spec-chain-quadratic-primed", "b1 b2 n, n n', b1 b2 n' -> b1 b2", "xyn,nm,xym->xy", [(3, 2, 4), (4, 4), (3, 2, 4)]),
    ("spec-chain-Ax", "n n, b n -> b n", "nm,bm->bn", [(4, 4), (3, 4)]),
    ("spec-chain-Ax-primed", "n n', b n' -> b n", "nm,bm->bn", [(4, 4), (3, 4)]),
    ("spec-chain-xA", "b n, n n -> b n", "bn,nm->bm", [(3, 4), (4, 4)]),
    ("spec-chain-xA-primed", "b n, n n' -> b n'", "bn,nm->bm", [(3, 4), (4, 4)]),
    ("spec-chain-AB", "n n, n n -> n n", "nm,mk->nk", [(4, 4), (4, 4)]),
    ("spec-chain-AB-primed", "n n', n' n'' -> n n''", "nm,mk->nk", [(4, 4), (4, 4)]),
    ("spec-chain-summed", "n n, b n -> b", "nm,bm->b", [(4, 4), (3, 4)]),
    ("spec-chain-ABC", "n n, n n, n n -> n n", "ij,jk,kl->il", [(3, 3), (3, 3), (3, 3)]),
    ("spec-chain-xABy", "b n, n n, n n, b n -> b", "bi,ij,jk,bk->b", [(2, 3), (3, 3), (3, 3), (2, 3)]),
    # --- seed 000: a shared matrix times a batch of vectors ------------------------------
    ("seed000-bn-mn", "b n, m n -> b m", "bn,mn->bm", [(10, 5), (6, 5)]),
    ("seed000-mn-bn", "m n, b n -> b m", "mn,bn->bm", [(6, 5), (10, 5)]),
    ("seed000-mn-bn1", "m n, b n 1 -> b m", "mn,bno->bm", [(6, 5), (10, 5, 1)]),
    ("seed000-mn-bn1-keep", "m n, b n 1 -> b m 1", "mn,bno->bmo", [(6, 5), (10, 5, 1)]),
    # --- seed 001: batched linear algebra recipes ----------------------------------------
    ("seed001-gemm", "b1 b2 m n, b1 b2 n p -> b1 b2 m p", "xymn,xynp->xymp", [(2, 3, 4, 5), (2, 3, 5, 6)]),
    ("seed001-gemv", "m n, n -> m", "mn,n->m", [(4, 5), (5,)]),
    ("seed001-gemv-batched", "b1 b2 m n, b1 b2 n -> b1 b2 m", "xymn,xyn->xym", [(2, 3, 4, 5), (2, 3, 5)]),
    ("seed001-vecmat-batched", "b1 b2 m, b1 b2 m n -> b1 b2 n", "xym,xymn->xyn", [(2, 3, 4), (2, 3, 4, 5)]),
    ("seed001-dot", "b1 b2 n, b1 b2 n -> b1 b2", "xyn,xyn->xy", [(8, 2, 6), (8, 2, 6)]),
    ("seed001-outer", "b1 b2 m, b1 b2 n -> b1 b2 m n", "xym,xyn->xymn", [(2, 3, 4), (2, 3, 5)]),
    ("seed001-quadratic-batched-A", "b1 b2 n, b1 b2 n n, b1 b2 n -> b1 b2", "xyn,xynm,xym->xy", [(2, 3, 4), (2, 3, 4, 4), (2, 3, 4)]),
    ("seed001-quadratic-shared-A", "b1 b2 n, n n, b1 b2 n -> b1 b2", "xyn,nm,xym->xy", [(2, 3, 4), (4, 4), (2, 3, 4)]),
    # --- seed 002: many tiny matmuls ------------------------------------------------------
    ("seed002-bmm-2x2", "b i j, b j k -> b i k", "bij,bjk->bik", [(257, 2, 2), (257, 2, 2)]),
    ("seed002-bmm-3x3", "b i j, b j k -> b i k", "bij,bjk->bik", [(257, 3, 3), (257, 3, 3)]),
    ("seed002-bmm-4x4", "b i j, b j k -> b i k", "bij,bjk->bik", [(257, 4, 4), (257, 4, 4)]),
    # --- seed 003: all inner products -----------------------------------------------------
    ("seed003-all-pairs", "m d, n d -> m n", "md,nd->mn", [(10, 8), (12, 8)]),
    ("seed003-all-pairs-batched", "b m d, b n d -> b m n", "bmd,bnd->bmn", [(4, 10, 8), (4, 12, 8)]),
]

ROW_IDS = [row[0] for row in TABLE]


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
@pytest.mark.parametrize("row", TABLE, ids=ROW_IDS)
def test_table_against_einsum(row, lowering):
    name, pattern, equation, shapes = row
    tensors = random_tensors(shapes, F64, seed=len(name))
    want = torch.einsum(equation, *tensors)
    got = call_bl(pattern, *tensors, lowering=lowering)
    assert_matches(got, want, f"{name}: {pattern!r} vs {equation!r}, lowering={lowering}")


# The same shared tensor passed twice (the seeds pass l twice) must work too.
@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
def test_quadratic_form_same_tensor_twice(lowering):
    l, A = random_tensors([(3, 2, 4), (4, 4)], F64, seed=1)
    got = call_bl("b1 b2 n, n n, b1 b2 n -> b1 b2", l, A, l, lowering=lowering)
    assert_matches(got, torch.einsum("xyn,nm,xym->xy", l, A, l), f"lowering={lowering}")


def test_table_translator_agrees_with_hand_spelling():
    """The helper's independent chain reading gives the hand-written einsum for every row."""
    for name, pattern, equation, shapes in TABLE:
        if re.search(r"(^|[ ,])1( |,|$)", pattern):
            continue  # literal 1 axes: spelled with a size-1 letter by hand
        tensors = random_tensors(shapes, F64, seed=3)
        torch.testing.assert_close(torch.einsum(einplan_to_einsum(pattern), *tensors), torch.einsum(equation, *tensors), msg=name)


# --- seed recipes against the seeds' own matmul spellings --------------------------------------


def _seed_recipes():
    b1, b2, m, n, p = 3, 2, 4, 5, 6
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    L4, R4 = r(b1, b2, m, n), r(b1, b2, n, p)
    M, v = r(m, n), r(n)
    lv, rv, lm = r(b1, b2, n), r(b1, b2, n), r(b1, b2, m)
    A1, A2 = r(b1, b2, n, n), r(n, n)
    B0, B1 = r(10, n), r(10, n, 1)
    return [
        ("gemm", "b1 b2 m n, b1 b2 n p -> b1 b2 m p", (L4, R4), L4 @ R4),
        ("gemv", "m n, n -> m", (M, v), M @ v),
        ("gemv-batched", "b1 b2 m n, b1 b2 n -> b1 b2 m", (L4, lv), (L4 @ lv[..., None]).squeeze(-1)),
        ("vecmat-batched", "b1 b2 m, b1 b2 m n -> b1 b2 n", (lm, L4), (lm[..., None, :] @ L4).squeeze(-2)),
        ("dot", "b1 b2 n, b1 b2 n -> b1 b2", (lv, rv), (lv * rv).sum(-1)),
        ("outer", "b1 b2 m, b1 b2 n -> b1 b2 m n", (lm, lv), lm[..., None] @ lv[..., None, :]),
        (
            "quadratic-A1",
            "b1 b2 n, b1 b2 n n, b1 b2 n -> b1 b2",
            (lv, A1, lv),
            (lv[..., None, :] @ A1 @ lv[..., None]).squeeze(-1).squeeze(-1),
        ),
        ("quadratic-A2", "b1 b2 n, n n, b1 b2 n -> b1 b2", (lv, A2, lv), (lv[..., None, :] @ A2 @ lv[..., None]).squeeze(-1).squeeze(-1)),
        (
            "quadratic-A2-l-r",
            "b1 b2 n, n n, b1 b2 n -> b1 b2",
            (lv, A2, rv),
            (lv[..., None, :] @ A2 @ rv[..., None]).squeeze(-1).squeeze(-1),
        ),
        ("seed000-matvec", "b n, m n -> b m", (B0, M), torch.matmul(M, B0.transpose(0, 1)).transpose(0, 1)),
        ("seed000-matvec-n1", "m n, b n 1 -> b m", (M, B1), torch.matmul(M, B1).squeeze(2)),
    ]


SEED_RECIPES = _seed_recipes()


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
@pytest.mark.parametrize("recipe", SEED_RECIPES, ids=[r[0] for r in SEED_RECIPES])
def test_seed_recipes_against_matmul_spelling(recipe, lowering):
    name, pattern, tensors, want = recipe
    got = call_bl(pattern, *tensors, lowering=lowering)
    assert_matches(got, want, f"{name}: {pattern!r}, lowering={lowering}")


# --- the SPEC's named requirement: the batched quadratic form ----------------------------------

QF = "b1 b2 n, n n, b1 b2 n -> b1 b2"


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
def test_quadratic_form_equals_matmul_chain_to_1e12(lowering):
    g = torch.Generator().manual_seed(0)
    l = torch.randn(80, 20, 64, generator=g, dtype=F64)
    A = torch.randn(64, 64, generator=g, dtype=F64)
    want = (l[..., None, :] @ A @ l[..., None]).squeeze(-1).squeeze(-1)
    got = call_bl(QF, l, A, l, lowering=lowering)
    assert got.shape == (80, 20) and got.dtype == F64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # einsum's own reading of the same letters is the diagonal: a different number
    diagonal = torch.einsum("xyn,nn,xyn->xy", l, A, l)
    assert not torch.allclose(got, diagonal)


@pytest.fixture
def default_cost_model(monkeypatch, tmp_path):
    """Plan with the shipped CPU constants, not constants a local `einplan tune` stored."""
    from einplan import cost

    monkeypatch.setenv("EINPLAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cost, "_loaded", {})
    einplan.clear_cache()
    yield
    einplan.clear_cache()


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_quadratic_form_code_is_matmul_then_multiply_sum(default_cost_model, dtype):
    """SPEC: A·l as one torch.matmul (A broadcast, never copied), then l·(Al) as multiply+sum.

    At the seed's sizes (seed 001 times the dot product at 80x20x64), multiply+sum
    is the faster lowering for the batched dot product.
    """
    l = torch.randn(80, 20, 64, dtype=dtype)
    A = torch.randn(64, 64, dtype=dtype)
    source = einplan.code(QF, l, A, l)
    body = [line for line in source.splitlines() if re.match(r"\s+t\d+ = ", line)]
    assert len(body) == 2, source
    first, second = body
    assert "torch.matmul(" in first and "matmul-broadcast" in first, source
    # the multiply overwrites the matmul's own result (no second temporary), never an input
    assert "elementwise-sum" in second and re.search(r"t0\.mul_\(x\d\)\.sum\(", second), source
    assert "torch.matmul" not in second, source
    for copy in (".expand(", ".repeat(", ".expand_as(", ".contiguous(", ".clone("):
        assert copy not in source, source


@pytest.mark.parametrize(
    "pattern, equation",
    [
        (QF, "abn,nm,abm->ab"),
        ("i j, j k, i k -> i", "ij,jk,ik->i"),
    ],
)
def test_multiply_in_place_writes_only_the_plans_own_tensors(default_cost_model, pattern, equation):
    """The step after a matmul multiplies into the matmul's result: inputs stay as they were,
    also when one tensor is passed twice, and gradients are autograd's."""
    shapes = [(80, 20, 64), (64, 64), (80, 20, 64)] if pattern == QF else [(1600, 64), (64, 64), (1600, 64)]
    tensors = [t.requires_grad_() for t in random_tensors(shapes, F64, seed=8)]
    if pattern == QF:
        tensors[2] = tensors[0]  # the same tensor twice
    assert ".mul_(" in einplan.code(pattern, *tensors)
    before = [t.detach().clone() for t in tensors]
    got = einplan.bl(pattern, *tensors)
    want = torch.einsum(equation, *tensors)
    assert_matches(got.detach(), want.detach(), pattern)
    for t, b in zip(tensors, before, strict=True):
        assert torch.equal(t.detach(), b), "an input was written"
    leaves = list(dict.fromkeys(tensors))
    for g, w in zip(torch.autograd.grad(got.sum(), leaves), torch.autograd.grad(want.sum(), leaves), strict=True):
        assert_matches(g, w, f"{pattern}: gradient")


def test_quadratic_form_explain_shows_primed_form():
    l = torch.randn(3, 2, 4, dtype=F64)
    A = torch.randn(4, 4, dtype=F64)
    text = einplan.explain(QF, l, A, l)
    assert "b1 b2 n, n n', b1 b2 n' -> b1 b2" in text, text


# --- composite axis from the SPEC ---------------------------------------------------------------


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
def test_composite_axis(lowering):
    b, h, d, e = 3, 2, 4, 5
    x, W = random_tensors([(b, h * d), (h, d, e)], F64, seed=5)
    want = torch.einsum("bhd,hde->bhe", x.reshape(b, h, d), W)
    got = call_bl("b (h d), h d e -> b h e", x, W, h=h, lowering=lowering)
    assert_matches(got, want, f"lowering={lowering}")


# --- SPEC, meaning 4: named groups, fixed sizes, literal 1s, composites -------------------------

FORMS = [
    ("named-group", "*batch n, n m -> *batch m", lambda x, W: torch.einsum("xyn,nm->xym", x, W), [(2, 3, 4), (4, 5)], {}),
    ("two-named-groups", "*b i, *c i -> *b *c", lambda x, y: torch.einsum("xi,yzi->xyz", x, y), [(2, 4), (3, 5, 4)], {}),
    ("named-group-broadcast", "*b i, *b i -> *b", lambda x, y: (x * y).sum(-1), [(2, 1, 4), (5, 4)], {}),
    ("named-group-summed", "*b i, i -> ", lambda x, v: torch.einsum("xyi,i->", x, v), [(2, 3, 4), (4,)], {}),
    ("fixed-size", "b 3, 3 k -> b k", lambda x, W: x @ W, [(2, 3), (3, 4)], {}),
    ("literal-1-in-and-out", "b n 1, n m -> b 1 m", lambda x, W: (x.squeeze(-1) @ W)[:, None, :], [(2, 4, 1), (4, 5)], {}),
    (
        "composite-merge-output",
        "b h d, h d e -> b (h e)",
        lambda x, W: torch.einsum("bhd,hde->bhe", x, W).reshape(2, 15),
        [(2, 3, 4), (3, 4, 5)],
        {},
    ),
    ("composite-split-input", "(b1 b2) n, n m -> b1 b2 m", lambda x, W: (x @ W).reshape(2, 3, 5), [(6, 4), (4, 5)], {"b1": 2}),
    ("composite-split-contracted", "b (h d), (h d) e -> b e", lambda x, W: x @ W, [(2, 12), (12, 5)], {"h": 3}),
    (
        "ellipsis-middle",
        "i ... j, j ... k -> i ... k",
        lambda x, y: torch.einsum("i...j,j...k->i...k", x, y),
        [(3, 1, 2, 2), (2, 2, 3, 1, 4)],
        {},
    ),
]


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
@pytest.mark.parametrize("form", FORMS, ids=[f[0] for f in FORMS])
def test_other_axis_forms(form, lowering):
    name, pattern, reference, shapes, sizes = form
    tensors = random_tensors(shapes, F64, seed=len(name))
    got = call_bl(pattern, *tensors, lowering=lowering, **sizes)
    assert_matches(got, reference(*tensors), f"{name}: {pattern!r}, lowering={lowering}")


# --- SPEC, meaning 6: other dtypes, wherever torch.einsum has the op ---------------------------

DTYPE_PATTERNS = [
    ("b n, m n -> b m", "bn,mn->bm", [(3, 4), (2, 4)]),
    ("b1 b2 n, n n, b1 b2 n -> b1 b2", "xyn,nm,xym->xy", [(2, 3, 4), (4, 4), (2, 3, 4)]),
    ("b i j, b j k -> b i k", "bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("n n -> n", "ii->i", [(3, 3)]),
    ("a b, c d -> a b c d", "ab,cd->abcd", [(2, 3), (2, 2)]),
]
OTHER_DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8, torch.complex128, torch.complex64, torch.float16, torch.bfloat16]


def _values(shape, dtype, g):
    if dtype.is_complex or dtype.is_floating_point:
        return torch.randn(shape, generator=g, dtype=torch.complex128 if dtype.is_complex else F64).to(dtype)
    return torch.randint(0, 4, shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", OTHER_DTYPES, ids=str)
@pytest.mark.parametrize("case", DTYPE_PATTERNS, ids=[c[0] for c in DTYPE_PATTERNS])
def test_other_dtypes_match_einsum(case, dtype):
    pattern, equation, shapes = case
    g = torch.Generator().manual_seed(2)
    tensors = [_values(s, dtype, g) for s in shapes]
    want = torch.einsum(equation, *tensors)
    for lowering in IMPLEMENTED:
        got = einplan.bl(pattern, *tensors, lowering=lowering)
        context = f"{pattern!r} {dtype} lowering={lowering}"
        assert got.dtype == dtype and got.shape == want.shape, (context, got.dtype, got.shape, want.shape)
        if dtype.is_floating_point and dtype.itemsize == 2:
            torch.testing.assert_close(got.double(), want.double(), rtol=2e-2, atol=2e-2, msg=context)
        elif dtype.is_complex:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=context)
        else:
            assert torch.equal(got, want.to(dtype)), context


# --- clauses other than sum: right answer or an EinplanError, never a wrong answer --------------


def _scores(Q, K):
    return torch.einsum("qd,kd->qk", Q, K)


def _argmax_pair(Q, K):
    S = _scores(Q, K)
    return tuple(torch.unravel_index(S.argmax(), S.shape))


REDUCERS = [
    ("m d, n d -> | max m n", lambda Q, K: _scores(Q, K).amax()),
    ("m d, n d -> | min m n", lambda Q, K: _scores(Q, K).amin()),
    ("q d, k d -> q | max k", lambda Q, K: _scores(Q, K).amax(1)),
    ("q d, k d -> q | min k", lambda Q, K: _scores(Q, K).amin(1)),
    ("q d, k d -> q | sum k", lambda Q, K: _scores(Q, K).sum(1)),
    ("q d, k d -> q | mean k", lambda Q, K: _scores(Q, K).mean(1)),
    ("q d, k d -> q | logsumexp k", lambda Q, K: torch.logsumexp(_scores(Q, K), 1)),
    ("q d, k d -> q | argmax k", lambda Q, K: _scores(Q, K).argmax(1)),
    ("q d, k d -> q | argmin k", lambda Q, K: _scores(Q, K).argmin(1)),
    ("q d, k d -> k | argmax q", lambda Q, K: _scores(Q, K).argmax(0)),
    ("q d, k d -> | argmax q k", _argmax_pair),
    ("q d, k d -> | max q | argmax k", lambda Q, K: _scores(Q, K).amax(0).argmax()),
    ("q d, k d -> | logsumexp k | max q", lambda Q, K: torch.logsumexp(_scores(Q, K), 1).amax()),
]


@pytest.mark.parametrize("memory_limit", [None, 64], ids=["no-limit", "limit-64B"])
@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
@pytest.mark.parametrize("case", REDUCERS, ids=[c[0] for c in REDUCERS])
def test_reducer_clauses_right_or_refused(case, lowering, memory_limit):
    pattern, reference = case
    Q, K = random_tensors([(6, 5), (7, 5)], F64, seed=11)
    try:
        got = einplan.bl(pattern, Q, K, lowering=lowering, memory_limit=memory_limit)
    except einplan.EinplanError:
        return  # refused with the documented error family: allowed until reductions land
    want = reference(Q, K)
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), (pattern, got)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == torch.int64 and torch.equal(g, w), (pattern, got, want)
    elif want.dtype == torch.int64:
        assert got.dtype == torch.int64 and torch.equal(got, want), (pattern, got, want)
    else:
        assert_matches(got, want, f"{pattern}, lowering={lowering}")


# --- chunked argmax/argmin over several axes: best row first, then the best place in it ------


def _flat_arg(scores: torch.Tensor, reducer: str, kept: int) -> tuple:
    """torch's answer: flatten the reduced axes (after ``kept`` leading ones), arg-reduce, unravel."""
    flat = scores.reshape(*scores.shape[:kept], -1)
    index = getattr(flat, reducer)(-1)
    return tuple(torch.unravel_index(index, scores.shape[kept:]))


ARG_CASES = [
    ("m d, n d -> | {r} m n", "md,nd->mn", [(37, 3), (29, 3)], 0),
    ("b m d, b n d -> b | {r} m n", "bmd,bnd->bmn", [(4, 23, 3), (4, 19, 3)], 1),
    ("m d, n d, p -> | {r} m n p", "md,nd,p->mnp", [(13, 3), (11, 3), (5,)], 0),
    # a kept axis of size 1 (the running best keeps its shape) and clause axes in another order
    ("b m d, b n d -> b | {r} m n", "bmd,bnd->bmn", [(1, 23, 3), (1, 19, 3)], 1),
    ("m d, n d -> | {r} n m", "md,nd->nm", [(37, 3), (29, 3)], 0),
]


@pytest.mark.parametrize("data", ["random", "planted", "ties", "nan", "all-nan-rows", "-inf"])
@pytest.mark.parametrize("reducer", ["argmax", "argmin"])
@pytest.mark.parametrize("case", ARG_CASES, ids=[c[0] for c in ARG_CASES])
def test_chunked_arg_reduction_over_several_axes_is_torchs_first_index(case, reducer, data):
    pattern, equation, shapes, kept = case
    pattern = pattern.format(r=reducer)
    tensors = random_tensors(shapes, F64, seed=3)
    if data == "planted":  # the extreme deep inside a chunk: row 10 of m, not a chunk's first row
        tensors[0][..., 10, :] *= 10
    elif data == "ties":  # small integers: the extreme value repeats across rows and columns
        tensors = [t.mul(1.5).round().clamp(-1, 1) for t in tensors]
    elif data == "nan":
        tensors[0][..., 5, 1] = float("nan")
        tensors[1][..., 2, 0] = float("nan")
    elif data == "all-nan-rows":
        tensors[0][..., 1] = float("nan")
    elif data == "-inf":
        tensors[0].fill_(float("-inf") if reducer == "argmax" else float("inf"))
        tensors[1].fill_(1.0)
    want = _flat_arg(torch.einsum(equation, *tensors), reducer, kept)
    plan = einplan.runtime.plan_for(pattern, *tensors, memory_limit=2048)
    assert plan.steps[-1].kind == einplan.CHUNKED, einplan.explain(pattern, *tensors, memory_limit=2048)
    got = einplan.bl(pattern, *tensors, memory_limit=2048)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.int64 and torch.equal(g, w), (pattern, data, got, want)


# --- tiles: a whole product wider than a tile is cut into rows by columns --------------------

TILE_ROWS = 8
TILED_LIMIT = TILE_ROWS * TILE_COLUMNS * 8  # memory_limit: tiles of 8 float64 rows
WIDE = 2 * TILE_COLUMNS + 77  # two whole tiles and a narrower one
TILED_CASES = {  # clause order: (pattern's reduced axes, einsum equation, shapes: rows first)
    "m n": ("md,nd->mn", [(21, 3), (WIDE, 3)]),
    "n m": ("md,nd->nm", [(WIDE, 3), (21, 3)]),
}


def _tiled_step(pattern: str, *tensors, memory_limit=TILED_LIMIT):
    plan = einplan.runtime.plan_for(pattern, *tensors, memory_limit=memory_limit)
    (step,) = [s for s in plan.steps if s.kind == einplan.CHUNKED]
    assert f"in tiles of {TILE_ROWS} along" in step.description, step.description
    return step


@pytest.mark.parametrize("data", ["random", "ties", "tie-in-a-later-tile", "nan", "-inf"])
@pytest.mark.parametrize("reducer", ["argmax", "argmin"])
@pytest.mark.parametrize("order", list(TILED_CASES))
def test_tiled_arg_reduction_is_torchs_first_index(order, reducer, data):
    equation, shapes = TILED_CASES[order]
    pattern = f"m d, n d -> | {reducer} {order}"
    a, b = random_tensors(shapes, F64, seed=5)
    rows, columns = (a, b) if order == "m n" else (b, a)  # the operands of the product's rows and columns
    sign = 1.0 if reducer == "argmax" else -1.0
    if data == "ties":  # small integers: the extreme repeats in many tiles
        a, b = [t.mul(1.5).round().clamp(-1, 1) for t in (a, b)]
    elif data == "tie-in-a-later-tile":  # row 5 in the second tile comes before row 6 in the first
        rows.mul_(0.01), columns.mul_(0.01)
        rows[5], columns[TILE_COLUMNS + 500] = torch.tensor([10.0 * sign, 0, 0]), torch.tensor([10.0, 0, 0])
        rows[6], columns[10] = torch.tensor([0, 10.0 * sign, 0]), torch.tensor([0, 10.0, 0])
    elif data == "nan":  # NaN in two tiles of one row block: the first flat one wins
        rows[3, 0], columns[TILE_COLUMNS + 9, 0] = float("nan"), float("nan")
    elif data == "-inf":
        a.fill_(float("-inf") if reducer == "argmax" else float("inf"))
        b.fill_(1.0)
    _tiled_step(pattern, a, b)
    want = _flat_arg(torch.einsum(equation, a, b), reducer, 0)
    got = einplan.bl(pattern, a, b, memory_limit=TILED_LIMIT)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.int64 and torch.equal(g, w), (pattern, data, got, want)


@pytest.mark.parametrize("reducer", ["max", "min"])
@pytest.mark.parametrize("order", list(TILED_CASES))
def test_tiled_max_and_min_and_their_gradients_are_torchs(order, reducer):
    # max/min cut the longer axis into rows: tiles need the other one wider than a tile too
    equation, _ = TILED_CASES[order]
    pattern = f"m d, n d -> | {reducer} {order}"
    a, b = [t.requires_grad_() for t in random_tensors([(TILE_COLUMNS + 76, 3), (WIDE, 3)], F64, seed=6)]
    _tiled_step(pattern, a.detach(), b.detach())  # the inference plan's tiles (training's are smaller: the backward's too)
    assert einplan.runtime.plan_for(pattern, a, b, memory_limit=TILED_LIMIT).functions
    got = einplan.bl(pattern, a, b, memory_limit=TILED_LIMIT)
    want = getattr(torch, f"a{reducer}")(torch.einsum(equation, a, b))
    assert_matches(got.detach(), want.detach(), pattern)
    for g, w in zip(torch.autograd.grad(got, (a, b)), torch.autograd.grad(want, (a, b)), strict=True):
        assert_matches(g, w, f"{pattern}: gradient")


def test_tiles_narrow_to_fit_a_small_memory_limit():
    a, b = random_tensors([(21, 3), (WIDE, 3)], F64, seed=9)
    for reducer in ("argmax", "max"):
        pattern = f"m d, n d -> | {reducer} m n"
        plan = einplan.runtime.plan_for(pattern, a, b, memory_limit=2048)
        (step,) = [s for s in plan.steps if s.kind == einplan.CHUNKED]
        if reducer == "argmax":  # max cuts the longer n into rows instead: 21 columns are narrow
            assert "in tiles of 1 along m by 256 along n" in step.description, step.description
        assert step.estimate.memory <= 2048
        got = einplan.bl(pattern, a, b, memory_limit=2048)
        scores = a @ b.T
        if reducer == "max":
            assert_matches(got, scores.amax(), pattern)
        else:
            for g, w in zip(got, _flat_arg(scores, "argmax", 0), strict=True):
                assert torch.equal(g, w), (got, w)


def test_tiled_max_passes_gradcheck():
    a, b = random_tensors([(TILE_COLUMNS + 6, 1), (TILE_COLUMNS + 6, 1)], F64, seed=7)
    limit = 512 * TILE_COLUMNS * 8  # tiles of 512 rows: 512 + 512 + 6 rows by 1024 + 6 columns
    plan = einplan.runtime.plan_for("m d, n d -> | max m n", a, b, memory_limit=limit)
    assert "in tiles of 512 along m by 1024 along n" in plan.steps[-1].description
    # numerical gradients for one operand (a thousand inputs) keep this quick
    assert torch.autograd.gradcheck(lambda x: einplan.bl("m d, n d -> | max m n", x, b, memory_limit=limit), (a.requires_grad_(),))


# A forced unrolled lowering over 262144 batches of 4x4 runs, under a 12 MiB limit, in chunks of b that
# lay b last (laid out whole, the two copies and the result take 48 MiB at once; in blocks, the
# result alone 16 MiB).  The last chunk is shorter than the others: the one loop body (there is no second copy for the tail) must serve it as well,
# its rows landing in the full chunks' order (once a crash, when the tail had a body of its own: a
# (20, 4, 4) chunk written into (4, 4, 20) rows).
LAYOUT_LIMIT = 12 << 20  # below the 16 MiB result: chunks, not the unrolled step's blocks
LAYOUT_CHANGES = [
    ("b i j, b j k -> b i k", lambda p: p),
    ("b i j, b j k -> b | logsumexp i k", lambda p: torch.logsumexp(p.flatten(1), -1)),
]


@pytest.mark.parametrize("pattern, reduce", LAYOUT_CHANGES, ids=[c[0] for c in LAYOUT_CHANGES])
def test_a_shorter_last_chunk_in_another_layout_keeps_the_full_chunks_order(default_cost_model, pattern, reduce):
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.randn(262144, 4, 4, generator=gen) for _ in range(2))
    source = einplan.code(pattern, a, b, lowering="unrolled", memory_limit=LAYOUT_LIMIT)
    (step,) = [line for line in source.splitlines() if "for i in range(0, x0.shape[0], " in line]
    rows = int(step.split("range(0, x0.shape[0], ")[1].split(")")[0])
    loops = [line for line in source.splitlines() if line.lstrip().startswith("for ")]
    assert len(loops) == 1 and 262144 % rows != 0  # whole chunks, then a shorter one
    got = einplan.bl(pattern, a, b, lowering="unrolled", memory_limit=LAYOUT_LIMIT)
    expected = reduce(torch.einsum("bij,bjk->bik", a.double(), b.double()))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


# ``q d, k d -> q | logsumexp k`` (and max, min) keeps the rows: chunks of rows, each reduced across
# tiles of TILE_WIDTH columns into a running value per row (a log-add for logsumexp)
ROW_TILE_LIMIT = 64 * 1024  # memory_limit: tiles of 8 or 16 float64 rows by TILE_WIDTH columns
ROW_TILED = 2 * TILE_WIDTH + 77  # two whole tiles and a narrower one


def _row_tiled_data(data: str):
    q, k = random_tensors([(21, 3), (ROW_TILED, 3)], F64, seed=11)
    if data == "nan":
        q[3, 1] = float("nan")
        k[TILE_WIDTH + 5, 0] = float("nan")  # every row's product with it, in the second tile
    elif data == "inf":
        k[2 * TILE_WIDTH + 3] = torch.tensor([float("inf"), 0.0, 0.0])  # +-inf by the sign of q's first column
    elif data == "all--inf-row":
        k[:, 0] = k[:, 0].abs() + 0.5
        q[4] = torch.tensor([float("-inf"), 0.0, 0.0])
    elif data == "ties":
        q, k = q.round(), k.round()  # small integers: equal products in different tiles
    return q, k


@pytest.mark.parametrize("data", ["random", "nan", "inf", "all--inf-row", "ties"])
@pytest.mark.parametrize("reducer", ["logsumexp", "max", "min"])
def test_row_tiles_reduce_each_row_like_torch(reducer, data):
    q, k = _row_tiled_data(data)
    pattern = f"q d, k d -> q | {reducer} k"
    plan = einplan.runtime.plan_for(pattern, q, k, memory_limit=ROW_TILE_LIMIT)
    (step,) = [s for s in plan.steps if s.kind == einplan.CHUNKED]
    rows = 8 if reducer == "logsumexp" else 16  # logsumexp counts one temporary tile
    assert f"in tiles of {rows} along q by {TILE_WIDTH} along k" in step.description, step.description
    assert step.estimate.memory <= ROW_TILE_LIMIT
    got = einplan.bl(pattern, q, k, memory_limit=ROW_TILE_LIMIT)
    scores = q @ k.T
    want = {"logsumexp": torch.logsumexp, "max": torch.amax, "min": torch.amin}[reducer](scores, 1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    special = {"nan": "nan", "inf": "inf", "all--inf-row": "-inf"}.get(data)
    if special == "nan":
        assert got.isnan().all()
    elif special is not None:
        assert got.isinf().any()


@pytest.mark.parametrize("reducer", ["logsumexp", "max"])
def test_row_tiles_pass_gradcheck(reducer):
    q, k = (t.requires_grad_() for t in random_tensors([(13, 2), (TILE_WIDTH + 40, 2)], F64, seed=12))
    pattern = f"q d, k d -> q | {reducer} k"
    limit = 4 * TILE_WIDTH * 8 * 2  # tiles of 4 rows (logsumexp counts one temporary tile)
    assert "in tiles of" in einplan.runtime.plan_for(pattern, q, k, memory_limit=limit).steps[-1].description
    assert torch.autograd.gradcheck(lambda x, y: einplan.bl(pattern, x, y, memory_limit=limit), (q, k))
