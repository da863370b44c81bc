"""The cases tests/test_distributed.py runs on 2 ranks (see distributed_cases.py): each one a
function of (mesh, record) that raises on a mismatch and returns what the parent checks."""

from __future__ import annotations

import linecache

import torch
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

import einplan
import einplan.distributed
from distributed_cases import as_dtensor, chunk_of

CASES: list = []
NAN = float("nan")


def data(shapes, seed: int, kind: str = "randn", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    if kind == "ints":  # small integers: many exact ties
        return [torch.randint(-2, 3, s, generator=g).to(dtype) for s in shapes]
    if dtype in (torch.int64, torch.int32):
        return [torch.randint(-9, 10, s, generator=g, dtype=dtype) for s in shapes]
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


def placement(spec):
    return Replicate() if spec is None else Shard(spec)


def same(got, want, exact: bool, what: str) -> None:
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), f"{what}: {got} vs {want}"
        for g, w in zip(got, want, strict=True):
            same(g, w, exact, what)
        return
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    if exact or not want.dtype.is_floating_point:
        assert torch.equal(got, want) or torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num()), (
            f"{what}: {got} vs {want}"
        )
    else:
        tol = 1e-12 if want.dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, equal_nan=True, msg=what)


def nbytes(out) -> int:
    if isinstance(out, tuple):
        return sum(nbytes(o) for o in out)
    return out.to_local().numel() * out.to_local().element_size()


def value_case(name, pattern, tensors, specs, placed, exact=False, call=None, **kw):
    """``pattern`` on DTensors placed by ``specs`` (a dim: Shard; None: Replicate) against einplan
    in one process; ``placed``: the result's placement ('Shard(0)', 'Partial', 'Replicate')."""

    def case(mesh, record):
        xs = [as_dtensor(t, mesh, placement(s)) for t, s in zip(tensors, specs, strict=True)]
        record.clear()
        out = (call or einplan.bl)(pattern, *xs, **kw)
        calls = list(record)
        want = (einplan.einsum if call is einplan.einsum else einplan.bl)(pattern, *tensors)
        first = out[0] if isinstance(out, tuple) else out
        assert isinstance(first, DTensor), type(first)
        shown = repr(first.placements[0])
        assert shown.startswith(placed) or (placed == "Partial" and isinstance(first.placements[0], Partial)), (
            f"placement {shown}, expected {placed}"
        )
        if isinstance(first.placements[0], Shard):
            dim = first.placements[0].dim
            rank, world = mesh.get_local_rank(), mesh.size()
            local = tuple(o.to_local() for o in out) if isinstance(out, tuple) else out.to_local()
            expected = tuple(chunk_of(w, dim, rank, world) for w in want) if isinstance(want, tuple) else chunk_of(want, dim, rank, world)
            same(local, expected, exact, name)
            assert tuple(first.shape) == tuple((want[0] if isinstance(want, tuple) else want).shape)
        elif isinstance(first.placements[0], Partial):
            same(out.full_tensor(), want, exact, name)
        else:
            same(tuple(o.to_local() for o in out) if isinstance(out, tuple) else out.to_local(), want, exact, name)
        elements = first.to_local().numel()
        shards = sum(x.to_local().numel() * x.to_local().element_size() for x in xs)
        return {
            "calls": calls,
            "result_bytes": nbytes(out),
            "placement": shown,
            "pattern": pattern,
            "elements": elements,
            "itemsize": tensors[0].element_size(),
            "operand_bytes": shards,
        }

    CASES.append((name, case))


def ref(shapes, specs, seed=0, **kw):
    return data(shapes, seed, **kw), specs


# -- the sharded axis kept: local plans, a Shard result, no communication -----------------------------
value_case("kept rows, uneven", "m d, n d -> m n", data([(7, 5), (6, 5)], 1), [0, None], "Shard(dim=0)")
value_case("kept, replicated operand narrowed", "m d, m d -> m", data([(7, 5), (7, 5)], 2), [0, None], "Shard(dim=0)")
value_case("kept, both sharded", "m d, m d -> m", data([(7, 5), (7, 5)], 3), [0, 0], "Shard(dim=0)")
value_case("kept, empty shard", "m d, n d -> m n", data([(1, 5), (6, 5)], 4), [0, None], "Shard(dim=0)")
value_case("kept, quadratic form chain", "b n, n n, b n -> b", data([(5, 4), (4, 4), (5, 4)], 5), [0, None, 0], "Shard(dim=0)")
value_case("kept, output dim 1", "m d, n d -> n m", data([(7, 5), (6, 5)], 6), [0, None], "Shard(dim=1)")
value_case("kept, logsumexp over another axis", "q d, k d -> q | logsumexp k", data([(7, 5), (9, 5)], 7), [0, None], "Shard(dim=0)")
value_case("kept, argmax over another axis", "q d, k d -> q | argmax k", data([(7, 5), (9, 5)], 8), [0, None], "Shard(dim=0)", exact=True)
value_case("kept, batched matmul", "b i j, b j k -> b i k", data([(3, 2, 4), (3, 4, 2)], 9), [0, 0], "Shard(dim=0)")
value_case("kept, sharded on the last dim", "d m, n d -> n m", data([(5, 7), (6, 5)], 10), [1, None], "Shard(dim=1)")

