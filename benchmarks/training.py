"""Workloads of training: a reduction's forward and backward without the q x k matrix.

W7, a contrastive (InfoNCE) loss's log-partition: ``q d, k d -> q | logsumexp k``;
W8, hard negatives: ``q d, k d -> q | max k``.  Each row runs the forward and
the backward of ``reduction.sum()`` from float32 leaves and returns both
gradients (checked against the materialized torch recipe's).  Peers: the
materialized recipe, torch.einsum / opt_einsum / einops / einx followed by
the torch reduction, and pykeops (``LazyTensor`` reductions, whose CPU kernels
it compiles with the machine's C++ compiler, here on a warm-up call at small
sizes; one timed call, since one takes minutes at the full sizes; KeOps has no autodiff
through its max reduction, so W8's KeOps row is its argmax, then the winning
inner products in torch).  Peak extra memory of
the forward plus backward, beyond the inputs and their gradients, is measured
in a fresh subprocess for einplan and for the recipe.
"""

from __future__ import annotations

import torch

import einplan
import memory
from cases import Bench, Case, Config, MiB, Row, at_most, div, einops, einx, first_line, opt_einsum, planner_choice
from timing import trained

try:
    from pykeops.torch import LazyTensor
except Exception as error:  # pragma: no cover - missing, or no compiler
    LazyTensor = None
    KEOPS_MISSING = f"n/a (pykeops: {first_line(error, 80)})"
else:
    KEOPS_MISSING = ""

REDUCE = {"logsumexp": lambda s: torch.logsumexp(s, -1), "max": lambda s: torch.amax(s, -1)}
RECIPE = {"logsumexp": "torch.logsumexp(Q @ K.T, -1)", "max": "torch.amax(Q @ K.T, -1)"}
KEOPS_ROW = {
    "logsumexp": "pykeops LazyTensor (Q_i | K_j).logsumexp(dim=1)",
    "max": "pykeops (Q_i | K_j).argmax(dim=1), then (Q * K[idx]).sum(-1)",
}


def _keops(reducer: str, Q, K):
    """KeOps' reduction; a max through its argmax (KeOps has no autodiff through Max_Reduction),
    then the winning inner products in torch: the gradient reaches the first maximum."""
    Qi, Kj = LazyTensor(Q[:, None, :]), LazyTensor(K[None, :, :])
    scores = (Qi * Kj).sum(-1)
    if reducer == "logsumexp":
        return scores.logsumexp(dim=1).reshape(-1)
    index = scores.argmax(dim=1).reshape(-1)
    return (Q * K[index]).sum(-1)


def _rows(reducer: str, pattern: str, Q, K) -> list:
    reduce = REDUCE[reducer]
    leaves = (Q, K)
    rows = [
        Row("einplan.bl", trained(lambda: einplan.bl(pattern, Q, K), leaves), kind="einplan"),
        Row(RECIPE[reducer], trained(lambda: reduce(Q @ K.T), leaves)),
        Row(f'{reducer}(torch.einsum("qd,kd->qk"))', trained(lambda: reduce(torch.einsum("qd,kd->qk", Q, K)), leaves)),
    ]
    if opt_einsum is not None:
        rows.append(
            Row(f'{reducer}(opt_einsum.contract("qd,kd->qk"))', trained(lambda: reduce(opt_einsum.contract("qd,kd->qk", Q, K)), leaves))
        )
    if einops is not None:
        rows.append(
            Row(f'{reducer}(einops.einsum("q d, k d -> q k"))', trained(lambda: reduce(einops.einsum(Q, K, "q d, k d -> q k")), leaves))
        )
    if einx is not None:
        call = getattr(einx, reducer)
        rows.append(
            Row(f'einx.{reducer}("q [k]", einx.dot(...))', trained(lambda: call("q [k]", einx.dot("q d, k d -> q k", Q, K)), leaves))
        )
    name = KEOPS_ROW[reducer]
    if LazyTensor is None:
        rows.append(Row(name, None, status=KEOPS_MISSING))
    else:
        rows.append(Row(name, trained(lambda: _keops(reducer, Q, K), leaves), once=True))
    return rows


def _targets(case: Case, reducer: str):
    def targets(t):
        extra = case.memory.get("einplan.bl", {}).get("extra_bytes")
        mib = None if extra is None else extra / MiB
        keops = KEOPS_ROW[reducer]
        missing = case.row(keops).status if case.row(keops) is not None and case.row(keops).status != "ok" else ""
        return [
            at_most("einplan forward + backward peak extra memory <= 64 MiB", mib, 64, "MiB beyond inputs and gradients, fresh subprocess"),
            at_most(f"einplan forward + backward <= 1.0x {RECIPE[reducer]}'s", div(t("einplan.bl"), t(RECIPE[reducer])), 1.0),
            at_most("einplan faster than pykeops", div(t("einplan.bl"), t(keops)), 1.0, missing),
        ]

    return targets


def _memory(case: Case, cfg: Config, setup: str, calls: dict, warmup: str, gradients: int):
    """Peak extra memory of each call in a fresh subprocess, less its gradients (which it returns)."""

    def measure() -> None:
        for name, call in calls.items():
            if cfg.quick and name != "einplan.bl":
                continue
            found = memory.measure_in_subprocess(setup, call, warmup=warmup)
            if "extra_bytes" in found:
                found = {**found, "extra_bytes": found["extra_bytes"] - gradients, "gradients_bytes": gradients}
            case.memory[name] = found

    return measure


def _workload(cfg: Config, workload: str, reducer: str, seed: int) -> Bench:
    Q_, K_, D = cfg.w7_qkd
    pattern = f"q d, k d -> q | {reducer} k"
    torch.manual_seed(seed)
    Q = torch.randn(Q_, D, requires_grad=True)
    K = torch.randn(K_, D, requires_grad=True)
    rows = _rows(reducer, pattern, Q, K)
    note = f"float32, forward + backward; a q x k tensor is {Q_ * K_ * 4 / 1e9:.2f} GB; memory beyond inputs and gradients"
    label = f"{'contrastive log-partition' if reducer == 'logsumexp' else 'hard negatives'}, q=k={Q_}, d={D}"
    case = Case(workload, label, pattern, rows, planner=planner_choice(pattern, Q, K), note=note)
    setup = (
        f"import torch, einplan\ntorch.manual_seed({seed})\n"
        f"Q = torch.randn({Q_}, {D}, requires_grad=True)\nK = torch.randn({K_}, {D}, requires_grad=True)\n"
    )
    calls = {
        "einplan.bl": f"einplan.bl({pattern!r}, Q, K).sum().backward()\nreturn None",
        RECIPE[reducer]: f"{RECIPE[reducer]}.sum().backward()\nreturn None",
    }
    warmup = f"einplan.bl({pattern!r}, Q[:600], K[:600]).sum().backward()\nQ.grad = K.grad = None"
    after = _memory(case, cfg, setup, calls, warmup, gradients=2 * Q_ * D * 4)
    prepare = (lambda: _keops(reducer, Q[:200], K[:200]).sum().backward()) if LazyTensor is not None else None
    return Bench(case, RECIPE[reducer], _targets(case, reducer), slow=not cfg.quick, prepare=prepare, after=after)


def w7(cfg: Config):
    yield _workload(cfg, "W7", "logsumexp", seed=7)


def w8(cfg: Config):
    yield _workload(cfg, "W8", "max", seed=8)
