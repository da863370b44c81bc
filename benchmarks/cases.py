"""The benchmark's vocabulary: configurations, rows, cases and targets, and how one case is checked and timed.

A workload (dense.py, tiny.py, allpairs.py) yields one ``Bench`` per case: the
case's rows, the row its results are checked against, and its targets.
``run_bench`` checks every row, times those that passed, and evaluates the
targets; run.py prints them and compare.py times only einplan's rows.
"""

from __future__ import annotations

import functools
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import einplan
from timing import Timing, same_result, time_many

MiB = 1 << 20
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8")
# the lowerings of the spec, by name (forced with bl(..., lowering=name))
MATMUL, ELEMENTWISE, UNROLLED, CHUNKED = "matmul-broadcast", "elementwise-sum", "unrolled", "chunked-reduction"
LOWERINGS = (MATMUL, ELEMENTWISE, UNROLLED, CHUNKED)

# peers that may be missing on a machine: their rows become n/a
try:
    import opt_einsum
except ImportError:  # pragma: no cover
    opt_einsum = None
try:
    import einops
except ImportError:  # pragma: no cover
    einops = None
try:
    import einx
except ImportError:  # pragma: no cover
    einx = None


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    quick: bool
    compile: bool
    budget_s: float  # sampling time per candidate, small ops
    max_repeat: int
    w1_b: tuple
    w2_shapes: tuple
    w3_cases: tuple  # (l shape, n)
    w4_batch: int
    w4_sizes: tuple
    w4_compile_sizes: tuple
    w5_mnd: tuple
    w6_qkd: tuple
    w7_qkd: tuple  # W7 and W8 (forward + backward)
    copy_elems: int
    sgemm_n: int


FULL = Config(
    quick=False,
    compile=True,
    budget_s=1.0,
    max_repeat=25,
    w1_b=(100, 10_000),
    w2_shapes=((80, 20, 64), (4096, 64, 8), (1_000_000, 3)),
    w3_cases=(((80, 20), 64), ((100_000,), 3)),
    w4_batch=262_144,
    w4_sizes=(2, 3, 4),
    w4_compile_sizes=(2, 3, 4),
    w5_mnd=(20_000, 20_000, 128),
    w6_qkd=(20_000, 20_000, 64),
    w7_qkd=(20_000, 20_000, 128),
    copy_elems=64 * MiB,  # 256 MiB float32
    sgemm_n=2048,
)

QUICK = Config(
    quick=True,
    compile=True,
    budget_s=0.02,
    max_repeat=3,
    w1_b=(100,),
    w2_shapes=((80, 20, 64), (4096, 64, 8), (100_000, 3)),
    w3_cases=(((80, 20), 64), ((10_000,), 3)),
    w4_batch=16_384,
    w4_sizes=(2, 3, 4),
    w4_compile_sizes=(2,),
    w5_mnd=(2_000, 2_000, 128),
    w6_qkd=(2_000, 2_000, 64),
    w7_qkd=(2_000, 2_000, 128),
    copy_elems=8 * MiB,
    sgemm_n=512,
)


# --- rows, cases, targets --------------------------------------------------------------------

EINPLAN = "einplan"  # row kinds: einplan (the row targets are about), info (einplan, forced
PEER = "peer"  # lowering or other form), peer, bound (a computed lower bound, not a call)
INFO = "info"
BOUND = "bound"
KERNEL_ROW = "einplan.kernel(..., check=False)"


@dataclass
class Row:
    name: str
    fn: Callable[[], object] | None
    kind: str = PEER
    mode: str = "eager"  # eager | compiled
    timing: Timing | None = None
    status: str = "ok"  # ok, or "n/a (...)"
    note: str = ""
    bound_us: float | None = None  # for BOUND rows
    first_call_s: float | None = None  # the checked call; for compiled rows it includes compiling
    once: bool = False  # timed by its checked call alone (a call takes minutes)
    yardstick: bool = False  # computes something else on the same data (a ceiling): run, not checked

    @property
    def median_us(self) -> float | None:
        if self.kind == BOUND:
            return self.bound_us
        return self.timing.median_us if self.timing is not None else None

    @property
    def runs_einplan(self) -> bool:
        """A row that calls einplan: the target row, the kernel and the forced lowerings."""
        return self.kind == EINPLAN or (self.kind == INFO and self.name.startswith("einplan."))


@dataclass
class Target:
    text: str
    value: float | None  # the measured quantity
    need: str  # e.g. "<= 1.05"
    met: bool | None  # None: could not be measured
    detail: str = ""


