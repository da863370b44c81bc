"""Operands that are DTensors on a 1-D device mesh: einplan's own plan on each rank's shard, then at
most one ``torch.distributed`` collective.

A call whose operands are ``torch.distributed.tensor.DTensor`` s gets a call signature of its own
(the operand's class is part of it, see :data:`einplan.programs.metadata`), and its program is the
:func:`runner` made here.  The runner reads each operand's placement on its mesh and finds the one
sharded axis (:func:`einplan.placements.route`), then compiles the route as the function this rank
runs (:mod:`einplan.mesh_code`; :func:`code` shows it), once per mesh, placements and global
shapes.  What that function does on every call:

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

Nothing else crosses ranks (:mod:`einplan.collectives`): never a shard of an operand, never a
part of the product.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace

import torch

from . import collectives, mesh_code, programs
from .errors import EinplanError
from .placements import Route, api, check_operands, describe, is_distributed, route
from .plan import Options
from .runtime import bl as local_bl
from .runtime import einsum as local_einsum
from .source import compile_source

# --- running ------------------------------------------------------------------------------------------


def local_tensors(route: Route, tensors) -> list[torch.Tensor]:
    """Each rank's operands, as its function reads them: its shard, or a replicated operand
    narrowed to this rank's rows (for ``explain``, which plans this rank's call on them)."""
    result = []
    for t, dims in zip(tensors, route.narrow, strict=True):
        x = t.to_local()
        for d in dims:
            x = x.narrow(d, route.offset, route.length)
        result.append(x)
    return result


def names() -> dict:
    """What a rank's generated function names besides torch: einplan's own ``bl`` and ``einsum``
    (its local plan), the combines, and DTensor's classes."""
    tensor_api = api()
    return {
        "einplan": SimpleNamespace(bl=local_bl, einsum=local_einsum),
        "collectives": collectives,
        "DTensor": tensor_api.DTensor,
        "Shard": tensor_api.Shard,
        "Replicate": tensor_api.Replicate,
        "Partial": tensor_api.Partial,
    }


def function_of(found: Route) -> Callable:
    """The route as the function this rank runs: its generated source, compiled."""
    return compile_source(mesh_code.render(found), mesh_code.FUNCTION_NAME, names())


def found_route(pattern: str, tensors, sizes: tuple, einsum: bool, lowering=None, memory_limit=None, replicate: bool = False) -> Route:
    """The route of these operands, with the options its local call passes on."""
    options = (("lowering", lowering), ("memory_limit", memory_limit))
    return replace(route(pattern, tensors, sizes, einsum), replicate=replicate, options=options)


def runner(pattern: str, sizes: tuple, einsum: bool, lowering=None, memory_limit=None, replicate: bool = False) -> Callable:
    """The function of a DTensor call signature: per mesh, placements and global shapes (each
    rank's rows follow from them), the route's generated function, made once, then called."""
    functions: dict = {}

    def run(*tensors):
        check_operands(tensors)
        key = tuple((t.device_mesh, t.placements, t.shape) for t in tensors)
        function = functions.get(key)
        if function is None:
            found = found_route(pattern, tensors, sizes, einsum, lowering, memory_limit, replicate)
            function = functions[key] = function_of(found)
        return function(*tensors)

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
    found = found_route(pattern, tensors, sizes, einsum, options.get("lowering"), options.get("memory_limit"))
    xs = [x.detach() for x in local_tensors(found, tensors)]
    kept = {k: v for k, v in options.items() if k in PLAN_OPTIONS}
    head = describe(found, tensors[0].device_mesh) + "\nthis rank's function:\n" + mesh_code.render(found)
    return head, found.local, found.einsum, xs, kept | dict(found.sizes)


def code(
    pattern: str,
    *tensors,
    einsum: bool = False,
    replicate: bool = False,
    lowering: str | None = None,
    memory_limit: int | None = None,
    **sizes,
) -> str:
    """The function this rank runs for ``pattern`` on these DTensors, as ``bl`` runs it: each
    operand's local tensor, this rank's plan (``einplan.bl`` on them), the one collective (if any),
    the result with its placement."""
    programs.check_call(tuple(sizes.items()), memory_limit)
    return mesh_code.render(found_route(pattern, tensors, tuple(sizes.items()), einsum, lowering, memory_limit, replicate))


programs.routes.append(routed)  # a call signature with a DTensor in it: its program is a runner
