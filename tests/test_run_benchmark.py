"""benchmarks/run.py's --no-bf16-screen: W5 planned as on a CPU whose bfloat16 GEMM is not fast."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import einplan
from conftest import load_benchmark
from einplan import cost

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def test_no_bf16_screen_plans_the_float32_tiles(monkeypatch, tmp_path, shipped_cost_model):
    monkeypatch.setenv("EINPLAN_CACHE_DIR", str(tmp_path / "first"))  # restored, as the fixture clears the models
    run = load_benchmark(monkeypatch, SCRIPT, "run_benchmark")
    shapes = ((20000, 128), (20000, 128))
    cost.save_model(dataclasses.replace(cost.load_model("cpu"), screen_rate=8.0e11))  # as on a CPU with a fast bfloat16 GEMM
    assert "screened in bfloat16" in einplan.explain("m d, n d -> | max m n", *shapes)
    run.plan_without_bf16_screen()
    assert cost.load_model("cpu").screen_rate == 0.0
    assert str(tmp_path / "first") not in str(cost.cache_file())  # a cache of its own
    explained = einplan.explain("m d, n d -> | max m n", *shapes)
    assert "screened in bfloat16" not in explained and "chunked-reduction" in explained
