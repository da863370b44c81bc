"""Shared timing and result-checking helpers for the benchmarks.

Method, kept deliberately plain:

* Each candidate is a zero-argument callable.  It is called ``warmup`` times
  first (plan caches, lazy imports, allocator warm-up).
* ``number``, the calls per sample, is calibrated as timeit.autorange does:
  doubled until one loop lasts at least ``min_sample_s`` (tiny ops are timed
  in loops of many calls; ops that take seconds, one call per sample).
* Samples of all candidates of one comparison are *interleaved* (round robin),
  so background load on the machine hits every candidate alike, in a fresh
  order each round (shuffled, seeded): a sample's first call finds in cache
  what the candidate before it left there, and an order only rotated keeps
  every candidate behind the same one (a compiled 2x2 bmm behind a row that
  reads other tensors timed 1.2x the same code behind a row that reads its own).
  Each sample is led in by one untimed call of its candidate, so every timed
  call follows a call of itself, as in a caller's loop of that one op, whichever
  candidate ran before (a 60 ms broadcast product flushes the caches that a
  0.4 ms compiled kernel's inputs sat in).
* Reported: median and inter-quartile range (IQR) of the per-call time of the
  samples, in microseconds.  Clock: ``time.perf_counter``.  The garbage
  collector is left on and ``torch.set_num_threads`` is left at its default.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Per-call time statistics of one candidate, in microseconds."""

    median_us: float
    q1_us: float
    q3_us: float
    min_us: float
    samples: int  # number of samples taken
    number: int  # calls per sample
    by_round: tuple[tuple[int, float], ...] = ()  # (round of time_many, per-call us) of each sample taken in a round

    @property
    def iqr_us(self) -> float:
        return self.q3_us - self.q1_us

    def as_dict(self) -> dict:
        d = asdict(self)
        d["iqr_us"] = self.iqr_us
        return d


