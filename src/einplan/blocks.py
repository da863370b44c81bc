"""An unrolled step in blocks of a long axis: each block laid out and contracted while it is in cache.

Laid out whole, an unrolled step whose operands need transposing copies streams
the copies through memory and then rereads them, and rewrites its result, once
per term: at 262 144 matrices of 3x3 its operands, their copies and its result
fill 47 MB, more than the last-level cache of many CPUs.
In blocks along the outermost long axis, a block's copies and its slice of the
result stay in cache from the copy to the last term, so memory sees each
operand read once and the result written once; each block costs one torch op
per copy and per term.  A step whose arrays fit the last-level cache runs whole
(its rereads come from that cache, and the blocks' ops cost more than they save)::

    t0 = torch.empty((3, 3, 262144), dtype=torch.float32, device=x0.device)
    for i1 in range(0, x0.shape[0], 16384):
        v2 = x0[i1:i1 + 16384].permute(2, 1, 0).contiguous()
        v3 = x1[i1:i1 + 16384].permute(1, 2, 0).contiguous()
        t4 = torch.mul(v2[0, :, None], v3[0], out=t0[:, :, i1:i1 + 16384])
        t4.addcmul_(v2[1, :, None], v3[1])
        t4.addcmul_(v2[2, :, None], v3[2])
    return t0.permute(2, 0, 1)

The terms write the result's slices through ``out=``, which autograd does not
record: a plan for calls that autograd records (``Options.grad``) has no blocks,
and a plan with blocks says so (``Plan.grad_matters``), so that such calls take
that plan.  Blocks are for a CPU's eager code only: torch.compile fuses the
written-out form instead, and no GPU has timed them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contraction import Context, Contraction, Value
from .cost import Estimate

# a block's copies and result slice fill at most this share of the cache the cost model prices
# at cache speed (``cache_bytes``), leaving the rest to what the next block's copies read
BLOCK_SHARE = 0.5
MIN_ROWS = 32  # a block shorter than this along the long axes: each op's loop too short to be worth it


@dataclass(frozen=True)
class Blocks:
    axis: str  # the long kept axis cut into blocks
    rows: int  # its rows per block (a power of two; the last block may be shorter)
    count: int  # blocks per call
    sizes: frozenset  # the axes whose sizes ``rows`` was computed from


def blocks(step: Contraction, axis: str, laid: list[Value], kept: list[str], context: Context) -> Blocks | None:
    """How the unrolled step runs in blocks of ``axis`` (laid: the operands it copies into a new
    layout, each in its new axis order), or None when it runs whole."""
    options = context.options
    if context.model.kind != "cpu" or options.compiled or options.grad or step.free or not laid:
        return None
    arrays = step.numel(step.a.axes) + step.numel(step.b.axes) + sum(step.numel(v.axes) for v in laid) + step.numel(kept)
    if arrays * step.dtype.itemsize <= (context.model.llc_bytes or context.model.cache_bytes):
        return None  # the whole step's rereads come from the last-level cache: blocks add ops for little
    size = step.sizes[axis]
    per_row = (sum(step.numel(v.axes) for v in laid if axis in v.axes) + step.numel(kept)) // max(size, 1)
    fit = int(context.model.cache_bytes * BLOCK_SHARE) // max(per_row * step.dtype.itemsize, 1)
    rows = 1 << max(fit, 1).bit_length() - 1  # the largest power of two that fits
    vector = rows * step.numel(kept[kept.index(axis) + 1 :])  # each op's run along the long axes
    if vector < MIN_ROWS or rows >= size:
        return None
    return Blocks(axis, rows, -(-size // rows), frozenset(step.union))


def estimate(
    whole: Estimate, blocked: Blocks, streamed: float, cached: float, ops: tuple[float, float], out: int, block_memory: int
) -> Estimate:
    """The whole step's estimate (its arithmetic), in blocks: memory sees ``streamed`` bytes
    (each operand read once, the result written once) and ``cached`` bytes stay in cache (the
    copies' reads and writes, every term's traffic); ``ops``: the torch ops of each block (its
    copies and terms) and those issued once; only the result (``out`` bytes) is allocated on
    every call."""
    per_block, once = ops
    return Estimate(
        flops=whole.flops,
        bytes=streamed,
        cached_bytes=cached,
        ops=blocked.count * per_block + once,
        elementwise=whole.elementwise,
        terms=whole.terms,
        memory=out + block_memory,
        allocations=(out,),
    )
