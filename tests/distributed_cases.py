"""What each rank runs in tests/test_distributed.py: every case on DTensors on a 1-D gloo mesh,
against einplan (and torch) in one process on the whole tensors, and a record of every collective
the einplan call itself issued (name, bytes sent), written as one JSON report per rank."""

from __future__ import annotations

import datetime
import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
    "all_to_all",
    "all_to_all_single",
)
COLLECTIVES += (
    "send",
    "recv",
    "isend",
    "irecv",
    "scatter",
    "gather",
    "reduce",
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
    "scatter_object_list",
)
FUNCTIONAL = (
    "all_reduce",
    "all_gather_tensor",
    "reduce_scatter_tensor",
    "all_to_all_single",
    "broadcast",
    "all_gather_tensor_autograd",
    "all_reduce_inplace",
)
RECORD: list = []  # (name, bytes this rank hands to the collective) while a case's einplan call runs


def _nbytes(args) -> int:
    """The bytes of the tensor(s) this rank contributes (an all_gather's output list is not sent)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.numel() * a.element_size()
    return 0


def _recorded(name: str, function):
    def wrapper(*args, **kwargs):
        sent = args[1:] if name in ("all_gather", "gather", "all_gather_into_tensor") else args
        RECORD.append((name, _nbytes(sent)))
        return function(*args, **kwargs)

    return wrapper


def install_recorders() -> None:
    """Every collective of torch.distributed (and DTensor's functional ones) goes through a recorder."""
    import torch.distributed._functional_collectives as funcol
    import torch.distributed.distributed_c10d as c10d

    for module, names in ((dist, COLLECTIVES), (c10d, COLLECTIVES), (funcol, FUNCTIONAL)):
        for name in names:
            if hasattr(module, name):
                setattr(module, name, _recorded(f"{module.__name__.rsplit('.', 1)[-1]}.{name}", getattr(module, name)))


def chunk_of(t: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of ``t`` along ``dim`` as torch.chunk cuts them (DTensor's Shard layout)."""
    step = -(-t.shape[dim] // world)
    start = min(rank * step, t.shape[dim])
    return t.narrow(dim, start, max(0, min(t.shape[dim], start + step) - start))


def as_dtensor(t: torch.Tensor, mesh, placement):
    """A DTensor built from the same seeded global tensor on every rank: no communication."""
    from torch.distributed.tensor import DTensor, Shard

    rank, world = mesh.get_local_rank(), mesh.size()
    local = chunk_of(t, placement.dim, rank, world) if isinstance(placement, Shard) else t
    stride = tuple(t.stride()) if t.is_contiguous() else None
    made = DTensor.from_local(local.detach().clone(), mesh, [placement], run_check=False, shape=t.shape, stride=stride)
    return made.requires_grad_(t.requires_grad) if t.is_leaf else made


def rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    # a rank that fails before a collective leaves the other waiting in it: a timeout turns that into
    # an error the report names, not a hang until the parent's deadline
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    from torch.distributed.tensor import init_device_mesh

    import distributed_checks

    mesh = init_device_mesh("cpu", (world,))
    install_recorders()
    report = []
    for name, case in distributed_checks.CASES:
        RECORD.clear()
        entry = {"name": name, "rank": rank}
        try:
            entry.update(case(mesh, RECORD) or {})
            entry["ok"] = True
        except Exception as error:  # reported to the parent test, which fails naming the case
            entry["ok"] = False
            entry["error"] = "".join(traceback.format_exception(error))[-3000:]
        report.append(entry)
        dist.barrier()  # every case starts together: a failing rank does not leave the other waiting in a collective
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()
    # end without the interpreter's shutdown, the report on disk: gloo's threads can still hold
    # tensors of finished work, and freeing them while Python shuts down aborts the process
    # ('terminate called without an active exception'; pytorch/pytorch#179291)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover - run by hand: python tests/distributed_cases.py
    sys.path.insert(0, str(Path(__file__).parent))