# -- a sum over the sharded axis: Partial, or one all_reduce with replicate=True ----------------------
value_case("partial, contracted axis sharded", "m d, n d -> m n", data([(4, 7), (3, 7)], 11), [1, 1], "Partial")
value_case("partial, then a mean clause", "a m, m b -> b | mean a", data([(4, 5), (5, 3)], 12), [1, 0], "Partial")
value_case("partial, empty shard", "m d, n d -> m n", data([(4, 1), (3, 1)], 13), [1, 1], "Partial")
value_case(
    "partial, replicate=True",
    "m d, n d -> m n",
    data([(4, 7), (3, 7)], 14),
    [1, 1],
    "Replicate",
    call=einplan.distributed.bl,
    replicate=True,
)
value_case("kept, einsum equation", "ij,kj->ik", data([(7, 4), (3, 4)], 16), [0, None], "Shard(dim=0)", call=einplan.einsum)
value_case("kept, einsum equation, diagonal", "ii->i", data([(5, 5)], 17), [0], "Shard(dim=0)", call=einplan.einsum)
value_case("partial, einsum equation", "ij,kj->ik", data([(4, 7), (3, 7)], 15), [1, 1], "Partial", call=einplan.einsum)

# -- a clause over the sharded axis: one combine, Replicate --------------------------------------------
W9 = "m d, n d -> | max m n"
value_case("max m n (W9), m sharded", W9, data([(7, 5), (6, 5)], 20), [0, None], "Replicate", exact=True)
value_case("max m n (W9), n sharded", W9, data([(7, 5), (6, 5)], 21), [None, 0], "Replicate", exact=True)
value_case("max m n, empty shard", W9, data([(1, 5), (6, 5)], 22), [0, None], "Replicate", exact=True)
for reducer in ("max", "min", "sum", "mean", "logsumexp", "argmax", "argmin"):
    exact = reducer in ("max", "min", "argmax", "argmin")
    value_case(f"{reducer} k, k sharded", f"q d, k d -> q | {reducer} k", data([(5, 4), (9, 4)], 23), [None, 0], "Replicate", exact=exact)
    value_case(f"{reducer} k, empty shard", f"q d, k d -> q | {reducer} k", data([(5, 4), (1, 4)], 24), [None, 0], "Replicate", exact=exact)
value_case("argmax m n, n sharded", "m d, n d -> | argmax m n", data([(4, 3), (7, 3)], 25), [None, 0], "Replicate", exact=True)
value_case("argmin n m, m sharded", "m d, n d -> | argmin n m", data([(7, 3), (4, 3)], 26), [0, None], "Replicate", exact=True)
value_case("argmax m n, empty shard", "m d, n d -> | argmax m n", data([(1, 3), (4, 3)], 27), [0, None], "Replicate", exact=True)
value_case("max n then logsumexp m", "m d, n d -> | max n | logsumexp m", data([(7, 5), (6, 5)], 28), [0, None], "Replicate")
value_case("sum q then max k", "q d, k d -> | sum q | max k", data([(5, 4), (9, 4)], 29), [None, 0], "Replicate")
value_case("argmax ties across ranks", "m d, n d -> n | argmax m", data([(9, 2), (6, 2)], 30, "ints"), [0, None], "Replicate", exact=True)
value_case("argmin ties across ranks", "m d, n d -> n | argmin m", data([(9, 2), (6, 2)], 31, "ints"), [0, None], "Replicate", exact=True)
value_case("max, int64", W9, data([(7, 5), (6, 5)], 32, dtype=torch.int64), [0, None], "Replicate", exact=True)
value_case(
    "argmax, int64 ties", "m d, n d -> n | argmax m", data([(7, 1), (6, 1)], 33, dtype=torch.int64), [0, None], "Replicate", exact=True
)
value_case("max, int64, empty shard", W9, data([(1, 5), (6, 5)], 34, dtype=torch.int64), [0, None], "Replicate", exact=True)
value_case("mean m n, float32", "m d, n d -> | mean m n", data([(7, 5), (6, 5)], 35, dtype=torch.float32), [0, None], "Replicate")

