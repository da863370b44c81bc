"""einplan against every peer on the seed workloads W1..W6 of issue 3.

    python benchmarks/run.py              # full sizes (a few minutes)
    python benchmarks/run.py --quick      # small sizes, few repetitions (smoke test)
    python benchmarks/run.py --only W3    # one workload (repeatable, or W3,W4)

All rows run in this one process.  Peers: torch.einsum, opt_einsum.contract,
einops.einsum, einx, and the hand-written recipes of the seed documents.
Every result is checked against einplan's (or, if einplan cannot run the row,
against the reference recipe) before it is timed.  Per workload a ratio table
(einplan time / peer time; below 1 means einplan is faster) and each target
of issue 3 with whether it is met.  Peak extra memory of einplan's call in W5
and W6 is measured in a fresh subprocess (see memory.py).

Writes results.json and results.png next to this file (results_quick.* with
--quick; a suffix naming the workloads with --only).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import operator
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import einplan  # noqa: E402
import memory  # noqa: E402
from timing import Timing, contention_warning, fmt_us, machine_summary, same_result, time_many, time_one  # noqa: E402

MiB = 1 << 20
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6")
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
    copy_elems=8 * MiB,
    sgemm_n=512,
)


# --- rows, cases, targets --------------------------------------------------------------------

EINPLAN = "einplan"  # row kinds: einplan (the row targets are about), info (einplan, forced
PEER = "peer"  # lowering or other form), peer, bound (a computed lower bound, not a call)
INFO = "info"
BOUND = "bound"


@dataclass
class Row:
    name: str
    fn: Optional[Callable[[], object]]
    kind: str = PEER
    mode: str = "eager"  # eager | compiled
    timing: Optional[Timing] = None
    status: str = "ok"  # ok, or "n/a (...)"
    note: str = ""
    bound_us: Optional[float] = None  # for BOUND rows
    first_call_s: Optional[float] = None  # the checked call; for compiled rows it includes compiling

    @property
    def median_us(self) -> Optional[float]:
        if self.kind == BOUND:
            return self.bound_us
        return self.timing.median_us if self.timing is not None else None


@dataclass
class Target:
    text: str
    value: Optional[float]  # the measured quantity
    need: str  # e.g. "<= 1.05"
    met: Optional[bool]  # None: could not be measured
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

    def row(self, name: str) -> Optional[Row]:
        return next((r for r in self.rows if r.name == name), None)

    def t(self, name: str, stat: str = "median") -> Optional[float]:
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


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def planner_choice(pattern: str, *tensors) -> str:
    """The lowerings einplan's planner picks per step, read from explain()."""
    try:
        text = einplan.explain(pattern, *tensors)
    except Exception as exc:
        return f"n/a (explain: {_first_line(exc, 100)})"
    kinds = re.findall(r"^\s{2}\d+\.\s+(\S+)", text, flags=re.M)
    return ", ".join(kinds) if kinds else "?"


# --- checking and timing one case --------------------------------------------------------------


def run_case(case: Case, cfg: Config, check: Callable = same_result, reference: Optional[str] = None,
             slow: bool = False) -> Case:
    """Check every row's result, then time the rows that passed (interleaved).

    einplan's result is checked against ``reference`` (a trusted recipe); every
    other row is checked against einplan's result, or against the reference when
    einplan cannot run this row.
    """
    expected = None
    ref_row = case.row(reference) if reference else None
    ref_result = None
    if ref_row is not None:
        try:
            start = time.perf_counter()
            ref_result = ref_row.fn()
            ref_row.first_call_s = time.perf_counter() - start
            case.reference_result = ref_result
        except Exception as exc:
            ref_row.status = f"n/a (error: {_first_line(exc)})"
    for row in case.rows:
        if row.kind == BOUND or row.status != "ok":
            continue
        if row is ref_row:
            got = ref_result
        else:
            try:
                start = time.perf_counter()
                got = row.fn()
                row.first_call_s = time.perf_counter() - start
            except Exception as exc:  # EinplanError while features land; compile failures
                row.status = f"n/a (error: {_first_line(exc)})"
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
    timed = {r.name: r.fn for r in case.rows if r.kind != BOUND and r.status == "ok"}
    # every row has just run once for the check: that call is its first warm-up
    if slow:  # seconds per call: 3 samples
        timings = time_many(timed, warmup=0, min_sample_s=0.0, budget_s=0.0, min_repeat=3, max_repeat=3)
    else:
        # rows whose checked call took over 50 ms are warm: no further warm-up call
        warm = {r.name for r in case.rows if r.first_call_s is not None and r.first_call_s > 0.05}
        timings = time_many(timed, warmup=0 if cfg.quick else 1, budget_s=cfg.budget_s,
                            max_repeat=cfg.max_repeat, min_repeat=3, warm=warm)
    for r in case.rows:
        r.timing = timings.get(r.name)
    return case


def ratio_base(case: Case, row: Row) -> Optional[float]:
    """einplan's time in the same mode (eager or compiled) as ``row``."""
    for r in case.rows:
        if r.kind == EINPLAN and r.mode == row.mode and r.status == "ok":
            return r.median_us
    return None


# --- target helpers ----------------------------------------------------------------------------


