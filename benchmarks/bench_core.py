"""First benchmark of einplan's core (issue 2, item 8).

    python benchmarks/bench_core.py

(a) cached-call overhead: a 4x4 ``b n, m n -> b m`` (float32) with einplan.bl
    against torch.einsum, opt_einsum.contract, einops.einsum and ``a @ b.T``;
(b) the seed-001 batched quadratic form lᵀAl, l 80x20x64, A 64x64 (float32),
    against the hand-written recipes and torch.einsum.

Every peer's result is checked against einplan's before anything is timed.
Ratios are einplan time / peer time (below 1: einplan is faster).  The two
"Done when" checks of issue 2 are printed as PASS/FAIL lines.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import einops  # noqa: E402
import opt_einsum  # noqa: E402
import torch  # noqa: E402

import einplan  # noqa: E402
from timing import contention_warning, fmt_us, machine_summary, same_result, time_many  # noqa: E402

EINPLAN = "einplan.bl"


def run_case(title: str, pattern: str, einplan_fn, peers: dict, reference: str, budget_s: float) -> dict:
    """Check, time and print one comparison.  Returns {name: Timing or None}."""
    print(f"\n{title}\n  pattern: {pattern}")
    errors: dict[str, str] = {}
    candidates = {}
    try:
        expected = einplan_fn()
        candidates[EINPLAN] = einplan_fn
    except Exception as exc:  # EinplanError expected while features land
        errors[EINPLAN] = f"n/a (error: {type(exc).__name__}: {str(exc).splitlines()[0]})"
        expected = peers[reference]()
    for name, fn in peers.items():
        try:
            ok, note = same_result(fn(), expected)
        except Exception as exc:
            errors[name] = f"n/a (error: {type(exc).__name__}: {exc})"
            continue
        if ok:
            candidates[name] = fn
        else:
            errors[name] = f"n/a (result differs from einplan's: {note})"
    timings = time_many(candidates, budget_s=budget_s, max_repeat=40)

    base = timings.get(EINPLAN)
    print(f"  {'candidate':<46}{'median':>11}{'IQR':>11}{'best':>11}{'einplan/peer':>14}{'samples x calls':>17}")
    for name in [EINPLAN, *peers]:
        if name in errors:
            print(f"  {name:<46}{errors[name]}")
            continue
        t = timings[name]
        ratio = "" if name == EINPLAN or base is None else f"{base.median_us / t.median_us:.2f}"
        print(
            f"  {name:<46}{fmt_us(t.median_us):>11}{fmt_us(t.iqr_us):>11}{fmt_us(t.min_us):>11}{ratio:>14}{f'{t.samples} x {t.number}':>17}"
        )
    return {name: timings.get(name) for name in [EINPLAN, *peers]}


def print_header() -> None:
    info = machine_summary()
    print(
        f"einplan {getattr(einplan, '__version__', '?')}, torch {info['torch']}, {info['threads']} threads, "
        f"{info['cpus']} CPUs, load average {info['loadavg']}"
    )
    print(f"torch.einsum uses opt_einsum for paths: {torch.backends.opt_einsum.enabled}")
    print("ratio column: einplan median / peer median (below 1: einplan faster); best: fastest sample")
    warning = contention_warning()
    if warning:
        print(warning)


def overhead_case(budget_s: float) -> dict:
    """(a) cached-call overhead, 4x4."""
    a = torch.randn(4, 4)
    b = torch.randn(4, 4)
    p_a = "b n, m n -> b m"
    return run_case(
        "(a) cached-call overhead, 4x4 float32",
        p_a,
        lambda: einplan.bl(p_a, a, b),
        {
            'torch.einsum("bn,mn->bm")': lambda: torch.einsum("bn,mn->bm", a, b),
            'opt_einsum.contract("bn,mn->bm")': lambda: opt_einsum.contract("bn,mn->bm", a, b),
            'einops.einsum(..., "b n, m n -> b m")': lambda: einops.einsum(a, b, "b n, m n -> b m"),
            "a @ b.T": lambda: a @ b.T,
        },
        reference="a @ b.T",
        budget_s=budget_s,
    )


def quadratic_form_case(budget_s: float) -> dict:
    """(b) seed-001 quadratic form, shared A."""
    l = torch.randn(80, 20, 64)
    A = torch.randn(64, 64)
    p_b = "b1 b2 n, n n, b1 b2 n -> b1 b2"
    return run_case(
        "(b) quadratic form lᵀAl, l 80x20x64, A 64x64 shared, float32",
        p_b,
        lambda: einplan.bl(p_b, l, A, l),
        {
            "((l @ A) * l).sum(-1)": lambda: ((l @ A) * l).sum(-1),
            "(l[..., None, :] @ A @ l[..., None]).squeeze()": lambda: (l[..., None, :] @ A @ l[..., None]).squeeze(),
            'torch.einsum("xyn,nm,xym->xy")': lambda: torch.einsum("xyn,nm,xym->xy", l, A, l),
        },
        reference="((l @ A) * l).sum(-1)",
        budget_s=budget_s,
    )


def print_verdicts(overhead: dict, quad: dict) -> None:
    print("\nissue 2, 'Done when' (verdicts from medians):")
    ours, theirs = overhead[EINPLAN], overhead['torch.einsum("bn,mn->bm")']
    if ours is None or theirs is None:
        print("  FAIL  cached-call overhead <= torch.einsum's: n/a (a row could not be timed)")
    else:
        verdict = "PASS" if ours.median_us <= theirs.median_us else "FAIL"
        print(
            f"  {verdict}  cached-call overhead <= torch.einsum's: einplan {ours.median_us:.2f} us vs "
            f"torch.einsum {theirs.median_us:.2f} us (ratio {ours.median_us / theirs.median_us:.2f}, need <= 1.00; "
            f"fastest samples: {ours.min_us:.2f} vs {theirs.min_us:.2f} us, ratio {ours.min_us / theirs.min_us:.2f})"
        )
    ours, theirs = quad[EINPLAN], quad['torch.einsum("xyn,nm,xym->xy")']
    if ours is None or theirs is None:
        print("  FAIL  quadratic form >= 2.5x faster than torch.einsum: n/a (a row could not be timed)")
    else:
        speedup = theirs.median_us / ours.median_us
        verdict = "PASS" if speedup >= 2.5 else "FAIL"
        print(
            f"  {verdict}  quadratic form >= 2.5x faster than torch.einsum: einplan {ours.median_us:.1f} us vs "
            f"torch.einsum {theirs.median_us:.1f} us (speed-up {speedup:.2f}x, need >= 2.50x; fastest samples: "
            f"{ours.min_us:.1f} vs {theirs.min_us:.1f} us, speed-up {theirs.min_us / ours.min_us:.2f}x)"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of sampling per candidate")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first (default: leave torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print_header()
    torch.manual_seed(0)
    overhead = overhead_case(args.budget)
    quad = quadratic_form_case(args.budget)
    print_verdicts(overhead, quad)
    return 0


if __name__ == "__main__":
    sys.exit(main())
