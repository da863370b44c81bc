"""einplan.kernel: call without planning, dynamic axes, jaxtyping checks, standalone saved modules."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import einplan
from einplan import EinplanError, Kernel, ShapeError, kernel, programs, resolve, runtime
from einplan.explain import describe
from einplan.kernels import module_source
from einplan.plan import Plan

QUAD = "b1 b2 n, n n, b1 b2 n -> b1 b2"


def quad_reference(l, A):
    return torch.einsum("xyn,nm,xym->xy", l, A, l)


@pytest.fixture
def quad_inputs():
    g = torch.Generator().manual_seed(0)
    l = torch.randn(8, 5, 6, generator=g, dtype=torch.float64)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    return l, A


def count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_kernel_matches_einsum_and_exposes_plan_and_source(quad_inputs):
    l, A = quad_inputs
    quad = kernel(QUAD, l, A, l, name="quad")
    assert isinstance(quad, Kernel)
    torch.testing.assert_close(quad(l, A, l), quad_reference(l, A))
    assert isinstance(quad.plan_object, Plan)
    explained = describe(quad.plan_object)
    assert quad.plan.split("source:")[0] == explained.split("source:")[0]
    assert quad.plan.endswith(quad.source[quad.source.index("def quad(") :].split("\n\n\n")[0])
    assert "primed:   b1 b2 n, n n', b1 b2 n' -> b1 b2" in quad.plan
    assert quad.sizes == {"b1": 8, "b2": 5, "n": 6}
    assert (quad.dtype, quad.device) == (torch.float64, torch.device("cpu"))
    source = quad.source
    assert "def quad(" in source and "import torch" in source
    assert "x0: Float[Tensor, 'b1=8 b2=5 n=6']" in source
    assert f"einplan {einplan.__version__}" in source and "primed:   b1 b2 n, n n', b1 b2 n' -> b1 b2" in source
    assert "sizes:    b1=8, b2=5, n=6" in source and "torch.float64" in source and "device:   cpu" in source
    compile(source, "quad.py", "exec")


def test_kernel_from_shapes_with_dtype_name_and_device():
    k = kernel("b n, m n -> b m", (4, 3), (5, 3), dtype="float64", device="cpu")
    x, A = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(k(x, A), x @ A.T)
    assert k.dtype == torch.float64
    with pytest.raises(EinplanError, match="not a torch dtype"):
        kernel("b n, m n -> b m", (4, 3), (5, 3), dtype="float65")


def test_calls_do_not_parse_or_plan(monkeypatch, quad_inputs):
    l, A = quad_inputs
    quad = kernel(QUAD, l, A, l)

    def forbidden(*args, **kwargs):
        raise AssertionError("planned or parsed on a call")

    kernel_module = sys.modules["einplan.kernels"]

    monkeypatch.setattr(programs, "make_plan", forbidden)
    monkeypatch.setattr(kernel_module, "bind", forbidden)
    monkeypatch.setattr(resolve, "resolve", forbidden)
    monkeypatch.setattr(programs, "resolve", forbidden)
    for _ in range(3):
        torch.testing.assert_close(quad(l, A, l), quad_reference(l, A))


def test_dynamic_axis_plans_once_per_size(monkeypatch, quad_inputs):
    l, A = quad_inputs
    # a forced lowering keeps one plan at every b1, whatever the cost model's constants
    quad = kernel(QUAD, l, A, l, dynamic="b1", lowering=einplan.MATMUL)
    plans = count_calls(monkeypatch, programs, "make_plan")
    for rows in (3, 3, 5, 3, 5):
        torch.testing.assert_close(quad(l[:rows], A, l[:rows]), quad_reference(l[:rows], A))
    assert len(plans) == 2  # once for b1=3, once for b1=5
    torch.testing.assert_close(quad(l, A, l), quad_reference(l, A))
    assert len(plans) == 2


def test_size_independent_dynamic_axis_shares_one_function(monkeypatch):
    # x @ A.T has no reshape: the code does not depend on b, so b stays symbolic
    k = kernel("b n, m n -> b m", (4, 3), (5, 3), dynamic=["b"], lowering=einplan.MATMUL)
    assert "x0: Float[Tensor, 'b n=3']" in k.source
    assert "-> Float[Tensor, 'b m=5']" in k.source
    compiled = count_calls(monkeypatch, sys.modules["einplan.kernels"], "compile_source")
    A = torch.randn(5, 3)
    for rows in (1, 7, 30):
        x = torch.randn(rows, 3)
        torch.testing.assert_close(k(x, A), x @ A.T)
    assert not [source for source, _ in compiled if "torch.matmul" in source]  # no new kernel function


def test_split_with_dynamic_batch_keeps_it_unpinned_and_shares_one_function():
    # the code's reshape of x takes b from the tensor (-1 or unflatten): b stays symbolic
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 64, generator=g)
    W = torch.randn(8, 8, 16, generator=g)
    k = kernel("b (h d), h d e -> b h e", x, W, h=8, dynamic=("b",))
    assert "x0: Float[Tensor, 'b h*d=64']" in k.source
    assert "-> Float[Tensor, 'b h=8 e=16']" in k.source
    for rows in (5, 17, 64):
        xs = torch.randn(rows, 64, generator=g)
        torch.testing.assert_close(k(xs, W), torch.einsum("bhd,hde->bhe", xs.reshape(rows, 8, 8), W))
    assert len(k._table.functions) == 1  # one function for b = 32, 5, 17 and 64


def test_other_size_of_a_fixed_axis_names_axis_and_planned_size(quad_inputs):
    l, A = quad_inputs
    quad = kernel(QUAD, l, A, l, dynamic="b1")
    with pytest.raises(ShapeError, match=r"axis 'b2' is 4 in this call .* planned for b2=5") as info:
        quad(l[:, :4], A, l[:, :4])
    assert "jaxtyping" in str(info.value)
    unchecked = kernel(QUAD, l, A, l, dynamic="b1", check=False)
    with pytest.raises(ShapeError, match=r"axis 'n' is 4 in this call .* planned for n=6") as info:
        unchecked(l[..., :4], A[:4, :4], l[..., :4])
    assert "jaxtyping" not in str(info.value)


def test_jaxtyping_failure_becomes_shape_error_naming_axis(quad_inputs):
    l, A = quad_inputs
    quad = kernel(QUAD, l, A, l, dynamic="b1")
    with pytest.raises(ShapeError, match=r"axis 'b1' has conflicting sizes.*has 3.*has 4") as info:
        quad(l[:3], A, l[:4])
    assert "typechecking parameter 'x2'" in str(info.value)
    with pytest.raises(ShapeError, match="2 tensor"):
        quad(l, A)


def test_dynamic_size_with_another_plan_is_rejected():
    # find two batch sizes where the planner picks different lowerings for a dot product
    def kinds(b):
        return tuple(s.kind for s in runtime.plan_for("b n, b n -> b", (b, 4), (b, 4)).steps)

    sizes = [1, 2, 4, 16, 64, 256, 1024, 4096, 16384]
    pair = next(((a, b) for a, b in zip(sizes, sizes[1:], strict=True) if kinds(a) != kinds(b)), None)
    if pair is None:
        pytest.skip("the cost model picks one lowering for every batch size here")
    small, large = pair
    k = kernel("b n, b n -> b", (small, 4), (small, 4), dynamic="b")
    x = torch.randn(large, 4)
    with pytest.raises(EinplanError, match=rf"planned at b={small} .* at b={large} the planner would choose"):
        k(x, x)
    forced = kernel("b n, b n -> b", (small, 4), (small, 4), dynamic="b", lowering=kinds(small)[0])
    torch.testing.assert_close(forced(x, x), (x * x).sum(-1))


def test_wrong_dtype_device_and_dynamic_name():
    k = kernel("b n, m n -> b m", (4, 3), (5, 3))
    with pytest.raises(EinplanError, match="planned for torch.float32, but the tensors are torch.float64"):
        k(torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(EinplanError, match="dynamic axis 'q' is not an axis"):
        kernel("b n, m n -> b m", (4, 3), (5, 3), dynamic="q")
    with pytest.raises(EinplanError, match="Python identifier"):
        kernel("b n, m n -> b m", (4, 3), (5, 3), name="not a name")


def test_ellipsis_composite_and_argmax_kernels():
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    dot = kernel("... i, ... i -> ...", x, y)
    torch.testing.assert_close(dot(x, y), (x * y).sum(-1))
    assert "x0: Float[Tensor, '2 3 i=4']" in dot.source
    q, W = torch.randn(5, 12), torch.randn(3, 4, 7)
    heads = kernel("b (h d), h d e -> b h e", q, W)
    assert "x0: Float[Tensor, 'b=5 h*d=12']" in heads.source
    torch.testing.assert_close(heads(q, W), torch.einsum("bhd,hde->bhe", q.reshape(5, 3, 4), W))
    A, B = torch.randn(6, 3), torch.randn(9, 3)
    best = kernel("m d, n d -> | argmax m n", A, B)
    i, j = best(A, B)
    assert (A @ B.T)[i, j] == (A @ B.T).max()
    assert "tuple[Int64[Tensor, ''], Int64[Tensor, '']]" in best.source


def _path_without_einplan(root: Path) -> list[str]:
    """This interpreter's sys.path minus einplan: site dirs are mirrored without einplan's entries."""
    entries = []
    for number, entry in enumerate(p for p in sys.path if p and os.path.isdir(p)):
        path = Path(entry).resolve()
        if (path / "einplan" / "__init__.py").exists():
            continue  # the source tree
        names = [child.name for child in path.iterdir()]
        if not any("einplan" in name for name in names):
            entries.append(str(path))
            continue
        mirror = root / f"site{number}"
        mirror.mkdir()
        for name in names:
            if "einplan" not in name:
                os.symlink(path / name, mirror / name)
        entries.append(str(mirror))
    return entries


@pytest.mark.slow
def test_saved_module_runs_without_einplan(tmp_path, quad_inputs):
    l, A = quad_inputs
    quad = kernel(QUAD, l, A, l, name="quad")
    saved = quad.save(tmp_path / "quad_kernel.py")
    first = saved.read_bytes()
    quad.save(saved)
    assert saved.read_bytes() == first
    assert kernel(QUAD, l, A, l, name="quad").source.encode() == first
    several = [
        kernel("b n, m n -> b m", (7, 6), (4, 6), name="rows_times_shared", dtype=torch.float64),
        kernel("m d, n d -> | max m n", (5, 6), (9, 6), name="max_inner", dtype=torch.float64),
    ]
    (tmp_path / "more_kernels.py").write_text(module_source(several))

    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:] = [p for p in sys.path if 'site-packages' not in p] + {_path_without_einplan(tmp_path)!r}
        try:
            import einplan
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("einplan is importable: " + repr(einplan))
        sys.path.insert(0, {str(tmp_path)!r})
        import torch, quad_kernel, more_kernels
        source = open(quad_kernel.__file__).read()
        imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert all(line.split()[1].split(".")[0] in ("torch", "jaxtyping") for line in imports), imports
        g = torch.Generator().manual_seed(1)
        l = torch.randn(8, 5, 6, generator=g, dtype=torch.float64)
        A = torch.randn(6, 6, generator=g, dtype=torch.float64)
        torch.testing.assert_close(quad_kernel.quad(l, A, l), torch.einsum("xyn,nm,xym->xy", l, A, l))
        x, B = torch.randn(7, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
        torch.testing.assert_close(more_kernels.rows_times_shared(x, B), torch.einsum("bn,mn->bm", x, B))
        P, Q = torch.randn(5, 6, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64)
        torch.testing.assert_close(more_kernels.max_inner(P, Q), torch.einsum("md,nd->mn", P, Q).max())
        from beartype import beartype
        from jaxtyping import TypeCheckError, jaxtyped
        checked = jaxtyped(typechecker=beartype)(quad_kernel.quad)
        torch.testing.assert_close(checked(l, A, l), quad_kernel.quad(l, A, l))
        try:
            checked(l[:, :4], A, l[:, :4])
        except TypeCheckError:
            pass
        else:
            raise SystemExit("the pinned annotations accepted b2=4")
        print("standalone ok")
        """
    )
    (tmp_path / "run_saved.py").write_text(script)
    result = subprocess.run([sys.executable, "-I", "-S", "run_saved.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "standalone ok" in result.stdout


def test_kernel_planned_for_torch_compile(shipped_cost_model):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(512, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(512, 3, 3, generator=g, dtype=torch.float64)
    eager = kernel("b i j, b j k -> b i k", a, b)
    fused = kernel("b i j, b j k -> b i k", a, b, compiled=True)
    assert "torch.matmul" in eager.source and "torch.matmul" not in fused.source
    torch.testing.assert_close(fused(a, b), torch.einsum("bij,bjk->bik", a, b), rtol=1e-12, atol=1e-12)
    # a dynamic axis re-plans with the same option
    smaller = kernel("b i j, b j k -> b i k", a, b, compiled=True, dynamic="b")
    torch.testing.assert_close(smaller(a[:300], b[:300]), torch.einsum("bij,bjk->bik", a[:300], b[:300]), rtol=1e-12, atol=1e-12)
    replanned = smaller._entry_for_shapes(((300, 3, 3), (300, 3, 3)))
    assert replanned.plan.options.compiled and "torch.matmul" not in replanned.source
