"""Bad tensors get clear errors; unusual but valid tensors get exact results.

Wrong operand counts, non-tensors, mixed dtypes or devices, wrong ranks and
disagreeing sizes are refused before any torch op runs, with a message that
names what is wrong.  Zero-size and size-1 axes, non-contiguous, transposed,
offset and expanded (stride-0) inputs, and integer, half, bfloat16 and complex
dtypes give torch.einsum's result wherever torch.einsum supports the dtype.

Inputs are small integers, so every sum is exact in every dtype tested and
results are compared for equality, not closeness.
"""

from __future__ import annotations

import pytest
import torch

import einplan
from einplan import EinplanError, ShapeError

LOWERINGS = [None, einplan.MATMUL, einplan.ELEMENTWISE]


def ints(*shape, dtype=torch.float64, seed=0, low=-3, high=4):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(low, high, shape, generator=generator)
    if dtype.is_complex:
        imag = torch.randint(low, high, shape, generator=generator)
        return torch.complex(values.double(), imag.double()).to(dtype)
    return values.to(dtype)


# --- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, count, needles",
    [
        ("b n, m n -> b m", 1, ["2 operand(s)", "1 tensor(s)"]),
        ("b n, m n -> b m", 3, ["2 operand(s)", "3 tensor(s)"]),
        ("b n -> b", 2, ["1 operand(s)", "2 tensor(s)"]),
        ("b n -> b", 0, ["1 operand(s)", "0 tensor(s)"]),
        ("b n, m n -> b m", 0, ["2 operand(s)", "0 tensor(s)"]),
    ],
)
def test_wrong_operand_count(pattern, count, needles):
    tensors = [ints(2, 2, seed=k) for k in range(count)]
    with pytest.raises(ShapeError) as info:
        einplan.bl(pattern, *tensors)
    for needle in needles:
        assert needle in str(info.value)
    assert pattern in str(info.value)


class NotATensor:
    shape = (2, 2)
    dtype = torch.float64
    device = torch.device("cpu")


@pytest.mark.parametrize(
    "bad",
    [[[1.0, 2.0], [3.0, 4.0]], None, 3.0, 7, "x", (2, 2), NotATensor(), torch.Size([2, 2])],
    ids=["list", "None", "float", "int", "str", "tuple", "duck", "Size"],
)
@pytest.mark.parametrize("position", [0, 1])
def test_non_tensors_are_type_errors(bad, position):
    operands = [ints(2, 2), ints(2, 2, seed=1)]
    operands[position] = bad
    with pytest.raises(TypeError) as info:
        einplan.bl("a b, b c -> a c", *operands)
    assert not isinstance(info.value, EinplanError)
    assert f"operand {position}" in str(info.value)
    assert type(bad).__name__ in str(info.value)


def test_numpy_array_is_a_type_error():
    numpy = pytest.importorskip("numpy")
    with pytest.raises(TypeError) as info:
        einplan.bl("a b, b c -> a c", ints(2, 2), numpy.ones((2, 2)))
    assert "operand 1" in str(info.value) and "ndarray" in str(info.value)


def test_non_tensor_after_a_cached_call():
    """The cache never lets a non-tensor through, whatever it looks like."""
    x = ints(2, 2)
    einplan.bl("a b, b c -> a c", x, x)
    with pytest.raises(TypeError):
        einplan.bl("a b, b c -> a c", x, NotATensor())


def test_shapes_are_not_tensors_for_bl_but_are_for_code():
    with pytest.raises(TypeError):
        einplan.bl("a b -> a", (2, 3))
    assert "def einplan_kernel" in einplan.code("a b -> a", (2, 3))
    with pytest.raises(TypeError) as info:
        einplan.code("a b -> a", "2 3")
    assert "operand 0" in str(info.value)
    with pytest.raises(TypeError):
        einplan.code("a b -> a", (2, -3))
    with pytest.raises(TypeError):
        einplan.code("a b -> a", (2, 3.0))


