"""einplan on one CUDA GPU (issue 15, item 5): W4, W5, W6 and W7 in one ratio table.

    python benchmarks/gpu.py                                      # the GPU run (sized for at most 5 minutes)
    python benchmarks/gpu.py --out benchmarks/results_gpu.json    # the same, and its results as JSON
    TRITON_INTERPRET=1 python benchmarks/gpu.py --smoke --no-tune # tiny sizes on the CPU, in seconds

W4, seed 002's many tiny matmuls ``b i j, b j k -> b i k`` at B = 262 144 and
2x2, 3x3, 4x4: einplan.bl (the default CUDA plan) and einplan under
torch.compile, against torch.bmm, seed 002's written-out code (eager and under
torch.compile, as the seed runs it) and its ``unsqueeze``-multiply-sum; the
ceilings are the memory-bandwidth bound, the bytes read and written over the
GPU's copy bandwidth (a 1 GiB device-to-device ``copy_``, measured here), and
one kernel that moves the same bytes (``a + b``).

W5 (``m d, n d -> | max m n`` and ``| argmax m n`` at 20000 x 20000 x 128) and
W6 (``q d, k d -> q | logsumexp k`` at 20000 x 20000 x 64), each in float32
with TF32 off and in bfloat16: einplan.bl (on CUDA the planner picks the
``fused`` Triton kernel; a row forces it) against the materialized torch
recipe (the matmul, then the reduction) and against the GEMM alone,
``A @ B.T`` at the same precision: every product, written out, not reduced.

W7, forward and backward of ``q d, k d -> q | logsumexp k`` (q = k = 20000,
d = 128, ``.sum().backward()``, float32 with TF32 off): einplan against
the materialized recipe; the ceiling is the three GEMMs of the product alone.

Method: every row's result is checked (against the torch recipe, and torch's
rows against einplan's) before anything is timed; the rows of one case are
then sampled round robin, each sample a loop of calls as a user makes them
(doubled until it lasts 2 ms) between two ``torch.cuda.synchronize()``, and
the median per call is reported.  Extra memory is
``torch.cuda.max_memory_allocated()`` during one call after
``torch.cuda.reset_peak_memory_stats()``, less what was allocated before it
(the inputs; for W7 also the two gradients the call leaves).

At the end, ``einplan tune --device cuda`` (skip with ``--no-tune``) stores the
GPU's measured cost-model constants.  Without CUDA the script refuses (exit
2), except ``--smoke``: tiny sizes on the CPU, no torch.compile, einplan's
fused kernels in Triton's interpreter (set ``TRITON_INTERPRET=1``); its times
mean nothing, it checks that every row and the table run.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch

import einplan
import memory
from cases import BOUND, EINPLAN, FULL, INFO, PEER, Case, MiB, Row, at_least, at_most, best_of, ceiling, check_rows, div, planner_choice
from report import write_json
from timing import fmt_us, same_result, stats, trained
from tiny import unsqueeze_sum_bmm, written_out_bmm

WORKLOADS = ("W4", "W5", "W6", "W7")
W4_PATTERN = "b i j, b j k -> b i k"
P5A, P5B, P6 = "m d, n d -> | max m n", "m d, n d -> | argmax m n", "q d, k d -> q | logsumexp k"
BMM = "torch.bmm(a, b)"
W4_SPEEDUP = {2: 20.0, 3: 10.0}  # the W4 targets: x faster than torch.bmm
PEER_SLACK = 1.1  # einplan never slower than the best peer row by more than this
FUSED = "einplan.bl lowering=fused"
BANDWIDTH = "memory-bandwidth bound (bytes in+out / copy bandwidth)"
LAUNCH = "one kernel moving the same bytes: a + b"


@dataclass(frozen=True)
class Sizes:
    w4_batch: int
    w4_sizes: tuple
    w5_mnd: tuple
    w6_qkd: tuple
    w7_qkd: tuple
    copy_bytes: int
    budget_s: float  # sampling time per row
    min_sample_s: float
    max_repeat: int


GPU_SIZES = Sizes(FULL.w4_batch, FULL.w4_sizes, FULL.w5_mnd, FULL.w6_qkd, FULL.w7_qkd, 1 << 30, 0.3, 2e-3, 25)
SMOKE_SIZES = Sizes(64, (2, 3, 4), (64, 64, 16), (64, 64, 16), (64, 64, 16), 8 * MiB, 0.0, 1e-3, 3)


@dataclass
class Env:
    device: torch.device
    smoke: bool
    compile: bool
    sizes: Sizes
    copy_bw: float | None = None  # bytes read + written per second

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return "cpu (--smoke: tiny sizes, Triton's interpreter; these times are no GPU's)"


# --- timing and memory -----------------------------------------------------------------------------


def _loop_s(fn: Callable, number: int, sync: Callable) -> float:
    """Seconds per call over a loop of ``number`` calls, with the device synchronized around it."""
    sync()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return (time.perf_counter() - start) / number


def time_synced(fns: dict, env: Env) -> dict:
    """timing.time_many's method (calibrated loops, round-robin samples, medians) for a device that
    runs asynchronously: each loop of calls lies between two synchronizations."""
    s = env.sizes
    number, repeat, samples = {}, {}, {}
    for name, fn in fns.items():
        fn()  # one more warm-up call: allocator, library handles, kernel caches
        n = 1
        while (loop := _loop_s(fn, n, env.sync) * n) < s.min_sample_s:
            n *= 2
        number[name], samples[name] = n, []
        repeat[name] = int(min(s.max_repeat, max(3, s.budget_s / loop)))
    names = list(fns)
    for r in range(max(repeat.values(), default=0)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if len(samples[name]) < repeat[name]:
                samples[name].append(_loop_s(fns[name], number[name], env.sync))
    return {name: stats(samples[name], number[name]) for name in names}


def peak_extra(fn: Callable, env: Env, before: Callable | None = None) -> dict:
    """The most memory one call of ``fn`` adds while it runs (its result included): CUDA's
    allocator high-water mark less what was allocated before (the inputs); on the CPU (--smoke)
    memory.py's resident-set mark, in this process."""
    if before is not None:
        before()
    if env.device.type != "cuda":
        return memory.measure_here(fn) if memory.available() else {"error": "no /proc high-water mark here"}
    env.sync()
    torch.cuda.reset_peak_memory_stats(env.device)
    base = torch.cuda.memory_allocated(env.device)
    result = fn()
    env.sync()
    peak = torch.cuda.max_memory_allocated(env.device)
    del result
    return {"extra_bytes": peak - base, "before_bytes": base, "peak_bytes": peak}


