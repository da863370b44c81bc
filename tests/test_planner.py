"""The planner's choices: what a torch expert would hand-write, per size range and
device.  CUDA plans are made from a device description, so no GPU is needed;
tests that need a real GPU are marked and skip cleanly without one."""

import json
from dataclasses import replace

import pytest
import torch

import einplan
from einplan import cost, tuning
from einplan.plan import CHUNKED, ELEMENTWISE, MATMUL, UNROLLED
from einplan.runtime import plan_for

pytestmark = pytest.mark.usefixtures("shipped_cost_model")


def kinds(pattern, *shapes, **options):
    return [s.kind for s in plan_for(pattern, *shapes, **options).steps if s.kind not in ("prepare", "reduce")]


CPU_CHOICES = [
    # seed 001: matmul for the shared matrix, multiply+sum for the dot product
    ("b1 b2 n, n n, b1 b2 n -> b1 b2", [(80, 20, 64), (64, 64), (80, 20, 64)], [MATMUL, ELEMENTWISE]),
    ("b1 b2 n, b1 b2 n -> b1 b2", [(80, 20, 64), (80, 20, 64)], [ELEMENTWISE]),
    ("b n, n m -> b m", [(1600, 64), (64, 64)], [MATMUL]),
    # seed 000: a shared matrix times a batch of vectors is one GEMM
    ("b n, m n -> b m", [(100, 500), (1000, 500)], [MATMUL]),
    ("b n, m n -> b m", [(10000, 500), (1000, 500)], [MATMUL]),
    ("b1 b2 m n, b1 b2 n p -> b1 b2 m p", [(4, 5, 32, 32), (4, 5, 32, 32)], [MATMUL]),
    # a dot product over 3 elements: three fused multiply-adds, no reduction kernel
    ("b n, b n -> b", [(1000000, 3), (1000000, 3)], [UNROLLED]),
    # seed 002 on a CPU: written-out arithmetic for millions of 2x2 products
    ("b i j, b j k -> b i k", [(262144, 2, 2), (262144, 2, 2)], [UNROLLED]),
    # a Hadamard product has nothing to contract: a broadcast multiply
    ("b n, b n -> b n", [(1000, 64), (1000, 64)], [ELEMENTWISE]),
    # millions of 3x3 and 4x4 products: laid out vector-last in blocks that stay in cache, the
    # written-out arithmetic beats torch's own loop over tiny matrices (1.46x and 1.27x measured
    # on 2 cores of an AMD EPYC); laid out whole, the copies cost more than that loop
    ("b i j, b j k -> b i k", [(262144, 3, 3), (262144, 3, 3)], [UNROLLED]),
    ("b i j, b j k -> b i k", [(262144, 4, 4), (262144, 4, 4)], [UNROLLED]),
    # 262144 dot products of 8: torch's tiny-matrix loop beats a product tensor and a short sum
    ("x y n, x y n -> x y", [(4096, 64, 8), (4096, 64, 8)], [MATMUL]),
]


@pytest.mark.parametrize("pattern, shapes, expected", CPU_CHOICES, ids=[c[0] + str(c[1][0]) for c in CPU_CHOICES])
def test_cpu_choices(pattern, shapes, expected):
    assert kinds(pattern, *shapes) == expected


def test_tiny_batched_matrices_are_priced_as_torchs_loop_not_a_gemm():
    """Below M*N*K = 400 torch multiplies a batch of matrices in a plain loop: the
    estimate is per matrix, multiply-add and output, with no GEMM term."""
    model = cost.load_model("cpu")
    (tiny,) = [c for c in plan_for("b i j, b j k -> b i k", (1000, 4, 4), (1000, 4, 4)).steps[0].candidates if c.lowering == MATMUL]
    assert tiny.estimate.gemm_flops == 0 and tiny.estimate.matrices == 0
    assert (tiny.estimate.loop_matrices, tiny.estimate.loop_fmas, tiny.estimate.loop_outputs) == (1000, 64000, 16000)
    assert model.breakdown(tiny.estimate)["small-matrix loop"] == pytest.approx(
        1000 * model.loop_matrix + 64000 * model.loop_fma + 16000 * model.loop_output
    )
    (large,) = [c for c in plan_for("b i j, b j k -> b i k", (1000, 8, 8), (1000, 8, 8)).steps[0].candidates if c.lowering == MATMUL]
    assert large.estimate.loop_matrices == 0 and large.estimate.gemm_flops == 2 * 1000 * 8**3 and large.estimate.matrices == 1000
    # CUDA has no such loop
    (gpu,) = [
        c for c in plan_for("b i j, b j k -> b i k", (1000, 4, 4), (1000, 4, 4), device="cuda").steps[0].candidates if c.lowering == MATMUL
    ]
    assert gpu.estimate.loop_matrices == 0 and gpu.estimate.gemm_flops > 0


