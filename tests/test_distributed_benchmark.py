"""benchmarks/distributed.py --smoke: W9 on 2 gloo ranks against one process, at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_reports_time_memory_and_bytes():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), EINPLAN_CALIBRATE="0", EINPLAN_MEASURE="0")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "distributed.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["workload"] == "W9" and report["equal"] is True
    ranks = report["distributed"]["ranks"]
    assert len(ranks) == 2 and all(r["peak_mib"] > 0 and r["seconds"] > 0 for r in ranks)
    # one all_gather per call, of one float32: the rank's own maximum, never rows of A or the product
    assert all(r["collectives_per_call"] == 1 and r["bytes_sent_per_call"] == 4 for r in ranks)
    assert report["single_process_2_threads"]["seconds"] > 0
