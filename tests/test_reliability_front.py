"""The front end under odd arguments: sizes, limits, dtypes, devices and names are checked the same
way on every path (cold or warm cache, bl, code, explain, kernel, torch.compile); kernels copy and
pickle; what a dynamic kernel or the plan cache drops is really freed; the CLI answers in one line."""

from __future__ import annotations

import copy
import gc
import linecache
import pickle

import pytest
import torch

import einplan
from einplan import EinplanError, ShapeError, bl, programs
from einplan.cli import main
from einplan.kernels import MAX_PROGRAMS

SPLIT = "b (h d), h d e -> b h e"


def split_inputs():
    return torch.randn(2, 8), torch.randn(2, 4, 3)


# --- 16: validation does not depend on the cache ----------------------------------------------------


@pytest.mark.parametrize("bad", [2.0, True])
def test_a_float_or_bool_size_is_refused_warm_as_cold(bad):
    x, W = split_inputs()
    programs.clear_cache()
    with pytest.raises(ShapeError, match="size of axis 'h' must be a non-negative int"):
        bl(SPLIT, x, W, h=bad)
    bl(SPLIT, x, W, h=2)  # the int is now cached; 2.0 and True hash as 2 and 1
    with pytest.raises(ShapeError, match="size of axis 'h' must be a non-negative int"):
        bl(SPLIT, x, W, h=bad)


@pytest.mark.parametrize("bad", [64.0, True, 0, -1, "64"])
def test_a_memory_limit_that_is_not_a_positive_int_is_refused_everywhere(bad):
    a = torch.randn(3, 4)
    programs.clear_cache()
    bl("i j, j k -> i k", a, a.T, memory_limit=64)
    bl("i j, j k -> i k", a, a.T, memory_limit=1)
    for call in (
        lambda: bl("i j, j k -> i k", a, a.T, memory_limit=bad),
        lambda: einplan.code("i j, j k -> i k", a, a.T, memory_limit=bad),
        lambda: einplan.explain("i j, j k -> i k", a, a.T, memory_limit=bad),
        lambda: einplan.kernel("i j, j k -> i k", a, a.T, memory_limit=bad),
    ):
        with pytest.raises(EinplanError, match="memory_limit must be a positive int"):
            call()


def test_the_plan_cache_size_is_a_positive_int_not_a_bool():
    for bad in (True, 0, 2.0):
        with pytest.raises(EinplanError, match="plan cache size"):
            programs.set_cache_size(bad)


# --- 4: a dynamic group takes a new batch shape of the same rank -------------------------------------


@pytest.mark.parametrize("group", ["...", "*batch"])
@pytest.mark.parametrize("check", [True, False])
def test_a_dynamic_group_takes_new_batch_shapes_of_the_same_rank(group, check):
    W = torch.randn(4, 3)
    k = einplan.kernel(f"{group} n, n m -> {group} m", (2, 3, 4), W, dynamic=group, check=check)
    for batch in ((5, 7), (1, 3), (2, 3), (6, 1)):
        x = torch.randn(*batch, 4)
        torch.testing.assert_close(k(x, W), x @ W)
    q = einplan.kernel(f"{group} m d, {group} n d -> {group} | max m n", (2, 3, 4, 5), (2, 3, 6, 5), dynamic=group, check=check)
    a, b = torch.randn(4, 7, 4, 5), torch.randn(4, 7, 6, 5)
    torch.testing.assert_close(q(a, b), (a @ b.mT).amax((-2, -1)))


def test_an_unhashable_lowering_is_refused_by_bl_as_by_explain():
    a = torch.randn(2, 2)
    for call in (lambda: bl("i j, j k -> i k", a, a, lowering=["x"]), lambda: einplan.explain("i j, j k -> i k", a, a, lowering=["x"])):
        with pytest.raises(EinplanError, match="unknown lowering"):
            call()


# --- 7: huge and odd arguments ---------------------------------------------------------------------


def test_a_size_beyond_int64_is_a_shape_error():
    x, W = split_inputs()
    with pytest.raises(ShapeError, match=r"above 9223372036854775807 \(2\*\*63 - 1\)"):
        bl(SPLIT, x, W, h=10**19)
    with pytest.raises(ShapeError, match=r"size of axis 'd' is 10000000000000000000"):
        bl("b (h d) -> b h d", torch.randn(2, 0), d=10**19)
    with pytest.raises(ShapeError, match="has a size above"):
        einplan.explain("i j, j k -> i k", (10**19, 3), (3, 4))
    with pytest.raises(ShapeError, match="has a size above"):
        einplan.kernel("i j, j k -> i k", (10**19, 3), (3, 4))
    with pytest.raises(ShapeError, match="output axis"):
        einplan.explain("i j -> (i j)", (2**40, 2**40))


