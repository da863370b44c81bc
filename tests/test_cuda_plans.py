"""CUDA plans on any machine: the CUDA cost model's choices for the seed shapes, kernels planned for
a GPU this machine may lack, the CLI's planning and running commands, and where CUDA constants
are stored and read.  Nothing here runs a GPU kernel."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
import torch

import einplan
from einplan import cost, tuning
from einplan.cli import main
from einplan.plan import CHUNKED, ELEMENTWISE, MATMUL, UNROLLED
from einplan.runtime import plan_for

pytestmark = pytest.mark.usefixtures("shipped_cost_model")

NO_GPU = not torch.cuda.is_available()
TINY = "b i j, b j k -> b i k"
B = 262144  # seed 002's batch of tiny matrices


def fused_planned() -> bool:
    """Whether CUDA plans may hold the fused Triton lowering: einplan has it and triton imports."""
    return "fused" in einplan.LOWERINGS and importlib.util.find_spec("triton") is not None


def kinds(plan) -> list[str]:
    return [s.kind for s in plan.steps if s.kind not in ("prepare", "reduce")]


def priced(plan, number: int = 0) -> dict[str, float]:
    """Each candidate's estimated seconds for one step."""
    return {c.lowering: c.seconds for c in plan.steps[number].candidates}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- seed 002: millions of 2x2, 3x3, 4x4 matrix products --------------------------------------


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_seed_002_on_cuda_is_the_broadcast_multiply_sum(d, compiled):
    """bmm pays for each of the 262144 matrices (seed 002: 886 us against 22 us written out, on a
    GPU); the broadcast multiply-sum streams the batch in two ops (one under torch.compile), and
    the written-out terms read strided slices and copy both operands first."""
    plan = plan_for(TINY, (B, d, d), (B, d, d), device="cuda", compiled=compiled)
    assert plan.model.kind == "cuda"
    assert kinds(plan) == [ELEMENTWISE]
    seconds = priced(plan)
    assert set(seconds) == {MATMUL, ELEMENTWISE, UNROLLED}
    assert min(seconds, key=seconds.__getitem__) == ELEMENTWISE
    assert seconds[MATMUL] > 2 * seconds[ELEMENTWISE]
    (bmm,) = [c for c in plan.steps[0].candidates if c.lowering == MATMUL]
    breakdown = plan.model.breakdown(bmm.estimate)
    assert max(breakdown, key=breakdown.__getitem__) == "per-matrix overhead"  # what makes bmm slow here


def test_seed_002_at_2x2_prices_bmm_far_above_the_winner():
    plan = plan_for(TINY, (B, 2, 2), (B, 2, 2), device="cuda")
    seconds = priced(plan)
    assert seconds[MATMUL] > 5 * seconds[ELEMENTWISE]
    assert seconds[MATMUL] > 2 * seconds[UNROLLED]


def test_seed_002_cuda_source_is_one_multiply_and_sum():
    source = einplan.code(TINY, (B, 2, 2), (B, 2, 2), device="cuda")
    body = [line for line in source.splitlines() if "# elementwise-sum" in line]
    assert len(body) == 1 and "torch.linalg.vecdot(" in body[0]  # the broadcast multiply and its sum, one call
    assert "torch.matmul" not in source and "addcmul" not in source


def test_seed_002_differs_between_cpu_and_cuda():
    """The same pattern, two devices, two plans: a CPU runs written-out terms (at 3x3 in blocks
    that stay in cache, faster than torch's tiny-matrix loop); a GPU has no such loop and
    launches are what it pays for."""
    cpu = [kinds(plan_for(TINY, (B, d, d), (B, d, d))) for d in (2, 3)]
    cuda = [kinds(plan_for(TINY, (B, d, d), (B, d, d), device="cuda")) for d in (2, 3)]
    assert cpu == [[UNROLLED], [UNROLLED]] and cuda == [[ELEMENTWISE], [ELEMENTWISE]]


# --- seed 001: dot products, the quadratic form ------------------------------------------------

SEED_001 = [
    ("b n, b n -> b", [(1600, 64), (1600, 64)], [ELEMENTWISE]),
    ("b n, b n -> b", [(4096, 64), (4096, 64)], [ELEMENTWISE]),
    ("b1 b2 n, b1 b2 n -> b1 b2", [(80, 20, 64), (80, 20, 64)], [ELEMENTWISE]),
    ("b1 b2 n, n n, b1 b2 n -> b1 b2", [(80, 20, 64), (64, 64), (80, 20, 64)], [MATMUL, ELEMENTWISE]),
    ("b n, m n -> b m", [(100, 500), (1000, 500)], [MATMUL]),
]


