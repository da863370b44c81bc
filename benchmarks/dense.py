"""Workloads of seeds 000 and 001: a shared matrix times a batch of vectors (W1), batched dot
products (W2) and the quadratic form with A shared (W3)."""

from __future__ import annotations

import torch

from cases import (
    ELEMENTWISE,
    MATMUL,
    Bench,
    Case,
    Config,
    Row,
    at_least,
    at_most,
    best_of,
    ceiling,
    div,
    einplan_rows,
    kernel_ratio,
    peer_rows,
    planner_choice,
)

# --- W1: shared matrix times a batch of vectors (seed 000) ------------------------------------

W1_LOOP = "seed 000: loop C[i] = A @ B[i]"


def seed000_loop(A, B):
    """Seed 000's inefficient_matmul: one matrix-vector product per row."""
    C = torch.empty((B.shape[0], A.shape[0]), dtype=A.dtype, device=A.device)
    for i in range(B.shape[0]):
        C[i] = A @ B[i]
    return C


def w1_targets(t):
    best, who = best_of(t, ["B @ A.T", 'torch.einsum("bn,mn->bm")', 'opt_einsum.contract("bn,mn->bm")', 'einops.einsum("b n, m n -> b m")'])
    return [
        at_most("einplan <= 1.05x the best of B @ A.T, torch.einsum, opt_einsum, einops", div(t("einplan.bl"), best), 1.05, f"best: {who}"),
        at_least(
            "einplan >= 10x faster than seed 000's loop",
            div(t(W1_LOOP), t("einplan.bl")),
            10,
            ceiling(div(t(W1_LOOP), t("B @ A.T")), "the loop over B @ A.T"),
        ),
    ]


def w1(cfg: Config):
    pattern = "b n, m n -> b m"
    for b in cfg.w1_b:
        torch.manual_seed(1)
        A = torch.randn(1000, 500)
        B = torch.randn(b, 500)
        rows = (
            einplan_rows(pattern, (B, A), with_kernel=True)
            + [
                Row("B @ A.T", lambda: B @ A.T),
                Row("seed 000: torch.matmul(A, B.T).T", lambda: torch.matmul(A, B.transpose(0, 1)).transpose(0, 1)),
                Row("seed 000: torch.matmul(A, B[..., None]).squeeze(2)", lambda: torch.matmul(A, B[..., None]).squeeze(2)),
                Row(W1_LOOP, lambda: seed000_loop(A, B)),
            ]
            + peer_rows("bn,mn->bm", "b n, m n -> b m", "b n, m n -> b m", (B, A))
        )
        case = Case("W1", f"b={b}", pattern, rows, planner=planner_choice(pattern, B, A), note="A 1000x500 shared, float32")
        yield Bench(case, "B @ A.T", w1_targets)


# --- W2: batched dot product (seed 001) --------------------------------------------------------

W2_MATMUL_FORM = "seed 001: (a[..., None, :] @ b[..., None]).squeeze()"


def w2_targets(t):
    best, who = best_of(t, ["(a * b).sum(-1)", W2_MATMUL_FORM, 'torch.einsum("...n,...n->...")', "torch.linalg.vecdot(a, b)"])
    return [
        at_most(
            "einplan <= 1.05x the best of (a*b).sum(-1), the matmul form, torch.einsum, vecdot",
            div(t("einplan.bl"), best),
            1.05,
            f"best: {who}; {kernel_ratio(t, best)}",
        )
    ]


def w2(cfg: Config):
    pattern = "... n, ... n -> ..."
    for shape in cfg.w2_shapes:
        torch.manual_seed(2)
        a = torch.randn(shape)
        b = torch.randn(shape)
        rows = (
            einplan_rows(pattern, (a, b), forced=(MATMUL, ELEMENTWISE), with_kernel=True)
            + [
                Row("(a * b).sum(-1)", lambda: (a * b).sum(-1)),
                Row(W2_MATMUL_FORM, lambda: (a[..., None, :] @ b[..., None]).squeeze()),
                Row("torch.linalg.vecdot(a, b)", lambda: torch.linalg.vecdot(a, b)),
            ]
            + peer_rows("...n,...n->...", "... n, ... n -> ...", "... n, ... n -> ...", (a, b))
        )
        case = Case("W2", "x".join(map(str, shape)), pattern, rows, planner=planner_choice(pattern, a, b), note="float32")
        yield Bench(case, "(a * b).sum(-1)", w2_targets)


# --- W3: quadratic form, A shared (seed 001) ----------------------------------------------------

W3_HAND = ["((l @ A) * l).sum(-1)", "seed 001: (l[..., None, :] @ A @ l[..., None]).squeeze()"]


def w3_targets(first: bool):
    def targets(t):
        best, who = best_of(t, W3_HAND)
        out = [
            at_most(
                "einplan <= 1.05x the best hand-written form", div(t("einplan.bl"), best), 1.05, f"best: {who}; {kernel_ratio(t, best)}"
            )
        ]
        if first:
            out.append(at_least("einplan >= 3x faster than torch.einsum", div(t('torch.einsum("...n,nm,...m->...")'), t("einplan.bl")), 3))
        return out

    return targets


def w3(cfg: Config):
    for k, (batch, n) in enumerate(cfg.w3_cases):
        names = ["b1", "b2"][: len(batch)] if len(batch) > 1 else ["b"]
        bs = " ".join(names)
        pattern = f"{bs} n, n n, {bs} n -> {bs}"
        torch.manual_seed(3)
        l = torch.randn(*batch, n)
        A = torch.randn(n, n)
        rows = (
            einplan_rows(pattern, (l, A, l), forced=(MATMUL, ELEMENTWISE), with_kernel=True)
            + [
                Row(W3_HAND[0], lambda: ((l @ A) * l).sum(-1)),
                Row(W3_HAND[1], lambda: (l[..., None, :] @ A @ l[..., None]).squeeze()),
            ]
            + peer_rows("...n,nm,...m->...", "... n, n m, ... m -> ...", "... n, n m, ... m -> ...", (l, A, l))
        )
        label = f"l {'x'.join(map(str, (*batch, n)))}, A {n}x{n}"
        case = Case("W3", label, pattern, rows, planner=planner_choice(pattern, l, A, l), note="float32")
        yield Bench(case, W3_HAND[0], w3_targets(first=k == 0))
