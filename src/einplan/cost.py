"""The cost model: seconds for one step, from FLOPs, bytes moved, torch ops, device constants.

Each lowering describes a step as an :class:`Estimate` (work and traffic); a
:class:`DeviceModel` turns that into seconds.  Defaults ship for CPU and CUDA, so
CUDA plans need no GPU; ``einplan tune`` (:mod:`einplan.tuning`) measures a CPU's or a
GPU's constants and stores them in a user cache file that later runs read (see :func:`load_model`), a
GPU's under its name too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

PAGE = 4096  # bytes of a memory page


@dataclass(frozen=True)
class DeviceModel:
    kind: str  # "cpu" or "cuda"
    op_overhead: float  # seconds per torch op issued (dispatch, allocation)
    gemm_rate: float  # FLOP/s of a large float32 matmul
    gemm_half: float  # a matmul dim this long runs at half speed along it (M, N and K each)
    matrix_overhead: float  # seconds per matrix of a batched matmul
    reduce_overhead: float  # seconds per output of a reduction (short reductions cost this each)
    elementwise_rate: float  # multiply-adds per second of a broadcast multiply and sum
    bandwidth: float  # bytes per second for data out of cache
    cache_bytes: float  # working sets below this are read at cache speed
    cache_speedup: float  # how much faster cached bytes move
    # torch computes a batch of tiny matrices (M*N*K below ``loop_limit``) in a plain loop, not a
    # GEMM; its cost, on top of the memory traffic, is priced per matrix, multiply-add and output
    loop_limit: float = 0.0
    loop_matrix: float = 0.0  # seconds per matrix of that loop
    loop_fma: float = 0.0  # seconds per multiply-add in it
    loop_output: float = 0.0  # seconds per output element written
    # FLOP/s of a batched matmul whose result has one column (N = 1: a batch of matvecs or dot
    # products), which torch's batched GEMM runs far below the GEMM rate (2 cores of an AMD EPYC:
    # 3.3 GFLOP/s at 64 x 128x128 by 128x1, against 127 at 128x128 by 128x128); 0: priced as any GEMM
    column_rate: float = 0.0
    # FLOP/s of a batched matmul whose result has one row (M = 1: vectors times a batch of matrices),
    # a memory-bound pass over the matrices that the short-dim efficiency prices at a third of its
    # speed (2 cores of an AMD EPYC: 23-30 GFLOP/s at 256 x 1x64 by 64x64, priced at 8); 0: as any GEMM
    row_rate: float = 0.0
    # FLOP/s of a bfloat16 matmul (float32 accumulation), which screens max/min/argmax/argmin of a
    # large product; 0 where it is not fast (see reductions.SCREEN_MIN_SPEEDUP)
    screen_rate: float = 0.0
    # the last-level cache: working sets above ``cache_bytes`` and below this move this much faster
    # than from memory (0: no such level; measured with the CPU's cache size by tune and calibration)
    llc_bytes: float = 0.0
    llc_speedup: float = 0.0
    # an allocation this large is mapped fresh on every call and its pages faulted in anew (glibc's
    # largest mmap threshold; smaller ones are reused from the heap): seconds per 4 KiB page of it
    fresh_bytes: float = 32 * 2**20
    fresh_page: float = 0.0
    # seconds per pass of a CPU elementwise op whose tensors' strides merge into more than two
    # dims: torch runs the two innermost per pass and counts the rest itself (see
    # :func:`elementwise_passes`); a broadcast ``x[:, :, None] * y[:, None, :]`` makes one pass per row
    pass_overhead: float = 0.0
    # where the constants come from, for explain: not a constant, and not compared
    origin: str = field(default="shipped constants", compare=False)

    def breakdown(self, estimate: Estimate) -> dict[str, float]:
        """Seconds per cost term: what a step's estimate is made of."""
        bandwidth = self.bandwidth
        working_set = estimate.working_set or estimate.bytes
        if working_set <= self.cache_bytes:
            bandwidth *= self.cache_speedup
        elif working_set <= self.llc_bytes:
            bandwidth *= max(self.llc_speedup, 1.0)
        return {
            "torch ops": estimate.ops * self.op_overhead,
            "GEMM": estimate.gemm_flops / max(self.gemm_rate * estimate.gemm_efficiency, 1.0),
            "one-column GEMMs": estimate.column_flops / max(self.column_rate, 1.0),
            "one-row GEMMs": estimate.row_flops / max(self.row_rate, 1.0),
            "per-matrix overhead": estimate.matrices * self.matrix_overhead,
            "small-matrix loop": estimate.loop_matrices * self.loop_matrix
            + estimate.loop_fmas * self.loop_fma
            + estimate.loop_outputs * self.loop_output,
            "short reductions": estimate.reductions * self.reduce_overhead,
            "elementwise work": estimate.elementwise / self.elementwise_rate,
            "memory traffic": estimate.bytes / bandwidth + estimate.cached_bytes / (self.bandwidth * self.cache_speedup),
            "fresh memory": sum(a for a in estimate.allocations if a >= self.fresh_bytes) / PAGE * self.fresh_page,
            "elementwise passes": estimate.passes * self.pass_overhead,
        }

    def seconds(self, estimate: Estimate) -> float:
        return sum(self.breakdown(estimate).values())