def test_many_small_ops_move_their_bytes_at_the_tier_of_one_op():
    """A step of several ops (a transposing copy per operand, one multiply-add per term) rereads
    what the op before it left in cache: its traffic moves at the tier of its largest op, not of
    the sum of all its ops' traffic (16384 5x5 products: 7 ops, 1.6 MB each, 26 MB in all)."""
    model = cost.load_model("cpu")
    shapes = [(16384, 5, 5), (16384, 5, 5)]
    (unrolled,) = [c for c in plan_for("b i j, b j k -> b i k", *shapes, lowering=UNROLLED).steps[0].candidates if c.lowering == UNROLLED]
    e = unrolled.estimate
    assert e.bytes > model.cache_bytes >= e.working_set == 2 * 16384 * 25 * 4  # one operand and its laid-out copy
    assert model.breakdown(e)["memory traffic"] == pytest.approx(e.bytes / (model.bandwidth * model.cache_speedup))
    # what it allocates: the two laid-out copies and the result, each once (not their traffic)
    assert e.memory == 3 * 16384 * 25 * 4
    # one op: its traffic is its working set
    (single,) = [c for c in plan_for("b n, b n -> b n", (4096, 1024), (4096, 1024)).steps[0].candidates if c.lowering == ELEMENTWISE]
    assert single.estimate.working_set == 0
    assert model.breakdown(single.estimate)["memory traffic"] == pytest.approx(single.estimate.bytes / model.bandwidth)


def test_a_dot_products_multiply_and_sum_are_two_ops_each_in_cache():
    """b n, b n -> b at 2048x128: the multiply touches 3 MB and the sum 1 MB, both in a 4 MB cache,
    though the step moves 4.2 MB in all."""
    model = cost.load_model("cpu")
    (dot,) = [c for c in plan_for("b n, b n -> b", (2048, 128), (2048, 128)).steps[0].candidates if c.lowering == ELEMENTWISE]
    assert dot.estimate.bytes > model.cache_bytes >= dot.estimate.working_set == 3 * 2048 * 128 * 4


def test_each_lowering_lists_what_it_allocates():
    """A product written before its sum, a GEMM's result and its copies, an unrolled step's laid-out
    copies: the tensors a lowering allocates on each call, in bytes (the fresh-memory term prices
    those of at least ``fresh_bytes``)."""
    model = cost.load_model("cpu")
    shapes = [(64, 512, 256), (64, 512, 256)]
    found = {c.lowering: c.estimate for c in plan_for("b n d, b n d -> b d", *shapes, lowering=ELEMENTWISE).steps[0].candidates}
    product, out = 64 * 512 * 256 * 4, 64 * 256 * 4
    # the GEMM brings d beside b: a transposing copy of each operand
    assert found[ELEMENTWISE].allocations == (product, out) and found[MATMUL].allocations == (out, product, product)
    assert model.breakdown(found[ELEMENTWISE])["fresh memory"] == pytest.approx(product / cost.PAGE * model.fresh_page)
    assert model.breakdown(found[MATMUL])["fresh memory"] == pytest.approx(2 * product / cost.PAGE * model.fresh_page)
    (small,) = [c for c in plan_for("b n, b n -> b", (64, 64), (64, 64)).steps[0].candidates if c.lowering == MATMUL]
    assert model.breakdown(small.estimate)["fresh memory"] == 0
    (unrolled,) = [
        c
        for c in plan_for("b i j, b j k -> b i k", (64, 5, 5), (64, 5, 5), lowering=UNROLLED).steps[0].candidates
        if c.lowering == UNROLLED
    ]
    assert unrolled.estimate.allocations == (64 * 25 * 4,) * 3  # the result and both operands laid out b last