def best_of(t: Callable, names) -> tuple[Optional[float], Optional[str]]:
    times = [(t(n), n) for n in names if t(n) is not None]
    return min(times) if times else (None, None)


def at_most(text: str, value: Optional[float], limit: float, detail: str = "") -> Target:
    met = None if value is None else value <= limit
    return Target(text, value, f"<= {limit:g}", met, detail)


def at_least(text: str, value: Optional[float], limit: float, detail: str = "") -> Target:
    met = None if value is None else value >= limit
    return Target(text, value, f">= {limit:g}", met, detail)


def _ceiling(value: Optional[float], what: str) -> str:
    """A target's best reachable ratio, when something einplan cannot beat bounds it."""
    return f"ceiling {value:.2f}x: {what}" if value else ""


def _kernel_ratio(t: Callable, best: Optional[float]) -> str:
    """The same plan called through einplan.kernel (no per-call plan look-up), over the best peer."""
    ratio = div(t(KERNEL_ROW), best)
    return f"einplan.kernel {ratio:.2f}" if ratio else "einplan.kernel n/a"


def div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


# --- peers that several workloads use ------------------------------------------------------------


def peer_rows(torch_eq: str, einops_eq: str, einx_eq: Optional[str], tensors, post=None, label="{}",
              einx_post=None, einx_label=None) -> list:
    """torch.einsum, opt_einsum, einops and einx rows for one contraction.

    ``post`` reduces the contraction's result (e.g. torch.max) and ``label`` shows
    it in the row name; ``einx_post``/``einx_label`` do the same for einx's row.
    """
    post = post or (lambda x: x)
    rows = [Row(label.format(f'torch.einsum("{torch_eq}")'), lambda: post(torch.einsum(torch_eq, *tensors)))]
    if opt_einsum is not None:
        rows.append(Row(label.format(f'opt_einsum.contract("{torch_eq}")'),
                        lambda: post(opt_einsum.contract(torch_eq, *tensors))))
    else:
        rows.append(Row("opt_einsum.contract", None, status="n/a (opt_einsum not installed)"))
    if einops is not None:
        rows.append(Row(label.format(f'einops.einsum("{einops_eq}")'), lambda: post(einops.einsum(*tensors, einops_eq))))
    else:
        rows.append(Row("einops.einsum", None, status="n/a (einops not installed)"))
    if einx_eq is not None:
        if einx is not None:
            ep = einx_post or post
            rows.append(Row((einx_label or label).format(f'einx.dot("{einx_eq}")'),
                            lambda: ep(einx.dot(einx_eq, *tensors))))
        else:
            rows.append(Row("einx.dot", None, status="n/a (einx not installed)"))
    return rows


KERNEL_ROW = "einplan.kernel(..., check=False)"


def einplan_rows(pattern: str, tensors, forced=(), with_kernel=False) -> list:
    rows = [Row("einplan.bl", lambda: einplan.bl(pattern, *tensors), kind=EINPLAN)]
    if with_kernel:  # the same plan without bl's per-call look-up: what the look-up costs
        planned = einplan.kernel(pattern, *tensors, check=False)
        rows.append(Row(KERNEL_ROW, lambda: planned(*tensors), kind=INFO))
    for low in forced:
        rows.append(Row(f"einplan.bl lowering={low}", functools.partial(einplan.bl, pattern, *tensors, lowering=low),
                        kind=INFO))
    return rows


# --- W1: shared matrix times a batch of vectors (seed 000) ------------------------------------


def seed000_loop(A, B):
    """Seed 000's inefficient_matmul: one matrix-vector product per row."""
    C = torch.empty((B.shape[0], A.shape[0]), dtype=A.dtype, device=A.device)
    for i in range(B.shape[0]):
        C[i] = A @ B[i]
    return C


def w1(cfg: Config) -> list:
    cases = []
    pattern = "b n, m n -> b m"
    for b in cfg.w1_b:
        torch.manual_seed(1)
        A = torch.randn(1000, 500)
        B = torch.randn(b, 500)
        rows = einplan_rows(pattern, (B, A), with_kernel=True) + [
            Row("B @ A.T", lambda: B @ A.T),
            Row("seed 000: torch.matmul(A, B.T).T", lambda: torch.matmul(A, B.transpose(0, 1)).transpose(0, 1)),
            Row("seed 000: torch.matmul(A, B[..., None]).squeeze(2)", lambda: torch.matmul(A, B[..., None]).squeeze(2)),
            Row("seed 000: loop C[i] = A @ B[i]", lambda: seed000_loop(A, B)),
        ] + peer_rows("bn,mn->bm", "b n, m n -> b m", "b n, m n -> b m", (B, A))
        case = Case("W1", f"b={b}", pattern, rows, planner=planner_choice(pattern, B, A),
                    note="A 1000x500 shared, float32")
        run_case(case, cfg, reference="B @ A.T")

        def targets(t):
            best, who = best_of(t, ["B @ A.T", 'torch.einsum("bn,mn->bm")', 'opt_einsum.contract("bn,mn->bm")',
                                    'einops.einsum("b n, m n -> b m")'])
            return [
                at_most("einplan <= 1.05x the best of B @ A.T, torch.einsum, opt_einsum, einops",
                        div(t("einplan.bl"), best), 1.05, f"best: {who}"),
                at_least("einplan >= 10x faster than seed 000's loop",
                         div(t("seed 000: loop C[i] = A @ B[i]"), t("einplan.bl")), 10,
                         _ceiling(div(t("seed 000: loop C[i] = A @ B[i]"), t("B @ A.T")), "the loop over B @ A.T")),
            ]

        case.evaluate(targets)
        cases.append(case)
    return cases


