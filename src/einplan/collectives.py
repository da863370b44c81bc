"""What crosses ranks: the one ``torch.distributed`` collective of a call on DTensors, as the
generated code on a mesh calls it (``collectives.all_gather_reduce(t2, 'max', group, 2)``).

Each combine takes this rank's result of the local plan, never a shard of an operand or of the
product, and returns the combined result on every rank; the ones that carry gradients are
autograd functions (checked against one process in ``tests/test_distributed.py``):

- :func:`all_reduce_sum`: one ``all_reduce`` SUM; backward: each rank's part gets ``g``;
- :func:`all_gather_reduce`: max / min / logsumexp by one ``all_gather`` and torch's own
  ``amax`` / ``amin`` / ``logsumexp`` over the ranks (gloo's MAX drops a NaN held by another rank,
  torch's reducer does not);
- :func:`all_gather_arg`: argmax / argmin by one ``all_gather`` of each rank's (extreme, global
  flat index): a NaN wins, then the extreme, then the smallest flat index, as in torch;
- :func:`no_rows`: what a rank that holds none of the sharded axis's rows contributes (the
  reducer's identity).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

SUMMED = ("sum", "mean")  # combined by one all_reduce SUM
TORCH_REDUCERS = {"max": torch.amax, "min": torch.amin, "logsumexp": torch.logsumexp}


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
        result = TORCH_REDUCERS[reducer](stacked, 0)
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


def all_reduce_sum(part: torch.Tensor, group) -> torch.Tensor:
    """The sum over the ranks of each rank's ``part``: one all_reduce SUM."""
    return Summed.apply(part, group)


def all_gather_reduce(part: torch.Tensor, reducer: str, group, world: int) -> torch.Tensor:
    """``reducer`` (max, min, logsumexp) over the ranks of each rank's ``part``: one all_gather."""
    return Gathered.apply(part, reducer, group, world)


def all_gather_arg(values, indices, reducer: str, extent: tuple, sharded: int, offset: int, group, world: int):
    """argmax / argmin over the ranks: ``values`` this rank's extreme, ``indices`` its index tensor
    (or one per axis of ``extent``, the clause's global sizes; the ``sharded`` one counts from this
    rank's first row, ``offset``); one all_gather of both as bytes, then torch's rule: a NaN wins,
    then the extreme, then the smallest flat index.  A rank with no rows passes ``indices=None``."""
    shape = values.shape
    flat = torch.zeros(shape, dtype=torch.int64, device=values.device)
    if indices is None:  # no rows here: a flat index no rank's tie can lose to
        flat.fill_(torch.iinfo(torch.int64).max)
    else:
        for position, (index, size) in enumerate(zip(indices if isinstance(indices, tuple) else (indices,), extent, strict=True)):
            flat = flat * size + (index + offset if position == sharded else index)
    value_bytes = values.contiguous().reshape(-1).view(torch.uint8)
    payload = torch.cat([value_bytes, flat.reshape(-1).view(torch.uint8)])
    parts = [torch.empty_like(payload) for _ in range(world)]
    dist.all_gather(parts, payload, group=group)
    split = value_bytes.numel()
    every = torch.stack([p[:split].view(values.dtype).reshape(shape) for p in parts])
    flats = torch.stack([p[split:].view(torch.int64).reshape(shape) for p in parts])
    best = every.amax(0) if reducer == "argmax" else every.amin(0)
    wins = (every == best) | (torch.isnan(every) & torch.isnan(best))
    chosen = torch.where(wins, flats, torch.iinfo(torch.int64).max).amin(0)
    found = []
    for size in reversed(extent):
        found.append(chosen % size)
        chosen = chosen // size
    found.reverse()
    return found[0] if len(found) == 1 else tuple(found)


def no_rows(shape: tuple, reducer: str, *inputs: torch.Tensor) -> torch.Tensor:
    """A rank with none of the sharded axis's rows: the reducer's identity, of the result's
    ``shape`` (sum 0, max -inf, ...), joined to the graph of any input that requires gradients
    (its gradient is then zeros, as a rank holding no rows contributes nothing)."""
    like = inputs[0]
    dtype = like.dtype
    if reducer in SUMMED:
        value: float | int = 0
    elif dtype.is_floating_point:
        value = float("-inf") if reducer in ("max", "logsumexp", "argmax") else float("inf")
    else:
        info = torch.iinfo(dtype)
        value = info.min if reducer in ("max", "argmax") else info.max
    identity = torch.full(shape, value, dtype=dtype, device=like.device)
    return identity + sum((x.sum() * 0 for x in inputs if x.requires_grad), torch.zeros((), dtype=dtype))