@dataclass(frozen=True)
class Estimate:
    """What a lowering does for one step; ``DeviceModel.seconds`` prices it."""

    flops: float = 0.0  # arithmetic, for display
    bytes: float = 0.0  # memory traffic
    cached_bytes: float = 0.0  # traffic that stays in cache whatever the working set (a block's, between its ops)
    ops: float = 0.0  # torch ops issued
    gemm_flops: float = 0.0
    gemm_efficiency: float = 1.0
    column_flops: float = 0.0  # FLOPs of a batched matmul of one result column (see DeviceModel.column_rate)
    row_flops: float = 0.0  # ... and of one result row (see DeviceModel.row_rate)
    matrices: float = 0.0
    loop_matrices: float = 0.0  # a batch of tiny matrices: how many, their multiply-adds and outputs
    loop_fmas: float = 0.0
    loop_outputs: float = 0.0
    reductions: float = 0.0  # outputs of a .sum over a short trailing axis
    elementwise: float = 0.0
    terms: float = 0.0
    memory: float = 0.0  # peak extra bytes the step allocates
    # the most bytes one torch op of the step touches (0: the traffic, as for a step of one op):
    # the cache tier its traffic moves at, since a step of many small ops (unrolled terms, a
    # transposing copy) rereads what the op before it left in cache
    working_set: float = 0.0
    allocations: tuple = ()  # bytes of each tensor the step allocates on every call
    passes: float = 0.0  # passes of its elementwise ops over more than two merged dims (DeviceModel.pass_overhead)

    def gemm_eff(self, model: DeviceModel, m: int, n: int, k: int) -> Estimate:
        """Short dims starve a GEMM: each of M, N, K costs efficiency d / (d + half)."""
        half = model.gemm_half
        efficiency = 1.0
        for d in (m, n, k):
            efficiency *= max(d, 1) / (max(d, 1) + half)
        return replace(self, gemm_efficiency=efficiency)


CPU = DeviceModel(
    kind="cpu",
    op_overhead=3.0e-6,
    gemm_rate=1.0e11,
    gemm_half=4.0,
    matrix_overhead=1.0e-8,
    reduce_overhead=5.0e-9,
    elementwise_rate=5.0e9,
    bandwidth=2.0e10,
    cache_bytes=4.0e6,
    cache_speedup=4.0,
    loop_limit=400.0,
    loop_matrix=1.5e-9,
    loop_fma=4.2e-10,
    loop_output=2.7e-9,
    column_rate=3.0e9,  # 2.5-3.9 GFLOP/s measured on an AMD EPYC; batched dot products ran slower still on an Intel Xeon
    row_rate=2.0e10,  # 23-30 GFLOP/s measured on 2 cores of an AMD EPYC
    fresh_page=5.0e-7,  # a guess between bare metal (about 0.25 us a fault) and a VM's (about 1 us)
    pass_overhead=1.0e-8,  # 8-11 ns measured on 2 cores of an AMD EPYC (broadcast outer products of 2-8)
)


def _bfloat16_rate(gemm_rate: float) -> float:
    """The shipped guess of a CPU's bfloat16 matmul rate, from what torch reports of the CPU.
    Measured on 2-core machines: with AMX tiles about four times the float32 rate (495 against
    102-174 GFLOP/s); with AVX512-BF16 instructions and no AMX about twice (376-428 against
    171-196 GFLOP/s); on any other CPU it is not assumed fast, and ``einplan tune`` measures it."""
    for probe, speedup in (("_is_amx_tile_supported", 4.0), ("_is_avx512_bf16_supported", 2.2)):
        supported = getattr(torch.cpu, probe, None)
        try:
            if supported is not None and supported():
                return speedup * gemm_rate
        except RuntimeError:
            continue
    return 0.0


CPU = replace(CPU, screen_rate=_bfloat16_rate(CPU.gemm_rate))

CUDA = DeviceModel(
    kind="cuda",
    op_overhead=8.0e-6,
    gemm_rate=1.5e13,
    gemm_half=16.0,
    matrix_overhead=3.0e-9,
    reduce_overhead=2.0e-11,
    elementwise_rate=2.0e11,
    bandwidth=5.0e11,
    cache_bytes=2.0e6,
    cache_speedup=2.0,
)

