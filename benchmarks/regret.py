"""The planner's regret on held-out signatures: how far einplan's default plan is from the best lowering it already has.

    python benchmarks/regret.py                       # every signature (a few minutes on 2 cores)
    python benchmarks/regret.py --quick               # few repetitions (smoke test)
    python benchmarks/regret.py --only "S07" --only "outer"   # signatures whose label holds a substring
    python benchmarks/regret.py --constants shipped --out benchmarks/results_regret_shipped.json

Issue 19, item 4.  The signatures (pattern, shapes, dtype) below are none of the
workloads W1..W8 of cases.py: matvecs, dot products, quadratic and bilinear
forms, batched matmuls from 2x2 to 512x512, outer products, attention scores,
MoE-style products, chains of three operands, reductions with clauses and
transposed outputs, from a few microseconds to about 20 ms a call.

For each signature, in one process: the default plan (``einplan.bl(pattern,
*tensors)``), every lowering of ``einplan.LOWERINGS`` forced (``lowering=...``;
``fused`` needs Triton on CUDA and is skipped, and so is any lowering that
raises ``UnsupportedError``/``EinplanError`` for the signature), and
torch.einsum where the pattern means the same to it (plain names, no name
twice in one operand, no clauses).  Every result is checked against the
default plan's first (a mismatch is skipped with a note); then all candidates
are sampled round robin (timing.py) and their medians compared.

Regret = how many times slower the default plan is than the fastest forced
lowering, each ratio taken *round by round*: the median over rounds of the
default's sample over the lowering's sample of the same round (timing.paired_ratio),
the largest over the lowerings.  Two samples of a round lie milliseconds apart, so
a slow stretch of the machine longer than a round (this 2-vCPU VM has stretches of
100-400 ms in which one op runs 1.3-3x slower) cancels; the ratio of the two
medians does not, and is kept in the JSON as ``median_regret``.  The check is the
signatures whose default plan runs the best lowering's very code (true ratio 1):
over two runs on an AMD EPYC (avx512_bf16 avx512f, 2 cores), their worst ratio
of medians was 1.12 and their worst paired ratio 1.06.  torch.einsum is not a
lowering: it is reported apart, as default / einsum, paired the same way.
Forcing a lowering forces it on every step, so a chain whose default plan mixes
lowerings can have a regret below 1.

``--constants shipped`` plans with the constants einplan ships: the user cache
is pointed at an empty temporary folder (``EINPLAN_CACHE_DIR``) and calibration
on first use is switched off (``EINPLAN_CALIBRATE=0``) before einplan is
imported.  ``--constants stored`` (the default) uses whatever the cache holds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # einplan itself is imported only after --constants has set its environment

from compare import cpu_name
from timing import contention_warning, fmt_us, machine_summary, paired_ratio, same_result, time_many

SKIPPED_LOWERINGS = ("fused",)  # Triton on CUDA only
SLOW_REGRET = 1.2  # a signature this far off the best lowering counts as badly planned
EINSUM_SLOWER = 1.1  # ... and this much slower than torch.einsum


@dataclass(frozen=True)
class Signature:
    id: str
    kind: str
    pattern: str
    shapes: tuple
    dtype: str = "float32"
    sizes: tuple = ()  # keyword sizes, as (name, value) pairs

    @property
    def label(self) -> str:
        return f"{self.id} {self.kind} {self.pattern} {shapes_text(self.shapes)} {self.dtype}"


def first_line(exc: BaseException, limit: int = 160) -> str:
    message = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shapes_text(shapes: tuple) -> str:
    return ", ".join("x".join(str(n) for n in s) if s else "()" for s in shapes)


# (kind, pattern, shapes[, dtype]) of every held-out signature
DOT, BMM, OUTER, QF = "b n, b n -> b", "b i j, b j k -> b i k", "b i, b j -> b i j", "b n, n n, b n -> b"
ATT, MOE = "b h q d, b h k d -> b h q k", "e c d, e d f -> e c f"
SPECS = [
    ("dot", DOT, ((64, 4096), (64, 4096))),
    ("dot", DOT, ((2048, 128), (2048, 128))),
    ("dot", DOT, ((262_144, 4), (262_144, 4))),
    ("dot", DOT, ((16, 16), (16, 16))),
    ("dot", DOT, ((1024, 1024), (1024, 1024))),
    ("dot", DOT, ((4096, 64), (4096, 64)), "float64"),
    ("dot", "b1 b2 n, b1 b2 n -> b1 b2", ((32, 32, 32), (32, 32, 32))),
    ("dot", "n, n ->", ((1_000_000,), (1_000_000,))),
    ("dot", "n, n ->", ((256,), (256,))),
    ("hadamard", "b n, b n -> b n", ((1024, 1024), (1024, 1024))),
    ("matvec", "m n, n -> m", ((512, 512), (512,))),
    ("matvec", "m n, n -> m", ((4096, 1024), (1024,))),
    ("matvec", "m n, n -> m", ((64, 64), (64,))),
    ("matvec", "b n, n -> b", ((4096, 512), (512,))),
    ("matvec", "b m n, b n -> b m", ((1024, 16, 16), (1024, 16))),
    ("matvec", "b m n, b n -> b m", ((64, 128, 128), (64, 128))),
    ("matvec", "n n, b n -> b n", ((32, 32), (4096, 32))),
    ("matmul", "b n, n m -> b m", ((10_000, 3), (3, 3))),
    ("matmul", "b n, n m -> b m", ((256, 256), (256, 256))),
    ("matmul", "b n, n m -> b m", ((1024, 512), (512, 512)), "bfloat16"),
    ("quadratic", QF, ((4096, 16), (16, 16), (4096, 16))),
    ("quadratic", QF, ((256, 256), (256, 256), (256, 256))),
    ("quadratic", QF, ((1000, 1000), (1000, 1000), (1000, 1000))),
    ("quadratic", "n, n n, n ->", ((512,), (512, 512), (512,))),
    ("bilinear", "b i, i j, b j -> b", ((2048, 32), (32, 64), (2048, 64))),
    ("bilinear", "b i, i j, b j -> b", ((512, 256), (256, 128), (512, 128))),
    ("bilinear", "b i, b i j, b j -> b", ((4096, 8), (4096, 8, 8), (4096, 8))),
    ("bilinear", "b i, b i j, b j -> b", ((256, 64), (256, 64, 64), (256, 64))),
    ("bmm", BMM, ((65_536, 3, 3), (65_536, 3, 3))),
    ("bmm", BMM, ((16_384, 5, 5), (16_384, 5, 5))),
    ("bmm", BMM, ((100_000, 2, 2), (100_000, 2, 2))),
    ("bmm", BMM, ((16_384, 2, 3), (16_384, 3, 4))),
    ("bmm", BMM, ((16_384, 4, 4), (16_384, 4, 4)), "float64"),
    ("bmm", BMM, ((4096, 8, 8), (4096, 8, 8))),
    ("bmm", BMM, ((1024, 16, 16), (1024, 16, 16))),
    ("bmm", BMM, ((64, 64, 64), (64, 64, 64))),
    ("bmm", BMM, ((8, 256, 256), (8, 256, 256))),
    ("bmm", BMM, ((2, 512, 512), (2, 512, 512))),
    ("outer", OUTER, ((1024, 64), (1024, 64))),
    ("outer", OUTER, ((64, 256), (64, 256))),
    ("outer", OUTER, ((4096, 8), (4096, 8))),
    ("outer", "i, j -> i j", ((1000,), (1000,))),
    ("outer", "i, j -> i j", ((64,), (64,))),
    ("attention", ATT, ((2, 8, 128, 64), (2, 8, 128, 64))),
    ("attention", ATT, ((1, 4, 512, 32), (1, 4, 512, 32))),
    ("attention", ATT, ((8, 12, 64, 64), (8, 12, 64, 64))),
    ("attention", "b h q k, b h k d -> b h q d", ((2, 8, 128, 128), (2, 8, 128, 64))),
    ("moe", MOE, ((8, 64, 256), (8, 256, 512))),
    ("moe", MOE, ((64, 8, 64), (64, 64, 64))),
    ("moe", MOE, ((16, 128, 128), (16, 128, 128))),
    ("chain", "a b, b c, c d -> a d", ((256, 64), (64, 512), (512, 32))),
    ("chain", "a b, b c, c d -> a d", ((512, 512), (512, 512), (512, 512))),
    ("chain", "b i, i j, j k -> b k", ((1024, 128), (128, 128), (128, 16))),
    ("clause", "b n -> b | max n", ((4096, 256),)),
    ("clause", "b n d -> b d | max n", ((64, 128, 64),)),
    ("clause", "q d, k d -> q | max k", ((512, 64), (2048, 64))),
    ("clause", "q d, k d -> q | logsumexp k", ((1024, 32), (1024, 32))),
    ("clause", "q d, k d -> q | logsumexp k", ((256, 64), (4096, 64))),
    ("clause", "q d, k d -> q | argmax k", ((1024, 64), (1024, 64))),
    ("clause", "m d, n d -> | max m n", ((1500, 32), (3000, 32))),
    ("clause", "b n d -> b | mean n d", ((256, 64, 64),)),
    ("clause", "b n, b n -> | logsumexp b", ((4096, 64), (4096, 64))),
    ("clause", "b h q d, b h k d -> b h q | logsumexp k", ((2, 4, 256, 32), (2, 4, 256, 32))),
    ("transposed", "b i j, b j k -> b k i", ((512, 16, 16), (512, 16, 16))),
    ("transposed", "b i j, b j k -> b k i", ((64, 64, 64), (64, 64, 64))),
    ("transposed", "m k, k n -> n m", ((512, 512), (512, 512))),
    ("transposed", "b n d -> b d n", ((64, 256, 64),)),
    ("reduce", "b n d -> b d", ((256, 128, 64),)),
    ("reduce", "b n n -> b", ((4096, 16, 16),)),
    ("outer", OUTER, ((262_144, 2), (262_144, 2))),
    ("outer", OUTER, ((65_536, 4), (65_536, 4))),
]


SIGNATURES = tuple(Signature(f"S{i:02d}", *spec) for i, spec in enumerate(SPECS, 1))
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def einsum_equation(pattern: str) -> str | None:
    """torch.einsum's equation for ``pattern`` where it means the same, else None: every axis a
    plain name, no name twice within one operand, no clauses."""
    if "|" in pattern or "->" not in pattern:
        return None
    left, right = pattern.split("->")
    operands = [op.split() for op in left.split(",")] + [right.split()]
    names = [n for op in operands for n in op]
    if not all(NAME.match(n) for n in names) or any(len(set(op)) != len(op) for op in operands):
        return None
    letters = {}
    for n in names:
        letters.setdefault(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[len(letters)])
    terms = ["".join(letters[n] for n in op) for op in operands]
    return ",".join(terms[:-1]) + "->" + terms[-1]


@dataclass
class Result:
    sig: Signature
    plan: str = ""
    measured: str = ""  # what einplan's close-call measurement kept, where it measured
    trial: str = ""  # ... and what it timed on those first calls
    timings: dict = field(default_factory=dict)  # candidate -> Timing
    notes: list = field(default_factory=list)
    best: str | None = None
    regret: float | None = None
    einsum_ratio: float | None = None
    same_code: bool = False  # the default plan's generated code is the best lowering's, line for line
    median_regret: float | None = None  # the default's median over the best's: the estimate before pairing

    def median(self, name: str) -> float | None:
        t = self.timings.get(name)
        return t.median_us if t is not None else None


# --- checking and timing one signature ---------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    warmup: int
    min_sample_s: float
    budget_s: float
    min_repeat: int
    max_repeat: int


FULL = Settings(quick=False, warmup=3, min_sample_s=5e-3, budget_s=0.5, min_repeat=5, max_repeat=41)
QUICK = Settings(quick=True, warmup=1, min_sample_s=5e-4, budget_s=0.005, min_repeat=2, max_repeat=3)
DEFAULT, EINSUM = "default", "torch.einsum"


def forced(lowering: str) -> str:
    return f"lowering={lowering}"


def make_tensors(sig: Signature) -> list:
    gen = torch.Generator().manual_seed(int(sig.id[1:]))
    dtype = getattr(torch, sig.dtype)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for shape in sig.shapes]


def tolerance(dtype: str) -> float:
    """Relative to the default result's largest magnitude: summation orders differ between lowerings."""
    return {"float64": 1e-9, "float32": 1e-4}.get(dtype, 2e-2)


