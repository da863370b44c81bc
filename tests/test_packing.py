"""einplan.pack and einplan.unpack against einops.pack and einops.unpack.

Every result is compared for exact equality (float64) with einops' on a table
of patterns and shapes (no, one and several ``*`` dims; ``*`` first, in the
middle, last; size-0 dims; one tensor and many; a ``-1`` in unpack's shapes)
and on hypothesis-generated ones, with round trips and gradients.  Where
einops cannot answer (a size-0 named dim, which its ``reshape(..., -1, ...)``
finds ambiguous) the result is checked against einops on the same shapes with
that dim 1.  The errors are einplan's, with the message parts and caret
column expected, and the test says what einops does with the same call.
"""

from __future__ import annotations

import math

import einops
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einplan
from einplan import EinplanError, PatternError, PatternSyntaxError, ShapeError


def values(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def tensors_of(shapes, seed: int = 0) -> list[torch.Tensor]:
    return [values(*shape, seed=seed + k) for k, shape in enumerate(shapes)]


def assert_same(ours, theirs) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert torch.equal(ours, theirs)


def split_at_star(pattern: str) -> tuple[int, int]:
    """How many names come before and after the '*' of a pack pattern."""
    words = pattern.split()
    return words.index("*"), len(words) - words.index("*") - 1


def assert_caret(message: str, pattern: str, column: int) -> None:
    *_, quoted, caret = message.splitlines()
    assert quoted == "    " + pattern
    assert caret == "    " + " " * column + "^"


# --- tables against einops ---------------------------------------------------------------------

PACKS = [
    ("b * d", [(2, 5), (2, 3, 5), (2, 3, 4, 5)]),  # 0, 1 and 2 dims at '*'
    ("* d", [(3, 4), (4,), (2, 2, 4)]),  # '*' first
    ("b *", [(2,), (2, 3), (2, 2, 3)]),  # '*' last
    ("*", [(), (3,), (2, 3)]),  # '*' alone, a 0-d tensor among them
    ("a b * c d", [(2, 3, 4, 5), (2, 3, 1, 6, 4, 5)]),  # in the middle of four names
    ("b * d", [(2, 0, 5), (2, 3, 5)]),  # a size-0 dim at '*'
    ("b * d", [(2, 3, 0, 5), (2, 0, 5)]),  # nothing at '*' at all
    ("b * d", [(2, 3, 4, 5)]),  # one tensor
    ("b *", [(2, k) for k in range(9)]),  # many tensors
    ("batch seq_2 * x9", [(2, 3, 4, 5, 6), (2, 3, 6)]),  # longer names, digits and '_'
]


@pytest.mark.parametrize("pattern, shapes", PACKS)
def test_pack_matches_einops(pattern, shapes):
    tensors = tensors_of(shapes)
    ours = einplan.pack(tensors, pattern)
    theirs = einops.pack(tensors, pattern)
    assert type(ours) is tuple and len(ours) == 2
    assert_same(ours[0], theirs[0])
    assert type(ours[1]) is list and ours[1] == theirs[1]
    assert [type(shape) for shape in ours[1]] == [type(shape) for shape in theirs[1]] == [torch.Size] * len(shapes)


@pytest.mark.parametrize("pattern, shapes", PACKS)
def test_unpack_matches_einops_and_round_trips(pattern, shapes):
    tensors = tensors_of(shapes)
    packed, packed_shapes = einops.pack(tensors, pattern)
    ours = einplan.unpack(packed, packed_shapes, pattern)
    theirs = einops.unpack(packed, packed_shapes, pattern)
    assert type(ours) is list and len(ours) == len(theirs) == len(tensors)
    for mine, their, original in zip(ours, theirs, tensors, strict=True):
        assert_same(mine, their)
        assert_same(mine, original)


def test_pack_takes_non_contiguous_tensors_and_tuples():
    tensors = (values(5, 3, 2).transpose(0, 2), values(2, 10, seed=1)[:, ::2].unsqueeze(1).expand(2, 3, 5))
    ours, ours_shapes = einplan.pack(tensors, "b * d")
    theirs, their_shapes = einops.pack(list(tensors), "b * d")
    assert_same(ours, theirs)
    assert ours_shapes == their_shapes == [torch.Size([3]), torch.Size([3])]


# (pattern, packed shape, shapes with one -1, what einops' -1 works out to)
INFERRED = [
    ("b * d", (2, 13, 5), [(), (3, -1)], [(), (3, 4)]),
    ("b *", (2, 10), [(3,), (-1,), (4,)], [(3,), (3,), (4,)]),
    ("* d", (12, 4), [(-1, 2), (2,)], [(5, 2), (2,)]),
    ("* d", (12, 4), [(2,), (2, -1, 1)], [(2,), (2, 5, 1)]),
    ("b * d", (2, 6, 3), [(2, 3), (-1,)], [(2, 3), (0,)]),  # the rest is nothing
    ("*", (7,), [(-1,)], [(7,)]),
]


@pytest.mark.parametrize("pattern, packed_shape, shapes, inferred", INFERRED)
def test_unpack_infers_one_minus_one_as_einops(pattern, packed_shape, shapes, inferred):
    packed = values(*packed_shape)
    ours = einplan.unpack(packed, shapes, pattern)
    theirs = einops.unpack(packed, shapes, pattern)
    exact = einplan.unpack(packed, inferred, pattern)
    for mine, their, known in zip(ours, theirs, exact, strict=True):
        assert_same(mine, their)
        assert_same(mine, known)


def test_unpack_of_no_shapes_and_an_empty_dim_is_an_empty_list():
    packed = values(2, 0, 3)
    assert einplan.unpack(packed, [], "b * d") == einops.unpack(packed, [], "b * d") == []


# --- size-0 named dims, where einops' reshape(-1) is ambiguous -----------------------------------

# (pattern, shapes of the tensors with a 0 named dim)
EMPTY_NAMED = [
    ("b * d", [(0, 3, 4), (0, 4), (0, 2, 2, 4)]),
    ("* d", [(3, 0), (0,)]),
    ("b * d", [(2, 3, 0), (2, 0)]),
]


@pytest.mark.parametrize("pattern, shapes", EMPTY_NAMED)
def test_size_zero_named_dims_pack_where_einops_cannot(pattern, shapes):
    tensors = tensors_of(shapes)
    with pytest.raises(RuntimeError, match="ambiguous"):
        einops.pack(tensors, pattern)
    ones = [tuple(size or 1 for size in shape) for shape in shapes]  # the named 0s as 1s
    theirs, their_shapes = einops.pack(tensors_of(ones), pattern)
    packed, packed_shapes = einplan.pack(tensors, pattern)
    before, after = split_at_star(pattern)
    named = shapes[0]  # the named sizes, 0s included, of every tensor
    assert packed.shape == (*named[:before], theirs.shape[before], *named[len(named) - after :])
    assert packed_shapes == their_shapes
    for back, original in zip(einplan.unpack(packed, packed_shapes, pattern), tensors, strict=True):
        assert_same(back, original)


def test_minus_one_beside_empty_named_dims():
    """einops reshapes to (0, -1, 4), ambiguous to torch; einplan works the -1 out from the '*' dim."""
    packed = values(0, 7, 4)
    with pytest.raises(einops.EinopsError, match="could not split axis of size 7"):
        einops.unpack(packed, [(3,), (-1,)], "b * d")
    first, second = einplan.unpack(packed, [(3,), (-1,)], "b * d")
    assert first.shape == (0, 3, 4) and second.shape == (0, 4, 4)


# --- names einops refuses --------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, spelled", [("_b * d_", "b * d"), ("b_ *", "b *"), ("b * _", "b * d")])
def test_names_with_an_outer_underscore_are_einplan_names(pattern, spelled):
    tensors = tensors_of([(2, 3, 4), (2, 4)])
    with pytest.raises(einops.EinopsError, match="Invalid axis name"):
        einops.pack(tensors, pattern)
    ours, ours_shapes = einplan.pack(tensors, pattern)
    theirs, their_shapes = einops.pack(tensors, spelled)
    assert_same(ours, theirs)
    assert ours_shapes == their_shapes


# --- hypothesis ----------------------------------------------------------------------------------------


NAMED_SIZES = st.integers(1, 3)


@st.composite
def pack_cases(draw, named_sizes=NAMED_SIZES):
    """A pattern and tensors that match it: names before and after '*', each its one size."""
    before, after = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    names = draw(
        st.lists(
            st.from_regex(r"[a-z]([a-z0-9_]{0,2}[a-z0-9])?", fullmatch=True), min_size=before + after, max_size=before + after, unique=True
        )
    )
    words = [*names[:before], "*", *names[before:]]
    sizes = [draw(named_sizes) for _ in names]
    stars = draw(st.lists(st.lists(st.integers(0, 3), max_size=3), min_size=1, max_size=4))
    shapes = [(*sizes[:before], *star, *sizes[before:]) for star in stars]
    return " ".join(words), shapes, draw(st.integers(0, 2**16))


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(pack_cases())
def test_pack_and_unpack_match_einops_on_generated_patterns(case):
    pattern, shapes, seed = case
    tensors = tensors_of(shapes, seed=seed)
    packed, packed_shapes = einplan.pack(tensors, pattern)
    theirs, their_shapes = einops.pack(tensors, pattern)
    assert_same(packed, theirs)
    assert packed_shapes == their_shapes
    for mine, their, original in zip(
        einplan.unpack(packed, packed_shapes, pattern), einops.unpack(theirs, their_shapes, pattern), tensors, strict=True
    ):
        assert_same(mine, their)
        assert_same(mine, original)


@SETTINGS
@given(pack_cases(), st.data())
def test_a_generated_minus_one_unpacks_as_einops(case, data):
    pattern, shapes, seed = case
    tensors = tensors_of(shapes, seed=seed)
    packed, packed_shapes = einops.pack(tensors, pattern)
    # a -1 einops can resolve: a dim of a '*' part whose other dims hold something
    places = [(k, j) for k, shape in enumerate(packed_shapes) for j in range(len(shape)) if math.prod(shape[:j] + shape[j + 1 :]) > 0]
    if not places:
        return
    k, j = data.draw(st.sampled_from(places))
    asked = [list(shape) for shape in packed_shapes]
    asked[k][j] = -1
    for mine, their, original in zip(einplan.unpack(packed, asked, pattern), einops.unpack(packed, asked, pattern), tensors, strict=True):
        assert_same(mine, their)
        assert_same(mine, original)


@SETTINGS
@given(pack_cases(named_sizes=st.integers(0, 2)))
def test_generated_round_trips_with_size_zero_names(case):
    pattern, shapes, seed = case
    tensors = tensors_of(shapes, seed=seed)
    packed, packed_shapes = einplan.pack(tensors, pattern)
    assert packed.numel() == sum(t.numel() for t in tensors)
    before, after = split_at_star(pattern)
    assert packed_shapes == [t.shape[before : t.dim() - after] for t in tensors]
    assert packed.shape[before] == sum(math.prod(shape) for shape in packed_shapes)
    for back, original in zip(einplan.unpack(packed, packed_shapes, pattern), tensors, strict=True):
        assert_same(back, original)


# --- gradients -----------------------------------------------------------------------------------------

GRADIENT_CASES = [
    ("b * d", [(2, 3), (2, 2, 3), (2, 2, 1, 3)]),
    ("* d", [(2,), (3, 2)]),
    ("b *", [(2, 0), (2, 3)]),
]


@pytest.mark.parametrize("pattern, shapes", GRADIENT_CASES)
def test_gradcheck_through_pack_and_unpack(pattern, shapes):
    tensors = [t.requires_grad_() for t in tensors_of(shapes)]
    assert torch.autograd.gradcheck(lambda *xs: einplan.pack(list(xs), pattern)[0], tensors)
    packed, packed_shapes = einplan.pack([t.detach() for t in tensors], pattern)
    packed.requires_grad_()
    assert torch.autograd.gradcheck(lambda p: tuple(einplan.unpack(p, packed_shapes, pattern)), (packed,))


@pytest.mark.parametrize("pattern, shapes", GRADIENT_CASES)
def test_gradients_match_einops(pattern, shapes):
    def pack_grads(pack):
        tensors = [t.requires_grad_() for t in tensors_of(shapes)]
        packed, _ = pack(tensors, pattern)
        (packed * values(*packed.shape, seed=7)).sum().backward()
        return [t.grad for t in tensors]

    for mine, their in zip(pack_grads(einplan.pack), pack_grads(einops.pack), strict=True):
        assert_same(mine, their)

    def unpack_grads(unpack):
        packed, packed_shapes = einops.pack(tensors_of(shapes), pattern)
        packed.requires_grad_()
        pieces = unpack(packed, packed_shapes, pattern)
        sum((piece * values(*piece.shape, seed=9 + k)).sum() for k, piece in enumerate(pieces)).backward()
        return packed.grad

    assert_same(unpack_grads(einplan.unpack), unpack_grads(einops.unpack))


# --- errors: the pattern ------------------------------------------------------------------------------

# (pattern, error, caret column, message parts); einops refuses each of them too
BAD_PATTERNS = [
    ("b d", PatternSyntaxError, 3, ["pack's pattern has no '*'", "as in 'b * d'"]),
    ("", PatternSyntaxError, 0, ["pack's pattern has no '*'"]),
    ("b * d *", PatternSyntaxError, 6, ["pack's pattern has a second '*'", "exactly one '*'"]),
    ("b d b *", PatternError, 4, ["axis 'b' is named twice in pack's pattern (first at column 0)"]),
    ("b (h d) *", PatternSyntaxError, 2, ["pack's pattern has no composite axes"]),
    ("b (h d) *", PatternSyntaxError, 2, ["name each dim, and '*' for the packed ones"]),
    ("... d", PatternSyntaxError, 0, ["pack's pattern has no '...'"]),
    ("b *rest d", PatternSyntaxError, 2, ["writes '*' alone, apart from the names by spaces", "the packed dims have no name"]),
    ("b* d", PatternSyntaxError, 1, ["writes '*' alone"]),
    ("n' *", PatternSyntaxError, 1, ["pack's pattern has no primes"]),
    ("b 3 *", PatternSyntaxError, 2, ["pack's pattern has no numbers"]),
    ("b-c *", PatternSyntaxError, 1, ["has 'b-c', which is not an axis name (letters, digits and '_', not starting with a digit)"]),
    ("b * d -> b d", PatternSyntaxError, 6, ["pack's pattern is one list of axes (no '->', ',' or '|')"]),
    ("b *, b *", PatternSyntaxError, 3, ["is one list of axes"]),
]


@pytest.mark.parametrize("pattern, error, column, needles", BAD_PATTERNS)
@pytest.mark.parametrize("op", ["pack", "unpack"])
def test_bad_patterns(op, pattern, error, column, needles):
    x = values(2, 3, 4)
    with pytest.raises(einops.EinopsError):
        einops.pack([x], pattern) if op == "pack" else einops.unpack(x, [(3,)], pattern)
    with pytest.raises(error) as info:
        einplan.pack([x], pattern) if op == "pack" else einplan.unpack(x, [(3,)], pattern)
    message = str(info.value)
    for needle in needles:
        assert needle.replace("pack's", f"{op}'s") in message
    assert_caret(message, pattern, column)


def test_a_pattern_is_a_str():
    with pytest.raises(TypeError, match="pack's pattern is a str, not list"):
        einplan.pack([values(2)], ["*"])
    with pytest.raises(TypeError, match="unpack's pattern is a str, not NoneType"):
        einplan.unpack(values(2), [(2,)], None)


# --- errors: pack's tensors -----------------------------------------------------------------------------


def test_named_axes_must_agree():
    tensors = [values(2, 3, 4), values(2, 5)]
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):  # einops leaves it to torch.cat
        einops.pack(tensors, "b * d")
    with pytest.raises(ShapeError) as info:
        einplan.pack(tensors, "b * d")
    message = str(info.value)
    assert message.splitlines()[0] == "axis 'd' is 4 in pack's tensor 0 but 5 in tensor 1 (shapes (2, 3, 4) and (2, 5))"
    assert_caret(message, "b * d", 4)
    with pytest.raises(ShapeError) as info:
        einplan.pack([values(2, 4), values(2, 4), values(3, 1, 4)], "bat * d")
    assert info.value.args[0].splitlines()[0] == "axis 'bat' is 2 in pack's tensor 0 but 3 in tensor 2 (shapes (2, 4) and (3, 1, 4))"
    assert_caret(str(info.value), "bat * d", 0)