def test_a_broadcast_tensor_beyond_storage_limits_is_planned():
    huge = torch.ones(1, 1).expand(2**31, 2**31)  # 2**62 elements, no storage
    text = einplan.explain("i j, i j -> i", huge, huge)
    assert "i=2147483648, j=2147483648" in text
    assert einplan.runtime.plan_for("i j, i j -> i", huge, huge).steps


def test_dtype_names_and_bad_dtypes_and_devices():
    assert "torch.float64" in einplan.explain("i j, j k -> i k", (2, 3), (3, 4), dtype="float64")
    assert einplan.runtime.plan_for("i j, j k -> i k", (2, 3), (3, 4), dtype="torch.float64").bound.dtype == torch.float64
    assert einplan.kernel("i j, j k -> i k", (2, 3), (3, 4), dtype="float64").dtype == torch.float64
    for bad in ("float99", 3, "Tensor"):
        with pytest.raises(EinplanError, match="not a torch dtype"):
            einplan.explain("i j, j k -> i k", (2, 3), (3, 4), dtype=bad)
    for call in (einplan.explain, einplan.code, einplan.runtime.plan_for, einplan.kernel):
        with pytest.raises(EinplanError, match="not a torch device: 'bogus'"):
            call("i j, j k -> i k", (2, 3), (3, 4), device="bogus")
        with pytest.raises(EinplanError, match="not a torch device"):
            call("i j, j k -> i k", (2, 3), (3, 4), device=1.5)


# --- 6: kernel names that the generated code uses --------------------------------------------------


@pytest.mark.parametrize("name", ["torch", "Tensor", "Float", "Int64", "range", "float", "len", "jaxtyping", "__all__", "__name__"])
def test_kernel_names_that_shadow_the_code_globals_are_refused(name):
    with pytest.raises(EinplanError, match=f"a kernel cannot be named {name!r}"):
        einplan.kernel("b n, m n -> b m", (4, 3), (5, 3), name=name)


def test_an_ordinary_kernel_name_runs_and_saves(tmp_path):
    a, b = torch.randn(4, 3), torch.randn(5, 3)
    k = einplan.kernel("b n, m n -> b m", a, b, name="rows_times")
    torch.testing.assert_close(k(a, b), a @ b.T)
    namespace: dict = {}
    exec(compile(k.source, "saved", "exec"), namespace)
    torch.testing.assert_close(namespace["rows_times"](a, b), a @ b.T)


# --- 9: copying and pickling kernels ----------------------------------------------------------------


def test_kernels_deep_copy_and_pickle_with_the_same_results():
    x, y = torch.randn(40, 3), torch.randn(50, 3)
    k = einplan.kernel("b n, m n -> b | max m", x, y, dynamic="b")
    k(x[:7], y)
    model = torch.nn.Module()
    model.k = k  # type: ignore[assignment]
    copies = [copy.deepcopy(k), pickle.loads(pickle.dumps(k)), copy.deepcopy(model).k]
    for c in copies:
        assert c is not k and c.source == k.source and repr(c) == repr(k)
        assert torch.equal(c(x, y), k(x, y))
        assert torch.equal(c(x[:9], y), k(x[:9], y))  # a dynamic size, planned in the copy
        with pytest.raises(ShapeError, match="axis 'm' is 49"):
            c(x, y[:49])


# --- 13: what a dynamic kernel and the plan cache drop is freed ---------------------------------------


def _einplan_lines() -> int:
    gc.collect()
    return sum(1 for name in linecache.cache if name.startswith("<einplan-"))


def test_a_dynamic_kernel_keeps_at_most_max_programs_functions():
    w = torch.randn(2, 4)
    k = einplan.kernel("b n, n m -> (b m)", (3, 2), w, dynamic="b")  # the merged output bakes b in
    before = _einplan_lines()
    for b in range(1, MAX_PROGRAMS + 40):
        x = torch.randn(b, 2)
        torch.testing.assert_close(k(x, w), (x @ w).reshape(-1))
    assert len(k._table.functions) <= MAX_PROGRAMS
    assert _einplan_lines() - before <= MAX_PROGRAMS
    x = torch.randn(3, 2)
    torch.testing.assert_close(k(x, w), (x @ w).reshape(-1))  # the planned size is always kept


def test_the_plan_cache_takes_its_source_lines_with_it():
    programs.set_cache_size(8)
    try:
        before = _einplan_lines()
        for n in range(1, 60):
            bl("i j, j k -> (i k)", torch.randn(n, 2), torch.randn(2, 3))
        assert _einplan_lines() - before <= 8
    finally:
        programs.set_cache_size(programs.CACHE_SIZE)


