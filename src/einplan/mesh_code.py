"""A route as generated code: the one function a rank runs on DTensors.

It reads each operand's local tensor (``to_local``; a replicated operand beside a sharded one
with ``grad_placements=(Partial(),)``, so that its gradient is this rank's part), narrows a
replicated operand to this rank's rows of the sharded axis, calls einplan's own plan on the
local tensors (``einplan.bl``, cached and memory-bounded: ``explain`` shows its source too),
then the route's one collective (:mod:`einplan.collectives`), and wraps the result with its
placement.  Rank, rows and sizes are baked in: each rank's function is its own, and
:func:`einplan.distributed.code` shows it.  Like every plan's code, it is built from the
allow-listed nodes of :mod:`einplan.ir`; the patterns reach it as string literals.
"""

from __future__ import annotations

import math

from . import codegen, ir
from .placements import Route

FUNCTION_NAME = "einplan_on_mesh"


def _call_local(route: Route, pattern: str, args: tuple) -> ir.Call:
    """``einplan.bl(pattern, t0, t1, n=4)`` (or ``einplan.einsum``): this rank's plan."""
    function = "einplan.einsum" if route.einsum and pattern == route.local else "einplan.bl"
    sizes = () if function == "einplan.einsum" else tuple((n, ir.Const(v)) for n, v in route.sizes)
    options = tuple((k, ir.Const(v)) for k, v in route.options if v is not None)
    return ir.Call(function, (ir.Const(pattern), *args), sizes + options)


def _locals(route: Route, detach: bool) -> list:
    """``t0 = x0.to_local()`` per operand, then the narrowing of a replicated operand's dims."""
    beside_shard = any(route.sharded)
    stmts: list = []
    for k, (sharded, spelled, dims) in enumerate(zip(route.sharded, route.placements_in, route.narrow, strict=True)):
        partial = beside_shard and not sharded and not detach
        grad = (("grad_placements", ir.Tuple((ir.Call("Partial", ()),))),) if partial else ()
        value: ir.Expr = ir.Method(ir.Var(f"x{k}"), "to_local", (), grad)
        if detach:
            value = ir.Method(value, "detach")
        where = spelled.split(": ", 1)[1]
        note = f"{where}: this rank's rows {route.offset}:{route.offset + route.length} of {route.axis}" if sharded else where
        stmts.append(ir.Assign(f"t{k}", value, note + ("; its gradient is this rank's part" if partial else "")))
        for d in dims:
            narrowed = ir.Method(ir.Var(f"t{k}"), "narrow", (ir.Const(d), ir.Const(route.offset), ir.Const(route.length)))
            stmts.append(ir.Assign(f"t{k}", narrowed, f"this rank's rows of {route.axis}"))
    return stmts


def _placement(route: Route) -> tuple[ir.Expr, tuple]:
    """The result's placement, and from_local's keywords for it (a Shard's global shape and stride)."""
    if route.kind == "kept":
        stride = tuple(math.prod(route.shape[d + 1 :]) for d in range(len(route.shape)))
        shaped = (("shape", ir.Const(tuple(route.shape))), ("stride", ir.Const(stride)))
        return ir.Call("Shard", (), (("dim", ir.Const(route.out_dim)),)), shaped
    if route.kind == "partial" and not route.replicate:
        return ir.Call("Partial", ()), ()
    return ir.Call("Replicate", ()), ()


def _wrapped(route: Route, result: str) -> ir.Return:
    """``return DTensor.from_local(result, mesh, (placement,), ...)``, once per tensor returned."""
    placement, shaped = _placement(route)
    values = [ir.Var(result)] if route.results == 1 else [ir.Index(ir.Var(result), (k,)) for k in range(route.results)]
    wrapped = tuple(
        ir.Call("DTensor.from_local", (v, ir.Var("mesh"), ir.Tuple((placement,))), (("run_check", ir.Const(False)), *shaped))
        for v in values
    )
    return ir.Return(wrapped[0] if len(wrapped) == 1 else wrapped)