@pytest.mark.parametrize("pattern, shapes, expected", SEED_001, ids=[f"{c[0]}{c[1][0]}" for c in SEED_001])
def test_seed_001_on_cuda(pattern, shapes, expected):
    plan = plan_for(pattern, *shapes, device="cuda")
    assert kinds(plan) == expected


def test_a_dot_product_whose_product_exceeds_the_memory_limit_runs_in_chunks_on_cuda():
    """A million dot products of 64: the broadcast product would take 256 MiB, above the default
    limit; a GPU's batched GEMM of 1x64 by 64x1 matrices is priced far above the multiply-sum."""
    plan = plan_for("b n, b n -> b", (1 << 20, 64), (1 << 20, 64), device="cuda")
    assert kinds(plan) == [CHUNKED]
    assert plan.steps[0].description.endswith("then elementwise-sum")
    seconds = priced(plan)
    assert seconds[MATMUL] > seconds[ELEMENTWISE]


# --- reductions over a huge product (seeds 001 and 003) ----------------------------------------

REDUCTIONS = [
    ("m d, n d -> | max m n", [(20000, 128), (20000, 128)]),
    ("q d, k d -> q | logsumexp k", [(20000, 128), (20000, 128)]),
    ("q d, k d -> q | argmax k", [(20000, 128), (20000, 128)]),
]


@pytest.mark.parametrize("pattern, shapes", REDUCTIONS, ids=[c[0] for c in REDUCTIONS])
def test_a_reduction_of_a_huge_product_on_cuda_never_holds_the_product(pattern, shapes):
    """20000 x 20000 float32 scores are 1.6 GB: on CUDA the plan is the fused Triton kernel where
    einplan has it and triton imports, else chunks whose tiles are GEMMs; never the screen, as
    the shipped CUDA model has no bfloat16 screen rate."""
    plan = plan_for(pattern, *shapes, device="cuda")
    (step,) = [s for s in plan.steps if s.kind not in ("prepare", "reduce")]
    seconds = priced(plan)
    assert seconds[MATMUL] < seconds[ELEMENTWISE] / 10  # the product's tiles are GEMMs, not broadcasts
    assert "screened" not in step.description
    if fused_planned():
        assert step.kind == "fused"
        assert seconds["fused"] < seconds[MATMUL]
    else:
        assert step.kind == CHUNKED and step.description.endswith("then matmul-broadcast")
    assert step.estimate is not None and step.estimate.memory < 256 * 2**20


def test_a_named_cuda_device_plans_as_cuda():
    for pattern, shapes in [(TINY, [(B, 2, 2), (B, 2, 2)]), REDUCTIONS[0]]:
        plain, named = (plan_for(pattern, *shapes, device=d) for d in ("cuda", "cuda:1"))
        assert named.model == plain.model and kinds(named) == kinds(plain)
        assert named.bound.device == torch.device("cuda:1")
    text = einplan.explain(TINY, (B, 2, 2), (B, 2, 2), device="cuda:1")
    assert "device: cuda:1 (cost model: cuda, shipped constants)" in text


# --- kernels planned for a GPU --------------------------------------------------------------------


def test_a_cuda_kernel_plans_shows_and_saves_without_a_gpu(tmp_path):
    kernel = einplan.kernel(TINY, (B, 2, 2), (B, 2, 2), device="cuda", name="tiny")
    assert kernel.device == torch.device("cuda") and [s.kind for s in kernel.plan_object.steps] == [ELEMENTWISE]
    assert "# elementwise-sum" in kernel.source
    path = tmp_path / "tiny.py"
    kernel.save(path)
    assert "def tiny(" in path.read_text() and "cuda" in path.read_text()


@pytest.mark.skipif(not NO_GPU, reason="on a machine with a GPU the kernel would run")
@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_kernel_called_on_cpu_tensors_names_the_device(device, check):
    kernel = einplan.kernel(TINY, (8, 2, 2), (8, 2, 2), device=device, check=check)
    x = torch.randn(8, 2, 2)
    with pytest.raises(einplan.EinplanError, match=f"planned for device {device}, but the tensors are on cpu"):
        kernel(x, x)


# --- which constants a plan used ------------------------------------------------------------------


def test_explain_says_the_shipped_constants_were_used():
    for device in ("cpu", "cuda"):
        text = einplan.explain("b n, b n -> b", (1600, 64), (1600, 64), device=device)
        assert f"(cost model: {device}, shipped constants)" in text
        assert cost.load_model(device).origin == "shipped constants"