DEFAULTS = {"cpu": CPU, "cuda": CUDA}
CONSTANTS = tuple(f.name for f in fields(DeviceModel) if f.name not in ("kind", "origin"))
# constants a model may hold as 0: no bfloat16 screen, no small-matrix loop kernel (a GPU's)
MAY_BE_ZERO = (
    "screen_rate",
    "loop_limit",
    "loop_matrix",
    "loop_fma",
    "loop_output",
    "column_rate",
    "row_rate",
    "llc_bytes",
    "llc_speedup",
    "fresh_page",
    "pass_overhead",
)


def elementwise_passes(sizes, strides) -> float:
    """How many passes torch's CPU loop makes over an elementwise op of these ``sizes`` (outermost
    first), whose tensors (the result and each operand) step through them by ``strides`` (one list
    per tensor, 0 where it broadcasts): adjacent dims that every tensor steps through as one merge,
    then each pass runs the two innermost and the rest are counted one pass at a time.  0 where
    they merge into two dims or fewer: one pass, priced as the op itself."""
    if 0 in sizes:
        return 0.0  # nothing to loop over
    merged: list[tuple[int, list[int]]] = []  # innermost first: (size, each tensor's stride)
    for k in reversed(range(len(sizes))):
        size, steps = sizes[k], [s[k] for s in strides]
        if size == 1:
            continue
        if merged and all(step == inner * merged[-1][0] for step, inner in zip(steps, merged[-1][1], strict=True)):
            merged[-1] = (merged[-1][0] * size, merged[-1][1])
        else:
            merged.append((size, steps))
    return float(math.prod(size for size, _ in merged[2:])) if len(merged) > 2 else 0.0


def cache_file() -> Path:
    """Where ``einplan tune`` stores measured constants."""
    root = os.environ.get("EINPLAN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "einplan"
    )
    return Path(root) / "device_models.json"


def gpu_name(device: torch.device | str) -> str | None:
    """The name of the CUDA device ``device`` is, or None where this machine has no such device
    (a CUDA plan made anywhere)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if device.index is None else device.index
    return torch.cuda.get_device_name(index) if index < torch.cuda.device_count() else None


def _entry_key(kind: str, name: str | None) -> str:
    """The cache file's key for a device: its kind, and for a GPU measured here ``cuda/<name>``."""
    return f"{kind}/{name}" if name else kind


_loaded: dict[str, DeviceModel] = {}


def stored_constants(entry) -> dict[str, float] | None:
    """An entry's constants if every one is a finite positive number (or zero, where zero means
    "none", see ``MAY_BE_ZERO``), else None."""
    if not isinstance(entry, dict):
        return None
    found = {k: float(v) for k, v in entry.items() if k in CONSTANTS}
    fine = all(math.isfinite(v) and (v > 0 or (k in MAY_BE_ZERO and v == 0)) for k, v in found.items())
    return found if found and fine else None


def _tuned_entry(stored: dict, kind: str, name: str | None):
    """The stored entry for this device: a GPU's own by its name; without the GPU here, the CUDA
    constants tuned last (on whatever GPU measured them); a CPU's by its kind."""
    entry = stored.get(_entry_key(kind, name))
    if entry is None and name is not None:
        generic = stored.get(kind)  # the CUDA constants tuned last (or unnamed): used unless another GPU's
        if isinstance(generic, dict) and generic.get("device_name") in (None, name):
            entry = generic
    return entry


def load_model(device: torch.device | str) -> DeviceModel:
    """The model for ``device``'s kind: tuned constants if stored, else the shipped ones.  Its
    ``origin`` says which."""
    kind = torch.device(device).type
    name = gpu_name(device) if kind == "cuda" else None
    key = _entry_key(kind, name)
    if key in _loaded:
        return _loaded[key]
    model = DEFAULTS.get(kind, CPU if kind != "cuda" else CUDA)
    path = cache_file()
    try:
        entry = _tuned_entry(json.loads(path.read_text()), kind, name)
        constants = stored_constants(entry)
        if constants:
            measured = entry.get("device_name")
            on = f" on {measured}" if isinstance(measured, str) and measured else ""
            model = replace(model, **constants, origin=f"constants tuned{on}, from {path}")  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    _loaded[key] = model
    return model


def save_model(model: DeviceModel, device_name: str | None = None) -> Path:
    """Store ``model``'s constants under its kind (what later plans for that kind read), and a
    GPU's also under ``cuda/<device_name>`` (what plans for that GPU read on a machine with it)."""
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    if not isinstance(stored, dict):
        stored = {}
    entry: dict = {k: getattr(model, k) for k in CONSTANTS}
    if device_name:
        entry["device_name"] = device_name
        stored[_entry_key(model.kind, device_name)] = entry
    stored[model.kind] = entry
    path.write_text(json.dumps(stored, indent=2, sort_keys=True))
    for key in [k for k in _loaded if k == model.kind or k.startswith(model.kind + "/")]:
        del _loaded[key]
    return path
