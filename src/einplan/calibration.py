"""Calibration on first use: the cost model's constants measured once on a machine einplan has not seen.

The shipped constants were measured on one CPU.  The first time einplan plans
for a device whose constants it has neither tuned (``einplan tune``) nor
calibrated, it measures them with the quick set of ``einplan tune``, three times
(about a second in all: one op's overhead, a few GEMMs, a copy, tiny batched
products; each constant's median is kept)
and stores them in the user cache file, keyed by the device's identity: the CPU
model and the instruction sets the planner cares about, torch's version and
its thread count (a GPU: its name and torch's version).  Later plans on that
identity read them; ``explain`` names them in its head line.

Off with ``EINPLAN_CALIBRATE=0`` in the environment or
``einplan.set_calibration(False)``: the shipped constants (or tuned ones) apply.
Only planning consults this: a call whose plan is cached never does.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from dataclasses import replace
from functools import lru_cache

import torch

from .cost import CONSTANTS, DeviceModel, cache_file, gpu_name, load_model, stored_constants
from .tuning import measure

ENVIRONMENT = "EINPLAN_CALIBRATE"
SECTION = "calibrated"  # the cache file's table of calibrated constants, by device identity
ROUNDS = 3  # quick measurements, each constant's median kept
FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")

_enabled = [True]
_lock = threading.Lock()
_models: dict[str, DeviceModel] = {}


def set_calibration(enabled: bool) -> None:
    """Turn calibration on first use on or off for this process (on by default)."""
    _enabled[0] = bool(enabled)
    _models.clear()


def calibration_enabled() -> bool:
    """On unless turned off by :func:`set_calibration` or ``EINPLAN_CALIBRATE=0`` (or false/off/no)."""
    return _enabled[0] and os.environ.get(ENVIRONMENT, "1").strip().lower() not in ("0", "false", "off", "no")


@lru_cache(maxsize=1)
def _cpu() -> str:
    """The CPU's model name and the instruction sets among ``FEATURES`` it has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return f"{model} [{' '.join(f for f in FEATURES if f in flags) or 'no listed features'}]"


def identity(device: torch.device) -> str | None:
    """What the constants of ``device`` depend on, or None where none can be measured here (a CUDA
    plan made without that GPU, a meta device)."""
    if device.type == "cpu":
        return f"cpu: {_cpu()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        name = gpu_name(device)
        return f"cuda: {name}, torch {torch.__version__}" if name else None
    return None


def model_for(device: torch.device | str) -> DeviceModel:
    """The constants a plan for ``device`` uses: tuned ones if stored; else, with calibration on,
    this device's calibrated ones (measured now if never before); else the shipped ones."""
    device = torch.device(device)
    model = load_model(device)
    if model.origin != "shipped constants" or not calibration_enabled():
        return model
    key = identity(device)
    if key is None:
        return model
    found = _models.get(key)
    if found is None:
        with _lock:
            found = _models.get(key) or _stored(key, model) or _calibrate(key, device, model)
            _models[key] = found
    return found


def _read() -> dict:
    try:
        stored = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def _stored(key: str, base: DeviceModel) -> DeviceModel | None:
    section = _read().get(SECTION)
    entry = section.get(key) if isinstance(section, dict) else None
    constants = stored_constants(entry)
    if not constants or set(constants) != set(CONSTANTS):  # stored by an einplan that measured fewer: again
        return None
    return replace(base, **constants, origin=f"calibrated on first use ({key}), from {cache_file()}")  # type: ignore[arg-type]


def _calibrate(key: str, device: torch.device, base: DeviceModel) -> DeviceModel:
    """Measure, store under ``key`` and return; the shipped constants if measuring fails."""
    start = time.perf_counter()
    try:
        runs = [measure(str(device), quick=True) for _ in range(ROUNDS)]
    except Exception:  # noqa: BLE001 - a machine we cannot time plans with the shipped constants
        return base
    # each constant's median over the rounds: one quick measurement moves by 10-30% (and more under load)
    measured = replace(runs[0], **{k: statistics.median(getattr(r, k) for r in runs) for k in CONSTANTS})
    seconds = time.perf_counter() - start
    stored = _read()
    section = stored.setdefault(SECTION, {})
    if isinstance(section, dict):
        section[key] = {k: getattr(measured, k) for k in CONSTANTS} | {"seconds": round(seconds, 3)}
        try:
            path = cache_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stored, indent=2, sort_keys=True))
        except OSError:
            pass
    return replace(measured, origin=f"calibrated on first use ({key}, {seconds:.1f} s), stored in {cache_file()}")
