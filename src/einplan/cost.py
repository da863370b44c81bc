"""The cost model: seconds for one step, from FLOPs, bytes moved, torch ops, device constants.

Each lowering describes a step as an :class:`Estimate` (work and traffic); a
:class:`DeviceModel` turns that into seconds.  Defaults ship for CPU and CUDA;
``einplan tune`` measures the CPU's constants and stores them in a user cache
file that later runs read (see :func:`load_model`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch


@dataclass(frozen=True)
class DeviceModel:
    kind: str  # "cpu" or "cuda"
    op_overhead: float  # seconds per torch op issued (dispatch, allocation)
    gemm_rate: float  # FLOP/s of a large float32 matmul
    gemm_half: float  # matmul size (cube root of M*N*K) at which it reaches half its rate
    matrix_overhead: float  # seconds per matrix of a batched matmul
    elementwise_rate: float  # multiply-adds per second of a broadcast multiply and sum
    bandwidth: float  # bytes per second for data out of cache
    cache_bytes: float  # working sets below this are read at cache speed
    cache_speedup: float  # how much faster cached bytes move
    unroll_term: float  # seconds per written-out term (one fused vector op per element)

    def seconds(self, estimate: "Estimate") -> float:
        bandwidth = self.bandwidth
        if estimate.bytes <= self.cache_bytes:
            bandwidth *= self.cache_speedup
        return (
            estimate.ops * self.op_overhead
            + estimate.gemm_flops / max(self.gemm_rate * estimate.gemm_efficiency, 1.0)
            + estimate.matrices * self.matrix_overhead
            + estimate.elementwise / self.elementwise_rate
            + estimate.bytes / bandwidth
            + estimate.terms * self.unroll_term
        )


@dataclass(frozen=True)
class Estimate:
    """What a lowering does for one step; ``DeviceModel.seconds`` prices it."""

    flops: float = 0.0  # arithmetic, for display
    bytes: float = 0.0  # memory traffic
    ops: float = 0.0  # torch ops issued
    gemm_flops: float = 0.0
    gemm_efficiency: float = 1.0
    matrices: float = 0.0
    elementwise: float = 0.0
    terms: float = 0.0
    memory: float = 0.0  # peak extra bytes the step allocates

    def gemm_eff(self, model: DeviceModel, m: int, n: int, k: int) -> "Estimate":
        size = max(m * n * k, 1) ** (1 / 3)
        return replace(self, gemm_efficiency=size / (size + model.gemm_half))


CPU = DeviceModel(
    kind="cpu",
    op_overhead=2.5e-6,
    gemm_rate=1.0e11,
    gemm_half=12.0,
    matrix_overhead=2.0e-8,
    elementwise_rate=2.0e9,
    bandwidth=1.0e10,
    cache_bytes=4.0e6,
    cache_speedup=4.0,
    unroll_term=1.0e-6,
)

CUDA = DeviceModel(
    kind="cuda",
    op_overhead=8.0e-6,
    gemm_rate=1.5e13,
    gemm_half=48.0,
    matrix_overhead=3.0e-9,
    elementwise_rate=2.0e11,
    bandwidth=5.0e11,
    cache_bytes=2.0e6,
    cache_speedup=2.0,
    unroll_term=5.0e-6,
)

DEFAULTS = {"cpu": CPU, "cuda": CUDA}


def cache_file() -> Path:
    """Where ``einplan tune`` stores measured constants."""
    root = os.environ.get("EINPLAN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "einplan"
    )
    return Path(root) / "device_models.json"


_loaded: dict[str, DeviceModel] = {}


def load_model(device: torch.device | str) -> DeviceModel:
    """The model for ``device``'s kind: tuned constants if stored, else the defaults."""
    kind = torch.device(device).type
    if kind in _loaded:
        return _loaded[kind]
    model = DEFAULTS.get(kind, CPU if kind != "cuda" else CUDA)
    try:
        stored = json.loads(cache_file().read_text()).get(kind)
        if stored:
            fields = {k: float(v) for k, v in stored.items() if k in DeviceModel.__dataclass_fields__ and k != "kind"}
            if all(math.isfinite(v) and v > 0 for v in fields.values()):
                model = replace(model, **fields)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    _loaded[kind] = model
    return model


def save_model(model: DeviceModel) -> Path:
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    stored[model.kind] = {k: v for k, v in asdict(model).items() if k != "kind"}
    path.write_text(json.dumps(stored, indent=2, sort_keys=True))
    _loaded.pop(model.kind, None)
    return path
