"""Workloads of seed 003: all-pairs reductions without the M x N matrix: the max and argmax of a
whole product (W5) and the logsumexp of scores (W6), with their peak extra memory."""

from __future__ import annotations

import re

import torch

import einplan
import memory
from cases import (
    BOUND,
    Bench,
    Case,
    Config,
    MiB,
    Row,
    at_least,
    at_most,
    ceiling,
    div,
    einplan_rows,
    einx,
    first_line,
    peer_rows,
    planner_choice,
)
from timing import fmt_us, time_one

P5A, P5B = "m d, n d -> | max m n", "m d, n d -> | argmax m n"
P5A_BASE, P5B_BASE = "seed 003: torch.max(A @ B.T)", "torch.unravel_index(torch.argmax(A @ B.T))"


def _argmax_pair_check(A, B, max_value):
    """An index pair is right if A[i]·B[j] equals the largest inner product (float rounding aside);
    ``max_value()`` gives that largest product, read when the check runs."""

    def check(got, expected) -> tuple[bool, str]:
        try:
            if isinstance(got, torch.Tensor):
                got = tuple(got.reshape(-1).tolist())
            i, j = (int(x) for x in got)
        except Exception as exc:
            return False, f"not an index pair: {first_line(exc)}"
        value = torch.dot(A[i].double(), B[j].double()).item()
        best = max_value()
        ok = abs(value - best) <= 1e-5 * abs(best)
        return ok, f"A[{i}]·B[{j}] = {value:.6g}, max {best:.6g}"

    return check


def _memory_rows(case: Case, cfg: Config, setup: str, calls: dict, warmup: str = ""):
    """Peak extra memory of each call in its own fresh subprocess (with --quick: einplan's only)."""

    def measure() -> None:
        for name, call in calls.items():
            if cfg.quick and name != "einplan.bl":
                continue
            case.memory[name] = memory.measure_in_subprocess(setup, call, warmup=warmup)

    return measure


def _extra_mib(case: Case) -> float | None:
    mem = case.memory.get("einplan.bl", {}).get("extra_bytes")
    return None if mem is None else mem / MiB


def _tile_shape(pattern: str, A, B) -> tuple[int, int]:
    """The (rows, columns) of the product einplan's plan computes at a time, read from explain()."""
    text = einplan.explain(pattern, A, B)
    tiles = re.search(r"in tiles of (\d+) along \S+ by (\d+) along", text)
    if tiles:
        return int(tiles.group(1)), int(tiles.group(2))
    chunks = re.search(r"in chunks of (\d+) along", text)
    return (int(chunks.group(1)) if chunks else A.shape[0]), B.shape[0]


class Bounds:
    """What no plan of W5's shape beats: the sgemm time for its FLOPs, and its product alone computed
    as einplan's plan computes it (tile by tile, or row chunk by row chunk, with torch.mm into one
    preallocated output) and not reduced; in bfloat16 when the plan is a bfloat16 screen (float32
    then decides among a few rows, so the float32 product alone no longer bounds the plan)."""

    def __init__(self, cfg: Config, A, B, sgemm_flops: float | None):
        self.cfg, self.A, self.B = cfg, A, B
        flops = 2.0 * A.shape[0] * B.shape[0] * A.shape[1]
        self.gemm = flops / sgemm_flops * 1e6 if sgemm_flops else None
        self.rows, self.cols = _tile_shape(P5A, A, B)
        self.screened = "screened in bfloat16" in einplan.explain(P5A, A, B)
        self.shaped: float | None = None
        self.screen: float | None = None
        self.made: list[Row] = []

    def _product_in_tiles(self, X, Y) -> float:
        block = torch.empty(self.rows, self.cols, dtype=X.dtype)
        M, N, rows, cols = X.shape[0], Y.shape[0], self.rows, self.cols

        def run():
            for i in range(0, M, rows):
                for j in range(0, N, cols):
                    a, b = X[i : i + rows], Y[j : j + cols]
                    torch.mm(a, b.T, out=block[: a.shape[0], : b.shape[0]])

        return time_one(run, warmup=1, min_sample_s=0.0, budget_s=0.0, min_repeat=3 if self.cfg.quick else 5, max_repeat=5).median_us

    def measure(self) -> None:
        self.shaped = self._product_in_tiles(self.A, self.B)
        self.screen = self._product_in_tiles(self.A.bfloat16(), self.B.bfloat16()) if self.screened else None
        for row in self.made:
            row.bound_us = self._value(row.name)

    def _value(self, name: str) -> float | None:
        return self.screen if "bfloat16" in name else self.shaped

    def rows_for_case(self) -> list:
        rows = [Row("sgemm time for 2·M·N·D FLOPs (square-sgemm rate)", None, kind=BOUND, bound_us=self.gemm)]
        names = [f"the float32 product alone in {self.rows}x{self.cols} tiles (torch.mm into out=)"]
        if self.screened:
            names.append(f"the bfloat16 product alone in the screen's {self.rows}x{self.cols} tiles")
        made = [Row(name, None, kind=BOUND, bound_us=self._value(name)) for name in names]
        self.made += made
        return rows + made