# --- W2: batched dot product (seed 001) --------------------------------------------------------


def w2(cfg: Config) -> list:
    cases = []
    pattern = "... n, ... n -> ..."
    for shape in cfg.w2_shapes:
        torch.manual_seed(2)
        a = torch.randn(shape)
        b = torch.randn(shape)
        rows = einplan_rows(pattern, (a, b), forced=(MATMUL, ELEMENTWISE), with_kernel=True) + [
            Row("(a * b).sum(-1)", lambda: (a * b).sum(-1)),
            Row("seed 001: (a[..., None, :] @ b[..., None]).squeeze()", lambda: (a[..., None, :] @ b[..., None]).squeeze()),
            Row("torch.linalg.vecdot(a, b)", lambda: torch.linalg.vecdot(a, b)),
        ] + peer_rows("...n,...n->...", "... n, ... n -> ...", "... n, ... n -> ...", (a, b))
        case = Case("W2", "x".join(map(str, shape)), pattern, rows, planner=planner_choice(pattern, a, b),
                    note="float32")
        run_case(case, cfg, reference="(a * b).sum(-1)")

        def targets(t):
            best, who = best_of(t, ["(a * b).sum(-1)", "seed 001: (a[..., None, :] @ b[..., None]).squeeze()",
                                    'torch.einsum("...n,...n->...")', "torch.linalg.vecdot(a, b)"])
            return [at_most("einplan <= 1.05x the best of (a*b).sum(-1), the matmul form, torch.einsum, vecdot",
                            div(t("einplan.bl"), best), 1.05, f"best: {who}; {_kernel_ratio(t, best)}")]

        case.evaluate(targets)
        cases.append(case)
    return cases


# --- W3: quadratic form, A shared (seed 001) ----------------------------------------------------


def w3(cfg: Config) -> list:
    cases = []
    for k, (batch, n) in enumerate(cfg.w3_cases):
        names = ["b1", "b2"][: len(batch)] if len(batch) > 1 else ["b"]
        bs = " ".join(names)
        pattern = f"{bs} n, n n, {bs} n -> {bs}"
        torch.manual_seed(3)
        l = torch.randn(*batch, n)
        A = torch.randn(n, n)
        hand = ["((l @ A) * l).sum(-1)", "seed 001: (l[..., None, :] @ A @ l[..., None]).squeeze()"]
        rows = einplan_rows(pattern, (l, A, l), forced=(MATMUL, ELEMENTWISE), with_kernel=True) + [
            Row(hand[0], lambda: ((l @ A) * l).sum(-1)),
            Row(hand[1], lambda: (l[..., None, :] @ A @ l[..., None]).squeeze()),
        ] + peer_rows("...n,nm,...m->...", "... n, n m, ... m -> ...", "... n, n m, ... m -> ...", (l, A, l))
        label = f"l {'x'.join(map(str, (*batch, n)))}, A {n}x{n}"
        case = Case("W3", label, pattern, rows, planner=planner_choice(pattern, l, A, l), note="float32")
        run_case(case, cfg, reference=hand[0])

        def targets(t, first=(k == 0)):
            best, who = best_of(t, hand)
            out = [at_most("einplan <= 1.05x the best hand-written form", div(t("einplan.bl"), best), 1.05,
                           f"best: {who}; {_kernel_ratio(t, best)}")]
            if first:
                out.append(at_least("einplan >= 3x faster than torch.einsum",
                                    div(t('torch.einsum("...n,nm,...m->...")'), t("einplan.bl")), 3))
            return out

        case.evaluate(targets)
        cases.append(case)
    return cases


# --- W4: many tiny matmuls (seed 002) -----------------------------------------------------------


def arithmetic_on_laid_out(left, right):
    """The written-out product's arithmetic alone, on inputs already laid out tiny axes first
    (``left[i, j]``, ``right[j, k]``: length-B rows), one fused multiply-add per j into a fresh
    (i, k, B) result, returned as a (B, i, k) view: no eager form that moves no data does less."""
    out = left[:, 0, None] * right[0]
    for j in range(1, left.shape[1]):
        out.addcmul_(left[:, j, None], right[j])
    return out.permute(2, 0, 1)


def written_out_bmm(a, b):
    """Seed 002's written-out product (its 2x2/3x3 code, for any size): column j of the
    result stacks, for each row i, the sum over l of a[..., i, l] * b[..., l, j]."""
    D = a.shape[-1]
    return torch.stack(
        [
            torch.stack(
                [functools.reduce(operator.add, [a[..., i, l] * b[..., l, j] for l in range(D)]) for i in range(D)],
                dim=-1,
            )
            for j in range(D)
        ],
        dim=-1,
    )


