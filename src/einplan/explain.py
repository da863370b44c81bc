"""What ``explain`` prints: the primed form, axis sizes, path, each step's lowering and cost, the source."""

from __future__ import annotations

from . import plan as planner
from .distributed import explained
from .letters import BROADCAST, READING, read
from .measuring import MEASURED, key_of
from .placements import is_distributed
from .runtime import plan_for
from .source import render


def human(n: float) -> str:
    """``1.5M``: a count in three significant digits with a k/M/G suffix."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _spelled(resolved, einsum: str | None) -> list[str]:
    """The pattern lines: the primed form, or for a torch.einsum equation the einplan spelling it ran as."""
    if einsum is None:
        return [f"pattern:  {resolved.pattern.text}", f"primed:   {resolved.primed}"]
    notes = [READING] if read(einsum).diagonals else []
    if "1" in resolved.pattern.text.replace(",", " ").split():  # letters are never spelled 1 but for this
        notes.append(BROADCAST)
    return [f"einsum:   {einsum}", f"as einplan: {resolved.primed}" + "".join(f"  ({note})" for note in notes)]


def _head(plan: planner.Plan, einsum: str | None = None) -> list[str]:
    bound = plan.bound
    resolved = bound.resolved
    return _spelled(resolved, einsum) + [
        "sizes:    " + (", ".join(f"{a}={s}" for a, s in bound.sizes.items()) or "(none)"),
        f"dtype:    {bound.dtype}, device: {bound.device} (cost model: {plan.model.kind}, {plan.model.origin}"
        + (", code traced by torch.compile)" if plan.options.compiled else ")"),
        f"path:     {list(plan.path) if plan.path else '(no contraction)'}",
    ]


def _step(number: int, step: planner.Step, plan: planner.Plan) -> list[str]:
    """One step: its lowering and estimate, each candidate's estimated time, and why the winner won."""
    lines = [f"  {number}. {step.kind:<18} {step.description}"]
    if step.estimate is not None:
        e = step.estimate
        lines.append(f"     {human(e.flops)} FLOPs, {human(e.bytes)}B moved, {e.ops:g} torch op(s), {human(e.memory)}B allocated")
    for candidate in step.candidates:
        mark = "*" if candidate.lowering == step.kind else " "
        terms = plan.model.breakdown(candidate.estimate)
        main = max(terms, key=lambda term: terms[term])
        lines.append(f"     {mark} {candidate.lowering:<18} est. {candidate.seconds * 1e6:9.1f} us  (mostly {main})")
    if step.backward:
        lines.append(f"     backward: {step.backward}")
    return lines + _why(step, plan)


def _why(step: planner.Step, plan: planner.Plan) -> list[str]:
    """One line saying why the winner won: forced, memory, or cheaper than the runner-up."""
    if len(step.candidates) < 2:
        return []
    if plan.options.lowering is not None and step.kind == plan.options.lowering:
        return [f"     why: {step.kind} was forced"]
    winner = next((c for c in step.candidates if c.lowering == step.kind), None)
    others = sorted((c for c in step.candidates if c.lowering != step.kind), key=lambda c: c.seconds)
    if winner is None or not others:
        return []
    if step.kind == planner.CHUNKED:
        full = human(step.candidates[0].estimate.memory)
        return [f"     why: the full intermediate would take {full}B; chunks keep it under the memory budget"]
    runner = others[0]
    ratio = runner.seconds / max(winner.seconds, 1e-12)
    if step.kind == planner.FUSED:
        full = human(min(c.estimate.memory for c in others if c.lowering != planner.CHUNKED))  # the product itself
        return [f"     why: the {full}B product stays on chip, tile by tile; {ratio:.2g}x cheaper than {runner.lowering}, the next best"]
    return [f"     why: {ratio:.2g}x cheaper than {runner.lowering}, the next best"]


def describe(plan: planner.Plan, einsum: str | None = None) -> str:
    """The text ``explain`` prints: primed form, sizes, path, steps, then the source; ``einsum``: the
    torch.einsum equation the plan was made for (shown with the einplan spelling it ran as)."""
    lines = _head(plan, einsum) + ["steps:"]
    for number, step in enumerate(plan.steps):
        lines.extend(_step(number, step, plan))
    measured = MEASURED.get(key_of(plan.bound, plan.options.memory_limit)) if plan.options.lowering is None else None
    if measured is not None:  # a close call bl timed on this signature's first calls
        lines.append(f"  {measured.describe()}")
    lines.append("source:")
    lines.append(render(plan))
    return "\n".join(lines)


def explain(pattern: str, *tensors_or_shapes, einsum: bool = False, **options) -> str:
    """The primed pattern, axis sizes, path, each step's lowering and cost, and the source;
    ``einsum=True``: ``pattern`` is a torch.einsum equation, as ``einplan.einsum`` reads it."""
    if any(is_distributed(type(t)) for t in tensors_or_shapes):  # the route on the mesh, then this rank's plan
        head, local, as_einsum, xs, local_options = explained(pattern, tensors_or_shapes, einsum, options)
        return head + "\nthis rank's plan:\n" + explain(local, *xs, einsum=as_einsum, **local_options)
    return describe(plan_for(pattern, *tensors_or_shapes, einsum=einsum, **options), pattern if einsum else None)