def plan_kinds(sig: Signature, tensors: list) -> str:
    """The default plan's lowerings, one per step ('-' for a plan of views alone)."""
    from einplan.runtime import plan_for

    kinds = [step.kind for step in plan_for(sig.pattern, *tensors, **dict(sig.sizes)).steps]
    return " + ".join(kinds) if kinds else "-"


def candidates(sig: Signature, tensors: list, result: Result) -> dict:
    """Every candidate that computes the default plan's result, as zero-argument calls; the ones
    that cannot (unsupported, raising, or a different result) are left out with a note."""
    import einplan

    sizes = dict(sig.sizes)
    fns = {DEFAULT: lambda: einplan.bl(sig.pattern, *tensors, **sizes)}
    reference = fns[DEFAULT]()
    for lowering in einplan.LOWERINGS:
        if lowering in SKIPPED_LOWERINGS:
            continue
        fns[forced(lowering)] = lambda lowering=lowering: einplan.bl(sig.pattern, *tensors, lowering=lowering, **sizes)
    equation = einsum_equation(sig.pattern)
    if equation is not None:
        fns[EINSUM] = lambda: torch.einsum(equation, *tensors)
    for name in [n for n in fns if n != DEFAULT]:
        try:
            got = fns[name]()
        except (einplan.UnsupportedError, einplan.EinplanError):
            del fns[name]  # the lowering cannot compute this signature: not a candidate
            continue
        except Exception as exc:  # a candidate that fails is reported, not fatal
            del fns[name]
            result.notes.append(f"{name} raised {first_line(exc)}")
            continue
        ok, note = same_result(got, reference, rtol=tolerance(sig.dtype))
        if not ok:
            del fns[name]
            result.notes.append(f"{name} skipped: result differs from the default plan's ({note})")
    return fns