@dataclass
class Case:
    workload: str
    label: str
    pattern: str
    rows: list
    planner: str = ""
    targets: list = field(default_factory=list)  # from medians
    targets_best: list = field(default_factory=list)  # the same targets from each row's fastest sample
    memory: dict = field(default_factory=dict)
    note: str = ""
    reference_result: object = None  # the reference row's result (kept for later checks)

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def t(self, name: str, stat: str = "median") -> float | None:
        """A row's time in us (median, or min: its fastest sample); None if it did not run."""
        r = self.row(name)
        if r is None or r.status != "ok":
            return None
        if r.kind == BOUND or stat == "median":
            return r.median_us
        return r.timing.min_us if r.timing is not None else None

    def evaluate(self, targets: Callable) -> None:
        """``targets(t)`` builds the Target list from a time look-up ``t(name)``; evaluated on the
        medians (the verdict) and on the fastest samples (shown, to expose noise)."""
        self.targets = targets(self.t)
        self.targets_best = targets(lambda name: self.t(name, "min"))


@dataclass
class Bench:
    """One case as its workload defines it: rows, the reference row, how results are checked, the targets.

    ``prepare`` runs before the rows (bounds measured for them), ``after`` after
    they are timed (memory measured in a subprocess); ``quiet`` silences warnings.
    """

    case: Case
    reference: str | None
    targets: Callable
    check: Callable = same_result
    slow: bool = False
    prepare: Callable[[], None] | None = None
    after: Callable[[], None] | None = None
    quiet: bool = False


def first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def planner_choice(pattern: str, *tensors) -> str:
    """The lowerings einplan's planner picks per step, read from explain()."""
    try:
        text = einplan.explain(pattern, *tensors)
    except Exception as exc:
        return f"n/a (explain: {first_line(exc, 100)})"
    kinds = re.findall(r"^\s{2}\d+\.\s+(\S+)", text, flags=re.M)
    return ", ".join(kinds) if kinds else "?"


# --- checking and timing one case --------------------------------------------------------------


def _first_call(row: Row):
    start = time.perf_counter()
    got = row.fn()
    row.first_call_s = time.perf_counter() - start
    return got


def _run_reference(case: Case, ref_row: Row | None):
    if ref_row is None:
        return None
    try:
        result = _first_call(ref_row)
    except Exception as exc:
        ref_row.status = f"n/a (error: {first_line(exc)})"
        return None
    case.reference_result = result
    return result


def check_rows(case: Case, check: Callable = same_result, reference: str | None = None) -> None:
    """Run every row once and check its result; a row that fails becomes n/a.

    einplan's result is checked against ``reference`` (a trusted recipe); every
    other row is checked against einplan's result, or against the reference when
    einplan cannot run this row.
    """
    expected = None
    ref_row = case.row(reference) if reference else None
    ref_result = _run_reference(case, ref_row)
    for row in case.rows:
        if row.kind == BOUND or row.status != "ok":
            continue
        if row is ref_row:
            got = ref_result
        else:
            try:
                got = _first_call(row)
            except Exception as exc:  # EinplanError while features land; compile failures
                row.status = f"n/a (error: {first_line(exc)})"
                continue
        if row.yardstick:
            del got
            continue
        if row.kind == EINPLAN and row.mode == "eager":
            against, what = ref_result, f"the reference ({reference})"
        elif expected is not None:
            against, what = expected, "einplan's result"
        else:
            against, what = ref_result, f"the reference ({reference})"
        if against is None and row is not ref_row:
            row.status = "n/a (nothing to check the result against)"
            continue
        if row is not ref_row:
            ok, note = check(got, against)
            if not ok:
                row.status = f"n/a (result differs from {what}: {note})"
                continue
        if row.kind == EINPLAN and row.mode == "eager":
            expected = got
        del got


def time_rows(case: Case, cfg: Config, slow: bool = False) -> None:
    """Time the rows that passed, interleaved; every row has just run once, its first warm-up."""
    timed = {r.name: r.fn for r in case.rows if r.kind != BOUND and r.status == "ok" and not r.once}
    if slow:  # seconds per call: 3 samples
        timings = time_many(timed, warmup=0, min_sample_s=0.0, budget_s=0.0, min_repeat=3, max_repeat=3)
    else:
        # rows whose checked call took over 50 ms are warm: no further warm-up call
        warm = {r.name for r in case.rows if r.first_call_s is not None and r.first_call_s > 0.05}
        timings = time_many(timed, warmup=0 if cfg.quick else 1, budget_s=cfg.budget_s, max_repeat=cfg.max_repeat, min_repeat=3, warm=warm)
    for r in case.rows:
        r.timing = timings.get(r.name)
        if r.once and r.status == "ok" and r.first_call_s is not None:
            r.timing = Timing(*(r.first_call_s * 1e6,) * 4, samples=1, number=1)