@pytest.mark.parametrize(
    "first, second",
    [
        (torch.float64, torch.float32),
        (torch.float32, torch.float16),
        (torch.int64, torch.float64),
        (torch.int32, torch.int64),
        (torch.complex128, torch.float64),
        (torch.bfloat16, torch.float16),
    ],
)
def test_mixed_dtypes(first, second):
    with pytest.raises(EinplanError) as info:
        einplan.bl("a b, b c -> a c", ints(2, 3, dtype=first), ints(3, 4, dtype=second))
    message = str(info.value)
    assert "dtype" in message
    assert str(first) in message and str(second) in message
    assert "operand 0" in message and "operand 1" in message


def test_mixed_dtypes_in_code_and_explain():
    for entry in (einplan.code, einplan.explain):
        with pytest.raises(EinplanError) as info:
            entry("a b, b c -> a c", ints(2, 3), ints(3, 4, dtype=torch.float32))
        assert "torch.float64" in str(info.value) and "torch.float32" in str(info.value)


def test_mixed_devices():
    cpu = ints(2, 3)
    meta = torch.empty(3, 4, dtype=torch.float64, device="meta")
    with pytest.raises(EinplanError) as info:
        einplan.bl("a b, b c -> a c", cpu, meta)
    message = str(info.value)
    assert "device" in message and "cpu" in message and "meta" in message


@pytest.mark.parametrize(
    "pattern, shapes, needles",
    [
        ("b n, m n -> b m", [(2, 3, 1), (4, 3)], ["operand 0 ('b n')", "2 axes", "3 dims"]),
        ("b n, m n -> b m", [(2, 3), (3,)], ["operand 1 ('m n')", "2 axes", "1 dims"]),
        ("b n -> b", [()], ["operand 0 ('b n')", "2 axes", "0 dims"]),
        ("-> ", [(1,)], ["operand 0", "0 axes", "1 dims"]),
        ("a ... b -> a", [(2,)], ["operand 0 ('a ... b')", "at least 2"]),
    ],
)
def test_wrong_rank(pattern, shapes, needles):
    with pytest.raises(ShapeError) as info:
        einplan.bl(pattern, *[ints(*s) for s in shapes])
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    "pattern, shapes, axis, sizes",
    [
        ("b n, m n -> b m", [(2, 3), (4, 5)], "n", (3, 5)),
        ("b i j, b j k -> b i k", [(2, 3, 4), (6, 4, 5)], "b", (2, 6)),
        ("b1 b2 n, n n, b1 b2 n -> b1 b2", [(2, 3, 4), (4, 4), (2, 3, 7)], "n", (4, 7)),
        ("n n -> n", [(3, 4)], "n", (3, 4)),
    ],
)
def test_sizes_that_disagree(pattern, shapes, axis, sizes):
    with pytest.raises(ShapeError) as info:
        einplan.bl(pattern, *[ints(*s) for s in shapes])
    message = str(info.value)
    assert f"axis {axis!r}" in message
    assert "operand 0" in message
    for size in sizes:
        assert f"has {size}" in message


def test_keyword_sizes_that_disagree():
    with pytest.raises(ShapeError) as info:
        einplan.bl("b (h d), h d e -> b h e", ints(2, 6), ints(2, 3, 4), h=3)
    message = str(info.value)
    assert "'h'" in message and "h=3" in message and "has 2" in message
    with pytest.raises(ShapeError) as info:
        einplan.bl("b n -> b", ints(2, 3), n=5)
    assert "n=5" in str(info.value) and "has 3" in str(info.value)


def test_unknown_keyword_size():
    with pytest.raises(EinplanError) as info:
        einplan.bl("b n -> b", ints(2, 3), q=5)
    assert "'q'" in str(info.value)


@pytest.mark.parametrize(
    "pattern, shape, sizes, needles",
    [
        ("b (h d) -> b h d", (2, 7), {"h": 2}, ["(h d)", "size 7", "2 does not divide"]),
        ("b (h d) -> b h d", (2, 6), {"h": 4}, ["(h d)", "size 6", "4 does not divide"]),
        ("b (h d) -> b h d", (2, 6), {"h": 2, "d": 2}, ["(h d)", "size 6", "h=2", "d=2"]),
        ("b (h d) -> b h d", (2, 6), {"h": 0}, ["(h d)", "size 6"]),
        ("(a b c) -> a b c", (12,), {"a": 2, "b": 5}, ["(a b c)", "size 12"]),
    ],
)
def test_composite_axis_that_does_not_divide(pattern, shape, sizes, needles):
    with pytest.raises(ShapeError) as info:
        einplan.bl(pattern, ints(*shape), **sizes)
    for needle in needles:
        assert needle in str(info.value)


