"""``einplan.einsum``: torch.einsum's language and meaning through einplan's planner, cache and code.

Every result is compared with ``torch.einsum`` on the same equation (float64, tight tolerances):
a table of cases, both held-out corpora (tests/data/heldout_einsum.txt with its sizes, and the 25
expressions it excludes, tests/data/heldout_einsum_diagonal.txt), hypothesis-generated equations
and sizes, each with every lowering forced in turn; gradients with gradcheck; ``explain``,
``code``, ``plan_for`` and ``kernel`` with ``einsum=True``; torch's list and sublist forms; and the
errors, each of which torch.einsum raises too.  Last, the messages ``bl`` gives a letter string.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einplan
from conftest import ALL_LOWERINGS, assert_matches, einsum_shapes, lowering_id, parse_einsum, random_tensors
from einplan import letters, runtime

DATA = Path(__file__).parent / "data"

# (equation, shapes): matmul, batch matmul, implicit outputs, traces, diagonals (also of a letter
# another operand has), ellipses with broadcasting, 0-d operands, sizes 0 and 1, letters of size 1
# that torch broadcasts, spaces, upper-case letters
CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ba,ca", [(3, 4), (2, 4)]),
    ("ii", [(4, 4)]),
    ("ii->", [(4, 4)]),
    ("bii->b", [(2, 3, 3)]),
    ("ii->i", [(4, 4)]),
    ("iii->i", [(3, 3, 3)]),
    ("xii,xip->pi", [(2, 3, 3), (2, 3, 4)]),
    ("bb,ff,be->e", [(3, 3), (2, 2), (3, 4)]),
    ("nn,bn->bn", [(4, 4), (3, 4)]),
    ("xyn,nn,xyn->xy", [(2, 3, 4), (4, 4), (2, 3, 4)]),
    ("ij,ij->ij", [(2, 3), (2, 3)]),
    ("i,j->ij", [(2,), (3,)]),
    ("...ij,...jk", [(2, 3, 4), (4, 5)]),
    ("...ij,...jk->...ik", [(5, 1, 2, 3), (4, 3, 2)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("i...->...", [(3, 2, 4)]),
    ("...i->", [(2, 3)]),
    ("i->...i", [(2,)]),
    ("ij...,jk->ik...", [(2, 3, 5), (3, 4)]),
    (",->", [(), ()]),
    ("", [()]),
    ("i,", [(3,), ()]),
    ("ij,,jk->ik", [(2, 3), (), (3, 4)]),
    ("ij,jk->ik", [(0, 3), (3, 4)]),
    ("ij,jk->ik", [(2, 0), (0, 4)]),
    ("ij,jk->ik", [(1, 1), (1, 1)]),
    ("i,i->i", [(1,), (3,)]),
    ("ij,jk", [(2, 1), (3, 4)]),
    ("ii,i->i", [(1, 1), (3,)]),
    (" i j , j k -> i k ", [(2, 3), (3, 4)]),
    ("Ii,iJ->IJ", [(2, 3), (3, 4)]),
    ("iI", [(2, 3)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 2)]),
]


# Forcing a lowering forces it on every step it can compute: the fused one (Triton's interpreter on
# a CPU) only computes a contraction followed by a max/min/logsumexp clause, which no einsum has,
# so forced it plans as the default does; the unrolled one declines steps over many terms.


def _run(equation: str, tensors, lowering=None) -> torch.Tensor | None:
    """einplan.einsum with ``lowering`` forced; None where a forced lowering declines a step."""
    try:
        return einplan.einsum(equation, *tensors, lowering=lowering)
    except einplan.UnsupportedError as error:
        if lowering is not None and ("cannot compute" in str(error) or "not implemented yet" in str(error)):
            return None
        raise


def _check(equation: str, shapes, lowerings=ALL_LOWERINGS, seed: int = 0, dtype=torch.float64) -> int:
    """Compare with torch.einsum under each lowering; returns how many lowerings computed it."""
    tensors = random_tensors(shapes, dtype=dtype, seed=seed)
    want = torch.einsum(equation, *tensors)
    computed = 0
    for lowering in lowerings:
        got = _run(equation, tensors, lowering)
        if got is None:
            continue
        assert_matches(got, want, f"einsum {equation!r} shapes {shapes} lowering={lowering_id(lowering)} {dtype}")
        computed += 1
    return computed


@pytest.mark.parametrize("case", CASES, ids=[c[0] or "(empty)" for c in CASES])
def test_table_matches_torch_einsum_under_every_lowering(case):
    equation, shapes = case
    # the default plan and the two general lowerings compute every step; unrolled may decline
    assert _check(equation, shapes) >= 3


def test_float32_and_complex_match_torch_einsum():
    for equation, shapes in CASES[:12]:
        _check(equation, shapes, lowerings=(None,), dtype=torch.float32)
        tensors = [torch.complex(a, b) for a, b in zip(random_tensors(shapes), random_tensors(shapes, seed=1), strict=True)]
        torch.testing.assert_close(einplan.einsum(equation, *tensors), torch.einsum(equation, *tensors), rtol=1e-10, atol=1e-12)


# --- the held-out corpora -------------------------------------------------------------------------


def _rows(name: str, sizes_column: int) -> list[tuple[int, str, str]]:
    rows = []
    for number, line in enumerate((DATA / name).read_text().splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            fields = line.split("\t")
            rows.append((number, fields[0], fields[sizes_column]))
    return rows


HELDOUT = _rows("heldout_einsum.txt", 2)
DIAGONAL = _rows("heldout_einsum_diagonal.txt", 1)


def test_the_corpora_are_complete():
    """489 expressions in the held-out file, and the 25 it excludes, each a diagonal torch reads."""
    assert len(HELDOUT) == 489
    header = (DATA / "heldout_einsum.txt").read_text()
    excluded = re.findall(r"^#\s+'([^']*)'\s+letters", header, flags=re.M)
    assert len(excluded) == 25
    assert [row[1] for row in DIAGONAL] == excluded
    for _, equation, _ in DIAGONAL:
        operands, _ = parse_einsum(equation)
        assert any(op.count(s) > 1 and any(s in other for other in operands if other is not op) for op in operands for s in op)


def test_heldout_corpus_matches_torch_einsum():
    """Every original string of the held-out file, at its sizes: the default plan and each lowering
    forced in float64 (unrolled where it computes the steps), and the default plan in float32."""
    failures = []
    for number, equation, sizes in HELDOUT:
        shapes = einsum_shapes(equation, sizes)
        try:
            assert _check(equation, shapes, seed=number) >= 3
            _check(equation, shapes, lowerings=(None,), seed=number, dtype=torch.float32)
        except Exception as error:  # noqa: BLE001 - every failing line is reported below
            failures.append(f"line {number}: {equation!r} {shapes}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("row", DIAGONAL, ids=[row[1] for row in DIAGONAL])
def test_excluded_diagonals_match_torch_einsum(row):
    """The 25 repeated-letter expressions bl cannot spell, under the default plan and every lowering."""
    number, equation, sizes = row
    assert _check(equation, einsum_shapes(equation, sizes), seed=number) >= 3


# --- generated equations --------------------------------------------------------------------------

ALPHABET = "abcdeAB"


@st.composite
def equations(draw):
    """An equation torch accepts, with shapes: repeated letters anywhere (diagonals, also of letters
    other operands have), '...' broadcast across operands, implicit or explicit output, spaces,
    sizes 0-3, and letters of size 1 beside larger sizes."""
    letters = draw(st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=5, unique=True))
    sizes = {s: draw(st.integers(0, 3)) for s in letters}
    operands = [draw(st.lists(st.sampled_from(letters), max_size=4)) for _ in range(draw(st.integers(1, 4)))]
    batch = draw(st.lists(st.integers(1, 3), max_size=2))
    shapes = []
    for op in operands:
        ones = {s for s in set(op) if sizes[s] != 1 and draw(st.integers(0, 5)) == 0}  # torch broadcasts a 1
        shape = [1 if s in ones else sizes[s] for s in op]
        if draw(st.integers(0, 3)) == 0:
            covered = batch[len(batch) - draw(st.integers(0, len(batch))) :]
            covered = [1 if draw(st.integers(0, 4)) == 0 else d for d in covered]
            where = draw(st.integers(0, len(op)))
            op.insert(where, "...")
            shape[where:where] = covered
        shapes.append(tuple(shape))
    present = list(dict.fromkeys(s for op in operands for s in op if s != "..."))
    lhs = ",".join("".join(op) for op in operands)
    if draw(st.booleans()):
        output = list(draw(st.permutations([s for s in present if draw(st.booleans())])))
        if draw(st.booleans()):
            output.insert(draw(st.integers(0, len(output))), "...")
        lhs += "->" + "".join(output)
    spaced = "".join(c + (" " if draw(st.integers(0, 6)) == 0 and c not in ".-" else "") for c in lhs)
    return spaced, shapes


SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
def test_generated_equations_match_torch_einsum(lowering):
    computed = []

    @SETTINGS
    @given(case=equations())
    def check(case):
        equation, shapes = case
        computed.append(_check(equation, shapes, lowerings=(lowering,), seed=len(equation)))

    check()
    assert sum(computed) >= len(computed) // (5 if lowering == einplan.UNROLLED else 1), computed


def test_the_generator_covers_what_torch_reads_differently():
    """Diagonals of a letter another operand has, broadcast 1s, ellipses, implicit outputs, spaces, 0-d operands."""
    seen = dict.fromkeys(("shared diagonal", "broadcast 1", "ellipsis", "implicit", "space", "0-d", "size 0"), 0)

    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(case=equations())
    def look(case):
        equation, shapes = case
        operands, _ = parse_einsum(equation)
        seen["shared diagonal"] += any(op.count(s) > 1 and any(s in o for o in operands if o is not op) for op in operands for s in op)
        seen["broadcast 1"] += "1" in letters.spelling(equation, shapes).replace(",", " ").split()
        seen["ellipsis"] += "..." in equation
        seen["implicit"] += "->" not in equation
        seen["space"] += " " in equation
        seen["0-d"] += any(not shape for shape in shapes)
        seen["size 0"] += any(0 in shape for shape in shapes)

    look()
    assert all(n >= 5 for n in seen.values()), seen


# --- gradients, compile, the other call forms, the cache ------------------------------------------


@pytest.mark.parametrize(
    "equation, shapes",
    [
        ("xii,xip->pi", [(2, 3, 3), (2, 3, 4)]),
        ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),
        ("...ij,...jk", [(2, 2, 3), (3, 2)]),
        ("bb,ff,be->e", [(3, 3), (2, 2), (3, 2)]),
        ("i,i->i", [(1,), (3,)]),
    ],
)
def test_gradients_pass_gradcheck(equation, shapes):
    tensors = [t.requires_grad_() for t in random_tensors(shapes)]
    assert torch.autograd.gradcheck(lambda *xs: einplan.einsum(equation, *xs), tensors)


def test_list_and_sublist_forms_are_torch_einsum():
    a, b = random_tensors([(2, 3), (3, 4)])
    want = torch.einsum("ij,jk->ik", a, b)
    assert_matches(einplan.einsum("ij,jk->ik", [a, b]), want)
    assert_matches(einplan.einsum("ij,jk", (a, b)), want)
    assert_matches(einplan.einsum(a, [0, 1], b, [1, 2], [0, 2]), torch.einsum(a, [0, 1], b, [1, 2], [0, 2]))
    assert_matches(einplan.einsum(a, [0, Ellipsis], b, [Ellipsis, 51]), torch.einsum(a, [0, Ellipsis], b, [Ellipsis, 51]))
    with pytest.raises(ValueError):
        torch.einsum(a, [0, 52])
    with pytest.raises(einplan.PatternError, match=re.escape("subscript 52 in argument 1 is not an int in [0, 52) or Ellipsis")):
        einplan.einsum(a, [0, 52])


def test_the_cache_keeps_the_two_readings_apart():
    """The same text is a chain for bl and a diagonal for einsum: two plans, each right."""
    a, b = random_tensors([(3, 3), (3, 4)])
    text = "n n, n p -> p n"
    assert_matches(einplan.bl(text, a, b), (a @ b).T)  # n n' , n' p -> p n
    assert_matches(einplan.einsum(text, a, b), torch.einsum("nn,np->pn", a, b))  # torch ignores the spaces
    assert_matches(einplan.bl(text, a, b), (a @ b).T)
    assert_matches(einplan.einsum(text, a, b), torch.einsum(text, a, b))


def test_under_torch_compile_with_no_graph_break():
    x, y = random_tensors([(2, 3, 3), (2, 3, 4)])

    @torch.compile(fullgraph=True, backend="eager")
    def f(a, b):
        return einplan.einsum("xii,xip->pi", a, b) * 2

    assert_matches(f(x, y), 2 * torch.einsum("xii,xip->pi", x, y))


# --- explain, code, plan_for and kernel with einsum=True -------------------------------------------


def test_explain_shows_the_einplan_spelling():
    text = einplan.explain("xii,xip->pi", (2, 3, 3), (2, 3, 4), einsum=True)
    lines = text.splitlines()
    assert lines[0] == "einsum:   xii,xip->pi"
    assert lines[1] == "as einplan: x i i, x i p -> p i  (torch.einsum's reading: a repeated letter is a diagonal)"
    assert lines[2] == "sizes:    x=2, i=3, p=4"
    assert einplan.explain("ij,jk", (2, 3), (3, 4), einsum=True).splitlines()[1] == "as einplan: i j, j k -> i k"
    broadcast = einplan.explain("i,i->i", (1,), (3,), einsum=True).splitlines()[1]
    assert broadcast == "as einplan: 1, i -> i  (a letter of size 1 beside a larger size is spelled 1: torch.einsum broadcasts it)"
    # without the flag, the same text is an einplan pattern: 'xii' one axis, and the message says so
    with pytest.raises(einplan.EinplanError, match="call einplan.einsum"):
        einplan.explain("xii,xip->pi", (2, 3, 3), (2, 3, 4))


def test_code_and_plan_for_read_torch_einsum():
    source = einplan.code("xii,xip->pi", (2, 3, 3), (2, 3, 4), einsum=True)
    assert "x0: Float[Tensor, 'x i i']" in source and "diagonal" in source
    plan = runtime.plan_for("xii,xip->pi", (2, 3, 3), (2, 3, 4), einsum=True)
    assert plan.bound.resolved.chains is False
    assert runtime.plan_for("x i i, x i p -> p i", (2, 3, 3), (2, 3, 4)).bound.resolved.primed == "x i i', x i' p -> p i"
    with pytest.raises(
        einplan.EinplanError, match=re.escape("einsum= takes True (the pattern is a torch.einsum equation) or False, got 3")
    ):
        einplan.code("i->i", (2,), einsum=3)


def test_kernel_reads_torch_einsum():
    x, y = random_tensors([(4, 3, 3), (4, 3, 5)])
    k = einplan.kernel("xii,xip->pi", x, y, einsum=True, dynamic="x", name="diag", lowering=einplan.MATMUL)  # one plan at every x
    assert repr(k) == "<einplan Kernel diag einsum 'xii,xip->pi' planned for x=4, i=3, p=5, torch.float64, cpu, dynamic=('x',)>"
    assert k.plan.splitlines()[0] == "einsum:   xii,xip->pi"
    assert_matches(k(x, y), torch.einsum("xii,xip->pi", x, y))
    assert_matches(k(x[:2], y[:2]), torch.einsum("xii,xip->pi", x[:2], y[:2]))
    with pytest.raises(
        einplan.ShapeError, match=re.escape("operand 0 ('xii') of 'xii,xip->pi' has 3 subscript(s) but the tensor has 2 dims")
    ):
        k(x[0], y)
    trained = einplan.kernel("bij,bjk->bik", (2, 3, 4), (2, 4, 5), einsum=True, dtype=torch.float64)
    a, b = (t.requires_grad_() for t in random_tensors([(2, 3, 4), (2, 4, 5)]))
    trained(a, b).sum().backward()
    assert_matches(a.grad, torch.ones(2, 3, 5, dtype=torch.float64) @ b.detach().transpose(1, 2))


# --- errors: torch.einsum rejects each of these too -----------------------------------------------

ERRORS = [
    ("i1,jk->ik", [(2, 3), (3, 4)], einplan.PatternSyntaxError,
     "invalid torch.einsum equation: '1' is not a subscript: subscripts are single letters a-z, A-Z (spaces are ignored)\n    i1,jk->ik\n     ^"),
    ("i\t,i->", [(2,), (2,)], einplan.PatternSyntaxError,
     "invalid torch.einsum equation: '\\t' is not a subscript: subscripts are single letters a-z, A-Z (spaces are ignored)"),
    ("i.j", [(2, 3)], einplan.PatternSyntaxError, "invalid torch.einsum equation: '.' that is not part of an ellipsis '...'\n    i.j\n     ^"),
    ("...i...", [(2, 3)], einplan.PatternSyntaxError, "invalid torch.einsum equation: a second '...' in one subscript list (torch.einsum allows one)"),
    ("ij->j->i", [(2, 3)], einplan.PatternSyntaxError, "invalid torch.einsum equation: a second '->'\n    ij->j->i\n         ^"),
    ("i,j->i,j", [(2,), (3,)], einplan.PatternSyntaxError, "invalid torch.einsum equation: ',' in the output (the output is one subscript list)"),
    ("i - >", [(2,)], einplan.PatternSyntaxError, "invalid torch.einsum equation: '-' is not a subscript"),
    ("ij,jk->ii", [(2, 3), (3, 4)], einplan.PatternError, "output subscript 'i' appears more than once in the output\n    ij,jk->ii\n            ^"),
    ("ij,jk->iz", [(2, 3), (3, 4)], einplan.PatternError, "output subscript 'z' is in no input operand\n    ij,jk->iz\n            ^"),
    ("ij,jk->ik", [(2, 3)], einplan.ShapeError, "'ij,jk->ik' has 2 operand(s), but 1 tensor(s) were given"),
    ("ij,jk->ik", [(2, 3), (3, 4), (4,)], einplan.ShapeError, "'ij,jk->ik' has 2 operand(s), but 3 tensor(s) were given"),
    ("ij,jk->ik", [(2, 3, 3), (3, 4)], einplan.ShapeError,
     "operand 0 ('ij') of 'ij,jk->ik' has 2 subscript(s) but the tensor has 3 dims, shape (2, 3, 3), and no '...'"),
    ("...ij->i", [(2,)], einplan.ShapeError, "operand 0 ('...ij') of '...ij->i' needs at least 2 dims but the tensor has 1, shape (2,)"),
    ("ii->i", [(2, 3)], einplan.ShapeError,
     "subscript 'i' is repeated in operand 0 ('ii') of 'ii->i' with sizes 2 and 3: a diagonal needs equal sizes (shape (2, 3))"),
    ("ij,jk->ik", [(2, 3), (4, 4)], einplan.ShapeError,
     "subscript 'j' has size 3 in operand 0 ('ij') and 4 in operand 1 ('jk') of 'ij,jk->ik': sizes of one subscript must be equal or 1"),
    ("...ij,...jk", [(5, 2, 3), (2, 3, 4)], einplan.ShapeError,
     "dim 0 covered by '...' in operand 1 ('...jk') has size 2, which does not broadcast with size 5 in operand 0 ('...ij') (in '...ij,...jk')"),
]  # fmt: skip


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_errors_are_einplans_and_torch_rejects_them_too(case):
    equation, shapes, kind, message = case
    tensors = random_tensors(shapes)
    with pytest.raises((RuntimeError, ValueError)):
        torch.einsum(equation, *tensors)
    with pytest.raises(kind) as raised:
        einplan.einsum(equation, *tensors)
    assert str(raised.value).startswith(message), str(raised.value)
    with pytest.raises(kind):  # explain reads the equation the same way
        einplan.explain(equation, *shapes, einsum=True)


@st.composite
def maybe_equations(draw):
    """Equations and shapes that torch may accept or reject: repeated output letters, output letters
    in no input, '...' anywhere, dim counts one off, an operand too many, sizes 1-3 that may not agree."""
    operands = []
    for _ in range(draw(st.integers(1, 3))):
        op = "".join(draw(st.lists(st.sampled_from("abcA"), max_size=3)))
        operands.append(draw(st.sampled_from([op, "..." + op, op + "...", op[:1] + "..." + op[1:]])))
    equation = ",".join(operands)
    if draw(st.booleans()):
        equation += "->" + "".join(draw(st.lists(st.sampled_from("abcA."), max_size=3))).replace(".", "...")
    shapes = []
    for op in operands:
        rank = len(op.replace("...", "")) + ("..." in op) * draw(st.integers(0, 2)) + (draw(st.integers(0, 9)) == 0)
        shapes.append(tuple(draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))))
    if draw(st.integers(0, 9)) == 0:
        shapes.append((2,))
    return equation, shapes


def test_accepts_and_rejects_what_torch_einsum_does():
    outcomes = {"both computed": 0, "both refused": 0}

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(case=maybe_equations())
    def check(case):
        equation, shapes = case
        tensors = random_tensors(shapes)
        try:
            want = torch.einsum(equation, *tensors)
        except (RuntimeError, ValueError):
            with pytest.raises(einplan.EinplanError):
                einplan.einsum(equation, *tensors)
            outcomes["both refused"] += 1
            return
        assert_matches(einplan.einsum(equation, *tensors), want, f"{equation!r} {shapes}")
        outcomes["both computed"] += 1

    check()
    assert min(outcomes.values()) >= 60, outcomes


def test_what_is_not_an_equation_or_a_tensor():
    with pytest.raises(TypeError, match="a torch.einsum equation is a str, not int"):
        einplan.einsum(3, torch.ones(2))
    with pytest.raises(TypeError, match="einplan operand 1 is a int, not a torch.Tensor"):
        einplan.einsum("i,i->", torch.ones(2), 3)
    with pytest.raises(einplan.EinplanError, match="all operands must share one dtype"):
        einplan.einsum("i,i->", torch.ones(2), torch.ones(2, dtype=torch.float64))
    with pytest.raises(einplan.EinplanError, match="unknown lowering"):
        einplan.einsum("i->i", torch.ones(2), lowering="fastest")


# --- messages that teach: a letter string given to bl ---------------------------------------------

SPACED = "einplan separates axes by spaces: '{word}' is one axis here. If these are torch.einsum letters, spell them '{spaced}' (one axis per letter), or call einplan.einsum('{equation}', ...) for torch.einsum's language and meaning"


def test_bl_given_letters_says_how_to_spell_them():
    q, k = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 5)
    with pytest.raises(einplan.PatternError) as raised:
        einplan.bl("bhqd,bhkd->bhqk", q, k)
    hint = SPACED.format(word="bhqd", spaced="b h q d, b h k d -> b h q k", equation="bhqd,bhkd->bhqk")
    assert str(raised.value).endswith("\n    " + hint)
    assert "diagonal" not in str(raised.value)
    assert_matches(einplan.bl("b h q d, b h k d -> b h q k", q, k), torch.einsum("bhqd,bhkd->bhqk", q, k))


def test_bl_given_letters_that_mean_something_else_spaced_says_so():
    x, y = torch.randn(2, 3, 3), torch.randn(2, 3, 4)
    with pytest.raises(einplan.PatternError) as raised:
        einplan.bl("xii,xip->pi", x, y)
    lines = str(raised.value).splitlines()
    assert lines[-2] == "    " + SPACED.format(word="xii", spaced="x i i, x i p -> p i", equation="xii,xip->pi")
    assert lines[-1] == (
        "    in torch.einsum 'xii' is a diagonal; spelled 'x i i' for bl it would be a matrix-chain link, "
        "since operand 1 ('xip') has 'i' too; einplan.einsum keeps torch's meaning"
    )


def test_a_rank_error_and_a_missing_arrow_teach_too():
    with pytest.raises(einplan.ShapeError) as raised:
        einplan.bl("bij,bij->bij", torch.ones(2, 3, 4), torch.ones(2, 3, 4))
    assert str(raised.value) == (
        "operand 0 ('bij') has 1 axes but the tensor has 3 dims, shape (2, 3, 4) (in 'bij,bij->bij')\n    "
        + SPACED.format(word="bij", spaced="b i j, b i j -> b i j", equation="bij,bij->bij")
    )
    with pytest.raises(einplan.PatternSyntaxError) as raised:
        einplan.code("ij,jk", (2, 3), (3, 4))
    assert str(raised.value).endswith(
        "\n    einplan separates axes by spaces: 'ij' is one axis here. If these are torch.einsum letters, spell them "
        "'i j, j k -> i k' (one axis per letter), or call einplan.einsum('ij,jk', ...) for torch.einsum's language and meaning"
    )
    with pytest.raises(einplan.ShapeError, match=re.escape("call einplan.einsum('bij,bij->bij', ...)")):
        einplan.kernel("bij,bij->bij", (2, 3, 4), (2, 3, 4))
    with pytest.raises(einplan.PatternSyntaxError) as raised:
        einplan.bl("...ij,...jk->...ik", torch.ones(2, 3, 4), torch.ones(4, 5))
    assert str(raised.value).endswith(
        "\n    " + SPACED.format(word="ij", spaced="... i j, ... j k -> ... i k", equation="...ij,...jk->...ik")
    )


def test_patterns_that_are_not_letter_strings_get_no_hint():
    for pattern, shapes in [
        ("b n, n m -> b k", [(2, 3), (3, 4)]),  # spaces: einplan words
        ("b1,b1->b1", [(2, 3), (2, 3)]),  # a digit: not einsum letters
        ("i,j->k", [(2,), (3,)]),  # single letters with '->': not what einsum strings look like in bl
    ]:
        with pytest.raises(einplan.EinplanError) as raised:
            einplan.bl(pattern, *[torch.ones(s) for s in shapes])
        assert "einplan.einsum" not in str(raised.value), pattern


def test_cli_explain_and_codegen_take_einsum(capsys, tmp_path):
    from einplan.cli import main

    assert main(["explain", "xii,xip->pi", "-s", "2x3x3", "2x3x4", "--einsum"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "einsum:   xii,xip->pi",
        "as einplan: x i i, x i p -> p i  (torch.einsum's reading: a repeated letter is a diagonal)",
        "sizes:    x=2, i=3, p=4",
    ]
    target = tmp_path / "kernels.py"
    assert main(["codegen", "-k", "diag = xii,xip->pi : x=2 i=3 p=4", "--einsum", "-o", str(target)]) == 0
    namespace: dict = {}
    exec(compile(target.read_text(), str(target), "exec"), namespace)  # the module codegen wrote
    x, y = random_tensors([(2, 3, 3), (2, 3, 4)], dtype=torch.float32)
    assert_matches(namespace["diag"](x, y), torch.einsum("xii,xip->pi", x, y))