def unsqueeze_sum_bmm(a, b):
    """Horace He's form quoted in seed 002."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(dim=-2)


def _compile(fn):
    return torch.compile(fn, dynamic=False)


def _compiled_row(name: str, make: Callable[[], Callable], args, kind=PEER) -> Row:
    """A torch.compile row; compile errors (raised on the first call) make it n/a."""
    try:
        compiled = make()
    except Exception as exc:
        return Row(name, None, kind=kind, mode="compiled", status=f"n/a (compile failed: {_first_line(exc)})")
    return Row(name, lambda: compiled(*args), kind=kind, mode="compiled")


def generated_source_function(pattern: str, *tensors, **options) -> Callable:
    """The source einplan.code() prints for this pattern, as a plain function (no plan cache)."""
    import jaxtyping

    source = einplan.code(pattern, *tensors, **options)
    name = re.search(r"^def (\w+)\(", source, flags=re.M).group(1)
    namespace = {"torch": torch, "Tensor": torch.Tensor}
    namespace.update({k: getattr(jaxtyping, k) for k in dir(jaxtyping) if not k.startswith("_")})
    exec(compile(source, f"<einplan.code {pattern}>", "exec"), namespace)
    return namespace[name]


LAID_OUT_ROW = "written-out arithmetic alone, inputs already laid out (i, j, B), (j, k, B)"


def w4(cfg: Config, copy_bw: Optional[float]) -> list:
    cases = []
    pattern = "b i j, b j k -> b i k"
    for D in cfg.w4_sizes:
        torch.manual_seed(4)
        a = torch.randn(cfg.w4_batch, D, D)
        b = torch.randn(cfg.w4_batch, D, D)
        rows = einplan_rows(pattern, (a, b), forced=LOWERINGS) + [
            Row("torch.bmm(a, b)", lambda: torch.bmm(a, b)),
            Row("a @ b", lambda: a @ b),
            Row("seed 002: written-out", lambda: written_out_bmm(a, b)),
            Row("seed 002: (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)", lambda: unsqueeze_sum_bmm(a, b)),
        ] + peer_rows("bij,bjk->bik", "b i j, b j k -> b i k", "b i j, b j k -> b i k", (a, b))
        laid_a, laid_b = a.permute(1, 2, 0).contiguous(), b.permute(1, 2, 0).contiguous()
        rows.append(Row(LAID_OUT_ROW, lambda: arithmetic_on_laid_out(laid_a, laid_b), kind=INFO))
        nbytes = 3 * a.numel() * a.element_size()
        if cfg.compile and D in cfg.w4_compile_sizes:
            rows += [
                _compiled_row("torch.compile(einplan.bl)",
                              lambda: _compile(lambda x, y: einplan.bl(pattern, x, y)), (a, b), kind=EINPLAN),
                _compiled_row("torch.compile(einplan.code(..., compiled=True) source)",
                              lambda: _compile(generated_source_function(pattern, a, b, compiled=True)), (a, b),
                              kind=INFO),
            ]
            if not cfg.quick:  # each compile takes seconds: the peers' compiled rows only in full runs
                rows += [
                    _compiled_row("torch.compile(torch.bmm)", lambda: _compile(torch.bmm), (a, b)),
                    _compiled_row("torch.compile(seed 002 written-out)", lambda: _compile(written_out_bmm),
                                  (a, b)),
                    _compiled_row("torch.compile(seed 002 unsqueeze-sum)", lambda: _compile(unsqueeze_sum_bmm),
                                  (a, b)),
                ]
            if copy_bw:
                rows.append(Row("memory-bandwidth bound (bytes in+out / copy bandwidth)", None, kind=BOUND,
                                mode="compiled", bound_us=nbytes / copy_bw * 1e6))
        case = Case("W4", f"B={cfg.w4_batch}, {D}x{D}", pattern, rows, planner=planner_choice(pattern, a, b),
                    note=f"float32, {nbytes / MiB:.1f} MiB in+out")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_case(case, cfg, reference="torch.bmm(a, b)")

        def targets(t, compiled=cfg.compile and D in cfg.w4_compile_sizes, nbytes=nbytes):
            ceiling = _ceiling(div(t("torch.bmm(a, b)"), t(LAID_OUT_ROW)), "the arithmetic alone on laid-out inputs")
            out = [at_least("einplan eager >= 3x faster than torch.bmm", div(t("torch.bmm(a, b)"), t("einplan.bl")), 3,
                            ceiling)]
            if compiled:
                bound = nbytes / copy_bw * 1e6 if copy_bw else None
                out.append(at_most("einplan under torch.compile <= 1.5x the memory-bandwidth bound",
                                   div(t("torch.compile(einplan.bl)"), bound), 1.5, f"bound {fmt_us(bound)}"))
            return out

        case.evaluate(targets)
        cases.append(case)
    return cases


# --- W5 / W6: all-pairs reductions (seed 003) -------------------------------------------------------


def _argmax_pair_check(A, B, max_value: float):
    """An index pair is right if A[i]·B[j] equals the largest inner product (float rounding aside)."""

    def check(got, expected) -> tuple[bool, str]:
        try:
            if isinstance(got, torch.Tensor):
                got = tuple(got.reshape(-1).tolist())
            i, j = (int(x) for x in got)
        except Exception as exc:
            return False, f"not an index pair: {_first_line(exc)}"
        value = torch.dot(A[i].double(), B[j].double()).item()
        ok = abs(value - max_value) <= 1e-5 * abs(max_value)
        return ok, f"A[{i}]·B[{j}] = {value:.6g}, max {max_value:.6g}"

    return check


def _memory_rows(case: Case, cfg: Config, setup: str, calls: dict, warmup: str = "") -> None:
    """Peak extra memory of each call in its own fresh subprocess (with --quick: einplan's only)."""
    for name, call in calls.items():
        if cfg.quick and name != "einplan.bl":
            continue
        case.memory[name] = memory.measure_in_subprocess(setup, call, warmup=warmup)


def _tile_shape(pattern: str, A, B) -> tuple[int, int]:
    """The (rows, columns) of the product einplan's plan computes at a time, read from explain()."""
    text = einplan.explain(pattern, A, B)
    tiles = re.search(r"in tiles of (\d+) along \S+ by (\d+) along", text)
    if tiles:
        return int(tiles.group(1)), int(tiles.group(2))
    chunks = re.search(r"in chunks of (\d+) along", text)
    return (int(chunks.group(1)) if chunks else A.shape[0]), B.shape[0]


def w5(cfg: Config, sgemm_flops: Optional[float]) -> list:
    M, N, D = cfg.w5_mnd
    torch.manual_seed(5)
    A = torch.randn(M, D)
    B = torch.randn(N, D)
    flops = 2.0 * M * N * D
    gemm_bound = flops / sgemm_flops * 1e6 if sgemm_flops else None
    # the product alone, computed as einplan's plan computes it (tile by tile, or row chunk by row
    # chunk, with torch.mm into one preallocated output) and not reduced: no plan of this shape
    # beats it, so it bounds the speed-up over the baseline
    rows_, cols = _tile_shape("m d, n d -> | max m n", A, B)
    # on a CPU with a fast bfloat16 GEMM the tiles are a bfloat16 screen (float32 then decides
    # among a few rows): the float32 product alone no longer bounds the plan, the bfloat16 one does
    screened = "screened in bfloat16" in einplan.explain("m d, n d -> | max m n", A, B)

    def product_in_tiles(X, Y):
        block = torch.empty(rows_, cols, dtype=X.dtype)

        def run():
            for i in range(0, M, rows_):
                for j in range(0, N, cols):
                    a, b = X[i:i + rows_], Y[j:j + cols]
                    torch.mm(a, b.T, out=block[:a.shape[0], :b.shape[0]])

        return time_one(run, warmup=1, min_sample_s=0.0, budget_s=0.0,
                        min_repeat=3 if cfg.quick else 5, max_repeat=5).median_us

    shaped_bound = product_in_tiles(A, B)
    screen_bound = product_in_tiles(A.bfloat16(), B.bfloat16()) if screened else None

    def bound_rows():
        rows = [
            Row("sgemm time for 2·M·N·D FLOPs (square-sgemm rate)", None, kind=BOUND, bound_us=gemm_bound),
            Row(f"the float32 product alone in {rows_}x{cols} tiles (torch.mm into out=)", None,
                kind=BOUND, bound_us=shaped_bound),
        ]
        if screened:
            rows.append(Row(f"the bfloat16 product alone in the screen's {rows_}x{cols} tiles", None,
                            kind=BOUND, bound_us=screen_bound))
        return rows

    setup = f"import torch, einplan\ntorch.manual_seed(5)\nA = torch.randn({M}, {D})\nB = torch.randn({N}, {D})\n"
    cases = []

    pa = "m d, n d -> | max m n"
    rows = einplan_rows(pa, (A, B)) + [
        Row("seed 003: torch.max(A @ B.T)", lambda: torch.max(A @ B.T)),
        Row("seed 003: torch.max(torch.mm(A, B.T))", lambda: torch.max(torch.mm(A, B.T))),
    ] + peer_rows("md,nd->mn", "m d, n d -> m n", "m d, n d -> m n", (A, B), post=torch.max, label="torch.max({})",
                  einx_post=lambda s: einx.max("[m n]", s), einx_label='einx.max("[m n]", {})') + bound_rows()
    case = Case("W5", f"P5a max, M=N={M}, D={D}", pa, rows, planner=planner_choice(pa, A, B),
                note=f"float32; the full product is {M * N * 4 / 1e9:.2f} GB")
    run_case(case, cfg, reference="seed 003: torch.max(A @ B.T)", slow=not cfg.quick)
    ref = case.reference_result
    max_value = float(ref) if ref is not None else float(torch.max(A @ B.T))
    _memory_rows(case, cfg, setup, {"einplan.bl": f"return einplan.bl({pa!r}, A, B)",
                                    "seed 003: torch.max(A @ B.T)": "return torch.max(A @ B.T)"},
                 warmup=f"einplan.bl({pa!r}, A[:64], B[:64])")
    cases.append(case)

    pb = "m d, n d -> | argmax m n"
    rows = einplan_rows(pb, (A, B)) + [
        Row("torch.unravel_index(torch.argmax(A @ B.T))", lambda: torch.unravel_index(torch.argmax(A @ B.T), (M, N))),
        Row('torch.unravel_index(torch.argmax(torch.einsum("md,nd->mn")))',
            lambda: torch.unravel_index(torch.argmax(torch.einsum("md,nd->mn", A, B)), (M, N))),
    ]
    if einx is not None:
        rows.append(Row('einx.argmax("[m n]", einx.dot("m d, n d -> m n"))',
                        lambda: einx.argmax("[m n]", einx.dot("m d, n d -> m n", A, B))))
    rows += bound_rows()
    case_b = Case("W5", f"P5b argmax, M=N={M}, D={D}", pb, rows, planner=planner_choice(pb, A, B),
                  note="an index pair is checked by its inner product against the maximum")
    run_case(case_b, cfg, check=_argmax_pair_check(A, B, max_value),
             reference="torch.unravel_index(torch.argmax(A @ B.T))", slow=not cfg.quick)
    _memory_rows(case_b, cfg, setup, {"einplan.bl": f"return einplan.bl({pb!r}, A, B)"},
                 warmup=f"einplan.bl({pb!r}, A[:64], B[:64])")
    cases.append(case_b)

    for c, baseline in ((case, "seed 003: torch.max(A @ B.T)"), (case_b, "torch.unravel_index(torch.argmax(A @ B.T))")):
        mem = c.memory.get("einplan.bl", {}).get("extra_bytes")

        def targets(t, baseline=baseline, mem=mem):
            # no plan of this shape beats its product alone (in bfloat16, when screened)
            ceiling = div(t(baseline), screen_bound if screened else shaped_bound)
            what = "the baseline over the bfloat16 screen's matmul time alone" if screened else "the baseline over the matmul time alone"
            return [
                at_least(f"einplan >= 2.5x faster than {baseline}", div(t(baseline), t("einplan.bl")), 2.5,
                         _ceiling(ceiling, what)),
                at_most("einplan peak extra memory <= 64 MiB", None if mem is None else mem / MiB, 64,
                        "MiB, fresh subprocess"),
                at_most("einplan time <= 1.3x the sgemm time for 2·M·N·D FLOPs", div(t("einplan.bl"), gemm_bound),
                        1.3, f"sgemm time {fmt_us(gemm_bound)}"),
            ]

        c.evaluate(targets)
    return cases


def w6(cfg: Config) -> list:
    Q_, K_, D = cfg.w6_qkd
    torch.manual_seed(6)
    Q = torch.randn(Q_, D)
    K = torch.randn(K_, D)
    pattern = "q d, k d -> q | logsumexp k"
    lse = lambda s: torch.logsumexp(s, -1)  # noqa: E731
    rows = einplan_rows(pattern, (Q, K)) + [
        Row("torch.logsumexp(Q @ K.T, -1)", lambda: torch.logsumexp(Q @ K.T, -1)),
    ] + peer_rows("qd,kd->qk", "q d, k d -> q k", "q d, k d -> q k", (Q, K), post=lse,
                  label="torch.logsumexp({}, -1)",
                  einx_post=lambda s: einx.logsumexp("q [k]", s), einx_label='einx.logsumexp("q [k]", {})')
    case = Case("W6", f"P6 logsumexp, q=k={Q_}, d={D}", pattern, rows, planner=planner_choice(pattern, Q, K),
                note=f"float32; a q x k tensor is {Q_ * K_ * 4 / 1e9:.2f} GB")
    run_case(case, cfg, reference="torch.logsumexp(Q @ K.T, -1)", slow=not cfg.quick)
    setup = f"import torch, einplan\ntorch.manual_seed(6)\nQ = torch.randn({Q_}, {D})\nK = torch.randn({K_}, {D})\n"
    _memory_rows(case, cfg, setup, {"einplan.bl": f"return einplan.bl({pattern!r}, Q, K)",
                                    "torch.logsumexp(Q @ K.T, -1)": "return torch.logsumexp(Q @ K.T, -1)"},
                 warmup=f"einplan.bl({pattern!r}, Q[:64], K[:64])")
    mem = case.memory.get("einplan.bl", {}).get("extra_bytes")
    qk_bytes = Q_ * K_ * Q.element_size()

    def targets(t):
        return [
            at_most("no q x k tensor: einplan peak extra memory < one q x k tensor",
                    None if mem is None else mem / qk_bytes, 1.0, f"q x k = {qk_bytes / MiB:.0f} MiB"),
            at_least("einplan >= 1.5x faster than torch.logsumexp(Q @ K.T, -1)",
                     div(t("torch.logsumexp(Q @ K.T, -1)"), t("einplan.bl")), 1.5),
            at_most("einplan peak extra memory <= 64 MiB", None if mem is None else mem / MiB, 64,
                    "MiB, fresh subprocess"),
        ]

    case.evaluate(targets)
    return [case]


# --- machine rates -------------------------------------------------------------------------------------


def copy_bandwidth(cfg: Config) -> float:
    """Bytes per second of a large dst.copy_(src), counting bytes read plus bytes written."""
    src = torch.ones(cfg.copy_elems)
    dst = torch.zeros(cfg.copy_elems)
    t = time_one(lambda: dst.copy_(src), warmup=2, budget_s=0.5 if cfg.quick else 2.0, min_repeat=5,
                 max_repeat=20)
    return 2 * src.numel() * src.element_size() / (t.median_us * 1e-6)


def sgemm_rate(cfg: Config) -> float:
    """FLOP/s of a square float32 matmul into a preallocated output."""
    n = cfg.sgemm_n
    x = torch.randn(n, n)
    y = torch.randn(n, n)
    out = torch.empty(n, n)
    t = time_one(lambda: torch.mm(x, y, out=out), warmup=2, budget_s=0.5 if cfg.quick else 2.0, min_repeat=5,
                 max_repeat=20)
    return 2.0 * n**3 / (t.median_us * 1e-6)


# --- output ----------------------------------------------------------------------------------------------


def verdict(t: Target) -> str:
    return "n/a" if t.met is None else ("MET" if t.met else "NOT MET")


def noisy(t: Target, tb: Target) -> str:
    """A flag when the medians and the fastest samples disagree on a verdict."""
    return "; verdict depends on noise" if t.met is not None and tb.met is not None and t.met != tb.met else ""


def print_case(case: Case) -> None:
    print(f"\n-- {case.workload} {case.label}:  {case.pattern}   ({case.note})")
    print(f"   planner: {case.planner}")
    width = max(46, max(len(r.name) for r in case.rows) + 2)
    print(f"   {'candidate':<{width}}{'median':>11}{'IQR':>11}{'best':>11}{'einplan/peer':>14}")
    for r in case.rows:
        if r.status != "ok":
            print(f"   {r.name:<{width}}{r.status}")
            continue
        t = r.median_us
        iqr = fmt_us(r.timing.iqr_us) if r.timing is not None else ""
        best = fmt_us(r.timing.min_us) if r.timing is not None else ""
        base = ratio_base(case, r)
        ratio = "" if r.kind == EINPLAN or base is None or not t else f"{base / t:.2f}"
        first = f"   (first call, compiling: {r.first_call_s:.1f} s)" if r.mode == "compiled" and r.first_call_s else ""
        print(f"   {r.name:<{width}}{fmt_us(t):>11}{iqr:>11}{best:>11}{ratio:>14}{first}")
    for name, m in case.memory.items():
        shown = f"n/a ({m['error']})" if "error" in m else memory.fmt_bytes(m["extra_bytes"])
        print(f"   peak extra memory, fresh subprocess: {name}: {shown}")
    for t, tb in zip(case.targets, case.targets_best):
        value = "n/a" if t.value is None else f"{t.value:.2f}"
        extra = f"; {t.detail}" if t.detail else ""
        line = f"   target: {t.text}: {value} (need {t.need}{extra}) -> {verdict(t)}"
        if tb.value is not None and tb.value != t.value:
            line += f"  [fastest samples: {tb.value:.2f} -> {verdict(tb)}{noisy(t, tb)}]"
        print(line)


def case_json(case: Case) -> dict:
    rows = []
    for r in case.rows:
        base = ratio_base(case, r)
        t = r.median_us
        rows.append({
            "name": r.name,
            "kind": r.kind,
            "mode": r.mode,
            "status": r.status,
            "timing_us": r.timing.as_dict() if r.timing is not None else None,
            "bound_us": r.bound_us,
            "first_call_s": r.first_call_s,
            "einplan_over_peer": None if r.kind == EINPLAN or base is None or not t or r.status != "ok" else base / t,
        })
    return {
        "workload": case.workload,
        "case": case.label,
        "pattern": case.pattern,
        "note": case.note,
        "planner": case.planner,
        "rows": rows,
        "memory": case.memory,
        "targets": [{"text": t.text, "value": t.value, "need": t.need, "met": t.met, "detail": t.detail,
                     "value_from_fastest_samples": tb.value, "met_from_fastest_samples": tb.met}
                    for t, tb in zip(case.targets, case.targets_best)],
    }


COLORS = {EINPLAN: "#d95f02", INFO: "#fdb863", PEER: "#7570b3", BOUND: "#1b9e77"}


def write_chart(cases: list, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullFormatter

    cols = 3
    nrows = math.ceil(len(cases) / cols)
    heights = [max(len(c.rows) for c in cases[i * cols:(i + 1) * cols]) for i in range(nrows)]
    fig, axes = plt.subplots(nrows, cols, figsize=(7.5 * cols, sum(0.32 * h + 1.4 for h in heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    for ax, case in zip(axes.flat, cases):
        names = [r.name for r in case.rows]
        ys = list(range(len(case.rows)))[::-1]
        values = [r.median_us / 1e3 if r.status == "ok" and r.median_us else 0.0 for r in case.rows]
        ok_values = [v for v in values if v > 0]
        ax.barh(ys, values, color=[COLORS[r.kind] for r in case.rows])
        ax.set_xscale("log")
        lo = min(ok_values) / 2 if ok_values else 1e-3
        hi = max(ok_values) * 3 if ok_values else 1.0
        ax.set_xlim(lo, hi)
        for y, r, v in zip(ys, case.rows, values):
            if r.status != "ok":
                ax.text(lo * 1.05, y, "n/a", va="center", fontsize=7, color="#b2182b")
            else:
                ax.text(v * 1.05, y, fmt_us(v * 1e3), va="center", fontsize=6)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks(ys)
        ax.set_yticklabels([n if len(n) <= 48 else n[:45] + "..." for n in names], fontsize=7)
        met = sum(1 for t in case.targets if t.met)
        ax.set_title(f"{case.workload} {case.label}  (targets met {met}/{len(case.targets)})", fontsize=9)
        ax.set_xlabel("median time per call, ms (log)", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=11)
    fig.legend(handles=[Patch(color=COLORS[k], label=text) for k, text in (
        (EINPLAN, "einplan (target rows)"), (INFO, "einplan, forced lowering / generated source"),
        (PEER, "peers"), (BOUND, "bandwidth bound"))], loc="upper right", fontsize=8, ncol=4)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="einplan against every peer on workloads W1..W6 (issue 3)")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (a smoke test)")
    parser.add_argument("--only", action="append", default=[], metavar="W3",
                        help="run only these workloads (repeatable, or comma-separated)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows of W4")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads(N) first (default: leave torch's default)")
    parser.add_argument("--out-dir", default=HERE, help="where results*.json and results*.png go")
    args = parser.parse_args(argv)
    only = [w.strip().upper() for item in args.only for w in item.split(",") if w.strip()]
    bad = [w for w in only if w not in WORKLOADS]
    if bad:
        parser.error(f"unknown workload(s) {bad}; choose from {', '.join(WORKLOADS)}")
    args.only = only or list(WORKLOADS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.no_compile:
        cfg = Config(**{**cfg.__dict__, "compile": False})
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)

    info = machine_summary()
    started = time.perf_counter()
    print(f"einplan {getattr(einplan, '__version__', '?')} | torch {info['torch']}, {info['threads']} threads, {info['cpus']} CPUs, "
          f"load average {info['loadavg']} | opt_einsum {getattr(opt_einsum, '__version__', 'n/a')}, "
          f"einops {getattr(einops, '__version__', 'n/a')}, einx {getattr(einx, '__version__', 'n/a')}")
    print(f"mode: {'quick (small sizes; targets are stated for the full sizes)' if cfg.quick else 'full'}; "
          f"workloads: {', '.join(args.only)}")
    print("ratio column: einplan median / peer median (below 1: einplan faster); compiled rows compare with "
          "einplan under torch.compile; best: fastest sample")
    warning = contention_warning()
    if warning:
        print(warning)

    rates = {}
    copy_bw = sgemm = None
    if "W4" in args.only:
        copy_bw = copy_bandwidth(cfg)
        rates["copy_bandwidth_bytes_per_s"] = copy_bw
        print(f"copy bandwidth (read + write, {cfg.copy_elems * 4 / MiB:.0f} MiB copy_): {copy_bw / 1e9:.1f} GB/s")
    if "W5" in args.only:
        sgemm = sgemm_rate(cfg)
        rates["sgemm_flops_per_s"] = sgemm
        print(f"sgemm rate ({cfg.sgemm_n}^3 float32 torch.mm into out=): {sgemm / 1e9:.1f} GFLOP/s")

    cases = []
    runners = {
        "W1": lambda: w1(cfg),
        "W2": lambda: w2(cfg),
        "W3": lambda: w3(cfg),
        "W4": lambda: w4(cfg, copy_bw),
        "W5": lambda: w5(cfg, sgemm),
        "W6": lambda: w6(cfg),
    }
    for w in args.only:
        t0 = time.perf_counter()
        print(f"\n==== {w} ====")
        for case in runners[w]():
            print_case(case)
            cases.append(case)
        print(f"   ({w} took {time.perf_counter() - t0:.1f} s)")

    targets = [(c, t, tb) for c in cases for t, tb in zip(c.targets, c.targets_best)]
    met = sum(1 for _, t, _ in targets if t.met)
    print(f"\n==== summary: {met} of {len(targets)} targets met (verdicts from medians) ====")
    for c, t, tb in targets:
        value = "n/a" if t.value is None else f"{t.value:.2f}"
        flag = " (fastest samples disagree: noisy)" if noisy(t, tb) else ""
        print(f"   {verdict(t):<8} {c.workload} {c.label}: {t.text}: {value} (need {t.need}){flag}")

    stem = "results" + ("_quick" if cfg.quick else "")
    if args.only != list(WORKLOADS):
        stem += "_" + "_".join(args.only)
    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, stem + ".json")
    png_path = os.path.join(args.out_dir, stem + ".png")
    with open(json_path, "w") as f:
        json.dump({
            "einplan": getattr(einplan, "__version__", "?"),
            "machine": info,
            "mode": "quick" if cfg.quick else "full",
            "config": {k: v for k, v in cfg.__dict__.items()},
            "rates": rates,
            "cases": [case_json(c) for c in cases],
            "targets_met": met,
            "targets_total": len(targets),
            "seconds": time.perf_counter() - started,
        }, f, indent=1)
    title = (f"einplan vs peers ({'quick sizes' if cfg.quick else 'full sizes'}), torch {info['torch']}, "
             f"{info['threads']} threads; targets met {met}/{len(targets)}")
    if cases:
        write_chart(cases, png_path, title)
    print(f"\nwrote {os.path.relpath(json_path)} and {os.path.relpath(png_path)} "
          f"({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