def run_case(case: Case, env: Env, targets: Callable, reference: str, check=same_result, measured=(), before=None, less=0) -> Case:
    """Check every row, time those that passed (bounds that are calls too), measure the memory
    of the rows named in ``measured`` (less ``less`` bytes the call leaves, e.g. gradients), then
    evaluate the targets."""
    check_rows(case, check, reference)
    timed = {r.name: r.fn for r in case.rows if r.status == "ok" and r.fn is not None}
    timings = time_synced(timed, env)
    for r in case.rows:
        r.timing = timings.get(r.name, r.timing)
        if r.kind == BOUND and r.timing is not None:
            r.bound_us = r.timing.median_us
    for name in measured:
        row = case.row(name)
        if row is not None and row.status == "ok":
            found = peak_extra(row.fn, env, before)
            if "extra_bytes" in found:
                found["extra_bytes"] = max(0, found["extra_bytes"] - less)
            case.memory[name] = found
    case.evaluate(targets)
    return case


def copy_bandwidth(env: Env) -> float:
    """Bytes read plus written per second by a large device-to-device ``dst.copy_(src)``."""
    count = env.sizes.copy_bytes // 4
    src = torch.ones(count, device=env.device)
    dst = torch.empty_like(src)
    seconds = time_synced({"copy": lambda: dst.copy_(src)}, env)["copy"].median_us * 1e-6
    return 2 * src.numel() * src.element_size() / seconds


# --- targets shared by the workloads -----------------------------------------------------------------


def extra_mib(case: Case, name: str) -> float | None:
    found = case.memory.get(name, {}).get("extra_bytes")
    return None if found is None else found / MiB


def peer_target(t: Callable, case: Case, einplan_row: str = "einplan.bl", mode: str = "eager"):
    """einplan within PEER_SLACK of the best peer row of the same mode (eager or compiled)."""
    peers = [r.name for r in case.rows if r.kind == PEER and r.mode == mode]
    best, which = best_of(t, peers)
    text = f"{einplan_row} <= {PEER_SLACK}x the best {mode} peer"
    return at_most(text, div(t(einplan_row), best), PEER_SLACK, f"best: {which}" if which else "no peer ran")