COMPILED_CHOICES = [
    # seed 002 under torch.compile: written out per element, one loop over the batch that reads
    # each row once and keeps its products in registers; torch.bmm stays a library call
    ("b i j, b j k -> b i k", [(262144, 2, 2), (262144, 2, 2)], [UNROLLED], [UNROLLED]),
    ("b i j, b j k -> b i k", [(262144, 3, 3), (262144, 3, 3)], [UNROLLED], [UNROLLED]),
    ("b i j, b j k -> b i k", [(262144, 4, 4), (262144, 4, 4)], [UNROLLED], [UNROLLED]),
    ("b i j, b j -> b i", [(262144, 8, 8), (262144, 8)], [UNROLLED], [MATMUL]),
    ("b i, b i -> b", [(262144, 4), (262144, 4)], [UNROLLED], [MATMUL]),
    # past 64 products a row, the broadcast multiply-sum's fused loop
    ("b i j, b j k -> b i k", [(131072, 5, 5), (131072, 5, 5)], [ELEMENTWISE], [MATMUL]),
    # long contractions stay GEMMs: fusing does not remove their arithmetic
    ("b n, m n -> b m", [(100, 500), (1000, 500)], [MATMUL], [MATMUL]),
    ("b1 b2 n, n n, b1 b2 n -> b1 b2", [(80, 20, 64), (64, 64), (80, 20, 64)], [MATMUL, ELEMENTWISE], [MATMUL, ELEMENTWISE]),
]


@pytest.mark.parametrize("pattern, shapes, compiled, eager", COMPILED_CHOICES, ids=[c[0] + str(c[1][0]) for c in COMPILED_CHOICES])
def test_plans_for_torch_compile_count_a_fused_product(pattern, shapes, compiled, eager):
    assert kinds(pattern, *shapes, compiled=True) == compiled
    assert kinds(pattern, *shapes) == eager


def test_fused_estimate_reads_inputs_and_writes_the_result_only():
    shapes = [(262144, 2, 2), (262144, 2, 2)]
    eager = {c.lowering: c for c in plan_for("b i j, b j k -> b i k", *shapes).steps[0].candidates}
    fused = {c.lowering: c for c in plan_for("b i j, b j k -> b i k", *shapes, compiled=True).steps[0].candidates}
    elements = 3 * 262144 * 4  # two inputs and the result
    assert fused[ELEMENTWISE].estimate.bytes == elements * 4 < eager[ELEMENTWISE].estimate.bytes
    assert fused[ELEMENTWISE].estimate.ops == 1 and fused[ELEMENTWISE].estimate.memory == 262144 * 4 * 4
    assert fused[MATMUL].estimate == eager[MATMUL].estimate  # only the fusable form changes
    assert "code traced by torch.compile" in einplan.explain("b i j, b j k -> b i k", *shapes, compiled=True)


def test_reductions_over_huge_intermediates_are_chunked():
    assert kinds("m d, n d -> | max m n", (20000, 128), (20000, 128)) == [CHUNKED]
    assert kinds("q d, k d -> q | logsumexp k", (20000, 64), (20000, 64)) == [CHUNKED]
    assert kinds("m d, n d -> | argmax m n", (20000, 128), (20000, 128)) == [CHUNKED]


def test_shared_operand_is_never_expanded_or_copied():
    for pattern, shapes in [
        ("b1 b2 n, n n, b1 b2 n -> b1 b2", [(80, 20, 64), (64, 64), (80, 20, 64)]),
        ("b n, m n -> b m", [(100, 500), (1000, 500)]),
        ("n n, b1 b2 n -> b1 b2 n", [(64, 64), (80, 20, 64)]),
    ]:
        source = einplan.code(pattern, *shapes)
        assert "expand" not in source and "repeat" not in source and "contiguous" not in source, source


VECTOR_FORMS = [
    ("n, n ->", [(7,), (7,)], "n,n->", "torch.matmul(x0, x1)"),
    ("n, n ->", [(0,), (0,)], "n,n->", "torch.matmul(x0, x1)"),
    ("m k, k -> m", [(5, 3), (3,)], "mk,k->m", "torch.matmul(x0, x1)"),
    ("k m, k -> m", [(3, 5), (3,)], "km,k->m", "torch.matmul(x0.mT, x1)"),
    ("k, k m -> m", [(1,), (1, 4)], "k,km->m", "torch.matmul(x1.mT, x0)"),
]


