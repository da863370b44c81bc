"""einplan on DTensors: 2 ranks on one machine (gloo), spawned here, every case against einplan in one
process on the whole tensors (tests/distributed_checks.py), and every collective einplan issued
recorded: at most one per call, carrying only per-rank results."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

HERE = Path(__file__).parent
WORLD = 2
TIMEOUT_S = 240  # a hang fails the test instead of blocking the run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(target, out: Path, *args) -> None:
    """``target(rank, WORLD, port, out, *args)`` on WORLD processes, one thread each; killed at TIMEOUT_S."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    context = mp.start_processes(target, args=(WORLD, free_port(), str(out), *args), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"the {WORLD} ranks did not finish within {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """Every case of distributed_checks.py, run once on 2 ranks: {case name: [rank 0 entry, rank 1 entry]}."""
    sys.path.insert(0, str(HERE))
    import distributed_cases

    out = tmp_path_factory.mktemp("ranks")
    spawn(distributed_cases.rank_main, out)
    by_name: dict = {}
    for rank in range(WORLD):
        for entry in json.loads((out / f"rank{rank}.json").read_text()):
            by_name.setdefault(entry["name"], []).append(entry)
    return by_name


def entries(report, prefix: str) -> list:
    found = [e for name, es in report.items() if name.startswith(prefix) for e in es]
    assert found, f"no case named {prefix}*"
    return found


def assert_ok(found) -> None:
    failed = [f"{e['name']} (rank {e['rank']}):\n{e['error']}" for e in found if not e["ok"]]
    assert not failed, "\n\n".join(failed)


@pytest.mark.parametrize(
    "group",
    [
        "kept",
        "partial",
        "max",
        "min",
        "sum",
        "mean",
        "logsumexp",
        "argmax",
        "argmin",
        "refused",
        "grad",
        "cache",
        "explain",
        "source",
        "compile",
    ],
)
def test_matches_one_process(report, group):
    assert_ok(entries(report, group))


def test_every_case_passed_on_both_ranks(report):
    assert all(len(es) == WORLD for es in report.values())
    assert_ok([e for es in report.values() for e in es])


def test_no_communication_when_the_sharded_axis_is_kept_or_summed(report):
    for e in entries(report, "kept") + [e for e in entries(report, "partial") if "Partial" in e["placement"]]:
        assert e["calls"] == [], f"{e['name']}: {e['calls']}"


def test_one_collective_carrying_only_the_per_rank_result(report):
    """A clause over the sharded axis: one collective, whose bytes are this rank's result (and for
    argmax/argmin, its int64 flat index beside each extreme), never a shard of an operand or of the product."""
    clauses = [e for es in report.values() for e in es if e.get("placement") == "Replicate()" and "|" in e["pattern"]]
    assert len(clauses) > 30
    for e in clauses:
        assert len(e["calls"]) == 1, f"{e['name']}: {e['calls']}"
        name, sent = e["calls"][0]
        reducer = e["pattern"].rsplit("|", 1)[1].split()[0]
        assert name == ("distributed.all_reduce" if reducer in ("sum", "mean") else "distributed.all_gather"), f"{e['name']}: {name}"
        per_element = e["itemsize"] + (8 if reducer.startswith("arg") else 0)
        assert sent == e["elements"] * per_element, f"{e['name']}: sent {sent} bytes for {e['elements']} result element(s)"
        assert sent < e["operand_bytes"] or e["elements"] * per_element == sent  # the shards are never what is sent


def test_replicate_option_is_one_all_reduce(report):
    (e, *_) = entries(report, "partial, replicate=True")
    assert [name.rsplit(".", 1)[-1] for name, _ in e["calls"]] == ["all_reduce"]
    assert e["calls"][0][1] == e["result_bytes"]


GOLDEN = HERE / "golden"


@pytest.mark.parametrize(
    "name",
    [
        "mesh_max_inner_product",
        "mesh_argmax_two_axes",
        "mesh_kept_rows",
        "mesh_partial_sum",
        "mesh_mean_empty_shard",
        "mesh_replicated_sum",
    ],
)
def test_generated_source_on_each_rank_matches_golden(report, name):
    """The function each rank runs (what einplan.distributed.code shows, and bl compiled): local
    tensors, this rank's plan, the collective in the source, the placement out."""
    (first, second) = sorted(entries(report, f"source {name}"), key=lambda e: e["rank"])
    assert_ok([first, second])
    for entry in (first, second):
        path = GOLDEN / f"{name}_rank{entry['rank']}.txt"
        if os.environ.get("EINPLAN_UPDATE_GOLDEN"):
            path.write_text(entry["source"])
        assert path.exists(), f"no golden file {path}; run with EINPLAN_UPDATE_GOLDEN=1"
        assert entry["source"] == path.read_text()