def test_refusals_do_not_touch_the_inputs():
    x, y = ints(2, 3), ints(4, 5)
    before = (x.clone(), y.clone())
    with pytest.raises(ShapeError):
        einplan.bl("b n, m n -> b m", x, y)
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])


# --- accepted: unusual layouts and sizes -------------------------------------------------------


def check(pattern, equation, *tensors, **sizes):
    expected = torch.einsum(equation, *tensors)
    snapshot = [t.clone() for t in tensors]
    for lowering in LOWERINGS:
        result = einplan.bl(pattern, *tensors, lowering=lowering, **sizes)
        assert result.shape == expected.shape, (pattern, lowering)
        assert result.dtype == expected.dtype or not (expected.dtype.is_floating_point or expected.dtype.is_complex)
        assert torch.equal(result.to(expected.dtype), expected), (pattern, lowering)
    for before, after in zip(snapshot, tensors, strict=True):
        assert torch.equal(before, after), "an input was modified"


ZERO_AND_ONE = [
    ((0, 4), (5, 4)),
    ((3, 0), (5, 0)),
    ((3, 4), (0, 4)),
    ((1, 4), (1, 4)),
    ((3, 1), (5, 1)),
    ((1, 1), (1, 1)),
    ((0, 0), (0, 0)),
]


@pytest.mark.parametrize("left, right", ZERO_AND_ONE)
def test_zero_and_one_sizes_matmul(left, right):
    check("b n, m n -> b m", "bn,mn->bm", ints(*left), ints(*right, seed=1))


@pytest.mark.parametrize(
    "pattern, equation, shapes",
    [
        ("b i j, b j k -> b i k", "bij,bjk->bik", [(0, 2, 3), (0, 3, 4)]),
        ("b i j, b j k -> b i k", "bij,bjk->bik", [(2, 0, 3), (2, 3, 4)]),
        ("b i j, b j k -> b i k", "bij,bjk->bik", [(2, 2, 0), (2, 0, 4)]),
        ("b i j, b j k -> b i k", "bij,bjk->bik", [(1, 1, 1), (1, 1, 1)]),
        ("b1 b2 n, n n, b1 b2 n -> b1 b2", "abn,nm,abm->ab", [(2, 3, 0), (0, 0), (2, 3, 0)]),
        ("b1 b2 n, n n, b1 b2 n -> b1 b2", "abn,nm,abm->ab", [(0, 3, 4), (4, 4), (0, 3, 4)]),
        ("b1 b2 n, n n, b1 b2 n -> b1 b2", "abn,nm,abm->ab", [(1, 1, 1), (1, 1), (1, 1, 1)]),
        ("n n -> n", "ii->i", [(0, 0)]),
        ("b n n -> b", "bii->b", [(2, 0, 0)]),
        ("... i, ... i -> ...", "...i,...i->...", [(0, 3, 4), (3, 4)]),
        ("... i, ... i -> ...", "...i,...i->...", [(2, 1, 4), (5, 4)]),
        ("... i, ... i -> ...", "...i,...i->...", [(1, 4), (0, 4)]),
        ("i, j -> i j", "i,j->ij", [(0,), (3,)]),
        ("i j -> ", "ij->", [(0, 3)]),
        ("a b c, c d, d e -> a e", "abc,cd,de->ae", [(2, 1, 0), (0, 1), (1, 2)]),
    ],
)
def test_zero_and_one_sizes(pattern, equation, shapes):
    check(pattern, equation, *[ints(*s, seed=k) for k, s in enumerate(shapes)])