with_nan = data([(3, 7)], 40)[0]
with_nan[0, 5] = NAN  # on rank 1 (columns 4..6)
with_nan[1, 1] = NAN  # on rank 0
with_nan[1, 6] = NAN  # later NaN on rank 1: the first one wins
with_inf = data([(4, 7)], 41)[0]
with_inf[0] = float("-inf")  # a whole row: logsumexp -inf, argmax the first index
with_inf[1, :4] = float("-inf")  # rank 0's part only
with_inf[2, 4:] = float("inf")
for reducer in ("max", "min", "logsumexp", "argmax", "argmin", "sum"):
    value_case(f"{reducer} with NaN", f"q k -> q | {reducer} k", [with_nan], [1], "Replicate", exact=reducer != "sum")
    value_case(f"{reducer} with infinities", f"q k -> q | {reducer} k", [with_inf], [1], "Replicate", exact=reducer != "sum")


# -- refused: what would need a shard of an operand or of the product on another rank -----------------


def refused_case(name, pattern, tensors, specs, words, mesh_shape=None):
    def case(mesh, record):
        if mesh_shape is not None:
            from torch.distributed.tensor import init_device_mesh

            mesh = init_device_mesh("cpu", mesh_shape)
        if specs == "mixed":
            xs = [as_dtensor(tensors[0], mesh, Shard(0)), tensors[1]]
        elif specs == "partial input":
            xs = [DTensor.from_local(t.clone(), mesh, [Partial()], run_check=False) for t in tensors]
        elif mesh_shape is not None:  # every operand replicated on each dim of that mesh
            xs = [DTensor.from_local(t.clone(), mesh, [Replicate()] * len(mesh_shape), run_check=False) for t in tensors]
        else:
            xs = [as_dtensor(t, mesh, placement(s)) for t, s in zip(tensors, specs, strict=True)]
        record.clear()
        try:
            einplan.bl(pattern, *xs)
        except einplan.EinplanError as error:
            message = str(error)
            missing = [w for w in words if w not in message]
            assert not missing, f"{message!r} lacks {missing}"
            return {"calls": list(record), "message": message}
        raise AssertionError(f"{pattern} was not refused")

    CASES.append((name, case))


refused_case(
    "refused: 2-D mesh", "m d, n d -> m n", data([(4, 3), (5, 3)], 50), [None, None], ["1-D device mesh", "DeviceMesh"], mesh_shape=(2, 1)
)
refused_case("refused: two axes sharded", "m d, n d -> m n", data([(4, 3), (5, 3)], 51), [0, 0], ["different axes", "m, n", "gather"])
refused_case("refused: sum then max", W9, data([(4, 3), (5, 3)], 52), [1, 1], ["axis d", "sharded and summed", "'max'", "gather"])
refused_case(
    "refused: mixed", "m d, n d -> m n", data([(4, 3), (5, 3)], 53), "mixed", ["every operand is a DTensor", "operand 1 is a Tensor"]
)
refused_case(
    "refused: Partial operand", "m d, n d -> m n", data([(4, 3), (5, 3)], 54), "partial input", ["operand 0 is Partial()", "redistribute"]
)
refused_case("refused: composite", "b (h d), h d e -> b h e", data([(3, 6), (2, 3, 4)], 55), [1, None], ["composite axis"])
refused_case(
    "refused: clause after",
    "m d, n d -> | max m | sum n",
    data([(4, 3), (5, 3)], 56),
    [0, None],
    ["sharded axis m", "last clause", "sum n"],
)
refused_case(
    "refused: chain link",
    "b n, n n, b n -> b",
    data([(3, 4), (4, 4), (3, 4)], 57),
    [1, None, None],
    ["axis n is sharded", "n'", "prime or chain link"],
)

# -- gradients: through the local plans' backward and the combines, against one process --------------