def w5_targets(case: Case, bounds: Bounds, baseline: str):
    def targets(t):
        # no plan of this shape beats its product alone (in bfloat16, when screened)
        bound = div(t(baseline), bounds.screen if bounds.screened else bounds.shaped)
        what = "the baseline over the bfloat16 screen's matmul time alone" if bounds.screened else "the baseline over the matmul time alone"
        alone = []
        if not bounds.screened:  # issue 19: with no fast bfloat16 GEMM, the float32 tiles are the plan
            alone.append(
                at_most(
                    "einplan time <= 1.1x its float32 product alone in the same tiles (no bfloat16 screen)",
                    div(t("einplan.bl"), bounds.shaped),
                    1.1,
                    f"product alone {fmt_us(bounds.shaped)}",
                )
            )
        return alone + [
            at_least(f"einplan >= 2.5x faster than {baseline}", div(t(baseline), t("einplan.bl")), 2.5, ceiling(bound, what)),
            at_most("einplan peak extra memory <= 64 MiB", _extra_mib(case), 64, "MiB, fresh subprocess"),
            at_most(
                "einplan time <= 1.3x the sgemm time for 2·M·N·D FLOPs",
                div(t("einplan.bl"), bounds.gemm),
                1.3,
                f"sgemm time {fmt_us(bounds.gemm)}",
            ),
        ]

    return targets


def _w5_max(cfg: Config, A, B, bounds: Bounds, setup: str) -> Bench:
    M, D = A.shape
    rows = (
        einplan_rows(P5A, (A, B))
        + [
            Row(P5A_BASE, lambda: torch.max(A @ B.T)),
            Row("seed 003: torch.max(torch.mm(A, B.T))", lambda: torch.max(torch.mm(A, B.T))),
        ]
        + peer_rows(
            "md,nd->mn",
            "m d, n d -> m n",
            "m d, n d -> m n",
            (A, B),
            post=torch.max,
            label="torch.max({})",
            einx_post=lambda s: einx.max("[m n]", s),
            einx_label='einx.max("[m n]", {})',
        )
        + bounds.rows_for_case()
    )
    note = f"float32; the full product is {M * B.shape[0] * 4 / 1e9:.2f} GB"
    case = Case("W5", f"P5a max, M=N={M}, D={D}", P5A, rows, planner=planner_choice(P5A, A, B), note=note)
    calls = {"einplan.bl": f"return einplan.bl({P5A!r}, A, B)", P5A_BASE: "return torch.max(A @ B.T)"}
    after = _memory_rows(case, cfg, setup, calls, warmup=f"einplan.bl({P5A!r}, A[:64], B[:64])")
    return Bench(case, P5A_BASE, w5_targets(case, bounds, P5A_BASE), slow=not cfg.quick, prepare=bounds.measure, after=after)