def test_zero_size_composite_and_clauses():
    x = ints(0, 6)
    assert einplan.bl("b (h d) -> b h d", x, h=2).shape == (0, 2, 3)
    q, k = ints(0, 3), ints(4, 3)
    assert torch.equal(einplan.bl("q d, k d -> q | max k", q, k), torch.empty(0, dtype=torch.float64))
    q, k = ints(2, 0), ints(4, 0)
    assert torch.equal(einplan.bl("q d, k d -> q | max k", q, k), torch.zeros(2, dtype=torch.float64))


def test_transposed_inputs():
    A = ints(5, 4).T  # (4, 5), strides (1, 4)
    B = ints(6, 5, seed=1)
    check("b n, m n -> b m", "bn,mn->bm", A, B)
    check("b n, m n -> b m", "bn,mn->bm", B, A.T.T)
    check("b i j, b j k -> b i k", "bij,bjk->bik", ints(2, 4, 3, seed=2).transpose(1, 2), ints(2, 5, 4, seed=3).transpose(1, 2))
    check("n n -> n", "ii->i", ints(4, 4).T)


def test_non_contiguous_and_offset_inputs():
    X = ints(4, 10)[:, ::2]  # stride 2
    assert not X.is_contiguous()
    check("b n, m n -> b m", "bn,mn->bm", X, ints(3, 5, seed=1))
    Y = ints(6, 5, seed=2)[2:]  # storage offset
    check("b n, b n -> b", "bn,bn->b", Y, ints(8, 5, seed=3)[::2])
    Z = ints(2, 3, 4, 5, seed=4).permute(0, 2, 3, 1)  # (2, 4, 5, 3), scrambled strides
    check("a b c d, d e -> a b c e", "abcd,de->abce", Z, ints(3, 2, seed=5))
    W = ints(2, 3, 4, 4, seed=6).contiguous(memory_format=torch.channels_last)
    check("n c h w, n c h w -> n c", "nchw,nchw->nc", W, W)


def test_expanded_stride_zero_inputs():
    E = ints(5).expand(4, 5)
    assert E.stride() == (0, 1)
    check("b n, m n -> b m", "bn,mn->bm", E, ints(3, 5, seed=1))
    check("b n, b n -> b", "bn,bn->b", E, E)
    check("b i j, b j k -> b i k", "bij,bjk->bik", ints(3, 4).expand(2, 3, 4), ints(2, 5, 4, seed=1).transpose(1, 2))
    check("n n -> n", "ii->i", ints(4).expand(4, 4))
    S = torch.tensor(2.0, dtype=torch.float64).expand(3, 4)
    check("i j, j k -> i k", "ij,jk->ik", S, ints(4, 2))
    x = ints(1, 6).expand(3, 6)
    W = ints(2, 3, 4, seed=1)
    result = einplan.bl("b (h d), h d e -> b h e", x, W, h=2)
    assert torch.equal(result, torch.einsum("bhd,hde->bhe", x.reshape(3, 2, 3), W))


def test_same_tensor_passed_twice():
    l = ints(2, 3, 4)
    A = ints(4, 4, seed=1)
    check("b1 b2 n, n n, b1 b2 n -> b1 b2", "abn,nm,abm->ab", l, A, l)
    check("b n, b n -> b", "bn,bn->b", l[0], l[0])


@pytest.mark.parametrize("count", [3, 60, 255, 256, 300])
def test_many_operands(count):
    """Any number of operands: the answer, or an honest refusal - never a false shape error."""
    tensors = [torch.full((2,), 1.0 + (k % 3 == 0), dtype=torch.float64) for k in range(count)]
    expected = torch.ones(2, dtype=torch.float64)
    for t in tensors:
        expected = expected * t
    pattern = ", ".join(["a"] * count) + " -> a"
    try:
        result = einplan.bl(pattern, *tensors)
    except ShapeError as error:
        pytest.fail(f"{count} operands whose shapes agree: {str(error)[:300]}")
    except einplan.UnsupportedError:
        assert count > 64  # small counts must work
        return
    assert torch.equal(result, expected)


