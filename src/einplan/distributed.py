"""Operands that are DTensors on a 1-D device mesh: einplan's own plan on each rank's shard, then at
most one ``torch.distributed`` collective.

A call whose operands are ``torch.distributed.tensor.DTensor`` s gets a call signature of its own
(the operand's class is part of it, see :data:`einplan.programs.metadata`), and its program is the
:func:`runner` made here.  The runner reads each operand's placement on its mesh and finds the one
sharded axis (:func:`einplan.placements.route`, once per placements and local shapes), then on
every call:

- the sharded axis is kept in the output: the local plan on the shards (replicated operands that
  have the axis narrowed to this rank's rows, as ``torch.chunk`` cuts it), a ``Shard`` result, no
  communication;
- the sharded axis is summed: the local plan, a ``Partial()`` result (or ``replicate=True``: one
  ``all_reduce`` SUM, a ``Replicate()`` result); only ``sum``/``mean`` clauses may follow, as
  they commute with the sum across ranks;
- a clause reduces the sharded axis (the last clause): the local plan reduces the shard, then one
  collective on the per-rank results, ``Replicate()`` out: sum and mean by ``all_reduce`` SUM
  (mean divides by the global count); max, min and logsumexp by one ``all_gather`` and torch's
  own ``amax``/``amin``/``logsumexp`` over the ranks (gloo's MAX drops a NaN held by another
  rank, torch's does not); argmax/argmin by one ``all_gather`` of each rank's (extreme,
  global flat index), the first index winning a tie and a NaN winning, as in torch.

Nothing else crosses ranks: never a shard of an operand, never a part of the product.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from . import programs
from .errors import EinplanError
from .placements import SUMMED, Route, api, check_operands, describe, is_distributed, route
from .plan import Options
from .runtime import bl as local_bl
from .runtime import einsum as local_einsum

# --- the combines -------------------------------------------------------------------------------------


class Gathered(torch.autograd.Function):
    """max / min / logsumexp of the ranks' results: one all_gather, torch's reducer over the ranks.

    Backward: logsumexp weights by ``exp(local - result)``; max/min give ``g`` to the ranks whose
    result equals the extreme, split evenly among those ranks (each rank's local backward then
    splits its share among its own tied positions, as torch.amax does within one tensor)."""

    @staticmethod
    def forward(ctx, local, reducer: str, group, world: int):
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local, group=group)
        stacked = torch.stack(parts)
        result = {"max": torch.amax, "min": torch.amin, "logsumexp": torch.logsumexp}[reducer](stacked, 0)
        ctx.reducer = reducer
        ctx.save_for_backward(local, stacked, result)
        return result

    @staticmethod
    def backward(ctx, grad):
        local, stacked, result = ctx.saved_tensors
        if ctx.reducer == "logsumexp":
            return grad * torch.exp(local - result), None, None, None
        ties = (stacked == result).sum(0)
        return grad * (local == result) / ties, None, None, None


class Summed(torch.autograd.Function):
    """The ranks' partial sums added by one all_reduce SUM; backward: each rank's part gets ``g``."""

    @staticmethod
    def forward(ctx, local, group):
        total = local.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _arg_combine(route: Route, values, indices, group, world: int):
    """argmax/argmin across ranks from each rank's (extreme, global flat index): one all_gather of
    both as bytes; a NaN wins, then the extreme, then the smallest flat index (torch's rule)."""
    shape = values.shape
    if not isinstance(indices, tuple):
        indices = (indices,)
    flat = torch.zeros(shape, dtype=torch.int64, device=values.device)
    for index, size, axis in zip(indices, route.extent, route.clause, strict=True):
        flat = flat * size + (index + route.offset if axis == route.axis else index)
    if route.length == 0:  # nothing here: a flat index no rank's tie can lose to
        flat.fill_(torch.iinfo(torch.int64).max)
    value_bytes = values.contiguous().reshape(-1).view(torch.uint8)
    payload = torch.cat([value_bytes, flat.reshape(-1).view(torch.uint8)])
    parts = [torch.empty_like(payload) for _ in range(world)]
    dist.all_gather(parts, payload, group=group)
    split = value_bytes.numel()
    every = torch.stack([p[:split].view(values.dtype).reshape(shape) for p in parts])
    flats = torch.stack([p[split:].view(torch.int64).reshape(shape) for p in parts])
    best = every.amax(0) if route.reducer == "argmax" else every.amin(0)
    wins = (every == best) | (torch.isnan(every) & torch.isnan(best))
    chosen = torch.where(wins, flats, torch.iinfo(torch.int64).max).amin(0)
    found = []
    for size in reversed(route.extent):
        found.append(chosen % size)
        chosen = chosen // size
    found.reverse()
    return found[0] if len(found) == 1 else tuple(found)


def _identity(route: Route, like: torch.Tensor, reducer: str) -> torch.Tensor:
    """A rank with no rows of the sharded axis: the reducer's identity, of the result's shape."""
    dtype = like.dtype
    if reducer in SUMMED:
        value: float | int = 0
    elif dtype.is_floating_point:
        value = float("-inf") if reducer in ("max", "logsumexp", "argmax") else float("inf")
    else:
        info = torch.iinfo(dtype)
        value = info.min if reducer in ("max", "argmax") else info.max
    return torch.full(route.shape, value, dtype=dtype, device=like.device)


# --- running ------------------------------------------------------------------------------------------

Local = Callable[..., Any]  # (pattern, tensors, sizes, einsum) -> the local plan's result


def local_tensors(route: Route, tensors, held: list | None = None) -> list[torch.Tensor]:
    """Each rank's operands: its shard, or a replicated operand narrowed to this rank's rows
    (``held``: the operands' local tensors, as :func:`held_locally` gives them)."""
    result = []
    for x, dims in zip(held if held is not None else held_locally(tensors), route.narrow, strict=True):
        for d in dims:
            x = x.narrow(d, route.offset, route.length)
        result.append(x)
    return result


def held_locally(tensors) -> list[torch.Tensor]:
    """Each operand's local tensor.  Beside a sharded operand, a replicated operand's local
    gradient is this rank's part of it, hence ``Partial`` on the way back (DTensor adds the parts
    when the gradient is redistributed)."""
    shard, partial = api().Shard, api().Partial
    sharded = any(isinstance(t.placements[0], shard) for t in tensors)
    return [
        t.to_local(grad_placements=[partial()]) if sharded and not isinstance(t.placements[0], shard) else t.to_local() for t in tensors
    ]


def _wrap(result, mesh, placement, shape: tuple[int, ...] | None = None):
    if isinstance(result, tuple):
        return tuple(_wrap(r, mesh, placement, shape) for r in result)
    if shape is None:
        return api().DTensor.from_local(result, mesh, [placement], run_check=False)
    stride = tuple(math.prod(shape[d + 1 :]) for d in range(len(shape)))
    return api().DTensor.from_local(result, mesh, [placement], run_check=False, shape=torch.Size(shape), stride=stride)


def execute(route: Route, tensors, local: Local, held: list | None = None):
    """One call: the local plan on this rank's tensors, then the route's one collective (if any)."""
    mesh = tensors[0].device_mesh
    xs = local_tensors(route, tensors, held)
    if route.kind == "replicated":
        return _wrap(local(route.local, xs, route.sizes, route.einsum), mesh, api().Replicate())
    if route.kind == "kept":
        return _wrap(local(route.local, xs, route.sizes, route.einsum), mesh, api().Shard(route.out_dim), route.shape)
    if route.kind == "partial":
        result = local(route.local, xs, route.sizes, route.einsum)
        if route.replicate:
            return _wrap(Summed.apply(result, mesh.get_group()), mesh, api().Replicate())
        return _wrap(result, mesh, api().Partial())
    return _wrap(_clause(route, xs, local, mesh.get_group(), mesh.size()), mesh, api().Replicate())


def _clause(route: Route, xs: list, local: Local, group, world: int):
    """A clause over the sharded axis: the shard reduced by the local plan, then the one combine."""
    reducer = route.reducer
    assert reducer is not None
    if reducer in ("argmax", "argmin"):
        with torch.no_grad():
            if route.length == 0:
                values = _identity(route, xs[0], reducer)
                indices: object = tuple(torch.zeros(route.shape, dtype=torch.int64, device=values.device) for _ in route.extent)
            else:
                values = local(route.values, xs, route.sizes, False)
                indices = local(route.local, xs, route.sizes, False)
            return _arg_combine(route, values, indices, group, world)
    if route.length == 0:
        mine = _identity(route, xs[0], reducer)
        mine = mine + sum((x.sum() * 0 for x in xs if x.requires_grad), torch.zeros((), dtype=mine.dtype))
    else:
        mine = local(route.local, xs, route.sizes, False)
    if reducer in SUMMED:
        total = Summed.apply(mine, group)
        return total / route.count if reducer == "mean" else total
    return Gathered.apply(mine, reducer, group, world)


def runner(pattern: str, sizes: tuple, einsum: bool, lowering=None, memory_limit=None, replicate: bool = False) -> Callable:
    """The function of a DTensor call signature: its route per placements (found once), then
    :func:`execute` with the local plan as ``bl`` runs it (cached, differentiated in chunks)."""
    routes: dict = {}

    def local(text: str, xs, local_sizes: tuple, as_einsum: bool):
        if as_einsum:
            return local_einsum(text, *xs, lowering=lowering, memory_limit=memory_limit)
        return local_bl(text, *xs, lowering=lowering, memory_limit=memory_limit, **dict(local_sizes))

    def run(*tensors):
        check_operands(tensors)
        held = held_locally(tensors)
        key = tuple((t.device_mesh, t.placements, x.shape) for t, x in zip(tensors, held, strict=True))
        found = routes.get(key)
        if found is None:
            found = routes[key] = replace(route(pattern, tensors, sizes, einsum), replicate=replicate)
        return execute(found, tensors, local, held)

    return run


cached_runner = functools.lru_cache(maxsize=256)(runner)  # einplan.distributed.bl's runners


def routed(pattern: str, signature: tuple, sizes: tuple, lowering, memory_limit, einsum: bool) -> programs.Program | None:
    """The program :func:`einplan.programs.build` makes for a call signature with a DTensor in it:
    the plan of the whole (global) shapes, planned as one process would (so a bad pattern or shape
    fails as it does there, before any communication), and the runner as its function."""
    if not any(len(entry) > 3 and is_distributed(entry[3]) for entry in signature):
        return None
    shapes = [shape for shape, *_ in signature]
    dtype, device = signature[0][1], signature[0][2]
    options = Options(lowering, memory_limit)
    plan = programs.make_plan(pattern, shapes, dtype, device, dict(sizes), options, einsum)
    return programs.Program(plan, "", runner(pattern, sizes, einsum, lowering, memory_limit))


def bl(pattern: str, *tensors, replicate: bool = False, lowering: str | None = None, memory_limit: int | None = None, **sizes):
    """``einplan.bl`` on DTensors, with ``replicate=True``: a sum over the sharded axis comes back
    ``Replicate()`` (one all_reduce SUM) instead of ``Partial()``."""
    if not isinstance(replicate, bool):
        raise EinplanError(f"replicate= takes True or False, got {replicate!r}")
    key = tuple(sizes.items())
    programs.check_call(key, memory_limit)
    return cached_runner(pattern, key, False, lowering, memory_limit, replicate)(*tensors)


PLAN_OPTIONS = ("device", "dtype", "lowering", "memory_limit", "compiled", "grad")


def explained(pattern: str, tensors, einsum: bool, options: dict) -> tuple[str, str, bool, list, dict]:
    """For ``explain`` on DTensors: the route's text (placements in, collective, placement out),
    and the local pattern, its reading, this rank's tensors and the options to explain it with."""
    sizes = tuple((k, v) for k, v in options.items() if k not in PLAN_OPTIONS)
    found = route(pattern, tensors, sizes, einsum)
    xs = [x.detach() for x in local_tensors(found, tensors)]
    kept = {k: v for k, v in options.items() if k in PLAN_OPTIONS}
    return describe(found, tensors[0].device_mesh), found.local, found.einsum, xs, kept | dict(found.sizes)


programs.routes.append(routed)  # a call signature with a DTensor in it: its program is a runner