def _compiled(name: str, fn: Callable, args, env: Env, kind: str = PEER) -> Row:
    """A torch.compile row (compiled on its checked call); n/a in a smoke run or with --no-compile."""
    if not env.compile:
        why = "--smoke" if env.smoke else "--no-compile"
        return Row(name, None, kind=kind, mode="compiled", status=f"n/a (not compiled: {why})")
    compiled = torch.compile(fn, dynamic=False)
    return Row(name, lambda: compiled(*args), kind=kind, mode="compiled")


# --- W4: seed 002 -------------------------------------------------------------------------------------


def _bmm(a, b):
    return torch.bmm(a, b)


def w4_rows(env: Env, a, b) -> list:
    nbytes = 3 * a.numel() * a.element_size()
    bound = nbytes / env.copy_bw * 1e6 if env.copy_bw else None
    return [
        Row("einplan.bl", lambda: einplan.bl(W4_PATTERN, a, b), kind=EINPLAN),
        Row(BMM, lambda: torch.bmm(a, b)),
        Row("seed 002: written-out", lambda: written_out_bmm(a, b)),
        Row("seed 002: (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)", lambda: unsqueeze_sum_bmm(a, b)),
        _compiled("torch.compile(einplan.bl)", lambda x, y: einplan.bl(W4_PATTERN, x, y), (a, b), env, kind=EINPLAN),
        _compiled("torch.compile(torch.bmm)", _bmm, (a, b), env),
        _compiled("torch.compile(seed 002 written-out)", written_out_bmm, (a, b), env),
        _compiled("torch.compile(seed 002 unsqueeze-sum)", unsqueeze_sum_bmm, (a, b), env),
        Row(BANDWIDTH, None, kind=BOUND, bound_us=bound),
        Row(LAUNCH, lambda: a + b, kind=BOUND),
    ]


def w4_targets(D: int, case: Case, compiled_rows: bool):
    """The issue's speed-ups over torch.bmm (2x2, 3x3), whose ceiling is torch.bmm over the
    larger of the bandwidth bound and one kernel moving the same bytes; einplan against its peers."""

    def targets(t):
        out = []
        if D in W4_SPEEDUP:
            floor = max((x for x in (t(BANDWIDTH), t(LAUNCH)) if x is not None), default=None)
            bmm_ceiling = ceiling(div(t(BMM), floor), "torch.bmm over the larger bound")
            compiled = div(t(BMM), t("torch.compile(einplan.bl)"))
            more = f"; torch.compile(einplan.bl) {compiled:.1f}x" if compiled else ""
            speedup = div(t(BMM), t("einplan.bl"))
            out.append(at_least(f"einplan.bl >= {W4_SPEEDUP[D]:g}x faster than torch.bmm", speedup, W4_SPEEDUP[D], bmm_ceiling + more))
        out.append(peer_target(t, case))
        if compiled_rows:
            out.append(peer_target(t, case, "torch.compile(einplan.bl)", "compiled"))
        return out

    return targets


def w4(env: Env) -> list:
    cases = []
    for D in env.sizes.w4_sizes:
        torch.manual_seed(4)
        a = torch.randn(env.sizes.w4_batch, D, D, device=env.device)
        b = torch.randn(env.sizes.w4_batch, D, D, device=env.device)
        rows = w4_rows(env, a, b)
        note = f"float32, {3 * a.numel() * 4 / MiB:.1f} MiB in+out"
        case = Case("W4", f"B={env.sizes.w4_batch}, {D}x{D}", W4_PATTERN, rows, planner=planner_choice(W4_PATTERN, a, b), note=note)
        cases.append(run_case(case, env, w4_targets(D, case, env.compile), BMM))
        del a, b
    return cases


# --- W5 and W6: reductions over a large product ----------------------------------------------------


def memory_detail(env: Env) -> str:
    return "MiB, torch.cuda.max_memory_allocated" if env.device.type == "cuda" else "MiB, resident set (smoke run)"