def test_parameters_and_tensors_that_require_grad():
    x = torch.nn.Parameter(ints(3, 4))
    y = ints(5, 4, seed=1).requires_grad_()
    result = einplan.bl("b n, m n -> b m", x, y)
    assert torch.equal(result.detach(), torch.einsum("bn,mn->bm", x.detach(), y.detach()))
    result.sum().backward()
    assert torch.equal(x.grad, y.detach().sum(0).expand(3, 4))


# --- accepted: dtypes ---------------------------------------------------------------------------

DTYPES = [
    torch.int32,
    torch.int64,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
]

DTYPE_CASES = [
    ("b n, m n -> b m", "bn,mn->bm", [(3, 4), (5, 4)]),
    ("b1 b2 n, n n, b1 b2 n -> b1 b2", "abn,nm,abm->ab", [(2, 3, 4), (4, 4), (2, 3, 4)]),
    ("b i j, b j k -> b i k", "bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("n n -> n", "ii->i", [(3, 3)]),
    ("b n n -> b", "bii->b", [(2, 3, 3)]),
    ("... i, ... i -> ...", "...i,...i->...", [(2, 3, 4), (3, 4)]),
    ("i, j -> i j", "i,j->ij", [(3,), (4,)]),
    ("i j -> j i", "ij->ji", [(3, 4)]),
    ("i j -> ", "ij->", [(3, 4)]),
    ("a b c, c d, d e -> a e", "abc,cd,de->ae", [(2, 3, 4), (4, 5), (5, 2)]),
]


def _einsum_or_none(equation, tensors):
    try:
        return torch.einsum(equation, *tensors)
    except (RuntimeError, NotImplementedError, TypeError):
        return None


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).replace("torch.", "") for d in DTYPES])
def test_dtypes_match_einsum(dtype):
    low = 0 if dtype == torch.uint8 else -3
    compared = 0
    for pattern, equation, shapes in DTYPE_CASES:
        tensors = [ints(*s, dtype=dtype, seed=k, low=low) for k, s in enumerate(shapes)]
        expected = _einsum_or_none(equation, tensors)
        if expected is None:
            continue  # torch.einsum itself has no kernel for this dtype here
        compared += 1
        for lowering in LOWERINGS:
            try:
                result = einplan.bl(pattern, *tensors, lowering=lowering)
            except einplan.UnsupportedError:
                assert lowering is not None, f"{pattern} {dtype}: no lowering at all"
                continue
            assert result.shape == expected.shape, (pattern, dtype, lowering)
            if dtype.is_floating_point or dtype.is_complex:
                assert result.dtype == dtype, (pattern, dtype, lowering)
            assert torch.equal(result.to(expected.dtype), expected), (pattern, dtype, lowering)
    assert compared >= len(DTYPE_CASES) // 2, f"torch.einsum supports too few cases for {dtype}"


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_with_reductions(dtype):
    q, k = ints(4, 3, dtype=dtype), ints(5, 3, dtype=dtype, seed=1)
    scores = torch.einsum("qd,kd->qk", q, k)
    assert torch.equal(einplan.bl("q d, k d -> q | max k", q, k), scores.amax(1))
    assert torch.equal(einplan.bl("q d, k d -> q | min k", q, k), scores.amin(1))
    assert torch.equal(einplan.bl("q d, k d -> | max q k", q, k), scores.amax((0, 1)))
    assert torch.equal(einplan.bl("q d, k d -> q | sum k", q, k).to(scores.dtype), scores.sum(1).to(scores.dtype))
    if dtype.is_floating_point:
        mean = einplan.bl("q d, k d -> q | mean k", q, k)
        torch.testing.assert_close(mean, scores.mean(1))
        lse = einplan.bl("q d, k d -> q | logsumexp k", q, k)
        torch.testing.assert_close(lse, torch.logsumexp(scores, 1))


def test_complex_values_are_not_conjugated():
    a = ints(3, 4, dtype=torch.complex128)
    b = ints(4, 5, dtype=torch.complex128, seed=1)
    check("i j, j k -> i k", "ij,jk->ik", a, b)
    check("i j, i j -> i", "ij,ij->i", a, a)
    conj = a.conj()  # a lazily conjugated view
    assert conj.is_conj()
    check("i j, j k -> i k", "ij,jk->ik", conj, b)