def test_too_few_dims():
    tensors = [values(2, 3), values(2)]
    with pytest.raises(einops.EinopsError, match="assumes at least 2 axes"):
        einops.pack(tensors, "b * d")
    with pytest.raises(ShapeError) as info:
        einplan.pack(tensors, "b * d")
    assert str(info.value) == "pack's tensor 1 has shape (2,), 1 dim(s), but 'b * d' names 2: it needs at least 2 dim(s)"


def test_no_tensors():
    with pytest.raises(IndexError):  # einops: tensors[0]
        einops.pack([], "b *")
    with pytest.raises(ShapeError) as info:
        einplan.pack([], "b *")
    assert str(info.value) == "pack needs at least one tensor, got none"


def test_one_dtype():
    tensors = [values(2, 3), values(2, 4).float()]
    assert einops.pack(tensors, "b *")[0].dtype == torch.float64  # einops lets torch.cat promote
    with pytest.raises(EinplanError) as info:
        einplan.pack(tensors, "b *")
    assert str(info.value) == "pack's tensors must share one dtype: tensor 0 is torch.float64, tensor 1 is torch.float32"


def test_one_device():
    tensors = [values(2, 3), torch.empty(2, 4, dtype=torch.float64, device="meta")]
    with pytest.raises(RuntimeError):
        einops.pack(tensors, "b *")
    with pytest.raises(EinplanError) as info:
        einplan.pack(tensors, "b *")
    assert str(info.value) == "pack's tensors must be on one device: tensor 0 is on cpu, tensor 1 is on meta"