@pytest.mark.parametrize("pattern, shapes, equation, call", VECTOR_FORMS)
def test_a_dot_product_or_matvec_is_one_matmul_of_a_vector(pattern, shapes, equation, call):
    """Unbatched, matmul-broadcast hands torch a vector (its dot and mv), not a 1-wide GEMM."""
    tensors = [torch.randn(s, dtype=torch.float64) for s in shapes]
    source = einplan.code(pattern, *tensors, lowering=MATMUL)
    assert f"t0 = {call}  #" in source and "unsqueeze" not in source, source
    torch.testing.assert_close(einplan.bl(pattern, *tensors, lowering=MATMUL), torch.einsum(equation, *tensors), rtol=1e-12, atol=1e-12)


def test_a_dot_product_is_priced_as_one_pass_not_a_gemm():
    """torch.dot reads the two vectors once; a 1x1 GEMM was priced (and ran) far slower."""
    step = plan_for("n, n ->", (1000000,), (1000000,)).steps[0]
    matmul = next(c for c in step.candidates if c.lowering == MATMUL)
    assert matmul.estimate.gemm_flops == 0 and matmul.estimate.elementwise == 1000000


ONE_COLUMN = [
    ("b n, b n -> b", [(1024, 1024), (1024, 1024)], "bmm of 1x1024 by 1024x1: 641 us, vecdot 126 us"),
    ("b m n, b n -> b m", [(64, 128, 128), (64, 128)], "bmm of 128x128 by 128x1: 646 us, multiply and sum 125 us"),
    ("b1 b2 n, b1 b2 n -> b1 b2", [(16, 32, 1024), (16, 32, 1024)], "two batch axes of dot products"),
]


@pytest.mark.parametrize("pattern, shapes, measured", ONE_COLUMN, ids=[c[0] for c in ONE_COLUMN])
def test_batched_matvecs_and_dot_products_are_priced_at_the_one_column_rate(pattern, shapes, measured, monkeypatch):
    """torch's batched GEMM runs a result of one column (N = 1) at a few GFLOP/s on a CPU (2 cores of
    an AMD EPYC: ``measured``), not at the rate the short-dim efficiency gives a GEMM: priced at
    ``column_rate``, the multiply and sum wins; priced as any GEMM (no such rate), bmm did."""
    plan = plan_for(pattern, *shapes)
    assert [s.kind for s in plan.steps if s.candidates] == [ELEMENTWISE] * (len(shapes) - 1)
    matmul = next(c for c in plan.steps[0].candidates if c.lowering == MATMUL)
    assert matmul.estimate.gemm_flops == 0 and plan.model.breakdown(matmul.estimate)["one-column GEMMs"] > 0
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, column_rate=0.0))
    as_gemm = plan_for(pattern, *shapes)
    assert as_gemm.steps[0].kind == MATMUL and as_gemm.steps[0].estimate.gemm_flops > 0


ROWS_TIMES_MATRICES = [
    ("b m, b m n -> b n", "bm,bmn->bn", "torch.matmul(x0.unsqueeze(1), x1).squeeze(1)"),
    ("b m n, b m -> b n", "bmn,bm->bn", "torch.matmul(x1.unsqueeze(1), x0).squeeze(1)"),
    ("b k, b k n -> n b", "bk,bkn->nb", "torch.matmul(x0.unsqueeze(1), x1).squeeze(1)"),
]


@pytest.mark.parametrize("pattern, equation, call", ROWS_TIMES_MATRICES, ids=[c[0] for c in ROWS_TIMES_MATRICES])
@pytest.mark.parametrize("b, k, n", [(64, 128, 128), (3, 1, 5), (0, 4, 3), (2, 0, 3)])
def test_a_batch_of_vectors_times_matrices_stored_k_first_is_rows_times_the_matrices(pattern, equation, call, b, k, n):
    """Matrices stored ``b k n`` times vectors ``b k``: M = 1 rows times the matrices as stored, a
    GEMM (64 x 1x128 by 128x128 ran 88 us), not the matrices transposed times N = 1 columns (662 us,
    2 cores of an AMD EPYC), which only a one-column result is priced as."""
    names = {"b": b, "m": k, "k": k, "n": n}
    shapes = [tuple(names[x] for x in operand.split()) for operand in pattern.split("->")[0].split(",")]
    tensors = [torch.randn(s, dtype=torch.float64) for s in shapes]
    source = einplan.code(pattern, *tensors, lowering=MATMUL)
    assert f"t0 = {call}  #" in source, source
    torch.testing.assert_close(einplan.bl(pattern, *tensors, lowering=MATMUL), torch.einsum(equation, *tensors), rtol=1e-12, atol=1e-12)
    if b * k * n and k * n >= 400:
        matmul = next(c for c in plan_for(pattern, *shapes).steps[0].candidates if c.lowering == MATMUL)
        assert matmul.estimate.row_flops > 0 and matmul.estimate.column_flops == 0