def _sample(fn: Callable[[], object], number: int) -> float:
    """Seconds per call over one loop of ``number`` calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def stats(per_call_s: list[float], number: int, by_round: Iterable[tuple[int, float]] = ()) -> Timing:
    """Median, quartiles and minimum of the samples (seconds per call); ``by_round``, the samples
    taken in rounds as (round, seconds), is kept so that two candidates sampled round robin can be
    compared round by round (:func:`paired_ratio`)."""
    xs = sorted(per_call_s)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    rounds = tuple((r, x * 1e6) for r, x in by_round)
    return Timing(statistics.median(xs) * 1e6, q1 * 1e6, q3 * 1e6, xs[0] * 1e6, len(xs), number, rounds)


def time_many(
    fns: dict[str, Callable[[], object]],
    *,
    warmup: int = 3,
    min_sample_s: float = 2e-3,
    budget_s: float = 1.0,
    min_repeat: int = 3,
    max_repeat: int = 25,
    warm: Iterable[str] = (),
) -> dict[str, Timing]:
    """Time several candidates with interleaved samples.

    ``budget_s`` is the rough time spent sampling each candidate; the number of
    samples is clamped to ``[min_repeat, max_repeat]``, so a candidate that
    takes seconds per call still gets ``min_repeat`` samples.  Pass
    ``warmup=0`` only for callables that have already run (e.g. in a result
    check): a slow op's calibration call then counts as its first sample.
    Candidates named in ``warm`` skip the warm-up calls (they have just run).
    """
    names = list(fns)
    samples: dict[str, list[float]] = {}
    by_round: dict[str, list[tuple[int, float]]] = {name: [] for name in names}  # (round, sample)
    number: dict[str, int] = {}
    repeat: dict[str, int] = {}
    for name in names:
        fn = fns[name]
        for _ in range(0 if name in warm else warmup):
            fn()
        # calibrate like timeit.autorange: double the loop until it lasts min_sample_s
        n = 1
        while True:
            loop = _sample(fn, n) * n
            if min_sample_s <= loop < 20 * min_sample_s:
                # confirm: one preempted loop must not stop the doubling early
                loop = min(loop, _sample(fn, n) * n, _sample(fn, n) * n)
            if loop >= min_sample_s:
                break
            n *= 2
        number[name] = n
        repeat[name] = int(min(max_repeat, max(min_repeat, budget_s / loop)))
        # a slow op (one unconfirmed call) keeps its calibration call as its first sample
        samples[name] = [loop] if n == 1 and loop >= 20 * min_sample_s else []
    rounds = max(repeat.values()) if repeat else 0
    shuffle = random.Random(0)  # the same orders in every run
    for r in range(rounds):
        order = shuffle.sample(names, len(names))  # no candidate always runs first, or after the same one
        for name in order:
            if len(samples[name]) < repeat[name]:
                fns[name]()  # the lead-in: the timed calls follow a call of their own candidate
                samples[name].append(_sample(fns[name], number[name]))
                by_round[name].append((r, samples[name][-1]))
    return {name: stats(samples[name], number[name], by_round[name]) for name in names}


def paired_ratio(a: Timing, b: Timing) -> float:
    """How many times slower ``a`` is than ``b``, as the median over rounds of the ratio of their
    samples taken in the same round of :func:`time_many`: the two samples of a round lie a few
    milliseconds apart, so a slow stretch of the machine (another process, a frequency change) that
    lasts longer than a round moves both alike and cancels.  Without samples in common, the ratio of
    the medians."""
    in_b = dict(b.by_round)
    pairs = [(x, in_b[r]) for r, x in a.by_round if r in in_b]
    if not pairs or any(y <= 0 for _, y in pairs):
        return a.median_us / b.median_us
    return statistics.median(x / y for x, y in pairs)


def time_one(fn: Callable[[], object], **kwargs) -> Timing:
    """Time a single candidate (same method as :func:`time_many`)."""
    return time_many({"fn": fn}, **kwargs)["fn"]


# --- result checks -----------------------------------------------------------------------------


def max_rel_error(got, ref) -> float:
    """max |got - ref| / max(|ref|, tiny), computed in float64; tuples compared elementwise."""
    if isinstance(ref, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(ref):
            return math.inf
        return max((max_rel_error(g, r) for g, r in zip(got, ref, strict=True)), default=0.0)
    got = torch.as_tensor(got)
    ref = torch.as_tensor(ref)
    if got.shape != ref.shape:
        # a trailing/leading size-1 mismatch is a real difference in result shape
        return math.inf
    if ref.numel() == 0:
        return 0.0
    g = got.detach().to(torch.float64)
    r = ref.detach().to(torch.float64)
    scale = max(r.abs().max().item(), 1e-30)
    return (g - r).abs().max().item() / scale


def same_result(got, ref, rtol: float = 1e-4) -> tuple[bool, str]:
    """Whether ``got`` equals ``ref`` to ``rtol`` of ref's largest magnitude, and a short note."""
    try:
        err = max_rel_error(got, ref)
    except Exception as exc:  # a result of the wrong type
        return False, f"cannot compare: {type(exc).__name__}: {exc}"
    if err <= rtol:
        return True, f"rel. error {err:.1e}"
    shape = getattr(got, "shape", None)
    ref_shape = getattr(ref, "shape", None)
    if shape is not None and ref_shape is not None and shape != ref_shape:
        return False, f"shape {tuple(shape)} != {tuple(ref_shape)}"
    return False, f"rel. error {err:.1e} > {rtol:.0e}"


def fmt_us(us: float | None) -> str:
    """A time in microseconds, human width (us, ms or s)."""
    if us is None or math.isnan(us):
        return "n/a"
    if us >= 1e6:
        return f"{us / 1e6:.3f} s"
    if us >= 1e4:
        return f"{us / 1e3:.2f} ms"
    return f"{us:.1f} us"


def contention_warning() -> str:
    """A warning when other processes keep the CPUs busy (load average >= CPU count - 0.5).

    torch runs an op on all its intra-op threads and waits for the slowest: if
    another process holds a core, a parallel op can wait a whole scheduler
    time slice (milliseconds), which swamps any op that takes microseconds.
    """
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cpus = os.cpu_count() or 1
    if load >= cpus - 0.5 and torch.get_num_threads() >= cpus:
        return (
            f"WARNING: load average {load:.1f} on {cpus} CPUs while torch uses {torch.get_num_threads()} threads: "
            "other processes hold CPUs, so multi-threaded ops may wait whole scheduler time slices and the "
            "times below can be inflated by milliseconds; compare with --threads 1."
        )
    return ""


def machine_summary() -> dict:
    """What the numbers were measured on."""
    import os
    import platform

    load = None
    try:
        load = os.getloadavg()
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "loadavg": load,
    }


def trained(forward, leaves):
    """A row's call: forward, ``.sum().backward()``, and the leaves' gradients."""

    def run():
        for leaf in leaves:
            leaf.grad = None
        forward().sum().backward()
        return tuple(leaf.grad for leaf in leaves)

    return run
