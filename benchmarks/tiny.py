"""Workload of seed 002: many tiny matmuls (W4), eager and under torch.compile."""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable

import torch

import einplan
from cases import (
    BOUND,
    EINPLAN,
    INFO,
    LOWERINGS,
    PEER,
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
    first_line,
    peer_rows,
    planner_choice,
)
from timing import fmt_us

LAID_OUT_ROW = "written-out arithmetic alone, inputs already laid out (i, j, B), (j, k, B)"
SAME_BYTES_ROW = "torch.compile(a + b): one elementwise op moving the same bytes"


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


def _compiled_row(name: str, make: Callable[[], Callable], args, kind=PEER, yardstick: bool = False) -> Row:
    """A torch.compile row; compile errors (raised on the first call) make it n/a."""
    try:
        compiled = make()
    except Exception as exc:
        return Row(name, None, kind=kind, mode="compiled", status=f"n/a (compile failed: {first_line(exc)})")
    return Row(name, lambda: compiled(*args), kind=kind, mode="compiled", yardstick=yardstick)


def generated_source_function(pattern: str, *tensors, **options) -> Callable:
    """The source einplan.code() prints for this pattern, as a plain function (no plan cache)."""
    import jaxtyping

    source = einplan.code(pattern, *tensors, **options)
    match = re.search(r"^def (\w+)\(", source, flags=re.M)
    assert match is not None, source
    namespace = {"torch": torch, "Tensor": torch.Tensor}
    namespace.update({k: getattr(jaxtyping, k) for k in dir(jaxtyping) if not k.startswith("_")})
    exec(compile(source, f"<einplan.code {pattern}>", "exec"), namespace)
    return namespace[match.group(1)]


def compiled_rows(cfg: Config, pattern: str, a, b, nbytes: int, copy_bw: float | None) -> list:
    """einplan's compiled rows, the peers' (full runs only: each compile takes seconds), and the bandwidth bound."""
    rows = [
        _compiled_row("torch.compile(einplan.bl)", lambda: _compile(lambda x, y: einplan.bl(pattern, x, y)), (a, b), kind=EINPLAN),
        _compiled_row(
            "torch.compile(einplan.code(..., compiled=True) source)",
            lambda: _compile(generated_source_function(pattern, a, b, compiled=True)),
            (a, b),
            kind=INFO,
        ),
        # the bound in practice: the same bytes in and out through one compiled kernel, no arithmetic
        _compiled_row(SAME_BYTES_ROW, lambda: _compile(operator.add), (a, b), kind=INFO, yardstick=True),
    ]
    if not cfg.quick:
        rows += [
            _compiled_row("torch.compile(torch.bmm)", lambda: _compile(torch.bmm), (a, b)),
            _compiled_row("torch.compile(seed 002 written-out)", lambda: _compile(written_out_bmm), (a, b)),
            _compiled_row("torch.compile(seed 002 unsqueeze-sum)", lambda: _compile(unsqueeze_sum_bmm), (a, b)),
        ]
    if copy_bw:
        rows.append(
            Row(
                "memory-bandwidth bound (bytes in+out / copy bandwidth)",
                None,
                kind=BOUND,
                mode="compiled",
                bound_us=nbytes / copy_bw * 1e6,
            )
        )
    return rows


def _fastest_lowering(t, bmm: float | None) -> str:
    """torch.bmm over the fastest lowering einplan has, forced: what any plan of einplan's reaches
    (1.00x where that lowering is torch.bmm's own kernel)."""
    timed = [(t(f"einplan.bl lowering={name}"), name) for name in LOWERINGS]
    fastest, name = min(((time, name) for time, name in timed if time is not None), default=(None, ""))
    return ceiling(div(bmm, fastest), f"einplan's fastest lowering, forced ({name})")


def w4_targets(D: int, compiled: bool, nbytes: int, copy_bw: float | None):
    """Issue 3's targets (3x torch.bmm eager, 1.5x the bandwidth bound compiled) and issue 19's (never
    slower than torch.bmm eager and 1.5x faster at 2x2; compiled within 1.3x the bound and no slower
    than seed 002's compiled written-out code)."""

    def targets(t):
        bmm = t("torch.bmm(a, b)")
        speedup = div(bmm, t("einplan.bl"))
        bound_ceiling = ceiling(div(bmm, t(LAID_OUT_ROW)), "the arithmetic alone on laid-out inputs")
        eager_ceiling = "; ".join(c for c in (bound_ceiling, _fastest_lowering(t, bmm)) if c)
        out = [
            at_least("einplan eager >= 3x faster than torch.bmm", speedup, 3, bound_ceiling),
            at_least("einplan eager no slower than torch.bmm", speedup, 1.0, eager_ceiling),
        ]
        if D == 2:
            out.append(at_least("einplan eager >= 1.5x faster than torch.bmm", speedup, 1.5, eager_ceiling))
        if compiled:
            bound = nbytes / copy_bw * 1e6 if copy_bw else None
            mine = t("torch.compile(einplan.bl)")
            same_bytes = div(t(SAME_BYTES_ROW), bound)
            detail = f"bound {fmt_us(bound)}" + (f"; ceiling {same_bytes:.2f}x: {SAME_BYTES_ROW}" if same_bytes else "")
            out += [
                at_most("einplan under torch.compile <= 1.5x the memory-bandwidth bound", div(mine, bound), 1.5, detail),
                at_most("einplan under torch.compile <= 1.3x the memory-bandwidth bound", div(mine, bound), 1.3, detail),
            ]
            seed = t("torch.compile(seed 002 written-out)")
            if seed is not None:
                out.append(at_most("einplan under torch.compile <= seed 002's compiled written-out code", div(mine, seed), 1.0))
        return out

    return targets


def w4(cfg: Config, copy_bw: float | None):
    pattern = "b i j, b j k -> b i k"
    for D in cfg.w4_sizes:
        torch.manual_seed(4)
        a = torch.randn(cfg.w4_batch, D, D)
        b = torch.randn(cfg.w4_batch, D, D)
        rows = (
            einplan_rows(pattern, (a, b), forced=LOWERINGS)
            + [
                Row("torch.bmm(a, b)", lambda: torch.bmm(a, b)),
                Row("a @ b", lambda: a @ b),
                Row("seed 002: written-out", lambda: written_out_bmm(a, b)),
                Row("seed 002: (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)", lambda: unsqueeze_sum_bmm(a, b)),
            ]
            + peer_rows("bij,bjk->bik", "b i j, b j k -> b i k", "b i j, b j k -> b i k", (a, b))
        )
        laid_a, laid_b = a.permute(1, 2, 0).contiguous(), b.permute(1, 2, 0).contiguous()
        rows.append(Row(LAID_OUT_ROW, lambda: arithmetic_on_laid_out(laid_a, laid_b), kind=INFO))
        nbytes = 3 * a.numel() * a.element_size()
        compiled = cfg.compile and D in cfg.w4_compile_sizes
        if compiled:
            rows += compiled_rows(cfg, pattern, a, b, nbytes, copy_bw)
        case = Case(
            "W4",
            f"B={cfg.w4_batch}, {D}x{D}",
            pattern,
            rows,
            planner=planner_choice(pattern, a, b),
            note=f"float32, {nbytes / MiB:.1f} MiB in+out",
        )
        yield Bench(case, "torch.bmm(a, b)", w4_targets(D, compiled, nbytes, copy_bw), quiet=True)