def test_pack_takes_a_list_of_tensors():
    x = values(3, 2)
    assert einops.pack(x, "*")[0].shape == (6,)  # einops iterates over the tensor's first dim
    with pytest.raises(TypeError, match="pack takes a list of tensors, not a Tensor"):
        einplan.pack(x, "*")
    with pytest.raises(TypeError, match="pack's tensor 1 is a list, not a torch.Tensor"):
        einplan.pack([x, [1.0, 2.0]], "*")


# --- errors: unpack ---------------------------------------------------------------------------------------


def test_unpack_rank():
    packed = values(2, 5, 1)
    with pytest.raises(einops.EinopsError, match="wrong dim"):
        einops.unpack(packed, [(5,)], "b *")
    with pytest.raises(ShapeError) as info:
        einplan.unpack(packed, [(5,)], "b *")
    assert str(info.value) == "unpack's packed tensor has shape (2, 5, 1), 3 dim(s), but 'b *' has 2: one per name and one for '*'"


def test_unpack_shapes_must_fill_the_dim():
    packed = values(2, 5)
    with pytest.raises(einops.EinopsError, match="could not split axis of size 5"):
        einops.unpack(packed, [(3,), (4,)], "b *")
    with pytest.raises(ShapeError) as info:
        einplan.unpack(packed, [(3,), (4,)], "b *")
    assert info.value.args[0].splitlines()[0] == "unpack's shapes hold 7 (3 + 4) along '*', but the packed tensor's '*' dim is 5"
    assert_caret(str(info.value), "b *", 2)