def reduction_targets(env: Env, case: Case, recipe: str, gemm: str):
    def targets(t):
        return [
            at_least(
                f"einplan.bl >= 3x faster than {recipe}",
                div(t(recipe), t("einplan.bl")),
                3,
                ceiling(div(t(recipe), t(gemm)), "the recipe over the GEMM alone"),
            ),
            at_most("einplan.bl <= 1.5x the GEMM alone", div(t("einplan.bl"), t(gemm)), 1.5, f"GEMM alone {fmt_us(t(gemm))}"),
            at_most("einplan.bl extra memory <= 64 MiB", extra_mib(case, "einplan.bl"), 64, memory_detail(env)),
            peer_target(t, case),
        ]

    return targets


def argmax_check(A, B, rtol: float):
    """An index pair is right when A[i]·B[j] is the largest inner product, to ``rtol`` of it (the
    rounding of the dtype: a bfloat16 product may tie pairs that float64 tells apart)."""
    best: list = []

    def check(got, expected) -> tuple[bool, str]:
        if not best:
            best.append(float(torch.max(A.double() @ B.double().T)))
        i, j = (int(x) for x in got)
        value = float(torch.dot(A[i].double(), B[j].double()))
        return abs(value - best[0]) <= rtol * abs(best[0]), f"A[{i}]·B[{j}] = {value:.6g}, max {best[0]:.6g}"

    return check


def _precision_label(dtype: torch.dtype) -> str:
    return "float32 (TF32 off)" if dtype == torch.float32 else str(dtype).removeprefix("torch.")


def reduction_case(env: Env, workload: str, label: str, pattern: str, X, Y, recipe: tuple) -> Case:
    """einplan (default plan and forced fused) against the materialized recipe and the GEMM alone."""
    recipe_name, recipe_fn = recipe
    x, y = ("Q", "K") if "Q @ K" in recipe_name else ("A", "B")
    gemm = f"GEMM alone: {x} @ {y}.T (same precision)"
    rows = [
        Row("einplan.bl", lambda: einplan.bl(pattern, X, Y), kind=EINPLAN),
        Row(FUSED, lambda: einplan.bl(pattern, X, Y, lowering="fused"), kind=INFO),
        Row(recipe_name, lambda: recipe_fn(X, Y)),
        Row(gemm, lambda: X @ Y.T, kind=BOUND),
    ]
    (M, _), N = X.shape, Y.shape[0]
    note = f"{_precision_label(X.dtype)}; the product is {M * N * X.element_size() / MiB:.0f} MiB"
    case = Case(workload, f"{label}, {_precision_label(X.dtype)}", pattern, rows, planner=planner_choice(pattern, X, Y), note=note)
    bf16 = X.dtype == torch.bfloat16
    if "argmax" in pattern:
        check = argmax_check(X, Y, 1e-2 if bf16 else 1e-5)
    else:
        check = lambda got, want: same_result(got, want, rtol=2e-2 if bf16 else 1e-4)  # noqa: E731
    measured = ("einplan.bl", FUSED, recipe_name, gemm)
    return run_case(case, env, reduction_targets(env, case, recipe_name, gemm), recipe_name, check=check, measured=measured)


def _inputs(env: Env, rows: int, cols: int, depth: int, seed: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, depth, generator=generator).to(env.device, dtype)
    Y = torch.randn(cols, depth, generator=generator).to(env.device, dtype)
    return X, Y


def w5(env: Env) -> list:
    M, N, D = env.sizes.w5_mnd
    recipes = {
        P5A: ("P5a max", ("torch.max(A @ B.T)", lambda A, B: torch.max(A @ B.T))),
        P5B: (
            "P5b argmax",
            ("torch.unravel_index(torch.argmax(A @ B.T))", lambda A, B: torch.unravel_index(torch.argmax(A @ B.T), (M, N))),
        ),
    }
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        A, B = _inputs(env, M, N, D, 5, dtype)
        for pattern, (label, recipe) in recipes.items():
            cases.append(reduction_case(env, "W5", f"{label}, M=N={M}, D={D}", pattern, A, B, recipe))
        del A, B
    return cases


def w6(env: Env) -> list:
    Q_, K_, D = env.sizes.w6_qkd
    recipe = ("torch.logsumexp(Q @ K.T, -1)", lambda Q, K: torch.logsumexp(Q @ K.T, -1))
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        Q, K = _inputs(env, Q_, K_, D, 6, dtype)
        cases.append(reduction_case(env, "W6", f"P6 logsumexp, q=k={Q_}, d={D}", P6, Q, K, recipe))
        del Q, K
    return cases


