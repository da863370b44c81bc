"""W9: the maximum inner product ``m d, n d -> | max m n`` with m sharded across 2 ranks (gloo, one
thread each) against one process with two threads.

    python benchmarks/distributed.py            # M = 40 000, N = 20 000, d = 128, float32
    python benchmarks/distributed.py --smoke    # tiny sizes, one run: what the tests run

Each rank makes only its own rows of A (seeded per rank) and all of B; the one process makes the
same rows.  Reported: the median time of the call over ``--runs`` (the slowest rank's), each
process's peak resident memory (VmHWM, and the same before einplan's first call: torch,
gloo and the operands), the bytes each rank handed to collectives during the
calls (every torch.distributed collective is wrapped and counted), and whether the two results
are equal.  One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

PATTERN = "m d, n d -> | max m n"


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rows_of(rank: int, world: int, m: int, d: int):
    """Rank ``rank``'s rows of A as torch.chunk cuts M (DTensor's Shard layout), seeded by rank."""
    import torch

    step = -(-m // world)
    count = max(0, min(m, rank * step + step) - min(m, rank * step))
    return torch.randn(count, d, generator=torch.Generator().manual_seed(1000 + rank))


def keys(n: int, d: int):
    import torch

    return torch.randn(n, d, generator=torch.Generator().manual_seed(7))


def timed(call, runs: int, barrier=None) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        if barrier is not None:
            barrier()
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def rank_main(rank: int, world: int, port: int, out: str, sizes: tuple, runs: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate, Shard, init_device_mesh

    import einplan

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    m, n, d = sizes
    a = DTensor.from_local(rows_of(rank, world, m, d), mesh, [Shard(0)], run_check=False, shape=torch.Size((m, d)), stride=(d, 1))
    b = DTensor.from_local(keys(n, d), mesh, [Replicate()], run_check=False)
    sent = []
    originals = {name: getattr(dist, name) for name in ("all_gather", "all_reduce", "all_gather_into_tensor", "broadcast")}

    def counted(name):
        def wrapper(*args, **kwargs):
            tensor = args[1] if name in ("all_gather", "all_gather_into_tensor") else args[0]
            sent.append(tensor.numel() * tensor.element_size())
            return originals[name](*args, **kwargs)

        return wrapper

    before = peak_rss_mib()  # torch, torch.distributed, gloo and the operands, before einplan runs
    einplan.bl(PATTERN, a, b)  # plan once (cached), not timed
    for name in originals:
        setattr(dist, name, counted(name))
    seconds, result = timed(lambda: einplan.bl(PATTERN, a, b), runs, lambda: originals["all_reduce"](torch.zeros(1)))
    for name, function in originals.items():
        setattr(dist, name, function)
    report = {
        "seconds": seconds,
        "peak_mib": peak_rss_mib(),
        "peak_before_call_mib": before,
        "bytes_sent_per_call": sum(sent) / runs,
        "collectives_per_call": len(sent) / runs,
    }
    report["value"] = float(result.to_local())
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()  # neither rank tears gloo down while the other still has a collective in flight
    dist.destroy_process_group()
    exit_now()


def exit_now() -> None:
    """End this rank without the interpreter's shutdown, its report on disk: gloo's threads can
    still hold tensors of finished work, and freeing them while Python shuts down aborts the
    process ('terminate called without an active exception', SIGABRT; pytorch/pytorch#179291)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def single_main(index: int, out: str, sizes: tuple, runs: int, threads: int) -> None:
    import torch

    import einplan

    torch.set_num_threads(threads)
    m, n, d = sizes
    a = torch.cat([rows_of(r, 2, m, d) for r in range(2)])
    b = keys(n, d)
    before = peak_rss_mib()
    einplan.bl(PATTERN, a, b)
    seconds, result = timed(lambda: einplan.bl(PATTERN, a, b), runs)
    report = {"seconds": seconds, "peak_mib": peak_rss_mib(), "peak_before_call_mib": before, "value": float(result)}
    Path(out, "single.json").write_text(json.dumps(report))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(sizes: tuple, runs: int, timeout: float = 1200) -> dict:
    import torch.multiprocessing as mp

    out = tempfile.mkdtemp(prefix="einplan-w9-")
    os.environ["OMP_NUM_THREADS"] = "1"
    context = mp.start_processes(rank_main, args=(2, free_port(), out, sizes, runs), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise SystemExit(f"the 2 ranks did not finish within {timeout} s")
    os.environ["OMP_NUM_THREADS"] = "2"
    mp.start_processes(single_main, args=(out, sizes, runs, 2), nprocs=1, start_method="spawn")
    ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]
    single = json.loads(Path(out, "single.json").read_text())
    return {
        "workload": "W9",
        "pattern": PATTERN,
        "sizes": {"M": sizes[0], "N": sizes[1], "d": sizes[2]},
        "runs": runs,
        "distributed": {"seconds": max(r["seconds"] for r in ranks), "ranks": ranks},
        "single_process_2_threads": single,
        "equal": all(r["value"] == single["value"] for r in ranks),
        "load_average": os.getloadavg(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and one run (the tests run this)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    sizes, runs = ((37, 23, 8), 1) if args.smoke else ((40_000, 20_000, 128), args.runs)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    print(json.dumps(measure(sizes, runs), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