def grad_case(name, pattern, tensors, specs, weight_seed=0):
    def case(mesh, record):
        leaves = [t.clone().requires_grad_() for t in tensors]
        out = einplan.bl(pattern, *leaves)
        w = data([tuple(out.shape)], weight_seed)[0]
        (out * w).sum().backward()
        xs = [as_dtensor(t.detach().requires_grad_(), mesh, placement(s)) for t, s in zip(tensors, specs, strict=True)]
        got = einplan.bl(pattern, *xs)
        full = got.full_tensor() if isinstance(got.placements[0], (Shard, Partial)) else got.to_local()
        (full * w).sum().backward()
        rank, world = mesh.get_local_rank(), mesh.size()
        for k, (x, leaf, s) in enumerate(zip(xs, leaves, specs, strict=True)):
            assert isinstance(x.grad, DTensor), f"operand {k}: {type(x.grad)}"
            mine = x.grad.full_tensor()
            same(mine, leaf.grad, False, f"{name}: gradient of operand {k}")
            if s is not None:  # a sharded operand's gradient is sharded as it is
                same(x.grad.to_local(), chunk_of(leaf.grad, s, rank, world), False, f"{name}: local gradient of operand {k}")
        return {}

    CASES.append((name, case))


grad_case("grad logsumexp k, k sharded", "q d, k d -> q | logsumexp k", data([(5, 4), (9, 4)], 60), [None, 0])
grad_case("grad logsumexp k, empty shard", "q d, k d -> q | logsumexp k", data([(5, 4), (1, 4)], 61), [None, 0])
grad_case("grad max m n (W9)", W9, data([(7, 5), (6, 5)], 62), [0, None])
grad_case("grad max k", "q d, k d -> q | max k", data([(5, 4), (9, 4)], 63), [None, 0])
grad_case("grad min k", "q d, k d -> q | min k", data([(5, 4), (9, 4)], 64), [None, 0])
grad_case("grad sum k", "q d, k d -> q | sum k", data([(5, 4), (9, 4)], 65), [None, 0])
grad_case("grad mean m n", "m d, n d -> | mean m n", data([(7, 5), (6, 5)], 66), [0, None])
grad_case("grad kept, max over another axis", "m d, n d -> m | max n", data([(7, 5), (6, 5)], 67), [0, None])
grad_case("grad partial, contracted axis sharded", "m d, n d -> m n", data([(4, 7), (3, 7)], 68), [1, 1])


def tied(rows):
    """Positive queries and keys whose largest products tie at ``rows`` (rank 0 holds keys 0-4 of 9)."""
    q, k = data([(5, 2), (9, 2)], 69)
    q, k = q.abs() + 0.1, k.clamp(-1, 1)
    k[list(rows)] = 10.0
    return [q, k]


grad_case("grad max k, ties within one rank", "q d, k d -> q | max k", tied([0, 1]), [None, 0])
grad_case("grad max k, one tie on each rank", "q d, k d -> q | max k", tied([0, 8]), [None, 0])


def uneven_ties(mesh, record):
    """Ties across ranks with different counts: g goes half to each rank holding the extreme, then
    evenly among that rank's tied positions (torch.amax would give g/3 to each of the three)."""
    q, k = tied([0, 1, 8])
    xs = [as_dtensor(q, mesh, Replicate()), as_dtensor(k.requires_grad_(), mesh, Shard(0))]
    einplan.bl("q d, k d -> q | max k", *xs).to_local().sum().backward()
    got = xs[1].grad.full_tensor()
    weight = torch.tensor([0.25, 0.25, 0, 0, 0, 0, 0, 0, 0.5], dtype=q.dtype)
    same(got, weight[:, None] * q.sum(0), False, "uneven ties")
    return {}


CASES.append(("grad max k, uneven ties across ranks (documented rule)", uneven_ties))

# -- the call signature, explain -----------------------------------------------------------------------


def cache_kept_apart(mesh, record):
    """A DTensor call never reuses the program of a plain call of the same (global) shapes, nor the
    other way round: the operand's class is part of the call signature."""
    a, b = data([(7, 5), (6, 5)], 80)
    plain = einplan.bl(W9, a, b)
    xs = [as_dtensor(a, mesh, Shard(0)), as_dtensor(b, mesh, Replicate())]
    record.clear()
    routed = einplan.bl(W9, *xs)
    assert isinstance(routed, DTensor) and len(record) == 1, (type(routed), list(record))
    again = einplan.bl(W9, a, b)
    assert type(again) is torch.Tensor and torch.equal(again, plain) and torch.equal(routed.to_local(), plain)
    return {}