# --- W7: forward and backward ------------------------------------------------------------------------


def _gemms_alone(Q, K) -> Callable:
    """The three GEMMs of a materialized forward and backward, alone: Q @ K.T, then S @ K and S.T @ Q."""
    q, k = Q.detach(), K.detach()

    def run():
        s = q @ k.T
        return s @ k, s.T @ q

    return run


def w7(env: Env) -> list:
    Q_, K_, D = env.sizes.w7_qkd
    Q, K = (x.requires_grad_() for x in _inputs(env, Q_, K_, D, 7, torch.float32))
    recipe = "torch.logsumexp(Q @ K.T, -1)"
    rows = [
        Row("einplan.bl", trained(lambda: einplan.bl(P6, Q, K), (Q, K)), kind=EINPLAN),
        Row(FUSED, trained(lambda: einplan.bl(P6, Q, K, lowering="fused"), (Q, K)), kind=INFO),
        Row(recipe, trained(lambda: torch.logsumexp(Q @ K.T, -1), (Q, K))),
        Row("the three GEMMs alone (Q @ K.T, S @ K, S.T @ Q)", _gemms_alone(Q, K), kind=BOUND),
    ]
    gradients = 2 * Q.numel() * Q.element_size()
    note = f"float32 (TF32 off), forward + .sum().backward(); extra memory beyond inputs and the {gradients / MiB:.1f} MiB of gradients"
    label = f"contrastive log-partition, q=k={Q_}, d={D}"
    case = Case("W7", label, P6, rows, planner=planner_choice(P6, Q, K), note=note)

    def targets(t):
        mib = extra_mib(case, "einplan.bl")
        return [
            peer_target(t, case),
            at_most("einplan.bl forward + backward extra memory <= 64 MiB", mib, 64, memory_detail(env) + ", beyond inputs and gradients"),
        ]

    def no_grads():
        Q.grad = K.grad = None

    return [run_case(case, env, targets, recipe, measured=("einplan.bl", FUSED, recipe), before=no_grads, less=gradients)]


RUNNERS = {"W4": w4, "W5": w5, "W6": w6, "W7": w7}


# --- the table --------------------------------------------------------------------------------------


def verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "not met")


def _row_line(case: Case, r: Row, width: int) -> str:
    if r.status != "ok":
        return f"   {r.name:<{width}}{r.status}"
    base = next((x.median_us for x in case.rows if x.kind == EINPLAN and x.mode == r.mode and x.status == "ok"), None)
    ratio = "" if r.kind == EINPLAN or base is None or not r.median_us else f"{base / r.median_us:.2f}"
    iqr = fmt_us(r.timing.iqr_us) if r.timing is not None else ""
    found = case.memory.get(r.name)
    extra = "" if found is None else (memory.fmt_bytes(found["extra_bytes"]) if "extra_bytes" in found else "n/a")
    return f"   {r.name:<{width}}{fmt_us(r.median_us):>11}{iqr:>11}{ratio:>13}{extra:>13}"


def _target_line(t, fastest) -> str:
    value = "n/a" if t.value is None else f"{t.value:.2f}"
    detail = f"; {t.detail}" if t.detail else ""
    flag = f"  [fastest samples: {verdict(fastest.met)}]" if fastest.met != t.met and fastest.met is not None else ""
    return f"   target: {t.text}: {value} (need {t.need}{detail}) -> {verdict(t.met)}{flag}"


def print_table(env: Env, cases: list) -> int:
    """The one ratio table: every case's rows, then its targets; returns how many targets are met."""
    print(f"GPU: {env.name()}")
    bw = f"{env.copy_bw / 1e9:.0f} GB/s" if env.copy_bw else "n/a"
    triton = getattr(sys.modules.get("triton"), "__version__", "not imported")
    print(
        f"einplan {einplan.__version__} | torch {torch.__version__} (CUDA {torch.version.cuda}) | triton {triton} | "
        f"copy bandwidth {bw} (read + write, {env.sizes.copy_bytes / MiB:.0f} MiB copy_) | float32 matmuls: TF32 off"
    )
    print("einplan/row: einplan's median over the row's, same mode (below 1: einplan faster); extra: peak memory during one call")
    width = max(len(r.name) for c in cases for r in c.rows) + 2 if cases else 40
    print(f"\n   {'row':<{width}}{'median':>11}{'IQR':>11}{'einplan/row':>13}{'extra':>13}")
    for case in cases:
        print(f"-- {case.workload} {case.label}:  {case.pattern}   ({case.note}; planner: {case.planner})")
        for r in case.rows:
            print(_row_line(case, r, width))
        for t, fastest in zip(case.targets, case.targets_best, strict=True):
            print(_target_line(t, fastest))
    targets = [t for c in cases for t in c.targets]
    met = sum(1 for t in targets if t.met)
    print(f"\n{met} of {len(targets)} targets met (verdicts from medians)")
    return met