def test_a_traceback_still_shows_the_generated_lines():
    program = programs.lookup(
        "i j, j k -> i k",
        ((torch.Size((2, 3)), torch.float32, torch.device("cpu")), (torch.Size((3, 2)), torch.float32, torch.device("cpu"))),
        (),
        None,
        None,
    )
    filename = program.function.__code__.co_filename
    assert linecache.getline(filename, 1)


# --- 8: the command line answers in one line ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "i j, j k -> i k", "-s", "99999999999999999999x3", "-s", "3x4"],
        ["explain", "i j, j k -> i k", "--size", "i=99999999999999999999", "j=3", "k=4"],
        ["bench", "i j, j k -> i k", "-s", "2x3", "-s", "3x4", "--dtype", "bool", "--memory-limit", "1k"],
        ["bench", "i j, j k -> i k", "-s", "2x3", "-s", "3x4", "--device", "meta"],
        ["bench", "q d, k d -> q | argmax k", "-s", "2x3", "-s", "3x3", "--dtype", "complex64"],
        ["codegen", "i j, j k -> i k", "-s", "2x3", "-s", "3x4", "-o", "{tmp}/missing/k.py"],
        ["codegen", "i j, j k -> i k", "-s", "2x3", "-s", "3x4", "-o", "{tmp}"],
        ["codegen", "i j, j k -> i k", "-s", "2x3", "-s", "3x4", "--title", "\udcff\udcfe"],
        ["codegen", "i j, j k -> i k", "-s", "2x3", "-s", "3x4", "--name", "torch"],
        ["explain", "i j, j k -> i k", "-s", "2x3", "-s", "3x4", "--memory-limit", "0"],
    ],
)
def test_cli_errors_are_one_line_and_exit_2(capsys, tmp_path, argv):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"einplan {argv[0]}: error: "), err
    assert "Traceback" not in err


# --- 3: torch.compile with sizes and limits the compiler treats as dynamic -----------------------------


def test_compile_with_dynamic_int_size_and_memory_limit():
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()

    def f(x, W, h, limit):
        return bl(SPLIT, x, W, h=h, memory_limit=limit)

    compiled = torch.compile(f, dynamic=True, fullgraph=True, backend="aot_eager")
    for h, d in ((2, 4), (3, 4), (4, 2)):
        x, W = torch.randn(4, h * d), torch.randn(h, d, 3)
        for limit in (1 << 20, 1 << 21):
            torch.testing.assert_close(compiled(x, W, h, limit), f(x, W, h, limit))
    x, W = split_inputs()
    for bad in (2.0, True):  # refused under compile too (the eager rerun raises einplan's error)
        with pytest.raises(EinplanError):
            torch.compile(f, backend="aot_eager")(x, W, bad, None)
    with pytest.raises(EinplanError, match="memory_limit"):
        torch.compile(f, backend="aot_eager")(x, W, 2, True)
    dynamo.reset()


def test_functions_kept_for_traced_code_are_bounded(monkeypatch):
    """Each plan looked up under torch.compile keeps its function for the traced code; only the
    most recent MAX_TRACED stay (the plan cache is bounded too), each still reachable by its name."""
    from einplan import tracing

    monkeypatch.setattr(tracing, "MAX_TRACED", 8)
    functions = [eval(f"lambda *x: {k}") for k in range(20)]  # noqa: S307 - distinct stand-in functions
    names = [tracing.traced_name(f) for f in functions]
    assert len(tracing._TRACED_NAMES) == 8
    assert all(getattr(tracing._TRACED, n)() == k for k, n in list(enumerate(names))[-8:])
    assert not hasattr(tracing._TRACED, names[0])
    assert tracing.traced_name(functions[-1]) == names[-1]  # a kept function keeps its name


@pytest.mark.parametrize(
    "pattern, shape, sizes, want",
    [
        ("a b c -> b (a c)", (0, 0, 3), {}, (0, 0)),
        ("a b c -> (a b) c", (2, 3, 0), {}, (6, 0)),
        ("(a b) c -> b a c", (0, 3), {"a": 0, "b": 2}, (2, 0, 3)),
        ("(a b) c, c -> a b", (0, 0), {"a": 0, "b": 2}, (0, 2)),
    ],
)
def test_a_reshape_never_uses_minus_one_where_the_other_dims_hold_no_element(pattern, shape, sizes, want):
    """reshape(-1, 0) of an empty tensor is ambiguous to torch: such a view names every size."""
    tensors = [torch.zeros(shape)] + ([torch.zeros(shape[-1])] if pattern.count(",") else [])
    assert tuple(bl(pattern, *tensors, **sizes).shape) == want