SETTLE_CALLS = 1000  # the most calls of the default plan spent letting its close call's trial finish


def settle_trial(sig: Signature, tensors: list, default: Callable[[], object], before: set) -> int:
    """Call the default plan until the trial of its close call (where it has one) has settled, and
    return how many calls that took: ``bl`` times the candidates of a close call on a signature's
    first calls (a few hundred for a call of tens of microseconds), and the regret is that of the
    calls after.  Left to the timed samples, a slow stretch at calibration can make time_many take
    so few calls that they time the trial itself (2048 dot products of 128, S02, sampled a mix of
    both candidates and no choice)."""
    from einplan import measuring
    from einplan.runtime import plan_for

    if not measuring.measuring_enabled() or not measuring.close_calls(plan_for(sig.pattern, *tensors, **dict(sig.sizes))):
        return 0
    calls = 0
    while calls < SETTLE_CALLS and not set(measured_choices()) - before:
        default()
        calls += 1
    return calls


def measured_choices() -> dict:
    """einplan's record of close calls it measured (signature -> what it kept); empty where it has none."""
    try:
        from einplan import measuring

        return dict(measuring.MEASURED)
    except (ImportError, AttributeError):
        return {}


def measure(sig: Signature, settings: Settings) -> Result:
    """Check and time one signature's candidates, round robin; the regret and the einsum ratio."""
    result = Result(sig)
    tensors = make_tensors(sig)
    before = set(measured_choices())
    try:
        result.plan = plan_kinds(sig, tensors)
        fns = candidates(sig, tensors, result)
    except Exception as exc:  # the default plan itself failed: the row says so
        result.notes.append(f"default plan failed: {first_line(exc)}")
        return result
    settle_trial(sig, tensors, fns[DEFAULT], before)
    result.timings = time_many(
        fns,
        warmup=settings.warmup,
        min_sample_s=settings.min_sample_s,
        budget_s=settings.budget_s,
        min_repeat=settings.min_repeat,
        max_repeat=settings.max_repeat,
    )
    new = [measured_choices()[k] for k in measured_choices() if k not in before]
    kept = [str(getattr(m, "kept", "?")) for m in new]
    result.measured = ", ".join(kept)
    result.trial = "; ".join(m.describe() for m in new if hasattr(m, "describe"))
    default = result.timings[DEFAULT]
    lowered = {n: paired_ratio(default, t) for n, t in result.timings.items() if n.startswith("lowering=")}
    if lowered:
        result.best = max(lowered, key=lowered.get)  # the lowering the default plan is slowest against
        result.regret = lowered[result.best]
        result.median_regret = result.median(DEFAULT) / result.median(result.best)
        result.same_code = same_code(sig, tensors, result.best, kept[0] if len(kept) == 1 else None)
    if EINSUM in result.timings:
        result.einsum_ratio = paired_ratio(default, result.timings[EINSUM])
    return result