# --- the command ------------------------------------------------------------------------------------


def run_tune(env: Env, skip: bool) -> dict:
    """``einplan tune --device cuda`` in a subprocess: the GPU's cost-model constants, stored for later runs."""
    if skip or env.smoke:
        why = "--no-tune" if skip else "--smoke (no GPU to tune)"
        print(f"\neinplan tune --device cuda: skipped ({why})")
        return {"skipped": why}
    print("\n$ einplan tune --device cuda", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "einplan", "tune", "--device", "cuda"], capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        print("einplan tune: timed out after 240 s")
        return {"error": "timed out after 240 s"}
    print((proc.stdout + proc.stderr).rstrip())
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - start, "output": proc.stdout + proc.stderr}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="einplan on one CUDA GPU: W4-W7 in one ratio table (issue 15)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, no torch.compile (needs TRITON_INTERPRET=1)")
    parser.add_argument("--no-tune", action="store_true", help="skip `einplan tune --device cuda` at the end")
    parser.add_argument("--no-compile", action="store_true", help="skip W4's torch.compile rows")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads (default: W4,W5,W6,W7)")
    parser.add_argument("--out", default=None, metavar="PATH", help="also write the results as JSON, e.g. benchmarks/results_gpu.json")
    args = parser.parse_args(argv)
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    bad = [w for w in args.only if w not in WORKLOADS]
    if bad:
        parser.error(f"unknown workload(s) {bad}; choose from {', '.join(WORKLOADS)}")
    return args


def refusal(args) -> str | None:
    """Why this machine cannot run what was asked, in one line; None when it can."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if args.smoke:
        if not interpreted:
            return "gpu.py --smoke runs einplan's fused kernels in Triton's interpreter: set TRITON_INTERPRET=1 in the environment"
        return None
    if not torch.cuda.is_available():
        return "gpu.py needs a CUDA GPU and torch sees none here (torch.cuda.is_available() is False); --smoke runs tiny sizes on the CPU"
    if interpreted:
        return "gpu.py on a GPU times compiled Triton kernels: unset TRITON_INTERPRET (it runs them in the interpreter)"
    return None


def results(env: Env, cases: list, met: int, tuned: dict, seconds: float) -> dict:
    return {
        "gpu": env.name(),
        "smoke": env.smoke,
        "einplan": einplan.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": getattr(sys.modules.get("triton"), "__version__", None),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "copy_bandwidth_bytes_per_s": env.copy_bw,
        "sizes": dict(env.sizes.__dict__),
        "targets_met": met,
        "targets_total": sum(len(c.targets) for c in cases),
        "tune": tuned,
        "seconds": seconds,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    why = refusal(args)
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    torch.set_float32_matmul_precision("highest")  # TF32 off, for torch's matmuls and einplan's kernels alike
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)
    if args.smoke:
        torch.set_num_threads(1)  # tiny ops: one thread, so that a busy machine does not stall them
    device = torch.device("cpu" if args.smoke else "cuda")
    env = Env(device, args.smoke, not (args.smoke or args.no_compile), SMOKE_SIZES if args.smoke else GPU_SIZES)
    started = time.perf_counter()
    env.copy_bw = copy_bandwidth(env)
    cases = []
    for workload in args.only:
        start = time.perf_counter()
        cases += RUNNERS[workload](env)
        print(f"({workload}: {time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    met = print_table(env, cases)
    tuned = run_tune(env, args.no_tune)
    seconds = time.perf_counter() - started
    if args.out:
        write_json(args.out, results(env, cases, met, tuned, seconds), cases)
        print(f"wrote {args.out}")
    print(f"({seconds:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