def run_case(case: Case, cfg: Config, check: Callable = same_result, reference: str | None = None, slow: bool = False) -> Case:
    """Check every row's result, then time the rows that passed (interleaved)."""
    check_rows(case, check, reference)
    time_rows(case, cfg, slow)
    return case


def run_bench(bench: Bench, cfg: Config) -> Case:
    """Prepare, check and time one case, measure what comes after, then evaluate its targets."""
    if bench.prepare is not None:
        bench.prepare()
    with warnings.catch_warnings():
        if bench.quiet:
            warnings.simplefilter("ignore")
        run_case(bench.case, cfg, check=bench.check, reference=bench.reference, slow=bench.slow)
    if bench.after is not None:
        bench.after()
    bench.case.evaluate(bench.targets)
    return bench.case


def ratio_base(case: Case, row: Row) -> float | None:
    """einplan's time in the same mode (eager or compiled) as ``row``."""
    for r in case.rows:
        if r.kind == EINPLAN and r.mode == row.mode and r.status == "ok":
            return r.median_us
    return None


# --- target helpers ----------------------------------------------------------------------------


def best_of(t: Callable, names) -> tuple[float | None, str | None]:
    times = [(t(n), n) for n in names if t(n) is not None]
    return min(times) if times else (None, None)


def at_most(text: str, value: float | None, limit: float, detail: str = "") -> Target:
    met = None if value is None else value <= limit
    return Target(text, value, f"<= {limit:g}", met, detail)


def at_least(text: str, value: float | None, limit: float, detail: str = "") -> Target:
    met = None if value is None else value >= limit
    return Target(text, value, f">= {limit:g}", met, detail)


def ceiling(value: float | None, what: str) -> str:
    """A target's best reachable ratio, when something einplan cannot beat bounds it."""
    return f"ceiling {value:.2f}x: {what}" if value else ""


def kernel_ratio(t: Callable, best: float | None) -> str:
    """The same plan called through einplan.kernel (no per-call plan look-up), over the best peer."""
    ratio = div(t(KERNEL_ROW), best)
    return f"einplan.kernel {ratio:.2f}" if ratio else "einplan.kernel n/a"


def div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# --- rows that several workloads use ------------------------------------------------------------


def peer_rows(torch_eq: str, einops_eq: str, einx_eq: str | None, tensors, post=None, label="{}", einx_post=None, einx_label=None) -> list:
    """torch.einsum, opt_einsum, einops and einx rows for one contraction.

    ``post`` reduces the contraction's result (e.g. torch.max) and ``label`` shows
    it in the row name; ``einx_post``/``einx_label`` do the same for einx's row.
    """
    post = post or (lambda x: x)
    rows = [Row(label.format(f'torch.einsum("{torch_eq}")'), lambda: post(torch.einsum(torch_eq, *tensors)))]
    if opt_einsum is not None:
        rows.append(Row(label.format(f'opt_einsum.contract("{torch_eq}")'), lambda: post(opt_einsum.contract(torch_eq, *tensors))))
    else:
        rows.append(Row("opt_einsum.contract", None, status="n/a (opt_einsum not installed)"))
    if einops is not None:
        rows.append(Row(label.format(f'einops.einsum("{einops_eq}")'), lambda: post(einops.einsum(*tensors, einops_eq))))
    else:
        rows.append(Row("einops.einsum", None, status="n/a (einops not installed)"))
    if einx_eq is not None:
        if einx is not None:
            ep = einx_post or post
            rows.append(Row((einx_label or label).format(f'einx.dot("{einx_eq}")'), lambda: ep(einx.dot(einx_eq, *tensors))))
        else:
            rows.append(Row("einx.dot", None, status="n/a (einx not installed)"))
    return rows


def einplan_rows(pattern: str, tensors, forced=(), with_kernel=False) -> list:
    rows = [Row("einplan.bl", lambda: einplan.bl(pattern, *tensors), kind=EINPLAN)]
    if with_kernel:  # the same plan without bl's per-call look-up: what the look-up costs
        planned = einplan.kernel(pattern, *tensors, check=False)
        rows.append(Row(KERNEL_ROW, lambda: planned(*tensors), kind=INFO))
    for low in forced:
        rows.append(Row(f"einplan.bl lowering={low}", functools.partial(einplan.bl, pattern, *tensors, lowering=low), kind=INFO))
    return rows
