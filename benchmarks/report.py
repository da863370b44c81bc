"""What a run shows: each case's table and targets, the summary, results.json and the chart."""

from __future__ import annotations

import json
import math

import memory
from cases import BOUND, EINPLAN, INFO, PEER, Case, Row, Target, ratio_base
from timing import fmt_us


def verdict(t: Target) -> str:
    return "n/a" if t.met is None else ("MET" if t.met else "NOT MET")


def noisy(t: Target, tb: Target) -> str:
    """A flag when the medians and the fastest samples disagree on a verdict."""
    return "; verdict depends on noise" if t.met is not None and tb.met is not None and t.met != tb.met else ""


def _row_line(case: Case, r: Row, width: int) -> str:
    if r.status != "ok":
        return f"   {r.name:<{width}}{r.status}"
    t = r.median_us
    iqr = fmt_us(r.timing.iqr_us) if r.timing is not None else ""
    best = fmt_us(r.timing.min_us) if r.timing is not None else ""
    base = ratio_base(case, r)
    ratio = "" if r.kind == EINPLAN or base is None or not t else f"{base / t:.2f}"
    first = f"   (first call, compiling: {r.first_call_s:.1f} s)" if r.mode == "compiled" and r.first_call_s else ""
    return f"   {r.name:<{width}}{fmt_us(t):>11}{iqr:>11}{best:>11}{ratio:>14}{first}"


def _target_line(t: Target, tb: Target) -> str:
    value = "n/a" if t.value is None else f"{t.value:.2f}"
    extra = f"; {t.detail}" if t.detail else ""
    line = f"   target: {t.text}: {value} (need {t.need}{extra}) -> {verdict(t)}"
    if tb.value is not None and tb.value != t.value:
        line += f"  [fastest samples: {tb.value:.2f} -> {verdict(tb)}{noisy(t, tb)}]"
    return line


def print_case(case: Case) -> None:
    print(f"\n-- {case.workload} {case.label}:  {case.pattern}   ({case.note})")
    print(f"   planner: {case.planner}")
    width = max(46, max(len(r.name) for r in case.rows) + 2)
    print(f"   {'candidate':<{width}}{'median':>11}{'IQR':>11}{'best':>11}{'einplan/peer':>14}")
    for r in case.rows:
        print(_row_line(case, r, width))
    for name, m in case.memory.items():
        shown = f"n/a ({m['error']})" if "error" in m else memory.fmt_bytes(m["extra_bytes"])
        print(f"   peak extra memory, fresh subprocess: {name}: {shown}")
    for t, tb in zip(case.targets, case.targets_best, strict=True):
        print(_target_line(t, tb))


def print_summary(cases: list) -> int:
    """The verdict of every target; returns how many are met."""
    targets = [(c, t, tb) for c in cases for t, tb in zip(c.targets, c.targets_best, strict=True)]
    met = sum(1 for _, t, _ in targets if t.met)
    print(f"\n==== summary: {met} of {len(targets)} targets met (verdicts from medians) ====")
    for c, t, tb in targets:
        value = "n/a" if t.value is None else f"{t.value:.2f}"
        flag = " (fastest samples disagree: noisy)" if noisy(t, tb) else ""
        print(f"   {verdict(t):<8} {c.workload} {c.label}: {t.text}: {value} (need {t.need}){flag}")
    return met


def _row_json(case: Case, r: Row) -> dict:
    base = ratio_base(case, r)
    t = r.median_us
    return {
        "name": r.name,
        "kind": r.kind,
        "mode": r.mode,
        "status": r.status,
        "timing_us": r.timing.as_dict() if r.timing is not None else None,
        "bound_us": r.bound_us,
        "first_call_s": r.first_call_s,
        "einplan_over_peer": None if r.kind == EINPLAN or base is None or not t or r.status != "ok" else base / t,
    }


def case_json(case: Case) -> dict:
    return {
        "workload": case.workload,
        "case": case.label,
        "pattern": case.pattern,
        "note": case.note,
        "planner": case.planner,
        "rows": [_row_json(case, r) for r in case.rows],
        "memory": case.memory,
        "targets": [
            {
                "text": t.text,
                "value": t.value,
                "need": t.need,
                "met": t.met,
                "detail": t.detail,
                "value_from_fastest_samples": tb.value,
                "met_from_fastest_samples": tb.met,
            }
            for t, tb in zip(case.targets, case.targets_best, strict=True)
        ],
    }


def write_json(path: str, results: dict, cases: list) -> None:
    with open(path, "w") as f:
        json.dump({**results, "cases": [case_json(c) for c in cases]}, f, indent=1)


COLORS = {EINPLAN: "#d95f02", INFO: "#fdb863", PEER: "#7570b3", BOUND: "#1b9e77"}


def _panel(ax, case: Case) -> None:
    from matplotlib.ticker import NullFormatter

    names = [r.name for r in case.rows]
    ys = list(range(len(case.rows)))[::-1]
    values = [r.median_us / 1e3 if r.status == "ok" and r.median_us else 0.0 for r in case.rows]
    ok_values = [v for v in values if v > 0]
    ax.barh(ys, values, color=[COLORS[r.kind] for r in case.rows])
    ax.set_xscale("log")
    lo = min(ok_values) / 2 if ok_values else 1e-3
    hi = max(ok_values) * 3 if ok_values else 1.0
    ax.set_xlim(lo, hi)
    for y, r, v in zip(ys, case.rows, values, strict=True):
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


def write_chart(cases: list, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cols = 3
    nrows = math.ceil(len(cases) / cols)
    heights = [max(len(c.rows) for c in cases[i * cols : (i + 1) * cols]) for i in range(nrows)]
    fig, axes = plt.subplots(
        nrows, cols, figsize=(7.5 * cols, sum(0.32 * h + 1.4 for h in heights)), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    for ax in axes.flat[len(cases) :]:
        ax.axis("off")
    for ax, case in zip(axes.flat, cases, strict=False):
        _panel(ax, case)
    fig.suptitle(title, fontsize=11)
    legend = (
        (EINPLAN, "einplan (target rows)"),
        (INFO, "einplan, forced lowering / generated source"),
        (PEER, "peers"),
        (BOUND, "bandwidth bound"),
    )
    fig.legend(handles=[Patch(color=COLORS[k], label=text) for k, text in legend], loc="upper right", fontsize=8, ncol=4)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