ONE_ROW = [
    ("b i, b i j -> b j", [(256, 64), (256, 64, 64)], "bmm of 1x64 by 64x64: 69-82 us, vecdot 96-116 us"),
    ("b i, b i j, b j -> b", [(256, 64), (256, 64, 64), (256, 64)], "seed 001's bilinear form: 74-105 us, 102-124 us"),
    ("b k, b k n -> b n", [(1024, 32), (1024, 32, 32)], "bmm of 1x32 by 32x32: 91-124 us, multiply and sum 487 us"),
    ("b k, b k n -> b n", [(64, 128), (64, 128, 128)], "bmm of 1x128 by 128x128: 80-137 us, multiply and sum 190 us"),
]


# the constants calibration measured on 2 cores of an AMD EPYC (Zen 4), where ONE_ROW was timed
ZEN4 = dict(
    op_overhead=2.56e-6, gemm_rate=1.60e11, gemm_half=12.9, matrix_overhead=2.4e-9, bandwidth=6.95e10, cache_speedup=1.7,
    llc_bytes=32 * 2**20, llc_speedup=2.26, elementwise_rate=7.1e9, reduce_overhead=3.1e-9, column_rate=3.4e9, row_rate=2.6e10,
    loop_matrix=1.18e-9, loop_fma=2.76e-10, loop_output=1.57e-9, fresh_page=1.75e-6,
)  # fmt: skip


@pytest.mark.parametrize("pattern, shapes, measured", ONE_ROW, ids=[c[0] for c in ONE_ROW])
def test_batched_vectors_times_matrices_are_priced_at_the_one_row_rate(pattern, shapes, measured, monkeypatch):
    """torch's batched GEMM runs a result of one row (M = 1) as one memory-bound pass over the
    matrices (2 cores of an AMD EPYC: ``measured``, 23-30 GFLOP/s), about 3x faster than the
    short-dim efficiency prices a GEMM with M = 1 there: priced at ``row_rate``, the bmm wins;
    priced as any GEMM (no such rate), the multiply and sum did."""
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **ZEN4))
    plan = plan_for(pattern, *shapes)
    assert plan.steps[0].kind == MATMUL
    assert plan.steps[0].estimate.gemm_flops == 0 and plan.model.breakdown(plan.steps[0].estimate)["one-row GEMMs"] > 0
    monkeypatch.setitem(cost._loaded, "cpu", replace(cost.CPU, **{**ZEN4, "row_rate": 0.0}))
    as_gemm = plan_for(pattern, *shapes)
    matmul = next(c for c in as_gemm.steps[0].candidates if c.lowering == MATMUL)
    assert as_gemm.steps[0].kind == ELEMENTWISE and matmul.estimate.gemm_flops > 0


CUDA_CHOICES = [
    ("b1 b2 n, n n, b1 b2 n -> b1 b2", [(80, 20, 64), (64, 64), (80, 20, 64)], [MATMUL, ELEMENTWISE]),
    ("b n, m n -> b m", [(10000, 500), (1000, 500)], [MATMUL]),
    # seed 002 on a GPU: bmm of 262144 tiny matrices is 40x slower than
    # broadcast arithmetic, and the broadcast multiply-sum is the eager winner there
    ("b i j, b j k -> b i k", [(262144, 2, 2), (262144, 2, 2)], [ELEMENTWISE]),
    ("b i j, b j k -> b i k", [(262144, 3, 3), (262144, 3, 3)], [ELEMENTWISE]),
]


@pytest.mark.parametrize("pattern, shapes, expected", CUDA_CHOICES, ids=[c[0] + str(c[1][0]) for c in CUDA_CHOICES])
def test_cuda_choices_without_a_gpu(pattern, shapes, expected):
    plan = plan_for(pattern, *shapes, device="cuda")
    assert plan.model.kind == "cuda"
    assert [s.kind for s in plan.steps if s.kind not in ("prepare", "reduce")] == expected


def test_cuda_never_uses_matmul_for_integers():
    plan = plan_for("b n, m n -> b m", (100, 50), (60, 50), device="cuda", dtype=torch.int64)
    assert all(c.lowering != MATMUL for s in plan.steps for c in s.candidates)
    cpu = plan_for("b n, m n -> b m", (100, 50), (60, 50), device="cpu", dtype=torch.int64)
    assert any(c.lowering == MATMUL for s in cpu.steps for c in s.candidates)


