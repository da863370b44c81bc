"""einplan's rows of the workloads from two checkouts, timed in alternating subprocesses.

    python benchmarks/compare.py --base /tmp/einplan-base/src --new src [--quick] [--only W3] [--rounds 3]

Each round runs one subprocess per side, base first in even rounds and new first in odd ones, each importing einplan
from its side's source tree and timing the einplan rows of the workloads
(``einplan.bl``, the kernel and forced-lowering rows; ``--compile`` adds the
torch.compile rows, which compile afresh in every subprocess).  Both sides use
this checkout's benchmark code.  Printed per row: the median over rounds of each
side's median time, and the ratio new / base (above 1: new is slower).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MARK = "compare.py rows: "
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6")  # run.py's; named here so that this process never imports einplan


def cpu_name() -> str:
    """The CPU's model name, from lscpu (or /proc/cpuinfo)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    if not out and os.path.exists("/proc/cpuinfo"):
        out = open("/proc/cpuinfo").read().replace("model name", "Model name")
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Model name")]
    return names[0] if names else "unknown CPU"


# --- one side: a subprocess that times einplan's rows -------------------------------------------


def worker(src: str, quick: bool, only: list, compiled: bool, threads: int | None) -> int:
    sys.path.insert(0, os.path.abspath(src))
    import torch

    import einplan
    from cases import FULL, QUICK, Config, time_rows
    from run import workloads

    if not os.path.abspath(einplan.__file__).startswith(os.path.abspath(src)):
        raise SystemExit(f"einplan was imported from {einplan.__file__}, not from {src}")
    cfg = Config(**{**(QUICK if quick else FULL).__dict__, "compile": compiled})
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    times: dict[str, float | None] = {}
    runners = workloads(cfg, {})
    for w in only:
        for bench in runners[w]():
            case = bench.case
            case.rows = [r for r in case.rows if r.runs_einplan and (compiled or r.mode == "eager")]
            warm_up(case)
            time_rows(case, cfg, slow=bench.slow)
            for r in case.rows:
                times[f"{case.workload} {case.label} | {r.name}"] = r.median_us if r.status == "ok" else None
    print(MARK + json.dumps(times))
    return 0


def warm_up(case) -> None:
    """Each row runs once (its warm-up; run.py checks the results, this only times them); one that fails is n/a."""
    from cases import first_line

    for row in case.rows:
        try:
            row.fn()
        except Exception as exc:
            row.status = f"n/a (error: {first_line(exc)})"


def run_side(src: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", src, "--only", ",".join(args.only)]
    command += ["--quick"] * args.quick + ["--compile"] * args.compile + ([f"--threads={args.threads}"] if args.threads else [])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in result.stdout.splitlines() if line.startswith(MARK)]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"the run from {src} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK) :])


# --- both sides -----------------------------------------------------------------------------------


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(us: float | None) -> str:
    if us is None:
        return "n/a"
    return f"{us / 1e3:.2f} ms" if us >= 1e3 else f"{us:.2f} us"


def report(base: list, new: list, args) -> None:
    names = list(dict.fromkeys([name for side in base + new for name in side]))
    width = max(len(n) for n in names) + 2 if names else 10
    threads = f"{args.threads} thread(s)" if args.threads else "torch's default threads"
    print(f"\nCPU: {cpu_name()}; {threads}; {args.rounds} rounds, order alternating each round; medians over rounds of each run's median")
    print(f"base: {args.base}\nnew:  {args.new}\n")
    print(f"{'row':<{width}}{'base':>13}{'new':>13}{'new/base':>10}")
    ratios = []
    for name in names:
        b, n = _median([side.get(name) for side in base]), _median([side.get(name) for side in new])
        ratio = n / b if b and n else None
        if ratio:
            ratios.append(ratio)
        print(f"{name:<{width}}{_fmt(b):>13}{_fmt(n):>13}{'n/a' if ratio is None else f'{ratio:.3f}':>10}")
    if ratios:
        geo = statistics.geometric_mean(ratios)
        print(f"\n{len(ratios)} rows; new/base: geometric mean {geo:.3f}, lowest {min(ratios):.3f}, highest {max(ratios):.3f}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="einplan's benchmark rows from two source trees, in alternating subprocesses")
    parser.add_argument("--base", help="the base checkout's source folder (the one holding einplan/)")
    parser.add_argument("--new", help="the new checkout's source folder")
    parser.add_argument("--rounds", type=int, default=3, help="subprocesses per side (default 3)")
    parser.add_argument("--quick", action="store_true", help="the small sizes of run.py --quick")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads (default: all)")
    parser.add_argument("--compile", action="store_true", help="also the torch.compile rows (compiled afresh in each subprocess)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) in each subprocess (default: torch's)")
    parser.add_argument("--worker", metavar="SRC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    bad = [w for w in args.only if w not in WORKLOADS]
    if bad:
        parser.error(f"unknown workload(s) {bad}; choose from {', '.join(WORKLOADS)}")
    if not args.worker and not (args.base and args.new):
        parser.error("give --base and --new")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.quick, args.only, args.compile, args.threads)
    base, new = [], []
    for i in range(args.rounds):
        sides = [("base", args.base, base), ("new", args.new, new)]
        for side, src, out in sides if i % 2 == 0 else sides[::-1]:  # ABBA: neither side always runs first
            print(f"round {i + 1}/{args.rounds}: {side} ({src})", flush=True)
            out.append(run_side(src, args))
    report(base, new, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
