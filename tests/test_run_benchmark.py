"""benchmarks/run.py's --no-bf16-screen: W5 planned as on a CPU whose bfloat16 GEMM is not fast."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import einplan
from einplan import cost

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def load_run():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("run_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_no_bf16_screen_plans_the_float32_tiles(monkeypatch, tmp_path):
    monkeypatch.setenv("EINPLAN_CACHE_DIR", str(tmp_path / "first"))
    run = load_run()
    shapes = ((20000, 128), (20000, 128))
    cost.save_model(dataclasses.replace(cost.load_model("cpu"), screen_rate=8.0e11))  # as on a CPU with a fast bfloat16 GEMM
    assert "screened in bfloat16" in einplan.explain("m d, n d -> | max m n", *shapes)
    try:
        run.plan_without_bf16_screen()
        assert cost.load_model("cpu").screen_rate == 0.0
        assert str(tmp_path / "first") not in str(cost.cache_file())  # a cache of its own
        explained = einplan.explain("m d, n d -> | max m n", *shapes)
        assert "screened in bfloat16" not in explained and "chunked-reduction" in explained
    finally:
        monkeypatch.delenv("EINPLAN_CACHE_DIR")
        cost._loaded.clear()
