"""How a chunked step is cut: the axis, the rows per chunk, tiles of a second axis, the mode.

``price`` decides it and what it costs from shapes alone, before any code
exists; ``chunks`` then writes it as one loop per cut axis.  A step is chunked
when its intermediate would exceed ``memory_limit``, or when a clause follows it
and the intermediate exceeds one chunk's budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .clauses import ARG_REDUCERS, MERGE_CALLS, WHOLE_ONLY
from .contraction import Context, Contraction
from .cost import Estimate
from .lowerings import MATMUL, REGISTRY, MatmulBroadcast, choose

CHUNK_BYTES = 8 * 2**20  # default budget of one chunk (buffer plus the reduction's temporaries)
# a chunk that max/min/argmax/argmin read once, straight from matmul's reused out= buffer, may be
# larger: a taller GEMM runs faster, and no chunk-sized temporary is allocated per chunk (bigger
# temporaries than ~32 MiB are mapped afresh from the OS each time, page faults included)
ONE_PASS_CHUNK_BYTES = 32 * 2**20
ONE_PASS = ("max", "min", "argmax", "argmin")
# a one-pass clause over a whole product (``m d, n d -> | max m n``) runs in tiles of rows by
# TILE_COLUMNS columns (a chunk's budget each) instead of full-width rows: the GEMM's output is read
# back while it is still in cache, and a tile's clause costs a few small ops.  Measured at
# M = N = 20000, D = 128 (interleaved): max 607 ms, argmax 625 ms in 2048 x 1024 tiles, against
# 734 ms and 761 ms in 419-row chunks
TILE_COLUMNS = 1024
# a max/min/logsumexp over the columns of a 2-D product that keeps its rows (``q d, k d -> q |
# logsumexp k``) runs over chunks of rows, each reduced across tiles of TILE_WIDTH columns with a
# running max/min/log-add per row, so that the GEMM's output and the chunk's rows of the left
# operand stay in a core's cache.  Measured at q = k = 20000, d = 64 (interleaved): logsumexp in
# 512 x 512 tiles 656 ms, 1024 x 256 684 ms, against 971 ms in full-width 52-row chunks
ROW_TILE_BYTES = 2 * 2**20  # a tile's budget (the GEMM's output plus the clause's temporaries)
TILE_WIDTH = 512
DEFAULT_MEMORY_LIMIT = 256 * 2**20  # a step whose intermediate is larger is computed in chunks
TEMPORARIES = {"logsumexp": 2.0, "mean": 1.0, "sum": 1.0, "max": 1.0, "min": 1.0, "argmax": 1.0, "argmin": 1.0}
TEMPORARIES.update(dict.fromkeys(WHOLE_ONLY, 1.0))
# a chunk's backward holds its recomputed product, the weights made from it and a mask or an
# exp beside them: chunks of rows are priced with this many more chunk-sized temporaries
BACKWARD_TEMPORARIES = 2.0
GRAD_FLAG = "grad"  # True when autograd is recording: matmul must not write into the buffer then


@dataclass(frozen=True)
class Job:
    """The last contraction of a plan and the clauses after it, to be computed in chunks."""

    step: Contraction
    clauses: tuple
    output_axes: tuple[str, ...]
    inputs: tuple[str, ...]  # the kernel's parameters (x0, x1, ...): the grad flag reads them
    device: torch.device


@dataclass(frozen=True)
class Chunking:
    """How a step is cut, decided and priced before any code exists.

    ``step`` is the job's contraction with the chunked axis ranked first; each
    chunk is ``inner`` of it.  ``column``/``width``: tiles across a second axis.
    """

    axis: str
    mode: str  # "output": write slices; "reduce": combine the first clause; "sum": add partial sums
    style: str  # rows / row-tiles / running / running-arg / partial-sums
    step: Contraction
    inner: str
    full: Estimate  # the whole contraction's estimate, lowered by ``inner``
    rows: int
    per_row: float  # bytes per row of a chunk (of a tile, when tiled)
    buffered: bool  # the chunk's matmul writes into one reused buffer
    column: str | None = None
    width: int = 0
    budget: int = CHUNK_BYTES

    @property
    def total(self) -> int:
        return self.step.sizes[self.axis]

    @property
    def cuts_rows(self) -> bool:
        """Whether the rows are cut at all (tiles may cover every row in one pass)."""
        return self.rows < self.total

    @property
    def grid(self) -> tuple[int, int]:
        """How many chunks of rows, and how many tiles across each (1 when not tiled)."""
        columns = math.ceil(self.step.sizes[self.column] / self.width) if self.column is not None else 1
        return max(1, math.ceil(self.total / self.rows)), max(1, columns)

    def estimate(self, clauses) -> Estimate:
        """The full step's estimate, with one set of ops per chunk (tile) and one chunk's memory."""
        chunks = math.prod(self.grid)
        ops = self.full.ops * chunks + 2 * len(clauses) * chunks
        output = self.step.numel(self.step.kept) * self.step.dtype.itemsize if self.mode == "output" else 0
        # one chunk's temporaries, reused from the heap; the result, when its slices are written
        return replace(self.full, ops=ops, memory=self.rows * self.per_row, allocations=(output,) if output else ())

    def describe(self) -> str:
        if self.column is None:
            return f"in chunks of {self.rows} along {self.axis}"
        return f"in tiles of {self.rows} along {self.axis} by {self.width} along {self.column}"


# --- pricing: how to cut ---------------------------------------------------------------------


def _chunk_axis(job: Job, budget: int) -> tuple[str, str] | None:
    """The axis to cut into chunks and the mode, or None when there is no axis to cut.

    An output axis first, unless one of its rows alone would exceed ``budget`` while a clause
    follows and the product has more axes than row tiles cut (``b m d, b n d -> b | max m n``
    with a small batch): then a clause's axis, whose chunks fold into a running result of every
    output row at once."""
    step, sizes = job.step, job.step.sizes
    union = step.union
    outputs = [x for x in job.output_axes if x in union and sizes[x] > 1]
    if outputs:
        axis = max(outputs, key=lambda x: sizes[x])
        one_row = step.numel(step.kept) // max(sizes[axis], 1) * step.dtype.itemsize
        if not job.clauses or one_row <= budget or len(step.kept) <= 2 or job.clauses[0][0] in WHOLE_ONLY:
            return axis, "output"  # a 2-D product's rows go in tiles; prod/any/all have no running form
    if job.clauses and job.clauses[0][0] in WHOLE_ONLY:
        return None
    if job.clauses:
        reducer, ids = job.clauses[0]
        if reducer in ARG_REDUCERS:
            return ids[0], "reduce"
        return max(ids, key=lambda x: sizes[x]), "reduce"
    if step.summed:
        return max(step.summed, key=lambda x: sizes[x]), "sum"
    everything = [x for x in union if x in job.output_axes]
    return (everything[0], "output") if everything else None


def _style(mode: str, clauses) -> str:
    if mode == "output":
        return "rows"
    if mode == "sum":
        return "partial-sums"
    return "running-arg" if clauses[0][0] in ARG_REDUCERS else "running"


def _whole_product_tiles(job: Job, chunk: Contraction, axes, context: Context, budget: int) -> tuple[str | None, int]:
    """Tiles of a one-pass clause over the whole 2-D product (``| max m n``) on a CPU, if it is
    wider than a tile; a tile is TILE_COLUMNS wide, or narrower when one row would not fit ``budget``."""
    reducer, ids = job.clauses[0]
    if reducer not in ONE_PASS or context.model.kind != "cpu":  # a GPU's GEMM wants the taller chunk
        return None, 0
    width = int(max(1, min(TILE_COLUMNS, budget // chunk.dtype.itemsize)))
    if len(axes) != 2 or set(axes) != set(ids) or chunk.sizes[axes[1]] <= width:
        return None, 0
    return axes[1], width


def _row_tiles(job: Job, axes, context: Context) -> str | None:
    """The column axis when one max/min/logsumexp reduces the columns of a 2-D product that keeps
    its rows (``q d, k d -> q | logsumexp k``), on a CPU, in eager code."""
    if context.model.kind != "cpu" or context.options.compiled or len(job.clauses) != 1:
        return None
    reducer, ids = job.clauses[0]
    if reducer not in MERGE_CALLS or len(ids) != 1 or not job.step.dtype.is_floating_point:
        return None
    return ids[0] if tuple(axes) == (axes[0], ids[0]) and job.step.sizes[ids[0]] > TILE_WIDTH else None


def price(job: Job, context: Context, budget: int) -> Chunking | None:
    """How to cut ``job`` (None when chunks make no sense: an empty step costs nothing in full,
    and a loop that never runs would leave its result cut off from autograd)."""
    step = job.step
    if step.numel(step.union) == 0:
        return None
    choice = _chunk_axis(job, budget)
    if choice is None:
        return None
    axis, mode = choice
    style = _style(mode, job.clauses)
    chunk = replace(step, rank=lambda x: (-1, 0) if x == axis else step.rank(x))
    options = context.options
    forced = options.lowering if options.lowering in REGISTRY else None
    inner, full, _ = choose(chunk, Context(context.names, replace(options, lowering=forced), context.model))
    axes = REGISTRY[inner].result_axes(chunk)
    matmul = REGISTRY[MATMUL]
    direct = inner == MATMUL and isinstance(matmul, MatmulBroadcast) and matmul.writes_out(chunk)
    plain = direct and axes[0] == axis  # chunks of the buffer's leading axis: tiles may cut a second one
    # out= buffers are for eager code (each chunk's product reuses one, so no two are alive at once):
    # under torch.compile the compiler allocates, and a sliced buffer is a non-contiguous out= it refuses
    buffered = direct and not options.compiled
    column, width = None, 0
    if mode == "reduce" and plain:
        column, width = _whole_product_tiles(job, chunk, axes, context, budget)
        if column is None and job.clauses[0][0] in ONE_PASS and not options.grad:  # a backward holds more than one chunk
            budget = max(budget, min(options.memory_limit or DEFAULT_MEMORY_LIMIT, ONE_PASS_CHUNK_BYTES))
    elif style == "rows" and plain and _row_tiles(job, axes, context) is not None:
        style, budget = "row-tiles", min(budget, ROW_TILE_BYTES)
        column = job.clauses[0][1][0]
        width = int(max(1, min(TILE_WIDTH, budget // (step.dtype.itemsize * TEMPORARIES[job.clauses[0][0]]))))
    factor = max((TEMPORARIES[r] for r, _ in job.clauses), default=1.0)
    total = step.sizes[axis]
    if options.grad and style != "row-tiles":  # row tiles are small enough already
        factor += BACKWARD_TEMPORARIES
    if column is not None:
        per_row = width * step.dtype.itemsize * factor
    else:
        per_row = max(full.memory / max(total, 1), step.dtype.itemsize) * factor
    rows = int(max(1, min(total, budget // per_row))) if total else 1
    if column is None and rows >= total:
        if total < 2:
            return None  # one chunk would be a loop that runs once
        rows = math.ceil(total / 2)
    chunking = Chunking(axis, mode, style, chunk, inner, full, rows, per_row, buffered, column, width, budget)
    return chunking if REGISTRY[inner].price(chunk_step(chunking), context) is not None else None


def chunk_step(chunking: Chunking) -> Contraction:
    """The contraction one chunk (tile) computes: the cut axes sized by a chunk, their sizes free."""
    sizes = dict(chunking.step.sizes)
    free = set()
    if chunking.cuts_rows:
        sizes[chunking.axis] = chunking.rows
        free.add(chunking.axis)
    if chunking.column is not None:
        sizes[chunking.column] = chunking.width
        free.add(chunking.column)
    return replace(chunking.step, sizes=sizes, free=frozenset(free))


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"