def test_cpu_and_cuda_constants_differ():
    assert cost.load_model("cpu") != cost.load_model("cuda")
    assert cost.load_model("cuda").op_overhead > cost.load_model("cpu").op_overhead


def test_explain_shows_every_candidate_and_why():
    text = einplan.explain("b1 b2 n, n n, b1 b2 n -> b1 b2", (80, 20, 64), (64, 64), (80, 20, 64))
    assert "b1 b2 n, n n', b1 b2 n' -> b1 b2" in text
    assert text.count("why:") == 2
    for lowering in (MATMUL, ELEMENTWISE):
        assert f"{lowering:<18} est." in text
    forced = einplan.explain("b n, m n -> b m", (4, 4), (4, 4), lowering=ELEMENTWISE)
    assert "why: elementwise-sum was forced" in forced


def test_tune_stores_constants_that_later_runs_read(tmp_path, monkeypatch):
    monkeypatch.setenv("EINPLAN_CACHE_DIR", str(tmp_path))
    cost._loaded.clear()
    model, path = tuning.tune("cpu", quick=True)
    assert path == tmp_path / "device_models.json" and path.exists()
    stored = json.loads(path.read_text())["cpu"]
    assert stored["gemm_rate"] == model.gemm_rate > 0
    assert stored["screen_rate"] == model.screen_rate > 0  # a bfloat16 GEMM, measured
    cost._loaded.clear()
    assert cost.load_model("cpu") == model
    # a corrupt file falls back to the shipped defaults
    path.write_text("{not json")
    cost._loaded.clear()
    assert cost.load_model("cpu") == cost.CPU


def test_the_shipped_screen_rate_follows_the_cpu():
    # 4x the float32 rate where torch reports AMX tiles, 2.2x with AVX512-BF16 alone, else no
    # screen unless tuned
    if torch.cpu._is_amx_tile_supported():
        speedup = 4.0
    elif torch.cpu._is_avx512_bf16_supported():
        speedup = 2.2
    else:
        speedup = 0.0
    assert cost.CPU.screen_rate == speedup * cost.CPU.gemm_rate
    assert cost.CUDA.screen_rate == 0.0


@pytest.mark.parametrize(
    "amx, avx512_bf16, speedup",
    [(True, True, 4.0), (False, True, 2.2), (False, False, 0.0), ("raises", True, 2.2), ("raises", "raises", 0.0)],
)
def test_the_shipped_screen_rate_reads_the_cpu_probes(monkeypatch, amx, avx512_bf16, speedup):
    def probe(answer):
        def supported():
            if answer == "raises":
                raise RuntimeError("cpuinfo failed")
            return answer

        return supported

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", probe(amx))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", probe(avx512_bf16))
    assert cost._bfloat16_rate(1.0e11) == speedup * 1.0e11


def test_a_stored_zero_screen_rate_turns_the_screen_off(tmp_path, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("EINPLAN_CACHE_DIR", str(tmp_path))
    cost.save_model(replace(cost.CPU, screen_rate=0.0))
    cost._loaded.clear()
    assert cost.load_model("cpu").screen_rate == 0.0
    plan = einplan.runtime.plan_for("m d, n d -> | max m n", (20000, 128), (20000, 128))
    assert "screened" not in plan.steps[-1].description
    cost._loaded.clear()


def test_tuned_constants_change_decisions(tmp_path, monkeypatch):
    """A machine whose GEMM is very slow should stop choosing matmul for a GEMV-like step."""
    from dataclasses import replace

    monkeypatch.setenv("EINPLAN_CACHE_DIR", str(tmp_path))
    cost.save_model(replace(cost.CPU, gemm_rate=1e6))
    cost._loaded.clear()
    assert kinds("b n, n m -> b m", (1600, 64), (64, 64)) != [MATMUL]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_match_einsum():
    a = torch.randn(1000, 3, 3, device="cuda", dtype=torch.float64)
    b = torch.randn(1000, 3, 3, device="cuda", dtype=torch.float64)
    for lowering in (None, MATMUL, ELEMENTWISE, UNROLLED):
        torch.testing.assert_close(einplan.bl("b i j, b j k -> b i k", a, b, lowering=lowering), a @ b)
