"""The cost model: seconds for one step, from FLOPs, bytes moved, torch ops, device constants.

Each lowering describes a step as an :class:`Estimate` (work and traffic); a
:class:`DeviceModel` turns that into seconds.  Defaults ship for CPU and CUDA, so
CUDA plans need no GPU; ``einplan tune`` measures a CPU's or a GPU's constants and
stores them in a user cache file that later runs read (see :func:`load_model`), a
GPU's under its name too.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from .errors import EinplanError

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
            "per-matrix overhead": estimate.matrices * self.matrix_overhead,
            "small-matrix loop": estimate.loop_matrices * self.loop_matrix
            + estimate.loop_fmas * self.loop_fma
            + estimate.loop_outputs * self.loop_output,
            "short reductions": estimate.reductions * self.reduce_overhead,
            "elementwise work": estimate.elementwise / self.elementwise_rate,
            "memory traffic": estimate.bytes / bandwidth,
            "fresh memory": sum(a for a in estimate.allocations if a >= self.fresh_bytes) / PAGE * self.fresh_page,
        }

    def seconds(self, estimate: Estimate) -> float:
        return sum(self.breakdown(estimate).values())


@dataclass(frozen=True)
class Estimate:
    """What a lowering does for one step; ``DeviceModel.seconds`` prices it."""

    flops: float = 0.0  # arithmetic, for display
    bytes: float = 0.0  # memory traffic
    ops: float = 0.0  # torch ops issued
    gemm_flops: float = 0.0
    gemm_efficiency: float = 1.0
    column_flops: float = 0.0  # FLOPs of a batched matmul of one result column (see DeviceModel.column_rate)
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
    fresh_page=5.0e-7,  # a guess between bare metal (about 0.25 us a fault) and a VM's (about 1 us)
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
    "llc_bytes",
    "llc_speedup",
    "fresh_page",
)


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


# --- measuring the constants (einplan tune) ---------------------------------------------------


def _median_seconds(fn, repeat: int = 15) -> float:
    import time

    fn()
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _timer(device: str, quick: bool):
    """``timed(fn, repeat)``: the median seconds of one call, synchronised on a GPU (that one)."""
    sync = (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else (lambda: None)

    def timed(fn, repeat=15):
        def run():
            fn()
            sync()

        return _median_seconds(run, 5 if quick else repeat)

    return timed


def _gemm_constants(timed, opts, op_overhead: float, quick: bool) -> dict:
    """The GEMM rate, how it falls off for small matrices, and the cost of each matrix of a batch."""
    n = 512 if quick else 1024
    a, b = torch.randn(n, n, **opts), torch.randn(n, n, **opts)
    gemm_rate = 2 * n**3 / max(timed(lambda: a @ b) - op_overhead, 1e-9)
    small = 16
    s1, s2 = torch.randn(64, small, small, **opts), torch.randn(64, small, small, **opts)
    per_small = (timed(lambda: s1 @ s2, 50) - op_overhead) / 64
    efficiency = min(max(2 * small**3 / max(per_small, 1e-12) / gemm_rate, 1e-3), 0.999)
    per_dim = efficiency ** (1 / 3)  # the model charges d / (d + half) for each of M, N, K
    gemm_half = small * (1 - per_dim) / per_dim
    count = 1 << (14 if quick else 16)
    t1, t2 = torch.randn(count, 8, 8, **opts), torch.randn(count, 8, 8, **opts)
    eight = 2 * 8**3 / (gemm_rate * (8 / (8 + gemm_half)) ** 3)  # what the GEMM term already charges
    matrix_overhead = max((timed(lambda: torch.bmm(t1, t2)) - op_overhead) / count - eight, 1e-10)
    c1, c2 = torch.randn(64, 64, 128, **opts), torch.randn(64, 128, 1, **opts)  # 64 matvecs (a GPU's too)
    column_rate = 2 * c1.numel() / max(timed(lambda: torch.bmm(c1, c2)) - op_overhead - 64 * matrix_overhead, 1e-9)
    return {"gemm_rate": gemm_rate, "gemm_half": gemm_half, "matrix_overhead": matrix_overhead, "column_rate": column_rate}


def _loop_constants(timed, opts, op_overhead: float, base: DeviceModel) -> dict:
    """Tiny matrices (torch's loop kernel), few enough to stay in cache: per matrix, FMA, output."""
    loop = {}
    few = 4096
    for shape in ((1, 1, 1), (1, 1, 33), (6, 6, 1)) if base.loop_limit else ():
        m_, n_, k_ = shape
        l1, l2 = torch.randn(few, m_, k_, **opts), torch.randn(few, k_, n_, **opts)
        loop[shape] = (timed(lambda: torch.bmm(l1, l2), 50) - op_overhead) / few
    if not loop:
        return {"loop_fma": base.loop_fma, "loop_output": base.loop_output, "loop_matrix": base.loop_matrix}
    loop_fma = max((loop[1, 1, 33] - loop[1, 1, 1]) / 32, 1e-12)
    loop_output = max((loop[6, 6, 1] - loop[1, 1, 1] - 35 * loop_fma) / 35, 1e-12)
    return {"loop_fma": loop_fma, "loop_output": loop_output, "loop_matrix": max(loop[1, 1, 1] - loop_fma - loop_output, 1e-12)}


def last_level_cache(default: float) -> float:
    """The size in bytes of this CPU's largest cache (Linux: sysfs), else ``default``."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if scale != 1 else text
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return float(max(sizes)) if sizes else default


def _memory_constants(timed, opts, op_overhead: float, quick: bool) -> dict:
    """Bandwidth, the speed-up in cache, and the rates of long and short reductions."""
    big = 1 << (22 if quick else 24)
    x, y = torch.randn(big, **opts), torch.randn(big, **opts)
    bandwidth = 3 * big * 4 / max(timed(lambda: x * y) - op_overhead, 1e-9)
    cached = 1 << 14
    u, v = x[:cached].clone(), y[:cached].clone()
    cache_speedup = max(1.0, 3 * cached * 4 / max(timed(lambda: u * v, 100) - op_overhead, 1e-9) / bandwidth)
    llc_bytes = last_level_cache(0.0)
    llc_speedup = 0.0
    if llc_bytes > 2 * 3 * 4 * cached:  # three arrays in half the last-level cache, beyond the first level
        inside = min(big, int(llc_bytes) // (2 * 3 * 4))
        p, q = x[:inside].clone(), y[:inside].clone()
        llc_speedup = max(1.0, 3 * inside * 4 / max(timed(lambda: p * q, 20) - op_overhead, 1e-9) / bandwidth)
    # in cache, a long reduction prices the multiply-add per element ...
    m, w = u.reshape(-1, 256), v.reshape(-1, 256)
    elementwise_time = timed(lambda: (m * w).sum(-1), 100) - 2 * op_overhead
    elementwise_rate = m.numel() / max(elementwise_time, m.numel() / 1e12)
    # ... and a short one its cost per output
    short = x[: big // 4].reshape(-1, 4)
    short_time = timed(lambda: short.sum(-1)) - op_overhead - short.numel() * 4 / bandwidth
    return {
        "bandwidth": bandwidth,
        "cache_speedup": cache_speedup,
        "llc_bytes": llc_bytes if llc_speedup else 0.0,
        "llc_speedup": llc_speedup,
        "elementwise_rate": elementwise_rate,
        "reduce_overhead": max(short_time / short.shape[0], 1e-12),
    }


def _fresh_page(timed, opts) -> float:
    """Seconds per page of an allocation above the fresh threshold: filling a new one against
    filling one kept (their difference is the faults of mapping it anew)."""
    n = int(1.5 * DeviceModel.fresh_bytes) // 4
    kept = torch.empty(n, **opts)
    difference = timed(lambda: torch.empty(n, **opts).fill_(1.0), 5) - timed(lambda: kept.fill_(1.0), 5)
    return max(difference, 0.0) / (n * 4 / PAGE)


def measure(device: str = "cpu", quick: bool = False) -> DeviceModel:
    """Measure this machine's constants with a handful of small torch kernels (on a CPU or a CUDA
    device: only they run kernels whose time means something)."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise EinplanError(f"cannot measure device {device!r}: not a torch device") from None
    if kind not in DEFAULTS:
        raise EinplanError(f"einplan tune measures a cpu or cuda device, not {kind!r} (its kernels do no timed work)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise EinplanError("einplan tune --device cuda needs a CUDA device, and this machine has none")
    if kind == "cuda" and gpu_name(device) is None:
        raise EinplanError(f"cannot measure {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    base = DEFAULTS[kind]
    timed = _timer(device, quick)
    opts: dict = {"device": device, "dtype": torch.float32}
    one = torch.ones(1, **opts)
    op_overhead = timed(lambda: one * one, 200)
    constants = _gemm_constants(timed, opts, op_overhead, quick)
    constants.update(_loop_constants(timed, opts, op_overhead, base))
    constants.update(_memory_constants(timed, opts, op_overhead, quick))
    screen_rate = 0.0
    if kind == "cpu":  # fresh pages (CUDA's caching allocator reuses its blocks); a screen's bfloat16 GEMM
        constants["fresh_page"] = _fresh_page(timed, opts)
        h1, h2 = torch.randn(2048, 128).bfloat16(), torch.randn(128, 1024).bfloat16()
        screen_rate = 2 * 2048 * 1024 * 128 / max(timed(lambda: h1 @ h2) - op_overhead, 1e-9)
    return replace(base, op_overhead=op_overhead, screen_rate=screen_rate, **constants)


def tune(device: str = "cpu", quick: bool = False) -> tuple[DeviceModel, Path]:
    """Measure the constants for ``device`` and store them for later runs (a GPU's under its name too)."""
    model = measure(device, quick)
    name = gpu_name(device)
    path = save_model(model, name)
    on = f" on {name}" if name else ""
    return replace(model, origin=f"constants tuned{on}, from {path}"), path
