"""einplan against every peer on the seed workloads W1..W6 of issue 3 and the training ones, W7 and W8.

    python benchmarks/run.py              # full sizes (a few minutes)
    python benchmarks/run.py --quick      # small sizes, few repetitions (smoke test)
    python benchmarks/run.py --only W3    # one workload (repeatable, or W3,W4)

All rows run in this one process.  Peers: torch.einsum, opt_einsum.contract,
einops.einsum, einx, and the hand-written recipes of the seed documents.
Every result is checked against einplan's (or, if einplan cannot run the row,
against the reference recipe) before it is timed.  Per workload a ratio table
(einplan time / peer time; below 1 means einplan is faster) and each target
of issue 3 with whether it is met.  Peak extra memory of einplan's call in W5
to W8 is measured in a fresh subprocess (see memory.py).

Writes results.json and results.png next to this file (results_quick.* with
--quick; a suffix naming the workloads with --only).

The workloads are in dense.py (W1-W3), tiny.py (W4), allpairs.py (W5, W6) and training.py (W7, W8);
cases.py checks and times one case, report.py prints and writes the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch

import einplan
from allpairs import w5, w6
from cases import FULL, QUICK, WORKLOADS, Config, MiB, einops, einx, opt_einsum, run_bench
from dense import w1, w2, w3
from report import print_case, print_summary, write_chart, write_json
from timing import contention_warning, machine_summary, time_one
from tiny import w4
from training import w7, w8


def copy_bandwidth(cfg: Config) -> float:
    """Bytes per second of a large dst.copy_(src), counting bytes read plus bytes written."""
    src = torch.ones(cfg.copy_elems)
    dst = torch.zeros(cfg.copy_elems)
    t = time_one(lambda: dst.copy_(src), warmup=2, budget_s=0.5 if cfg.quick else 2.0, min_repeat=5, max_repeat=20)
    return 2 * src.numel() * src.element_size() / (t.median_us * 1e-6)


def sgemm_rate(cfg: Config) -> float:
    """FLOP/s of a square float32 matmul into a preallocated output."""
    n = cfg.sgemm_n
    x = torch.randn(n, n)
    y = torch.randn(n, n)
    out = torch.empty(n, n)
    t = time_one(lambda: torch.mm(x, y, out=out), warmup=2, budget_s=0.5 if cfg.quick else 2.0, min_repeat=5, max_repeat=20)
    return 2.0 * n**3 / (t.median_us * 1e-6)


def measure_rates(cfg: Config, only: list) -> dict:
    """The machine's copy bandwidth (W4's bound) and sgemm rate (W5's), for the workloads that use them."""
    rates = {}
    if "W4" in only:
        rates["copy_bandwidth_bytes_per_s"] = copy_bandwidth(cfg)
        print(
            f"copy bandwidth (read + write, {cfg.copy_elems * 4 / MiB:.0f} MiB copy_): {rates['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"
        )
    if "W5" in only:
        rates["sgemm_flops_per_s"] = sgemm_rate(cfg)
        print(f"sgemm rate ({cfg.sgemm_n}^3 float32 torch.mm into out=): {rates['sgemm_flops_per_s'] / 1e9:.1f} GFLOP/s")
    return rates


def workloads(cfg: Config, rates: dict) -> dict:
    """Each workload's generator of benches, by name (a bench is built only when the one before has run)."""
    return {
        "W1": lambda: w1(cfg),
        "W2": lambda: w2(cfg),
        "W3": lambda: w3(cfg),
        "W4": lambda: w4(cfg, rates.get("copy_bandwidth_bytes_per_s")),
        "W5": lambda: w5(cfg, rates.get("sgemm_flops_per_s")),
        "W6": lambda: w6(cfg),
        "W7": lambda: w7(cfg),
        "W8": lambda: w8(cfg),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="einplan against every peer on workloads W1..W8")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (a smoke test)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="W3", help="run only these workloads (repeatable, or comma-separated)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows of W4")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first (default: leave torch's default)")
    parser.add_argument(
        "--no-bf16-screen",
        action="store_true",
        help="plan as on a CPU without a fast bfloat16 GEMM: this CPU's constants with no bfloat16 rate, in a temporary cache",
    )
    parser.add_argument("--out-dir", default=HERE, help="where results*.json and results*.png go")
    args = parser.parse_args(argv)
    only = [w.strip().upper() for item in args.only for w in item.split(",") if w.strip()]
    bad = [w for w in only if w not in WORKLOADS]
    if bad:
        parser.error(f"unknown workload(s) {bad}; choose from {', '.join(WORKLOADS)}")
    args.only = only or list(WORKLOADS)
    return args


def plan_without_bf16_screen() -> None:
    """Store this CPU's constants (calibrated now, or tuned) with no bfloat16 rate as the tuned
    constants of a temporary cache that this process and its subprocesses read: every plan is
    then the one einplan makes on a CPU whose bfloat16 GEMM is not fast (W5's float32 tiles)."""
    model = einplan.calibration.model_for("cpu")
    os.environ["EINPLAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="einplan-no-bf16-")
    einplan.cost.save_model(dataclasses.replace(model, screen_rate=0.0))
    print(f"planning with no bfloat16 screen: {model.origin}, screen_rate 0, cached in {os.environ['EINPLAN_CACHE_DIR']}")


def configure(args) -> Config:
    cfg = QUICK if args.quick else FULL
    if args.no_compile:
        cfg = Config(**{**cfg.__dict__, "compile": False})
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_bf16_screen:
        plan_without_bf16_screen()
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)
    return cfg


def print_header(cfg: Config, info: dict, only: list) -> None:
    print(
        f"einplan {getattr(einplan, '__version__', '?')} | torch {info['torch']}, {info['threads']} threads, {info['cpus']} CPUs, "
        f"load average {info['loadavg']} | opt_einsum {getattr(opt_einsum, '__version__', 'n/a')}, "
        f"einops {getattr(einops, '__version__', 'n/a')}, einx {getattr(einx, '__version__', 'n/a')}"
    )
    print(f"mode: {'quick (small sizes; targets are stated for the full sizes)' if cfg.quick else 'full'}; workloads: {', '.join(only)}")
    print(
        "ratio column: einplan median / peer median (below 1: einplan faster); compiled rows compare with "
        "einplan under torch.compile; best: fastest sample"
    )
    warning = contention_warning()
    if warning:
        print(warning)


def run_workloads(cfg: Config, rates: dict, only: list) -> list:
    cases = []
    runners = workloads(cfg, rates)
    for w in only:
        t0 = time.perf_counter()
        print(f"\n==== {w} ====")
        for bench in runners[w]():
            case = run_bench(bench, cfg)
            print_case(case)
            cases.append(case)
        print(f"   ({w} took {time.perf_counter() - t0:.1f} s)")
    return cases


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = configure(args)
    info = machine_summary()
    started = time.perf_counter()
    print_header(cfg, info, args.only)
    rates = measure_rates(cfg, args.only)
    cases = run_workloads(cfg, rates, args.only)
    met = print_summary(cases)
    total = sum(len(c.targets) for c in cases)

    stem = "results" + ("_quick" if cfg.quick else "")
    if args.only != list(WORKLOADS):
        stem += "_" + "_".join(args.only)
    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, stem + ".json")
    png_path = os.path.join(args.out_dir, stem + ".png")
    results = {
        "einplan": getattr(einplan, "__version__", "?"),
        "machine": info,
        "mode": "quick" if cfg.quick else "full",
        "config": dict(cfg.__dict__),
        "rates": rates,
        "cases": None,
        "targets_met": met,
        "targets_total": total,
        "seconds": time.perf_counter() - started,
    }
    write_json(json_path, results, cases)
    sizes = "quick sizes" if cfg.quick else "full sizes"
    title = f"einplan vs peers ({sizes}), torch {info['torch']}, {info['threads']} threads; targets met {met}/{total}"
    if cases:
        write_chart(cases, png_path, title)
    print(f"\nwrote {os.path.relpath(json_path)} and {os.path.relpath(png_path)} ({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
