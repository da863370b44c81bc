"""Measuring a device's cost-model constants: ``einplan tune`` and the calibration on first use.

A handful of small torch kernels (a large and a tiny GEMM, batches of tiny matrices, matvecs,
vectors times matrices, streaming multiplies, reductions, fresh pages) give each constant of a
:class:`einplan.cost.DeviceModel`; :func:`tune` stores them where :func:`einplan.cost.load_model`
reads them.
"""

from __future__ import annotations

import glob
import time
from dataclasses import replace
from pathlib import Path

import torch

from .cost import DEFAULTS, PAGE, DeviceModel, gpu_name, save_model
from .errors import EinplanError


def _median_seconds(fn, repeat: int = 15) -> float:
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
    r1, r2 = torch.randn(64, 1, 128, **opts), torch.randn(64, 128, 128, **opts)  # 64 vectors times matrices
    row_rate = 2 * r2.numel() / max(timed(lambda: torch.bmm(r1, r2)) - op_overhead - 64 * matrix_overhead, 1e-9)
    return {
        "gemm_rate": gemm_rate,
        "gemm_half": gemm_half,
        "matrix_overhead": matrix_overhead,
        "column_rate": column_rate,
        "row_rate": row_rate,
    }


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


def _pass_overhead(timed, opts, quick: bool) -> float:
    """Seconds per pass of an elementwise op over more than two merged dims (cost.elementwise_passes):
    an outer product of pairs, one pass a row, against the same output from one that merges into two."""
    rows = 1 << (15 if quick else 17)
    x, y, w = torch.randn(rows, 2, **opts), torch.randn(rows, 2, **opts), torch.randn(2, **opts)
    difference = timed(lambda: x[:, :, None] * y[:, None, :], 20) - timed(lambda: x[:, :, None] * w, 20)
    return max(difference, 0.0) / rows


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
    # fresh pages (CUDA's caching allocator reuses its blocks), elementwise passes (a CUDA kernel
    # indexes every dim itself), a screen's bfloat16 GEMM
    if kind == "cpu":
        constants["fresh_page"] = _fresh_page(timed, opts)
        constants["pass_overhead"] = _pass_overhead(timed, opts, quick)
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