def same_code(sig: Signature, tensors: list, best: str, kept: str | None = None) -> bool:
    """Whether the default plan runs the very code the best forced lowering runs: a regret there is
    the spread of two timings of one function, not a planning error.  ``kept``: what the default's
    close call kept when it measured one (``einplan.code`` renders the cost model's plan; a trial that
    kept another lowering runs that lowering forced on every step)."""
    import einplan

    sizes = dict(sig.sizes)
    try:
        lowering = best.removeprefix("lowering=")
        ran = {"lowering": kept} if kept in einplan.LOWERINGS else {}
        return einplan.code(sig.pattern, *tensors, **ran, **sizes) == einplan.code(sig.pattern, *tensors, lowering=lowering, **sizes)
    except Exception:  # a plan code() cannot render: count it as different code
        return False


# --- the report ---------------------------------------------------------------------------------


def geomean(xs: list) -> float | None:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summarize(results: list) -> dict:
    """Geometric-mean and worst regret, how many signatures are off, how many slower than einsum."""
    regrets = [r for r in results if r.regret is not None]
    einsums = [r for r in results if r.einsum_ratio is not None]
    worst = max(regrets, key=lambda r: r.regret, default=None)
    differing = [r for r in regrets if not r.same_code]
    worst_differing = max(differing, key=lambda r: r.regret, default=None)
    return {
        "signatures": len(results),
        "with_regret": len(regrets),
        "geomean_regret": geomean([r.regret for r in regrets]),
        "geomean_regret_floor1": geomean([max(1.0, r.regret) for r in regrets]),
        "worst_regret": worst.regret if worst else None,
        "worst_signature": worst.sig.label if worst else None,
        "same_code_as_best": sum(r.same_code for r in regrets),
        "worst_regret_different_code": worst_differing.regret if worst_differing else None,
        "worst_signature_different_code": worst_differing.sig.label if worst_differing else None,
        f"over_{SLOW_REGRET}x": sum(r.regret > SLOW_REGRET for r in regrets),
        "with_einsum": len(einsums),
        f"einsum_slower_{EINSUM_SLOWER}x": sum(r.einsum_ratio > EINSUM_SLOWER for r in einsums),
        "geomean_einsum_ratio": geomean([r.einsum_ratio for r in einsums]),
        "worst5": [
            {"signature": r.sig.label, "regret": r.regret, "default_plan": r.plan, "best": r.best, "same_code": r.same_code}
            for r in sorted(regrets, key=lambda r: -r.regret)[:5]
        ],
    }


def ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def print_table(results: list) -> None:
    head = ("id", "pattern", "shapes", "dtype", "default plan", "default", "best lowering", "its time", "regret", "default/einsum")
    rows = [
        (
            r.sig.id,
            r.sig.pattern,
            shapes_text(r.sig.shapes),
            r.sig.dtype,
            (r.plan or "n/a") + (f" (measured: kept {r.measured})" if r.measured else ""),
            fmt_us(r.median(DEFAULT)),
            (r.best or "n/a").removeprefix("lowering="),
            fmt_us(r.median(r.best)) if r.best else "n/a",
            ratio(r.regret) + (" =" if r.same_code else ""),
            ratio(r.einsum_ratio),
        )
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in (head, *rows)) for i in range(len(head))]
    right = {5, 7, 8, 9}  # times and ratios
    for row in (head, *rows):
        print(
            "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        )
    notes = [(r.sig.id, note) for r in results for note in r.notes]
    if notes:
        print("\nnotes:")
        for sid, note in notes:
            print(f"  {sid}: {note}")


def print_summary(summary: dict) -> None:
    n = summary["with_regret"]
    print(
        f"\ngeometric-mean regret: {ratio(summary['geomean_regret'])} over {n} signatures "
        f"({ratio(summary['geomean_regret_floor1'])} with each regret below 1 counted as 1)"
    )
    print(f"worst regret: {ratio(summary['worst_regret'])} ({summary['worst_signature']})")
    print(
        f"default plan runs the best lowering's own code ('=' above): {summary['same_code_as_best']} of {n}; "
        f"worst regret where the code differs: {ratio(summary['worst_regret_different_code'])} "
        f"({summary['worst_signature_different_code']})"
    )
    print(f"signatures more than {SLOW_REGRET}x off the best lowering: {summary[f'over_{SLOW_REGRET}x']} of {n}")
    print(
        f"signatures more than {EINSUM_SLOWER}x slower than torch.einsum: "
        f"{summary[f'einsum_slower_{EINSUM_SLOWER}x']} of {summary['with_einsum']} "
        f"(geometric-mean default/einsum {ratio(summary['geomean_einsum_ratio'])})"
    )
    print("worst 5:")
    for w in summary["worst5"]:
        same = " (the same code)" if w["same_code"] else ""
        print(f"  {ratio(w['regret'])}  {w['signature']}  default plan: {w['default_plan']}; best: {w['best']}{same}")


def result_json(r: Result) -> dict:
    return {
        "id": r.sig.id,
        "kind": r.sig.kind,
        "pattern": r.sig.pattern,
        "shapes": [list(s) for s in r.sig.shapes],
        "dtype": r.sig.dtype,
        "default_plan": r.plan,
        "measured_kept": r.measured or None,
        "trial": r.trial or None,
        "timings": {name: t.as_dict() for name, t in r.timings.items()},
        "best_lowering": r.best,
        "regret": r.regret,
        "median_regret": r.median_regret,
        "einsum_ratio": r.einsum_ratio,
        "same_code_as_best": r.same_code,
        "notes": r.notes,
    }


def write_json(path: str, header: dict, results: list, summary: dict) -> None:
    with open(path, "w") as f:
        json.dump({**header, "summary": summary, "signatures": [result_json(r) for r in results]}, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")


# --- the command line ---------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repetitions (a smoke test; its times mean little)")
    p.add_argument("--out", metavar="FILE.json", help="write every timing, the regrets and the summary here")
    p.add_argument("--only", action="append", metavar="SUBSTRING", help="signatures whose label holds it (repeatable)")
    p.add_argument(
        "--constants",
        choices=("shipped", "calibrated", "stored"),
        default="stored",
        help="shipped: einplan's shipped constants (an empty cache, no calibration); calibrated: an empty cache, "
        "calibration on first use on; stored: whatever the user cache holds",
    )
    p.add_argument(
        "--close-calls",
        choices=("measured", "off"),
        default="measured",
        help="measured: einplan times close calls on the first calls (its default); off: EINPLAN_MEASURE=0, the cost model alone",
    )
    return p.parse_args(argv)


def use_constants(mode: str, close_calls: str) -> None:
    """Before einplan is imported: for shipped and calibrated constants an empty cache folder, with
    calibration off for shipped ones; close-call measurement off where asked."""
    if mode in ("shipped", "calibrated"):
        os.environ["EINPLAN_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"einplan-{mode}-")
        os.environ["EINPLAN_CALIBRATE"] = "0" if mode == "shipped" else "1"
    if close_calls == "off":
        os.environ["EINPLAN_MEASURE"] = "0"


def constants_origin() -> str:
    """What the cost model's constants are, as einplan says (its own words, where it has them)."""
    try:
        try:
            from einplan.calibration import model_for  # the constants planning uses, calibrated or not
        except ImportError:
            from einplan.cost import load_model as model_for

        return str(getattr(model_for("cpu"), "origin", "unknown"))
    except Exception as exc:  # the cost module's internals are not an API: report, not fail
        return f"unknown ({type(exc).__name__})"


def source_state() -> str:
    """The checkout's commit, and whether src/ differs from it (the plans come from the tree as it is)."""
    try:
        run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=HERE).stdout.strip()
        commit = run("git", "rev-parse", "--short", "HEAD")
        dirty = run("git", "status", "--porcelain", "--", "../src")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}{' with uncommitted changes in src/' if dirty else ''}" if commit else "unknown"


def header(args: argparse.Namespace) -> dict:
    import einplan

    return {
        "benchmark": "regret",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(),
        "machine": machine_summary(),
        "einplan": getattr(einplan, "__version__", "?"),
        "torch": torch.__version__,
        "source": source_state(),
        "constants": args.constants,
        "close_calls": args.close_calls,
        "constants_origin": constants_origin(),
        "quick": args.quick,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    use_constants(args.constants, args.close_calls)
    sigs = [s for s in SIGNATURES if not args.only or any(o in s.label for o in args.only)]
    if not sigs:
        print(f"no signature matches {args.only}", file=sys.stderr)
        return 2
    settings = QUICK if args.quick else FULL
    start = time.perf_counter()
    results = []
    for sig in sigs:
        results.append(measure(sig, settings))
        print(f"  {sig.label}: {ratio(results[-1].regret)}", file=sys.stderr, flush=True)
    info = header(args)  # after planning: the constants' origin is the one the plans used
    print(
        f"\nCPU: {info['cpu']}; torch {info['torch']}, {info['machine']['threads']} threads; einplan {info['einplan']} ({info['source']})"
    )
    print(f"constants: {args.constants} ({info['constants_origin']}); close calls: {args.close_calls}; {info['date_utc']} UTC")
    if warning := contention_warning():
        print(warning)
    print()
    print_table(results)
    summary = summarize(results)
    print_summary(summary)
    info["wall_s"] = round(time.perf_counter() - start, 1)
    print(f"\n{len(results)} signatures in {info['wall_s']:.0f} s")
    if args.out:
        write_json(args.out, info, results, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