def _w5_argmax(cfg: Config, A, B, bounds: Bounds, setup: str, max_case: Case) -> Bench:
    (M, D), N = A.shape, B.shape[0]
    rows = einplan_rows(P5B, (A, B)) + [
        Row(P5B_BASE, lambda: torch.unravel_index(torch.argmax(A @ B.T), (M, N))),
        Row(
            'torch.unravel_index(torch.argmax(torch.einsum("md,nd->mn")))',
            lambda: torch.unravel_index(torch.argmax(torch.einsum("md,nd->mn", A, B)), (M, N)),
        ),
    ]
    if einx is not None:
        rows.append(
            Row('einx.argmax("[m n]", einx.dot("m d, n d -> m n"))', lambda: einx.argmax("[m n]", einx.dot("m d, n d -> m n", A, B)))
        )
    rows += bounds.rows_for_case()
    note = "an index pair is checked by its inner product against the maximum"
    case = Case("W5", f"P5b argmax, M=N={M}, D={D}", P5B, rows, planner=planner_choice(P5B, A, B), note=note)

    def max_value() -> float:
        ref = max_case.reference_result
        return float(ref) if ref is not None else float(torch.max(A @ B.T))

    after = _memory_rows(
        case, cfg, setup, {"einplan.bl": f"return einplan.bl({P5B!r}, A, B)"}, warmup=f"einplan.bl({P5B!r}, A[:64], B[:64])"
    )
    check = _argmax_pair_check(A, B, max_value)
    return Bench(case, P5B_BASE, w5_targets(case, bounds, P5B_BASE), check=check, slow=not cfg.quick, after=after)


def w5(cfg: Config, sgemm_flops: float | None):
    M, N, D = cfg.w5_mnd
    torch.manual_seed(5)
    A = torch.randn(M, D)
    B = torch.randn(N, D)
    bounds = Bounds(cfg, A, B, sgemm_flops)
    setup = f"import torch, einplan\ntorch.manual_seed(5)\nA = torch.randn({M}, {D})\nB = torch.randn({N}, {D})\n"
    max_bench = _w5_max(cfg, A, B, bounds, setup)
    yield max_bench
    yield _w5_argmax(cfg, A, B, bounds, setup, max_bench.case)


# --- W6: logsumexp of scores ------------------------------------------------------------------------


def w6_targets(case: Case, qk_bytes: int):
    def targets(t):
        mib = _extra_mib(case)
        return [
            at_most(
                "no q x k tensor: einplan peak extra memory < one q x k tensor",
                None if mib is None else mib * MiB / qk_bytes,
                1.0,
                f"q x k = {qk_bytes / MiB:.0f} MiB",
            ),
            at_least(
                "einplan >= 1.5x faster than torch.logsumexp(Q @ K.T, -1)", div(t("torch.logsumexp(Q @ K.T, -1)"), t("einplan.bl")), 1.5
            ),
            at_most("einplan peak extra memory <= 64 MiB", mib, 64, "MiB, fresh subprocess"),
        ]

    return targets


def w6(cfg: Config):
    Q_, K_, D = cfg.w6_qkd
    torch.manual_seed(6)
    Q = torch.randn(Q_, D)
    K = torch.randn(K_, D)
    pattern = "q d, k d -> q | logsumexp k"
    lse = lambda s: torch.logsumexp(s, -1)
    rows = (
        einplan_rows(pattern, (Q, K))
        + [Row("torch.logsumexp(Q @ K.T, -1)", lambda: torch.logsumexp(Q @ K.T, -1))]
        + peer_rows(
            "qd,kd->qk",
            "q d, k d -> q k",
            "q d, k d -> q k",
            (Q, K),
            post=lse,
            label="torch.logsumexp({}, -1)",
            einx_post=lambda s: einx.logsumexp("q [k]", s),
            einx_label='einx.logsumexp("q [k]", {})',
        )
    )
    note = f"float32; a q x k tensor is {Q_ * K_ * 4 / 1e9:.2f} GB"
    case = Case("W6", f"P6 logsumexp, q=k={Q_}, d={D}", pattern, rows, planner=planner_choice(pattern, Q, K), note=note)
    setup = f"import torch, einplan\ntorch.manual_seed(6)\nQ = torch.randn({Q_}, {D})\nK = torch.randn({K_}, {D})\n"
    calls = {"einplan.bl": f"return einplan.bl({pattern!r}, Q, K)", "torch.logsumexp(Q @ K.T, -1)": "return torch.logsumexp(Q @ K.T, -1)"}
    after = _memory_rows(case, cfg, setup, calls, warmup=f"einplan.bl({pattern!r}, Q[:64], K[:64])")
    yield Bench(case, "torch.logsumexp(Q @ K.T, -1)", w6_targets(case, Q_ * K_ * Q.element_size()), slow=not cfg.quick, after=after)
