"""Calibration on first use: which constants a plan uses, where they are stored, how to turn it off,
and that a cached call never consults it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import einplan
from einplan import calibration, cost, tuning
from einplan.runtime import plan_for

pytestmark = pytest.mark.usefixtures("shipped_cost_model")

# a device on which a GEMM is slow: the matmul lowering loses where the shipped constants pick it
SLOW_GEMM = replace(cost.CPU, gemm_rate=1e6, origin="measured")
SHAPES = ((64, 500), (1000, 500))
PATTERN = "b n, m n -> b m"


@pytest.fixture
def calibrating(monkeypatch):
    """Calibration on (as outside the tests), with a measurement that is counted and returns SLOW_GEMM."""
    monkeypatch.setenv("EINPLAN_CALIBRATE", "1")
    calls = []

    def measure(device, quick=False):
        calls.append((device, quick))
        return SLOW_GEMM

    monkeypatch.setattr(calibration, "measure", measure)
    einplan.clear_cache()
    yield calls
    einplan.clear_cache()


def kinds(*shapes):
    return [s.kind for s in plan_for(PATTERN, *shapes).steps]


def test_the_first_plan_measures_and_stores_by_identity(calibrating, tmp_path):
    assert kinds(*SHAPES) == ["elementwise-sum"]  # the slow GEMM's constants chose
    assert len(calibrating) == calibration.ROUNDS and all(quick for _, quick in calibrating)
    stored = json.loads((tmp_path / "device_models.json").read_text())[calibration.SECTION]
    key = calibration.identity(torch.device("cpu"))
    assert list(stored) == [key] and stored[key]["gemm_rate"] == 1e6
    assert f"torch {torch.__version__}" in key and f"{torch.get_num_threads()} threads" in key
    assert "calibrated on first use" in einplan.explain(PATTERN, *SHAPES).splitlines()[3]
    kinds((3, 4), (5, 4))
    assert len(calibrating) == calibration.ROUNDS  # measured once


def test_a_new_process_reads_the_stored_constants(calibrating):
    kinds(*SHAPES)
    calibration.set_calibration(True)  # forget the calibrated models, as a new process would
    assert kinds(*SHAPES) == ["elementwise-sum"]
    assert len(calibrating) == calibration.ROUNDS
    assert "from " in plan_for(PATTERN, *SHAPES).model.origin


def test_another_thread_count_is_another_identity(calibrating):
    threads = torch.get_num_threads()
    kinds(*SHAPES)
    try:
        torch.set_num_threads(threads + 1)
        kinds((7, 4), (9, 4))
    finally:
        torch.set_num_threads(threads)
    assert len(calibrating) == 2 * calibration.ROUNDS


@pytest.mark.parametrize("switch", ["environment", "option"])
def test_off_switches_plan_with_the_shipped_constants(calibrating, monkeypatch, switch):
    if switch == "environment":
        monkeypatch.setenv("EINPLAN_CALIBRATE", "0")
    else:
        einplan.set_calibration(False)
    assert kinds(*SHAPES) == ["matmul-broadcast"]
    assert not calibrating
    assert plan_for(PATTERN, *SHAPES).model.origin == "shipped constants"


def test_tuned_constants_come_first(calibrating):
    cost.save_model(replace(cost.CPU, gemm_rate=1e15))
    model = plan_for(PATTERN, *SHAPES).model
    assert not calibrating and model.gemm_rate == 1e15 and "tuned" in model.origin


def test_a_cached_call_never_consults_it(calibrating, monkeypatch):
    x, w = torch.randn(*SHAPES[0]), torch.randn(*SHAPES[1])
    first = einplan.bl(PATTERN, x, w)

    def refuse(*args, **kwargs):
        raise AssertionError("a cached call planned again")

    for module in (einplan.programs, einplan.plan):  # where planning asks for the constants
        monkeypatch.setattr(module, "model_for", refuse)
    monkeypatch.setattr(calibration, "measure", refuse)
    for _ in range(3):
        torch.testing.assert_close(einplan.bl(PATTERN, x, w), first)
    einplan.clear_cache()
    with pytest.raises(AssertionError, match="planned again"):  # the check itself can fail
        einplan.bl(PATTERN, x, w)


def test_a_failed_measurement_keeps_the_shipped_constants(calibrating, monkeypatch):
    def broken(device, quick=False):
        raise RuntimeError("no timer here")

    monkeypatch.setattr(calibration, "measure", broken)
    assert plan_for(PATTERN, *SHAPES).model.origin == "shipped constants"


def test_no_identity_without_the_device():
    assert calibration.identity(torch.device("meta")) is None
    if not torch.cuda.is_available():
        assert calibration.identity(torch.device("cuda")) is None  # a CUDA plan made anywhere: shipped constants


def test_constants_stored_by_an_einplan_that_measured_fewer_are_measured_again(calibrating, tmp_path):
    """A cache entry without a constant this einplan measures (``column_rate``, added later) would
    plan that constant with the shipped guess for good: it is calibrated anew instead."""
    kinds(*SHAPES)
    path = tmp_path / "device_models.json"
    stored = json.loads(path.read_text())
    (entry,) = stored[calibration.SECTION].values()
    del entry["column_rate"]
    path.write_text(json.dumps(stored))
    calibration.set_calibration(True)  # a new process
    kinds(*SHAPES)
    assert len(calibrating) == 2 * calibration.ROUNDS
    (entry,) = json.loads(path.read_text())[calibration.SECTION].values()
    assert entry["column_rate"] == SLOW_GEMM.column_rate


def test_a_real_calibration_is_quick_and_sane(tmp_path):
    """In a fresh process, as a user's first call: finite positive constants, stored, in seconds."""
    script = (
        "import time, einplan; from einplan.runtime import plan_for; t = time.perf_counter(); "
        "m = plan_for('b n, m n -> b m', (64, 500), (1000, 500)).model; "
        "print(time.perf_counter() - t); print(m.origin); print(m.gemm_rate, m.bandwidth, m.op_overhead, m.fresh_page, m.column_rate)"
    )
    env = {"EINPLAN_CACHE_DIR": str(tmp_path), "EINPLAN_CALIBRATE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    seconds, origin, constants = done.stdout.strip().splitlines()
    assert float(seconds) < 10 and "calibrated on first use" in origin
    assert all(0 < float(v) < float("inf") for v in constants.split())
    assert (tmp_path / "device_models.json").exists()


def test_the_last_level_cache_is_read_from_the_machine(tmp_path, monkeypatch):
    """tune and calibration price working sets that fit this CPU's largest cache at its measured speed."""
    for index, size in enumerate(["32K", "1024K", "32768K"]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "size").write_text(size + "\n")
    monkeypatch.setattr(tuning.glob, "glob", lambda pattern: sorted(str(p / "size") for p in tmp_path.iterdir()))
    assert tuning.last_level_cache(0.0) == 32 * 2**20
    monkeypatch.setattr(tuning.glob, "glob", lambda pattern: [])
    assert tuning.last_level_cache(0.0) == 0.0  # nothing to read: no such level


def test_a_working_set_in_the_last_level_cache_moves_at_its_speed():
    from einplan.cost import Estimate

    model = replace(cost.CPU, cache_bytes=4e6, cache_speedup=4.0, llc_bytes=32e6, llc_speedup=3.0)
    seconds = {n: model.breakdown(Estimate(bytes=n))["memory traffic"] for n in (2e6, 16e6, 64e6)}
    assert seconds[2e6] == pytest.approx(2e6 / (model.bandwidth * 4.0))
    assert seconds[16e6] == pytest.approx(16e6 / (model.bandwidth * 3.0))
    assert seconds[64e6] == pytest.approx(64e6 / model.bandwidth)
    assert cost.CPU.llc_bytes == 0.0  # the shipped constants have no such level: their plans are unchanged


def test_an_allocation_mapped_fresh_pays_for_its_pages():
    """Each allocation of at least ``fresh_bytes`` is mapped anew on every call (glibc's largest mmap
    threshold) and priced per page faulted in; smaller ones, reused from the heap, are not."""
    from einplan.cost import PAGE, Estimate

    model = replace(cost.CPU, fresh_page=1e-6)
    big, small = model.fresh_bytes, model.fresh_bytes - PAGE
    assert model.breakdown(Estimate(allocations=(big, small)))["fresh memory"] == pytest.approx(big / PAGE * 1e-6)
    assert model.breakdown(Estimate(allocations=(small, small)))["fresh memory"] == 0
    assert cost.CUDA.fresh_page == 0  # CUDA's caching allocator reuses its blocks