def _combine(route: Route, args: tuple) -> list:
    """The local plan on this rank's tensors, then the route's one collective, into ``result``."""
    group = ir.Method(ir.Var("mesh"), "get_group")
    world = ir.Const(route.world)
    local = ir.Assign("part", _call_local(route, route.local, args), "this rank's plan (einplan.explain shows its code)")
    if route.kind in ("replicated", "kept") or (route.kind == "partial" and not route.replicate):
        note = "a partial sum: Partial() adds the ranks' parts when redistributed" if route.kind == "partial" else "no communication"
        return [ir.Assign("result", local.value, note)]
    if route.kind == "partial":
        return [
            local,
            ir.Assign("result", ir.Call("collectives.all_reduce_sum", (ir.Var("part"), group)), "one all_reduce SUM of the parts"),
        ]
    reducer = route.reducer or ""
    empty = route.length == 0
    if empty:
        identity = ir.Call("collectives.no_rows", (ir.Const(tuple(route.shape)), ir.Const(reducer), *args))
        local = ir.Assign("part", identity, f"this rank holds none of {route.axis}'s rows: the {reducer}'s identity")
    if reducer.startswith("arg"):
        return _arg_combine(route, args, group, world, local)
    if reducer in ("sum", "mean"):
        total: ir.Expr = ir.Call("collectives.all_reduce_sum", (ir.Var("part"), group))
        if reducer == "mean":
            total = ir.BinOp("/", total, ir.Const(route.count))
        note = "one all_reduce SUM of each rank's sum" + (f", divided by the count ({route.count})" if reducer == "mean" else "")
        return [local, ir.Assign("result", total, note)]
    gathered = ir.Call("collectives.all_gather_reduce", (ir.Var("part"), ir.Const(reducer), group, world))
    torch_name = {"max": "amax", "min": "amin"}.get(reducer, reducer)
    return [local, ir.Assign("result", gathered, f"one all_gather of each rank's {reducer}, torch.{torch_name} over the ranks")]


def _arg_combine(route: Route, args: tuple, group: ir.Expr, world: ir.Const, identity: ir.Assign) -> list:
    """argmax / argmin: this rank's extreme and its index (two local passes; none without rows),
    then one all_gather of (extreme, global flat index)."""
    reducer = route.reducer or ""
    if route.length == 0:
        stmts = [identity, ir.Assign("index", ir.Const(None), "no index here: every other rank's wins")]
    else:
        values = ir.Assign("part", _call_local(route, route.values, args), f"this rank's {reducer[3:]}")
        stmts = [values, ir.Assign("index", _call_local(route, route.local, args), f"its {reducer}, counted from row {route.offset}")]
    sharded = route.clause.index(route.axis) if route.axis in route.clause else -1
    where = (ir.Const(route.extent), ir.Const(sharded), ir.Const(route.offset))
    combined = ir.Call("collectives.all_gather_arg", (ir.Var("part"), ir.Var("index"), ir.Const(reducer), *where, group, world))
    return [*stmts, ir.Assign("result", combined, f"one all_gather of each rank's ({reducer[3:]}, global flat index)")]


def render(route: Route) -> str:
    """The function this rank runs for ``route``: local tensors, this rank's plan, the collective."""
    arg = route.reducer is not None and route.reducer.startswith("arg")
    params = [(f"x{k}", "DTensor") for k in range(len(route.narrow))]
    args = tuple(ir.Var(f"t{k}") for k in range(len(route.narrow)))
    body = [ir.Assign("mesh", ir.Attr(ir.Var("x0"), "device_mesh")), *_locals(route, detach=arg)]
    body += [*_combine(route, args), _wrapped(route, "result")]
    rows = f"; rows {route.offset}:{route.offset + route.length} of {route.axis}" if route.axis is not None else ""
    doc = f"Rank {route.rank} of {route.world}{rows}: {_collective_words(route)}, then {_placement_words(route)}."
    returns = "DTensor" if route.results == 1 else f"tuple[{', '.join(['DTensor'] * route.results)}]"
    return codegen.function(FUNCTION_NAME, params, returns, doc, body)


def _collective_words(route: Route) -> str:
    if route.kind == "clause":
        return "one all_reduce SUM" if route.reducer in ("sum", "mean") else "one all_gather"
    return "one all_reduce SUM" if route.kind == "partial" and route.replicate else "no collective"


def _placement_words(route: Route) -> str:
    return route.placement_out if route.kind != "partial" or not route.replicate else "Replicate()"