def test_no_shapes_for_a_dim_that_holds_something():
    packed = values(2, 5)
    assert einops.unpack(packed, [], "b *") == []  # einops drops the 5 silently
    with pytest.raises(ShapeError, match=r"unpack's shapes hold 0 \(none\) along '\*', but the packed tensor's '\*' dim is 5"):
        einplan.unpack(packed, [], "b *")


def test_a_minus_one_that_would_overlap():
    """The other shapes need more than the dim: einops slices 3:1 for the -1 and returns wrong pieces."""
    packed = values(2, 5)
    pieces = einops.unpack(packed, [(3,), (-1,), (4,)], "b *")
    assert [piece.shape[1] for piece in pieces] == [3, 0, 4]  # 7 columns out of 5
    with pytest.raises(ShapeError) as info:
        einplan.unpack(packed, [(3,), (-1,), (4,)], "b *")
    first = info.value.args[0].splitlines()[0]
    assert first == "unpack's shapes other than shape 1 (-1,) hold 7 (3 + 4) along '*', more than the packed tensor's '*' dim, 5"


@pytest.mark.parametrize(
    "packed_shape, shapes, needle",
    [
        ((2, 5), [(-1,), (2, -1)], "unpack infers at most one size (one -1 in all the shapes): shape 0 is (-1,), shape 1 is (2, -1)"),
        ((2, 5), [(-1, -1)], "unpack infers at most one size (one -1 in all the shapes): shape 0 is (-1, -1)"),
        ((2, 5), [(2, -1)], "unpack cannot infer the -1 of shape 0 (2, -1): 2 does not divide the 5 that the other shapes leave"),
        ((2, 0), [(0, -1)], "unpack cannot infer the -1 of shape 0 (0, -1): beside a 0 it could be any size"),
        ((2, 5), [(0, -1)], "whatever the -1, a shape with a 0 holds nothing, but the other shapes leave 5"),
        ((2, 5), [(-2,), (7,)], "unpack's shape 0 is (-2,): a size is at least 0, or -1 for the rest"),
    ],
)
def test_minus_ones_einops_also_refuses(packed_shape, shapes, needle):
    packed = values(*packed_shape)
    with pytest.raises(einops.EinopsError):
        einops.unpack(packed, shapes, "b *")
    with pytest.raises(ShapeError) as info:
        einplan.unpack(packed, shapes, "b *")
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "packed, shapes, needle",
    [
        ([[1.0]], [(1,)], "unpack's packed tensor is a list, not a torch.Tensor"),
        (None, [(1,)], "unpack's packed tensor is a NoneType, not a torch.Tensor"),
        (torch.zeros(1, 2), "2", "unpack takes a list of shapes, not a str"),
        (torch.zeros(1, 2), [2], "unpack's shape 0 is 2, not a tuple, list or torch.Size"),
        (torch.zeros(1, 2), [(2.0,)], "unpack's shape 0 is (2.0,): its sizes must be ints, not float"),
        (torch.zeros(1, 2), [(True, True)], "unpack's shape 0 is (True, True): its sizes must be ints, not bool"),
    ],
)
def test_unpack_type_errors(packed, shapes, needle):
    with pytest.raises(TypeError) as info:
        einplan.unpack(packed, shapes, "b *")
    assert not isinstance(info.value, EinplanError)
    assert str(info.value) == needle


def test_exported():
    assert {"pack", "unpack"} <= set(einplan.__all__)
    assert einplan.pack is einplan.packing.pack and einplan.unpack is einplan.packing.unpack
