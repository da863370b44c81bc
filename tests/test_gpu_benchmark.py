"""benchmarks/gpu.py's smoke run: tiny sizes on the CPU, einplan's fused kernels in Triton's
interpreter; every row of the GPU table runs and the table prints, without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"

# the rows issue 15 asks for, by the names the table prints
ROWS = (
    "einplan.bl",
    "einplan.bl lowering=fused",
    "torch.bmm(a, b)",
    "seed 002: written-out",
    "seed 002: (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)",
    "torch.compile(einplan.bl)",
    "torch.compile(torch.bmm)",
    "torch.compile(seed 002 written-out)",
    "torch.compile(seed 002 unsqueeze-sum)",
    "memory-bandwidth bound (bytes in+out / copy bandwidth)",
    "one kernel moving the same bytes: a + b",
    "torch.max(A @ B.T)",
    "torch.unravel_index(torch.argmax(A @ B.T))",
    "GEMM alone: A @ B.T (same precision)",
    "torch.logsumexp(Q @ K.T, -1)",
    "GEMM alone: Q @ K.T (same precision)",
    "the three GEMMs alone (Q @ K.T, S @ K, S.T @ Q)",
)
CASES = ("W4 B=64, 2x2", "W4 B=64, 3x3", "W4 B=64, 4x4", "W5 P5a max", "W5 P5b argmax", "W6 P6 logsumexp", "W7 contrastive")

pytest.importorskip("triton", reason="the smoke run's fused rows need triton (Triton's interpreter)")


def run_smoke(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1", "EINPLAN_CACHE_DIR": str(tmp_path / "cache")}  # the shipped constants
    command = [sys.executable, str(SCRIPT), "--smoke", "--no-tune", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_smoke_run_prints_every_row_and_target(tmp_path):
    out_json = tmp_path / "results_gpu.json"
    proc = run_smoke(tmp_path, "--out", str(out_json))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    table = proc.stdout
    assert table.startswith("GPU: cpu (--smoke")
    for name in ROWS:
        assert f"   {name} " in table, f"row {name!r} missing from the table"
    for case in CASES:
        assert f"-- {case}" in table, f"case {case!r} missing"
    assert " -> met" in table or " -> not met" in table
    assert "einplan tune --device cuda: skipped (--no-tune)" in table

    results = json.loads(out_json.read_text())
    assert results["smoke"] is True and results["float32_matmul_precision"] == "highest"
    assert {c["workload"] for c in results["cases"]} == {"W4", "W5", "W6", "W7"}
    for case in results["cases"]:
        assert case["targets"], case["case"]
        for row in case["rows"]:
            assert row["name"] in table
            # only the compiled rows are left out of a smoke run; every other row checked and timed
            assert row["status"] == "ok" or row["status"] == "n/a (not compiled: --smoke)", (case["case"], row)
        for target in case["targets"]:
            if sys.platform == "linux" or "memory" not in target["text"]:  # the smoke run reads /proc for memory
                assert target["met"] is not None, (case["case"], target)


def _gpu_module(monkeypatch):
    """benchmarks/gpu.py as a module."""
    return load_benchmark(monkeypatch, SCRIPT, "einplan_gpu_benchmark")


def test_refuses_in_one_line_without_the_interpreter_or_a_gpu(monkeypatch, capsys):
    import torch

    gpu = _gpu_module(monkeypatch)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert gpu.main(["--smoke", "--no-tune"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "TRITON_INTERPRET=1" in err
    if not torch.cuda.is_available():
        assert gpu.main(["--no-tune"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and "needs a CUDA GPU" in err