def explained(mesh, record):
    xs = [as_dtensor(t, mesh, placement(s)) for t, s in zip(data([(7, 5), (6, 5)], 81), [0, None], strict=True)]
    text = einplan.explain(W9, *xs)
    for words in (
        "placements in:",
        "operand 0 'm d': Shard(dim=0)",
        "operand 1 'n d': Replicate()",
        "sharded axis: m",
        "collective: one all_gather",
        "torch.amax",
        "placement out: Replicate()",
        "this rank's function:",
        "def einplan_on_mesh(",
        "part = einplan.bl('m d, n d -> | max m n', t0, t1)",
        "collectives.all_gather_reduce(part, 'max', mesh.get_group(), 2)",
        "this rank's plan:",
        "def einplan_kernel",
    ):
        assert words in text, f"{words!r} not in:\n{text}"
    partial = einplan.explain("m d, n d -> m n", *[as_dtensor(t, mesh, Shard(1)) for t in data([(4, 7), (3, 7)], 82)])
    assert "placement out: Partial(sum)" in partial and "collective: none" in partial, partial
    return {}


CASES.append(("cache: DTensor and plain calls kept apart", cache_kept_apart))
CASES.append(("explain: placements, collective, local plan", explained))


def kernel_refused(mesh, record):
    """A kernel plans plain tensors: made from DTensors, or called on them, it refuses them."""
    a, b = data([(7, 5), (6, 5)], 90)
    xs = [as_dtensor(a, mesh, Shard(0)), as_dtensor(b, mesh, Replicate())]
    for attempt in (lambda: einplan.kernel(W9, *xs), lambda: einplan.kernel(W9, a, b)(*xs), lambda: einplan.code(W9, *xs)):
        try:
            attempt()
        except einplan.UnsupportedError as error:
            assert "operand 0 is a DTensor" in str(error) and "einplan.bl" in str(error), str(error)
        else:
            raise AssertionError("a DTensor was taken by a kernel or code")
    return {}


CASES.append(("refused: kernel and code on DTensors", kernel_refused))

# -- the generated source: what each rank runs, the combine included ----------------------------------

SOURCES = {  # name -> (pattern, shapes, the sharded dim of each operand, keywords)
    "mesh_max_inner_product": (W9, [(7, 5), (6, 5)], [0, None], {}),
    "mesh_argmax_two_axes": ("m d, n d -> | argmax m n", [(7, 5), (6, 5)], [0, None], {}),
    "mesh_kept_rows": ("m d, n d -> m n", [(7, 5), (6, 5)], [0, None], {}),
    "mesh_partial_sum": ("m d, n d -> m n", [(4, 7), (3, 7)], [1, 1], {}),
    "mesh_mean_empty_shard": ("q d, k d -> q | mean k", [(5, 4), (1, 4)], [None, 0], {"memory_limit": 1 << 20}),
    "mesh_replicated_sum": ("m d, n d -> m n", [(4, 7), (3, 7)], [1, 1], {"replicate": True}),
}


def source_case(name, pattern, shapes, specs, options):
    """``einplan.distributed.code`` on this rank: the function ``bl`` compiled and ran (its lines
    are in linecache once the call has run), returned for the parent to compare with its golden."""

    def case(mesh, record):
        xs = [as_dtensor(t, mesh, placement(s)) for t, s in zip(data(shapes, 95), specs, strict=True)]
        text = einplan.distributed.code(pattern, *xs, **options)
        call = einplan.distributed.bl if "replicate" in options else einplan.bl
        call(pattern, *xs, **options)
        ran = [lines for name, (_, _, lines, _) in linecache.cache.items() if name.startswith("<einplan-") and "".join(lines) == text]
        assert ran, f"the source bl ran is not what einplan.distributed.code shows:\n{text}"
        compile(text, "<mesh source>", "exec")
        return {"source": text}

    CASES.append((f"source {name}", case))


for _name, _case in SOURCES.items():
    source_case(_name, *_case)


def compiled(mesh, record):
    """torch.compile of a function that calls bl on DTensors: the same results as eager bl.  Even
    shards: with uneven ones, torch 2.13's FX graph cache, shared by the ranks of one machine,
    hands one rank the graph compiled for another's local shape (an assert_size_stride error)."""
    a, b = data([(8, 5), (6, 5)], 96)
    xs = [as_dtensor(a, mesh, Shard(0)), as_dtensor(b, mesh, Replicate())]
    for pattern in ("m d, n d -> m n", W9):
        function = torch.compile(lambda x, y, p=pattern: einplan.bl(p, x, y))
        got = function(*xs)
        assert isinstance(got, DTensor), type(got)
        same(got.full_tensor(), einplan.bl(pattern, a, b), False, f"compiled {pattern}")
    return {}


CASES.append(("compile: bl on DTensors inside torch.compile", compiled))