def tuned_gpu(op_overhead_factor: float = 2.0) -> cost.DeviceModel:
    """The shipped CUDA model with one constant changed: it stands for one that tune measured."""
    return replace(cost.CUDA, op_overhead=cost.CUDA.op_overhead * op_overhead_factor)


@pytest.mark.skipif(not NO_GPU, reason="without a GPU, plans read the CUDA constants tuned last")
def test_cuda_plans_without_a_gpu_read_the_constants_tuned_last(tmp_path):
    path = cost.save_model(tuned_gpu(), "Test GPU")
    stored = json.loads(path.read_text())
    assert stored["cuda"] == stored["cuda/Test GPU"] and stored["cuda"]["device_name"] == "Test GPU"
    model = cost.load_model("cuda")
    assert model == tuned_gpu() and model != cost.CUDA
    assert model.origin == f"constants tuned on Test GPU, from {path}"
    assert cost.load_model("cpu") == cost.CPU  # another kind's constants are untouched
    text = einplan.explain(TINY, (B, 2, 2), (B, 2, 2), device="cuda")
    assert f"(cost model: cuda, constants tuned on Test GPU, from {path})" in text


def test_a_gpu_reads_its_own_constants_and_never_another_gpus(monkeypatch):
    cost.save_model(tuned_gpu(2.0), "Test GPU")
    cost.save_model(tuned_gpu(3.0), "Other GPU")  # tuned last: the generic CUDA entry
    here = {"name": "Test GPU"}
    monkeypatch.setattr(cost, "gpu_name", lambda device: here["name"])
    cost._loaded.clear()
    assert cost.load_model("cuda") == tuned_gpu(2.0)
    here["name"] = "Third GPU"  # never tuned: the shipped constants, not another GPU's
    cost._loaded.clear()
    assert cost.load_model("cuda") == cost.CUDA and cost.load_model("cuda").origin == "shipped constants"


def test_a_tuned_cuda_model_round_trips_with_its_zero_constants():
    """The CUDA model has no small-matrix loop and no screen (constants of 0): stored and read
    back, they stay 0 and the rest is used."""
    model = replace(cost.CUDA, bandwidth=cost.CUDA.bandwidth / 2)
    assert model.loop_limit == model.loop_fma == model.screen_rate == 0.0
    cost.save_model(model)
    cost._loaded.clear()
    assert cost.load_model("cuda") == model


def test_tune_stores_cuda_constants_under_the_gpus_name(monkeypatch):
    measured = tuned_gpu()
    monkeypatch.setattr(tuning, "measure", lambda device, quick=False: measured)
    monkeypatch.setattr(cost, "gpu_name", lambda device: "Test GPU")
    monkeypatch.setattr(tuning, "gpu_name", lambda device: "Test GPU")
    model, path = tuning.tune("cuda", quick=True)
    assert model == measured and model.origin == f"constants tuned on Test GPU, from {path}"
    assert set(json.loads(path.read_text())) == {"cuda", "cuda/Test GPU"}
    assert cost.load_model("cuda:0") == measured


# --- the command line -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cli_explain_and_codegen_plan_for_cuda_anywhere(capsys, device):
    code, out, err = run(capsys, "explain", "m d, n d -> | max m n", "--size", "m=20000", "n=20000", "d=128", "--device", device)
    assert code == 0 and err == ""
    assert f"device: {device} (cost model: cuda, shipped constants)" in out
    assert "screened" not in out
    code, out, err = run(capsys, "explain", TINY, "--size", f"b={B}", "i=2", "j=2", "k=2", "--device", device)
    assert code == 0 and "  0. elementwise-sum" in out
    code, module, err = run(capsys, "codegen", TINY, "--size", f"b={B}", "i=3", "j=3", "k=3", "--device", device, "--name", "tiny3")
    assert code == 0 and err == "" and "def tiny3(" in module and "# elementwise-sum" in module


@pytest.mark.skipif(not NO_GPU, reason="on a machine with a GPU these commands run")
@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "b n, b n -> b", "--size", "b=4", "n=3", "--device", "cuda"],
        ["bench", "b n, b n -> b", "--size", "b=4", "n=3", "--device", "cuda:1"],
        ["tune", "--device", "cuda"],
        ["tune", "--device", "cuda:1", "--quick"],
    ],
)
def test_cli_commands_that_run_refuse_a_missing_gpu_in_one_line(capsys, argv, tmp_path):
    code, out, err = run(capsys, *argv)
    device = argv[argv.index("--device") + 1]
    assert code == 2 and out == ""
    assert err.startswith(f"einplan {argv[0]}: error: this machine has no CUDA device")
    assert f"on {device!r} needs one" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # tune stored nothing
