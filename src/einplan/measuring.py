"""Close calls, measured: when the cost model's cheapest lowerings are near, time them.

The cost model's estimates miss by 1.3x to 3x on some signatures (a batched dot
product priced within 3% of a bmm ran 3x faster; outer products, 3x3 batched
matmuls).  Where a plan's contraction steps have other lowerings within
:data:`CLOSE` of the winner's estimate, ``bl``'s first calls on that signature
take turns between the plan and, for each such lowering, the plan with it
forced on every step, on the caller's own tensors, in blocks of :data:`BLOCK`
calls of one plan in a row (more for calls shorter than :data:`BLOCK_SECONDS`),
the last one timed: a warm-up block each (one whose timed call took over
:data:`DROP` times the fastest one's and over :data:`TRIAL_SECONDS` drops its
plan), then rounds, the order rotated every round, at least :data:`ROUNDS`
timed calls each and until each one's add up
to :data:`TRIAL_SECONDS` (:data:`MAX_ROUNDS` at most).  The one fastest against the cost model's
choice, by the median of their ratios round by round, is kept where it beats the choice by
:data:`MARGIN` (the
program's function is replaced, so later calls cost what they always did) and
recorded in :data:`MEASURED`, which ``explain`` shows and a re-plan of the same
signature reuses.  The plans compute the same result (each is tested against
torch), so only which one runs changes.

Off with ``EINPLAN_MEASURE=0`` or ``einplan.set_measuring(False)``: the cost
model's choice, deterministically.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import EinplanError
from .lowerings import CHUNKED, CONTRACTIONS

ENVIRONMENT = "EINPLAN_MEASURE"
CLOSE = 2.0  # a lowering whose estimate is within this factor of the winner's is timed too
ROUNDS = 5  # timed calls of each candidate at least, after a warm-up block each
TRIAL_SECONDS = 2e-3  # ... and more until its timed calls add up to this (short calls are noisy) ...
MAX_ROUNDS = 25  # ... or it has this many
BLOCK = 2  # calls of one candidate in a row in a warm-up or timed block, the last of them timed ...
BLOCK_SECONDS = 2e-4  # ... and in a timed round as many more as make the block last this long ...
MAX_BLOCK = 8  # ... at most this many (short calls: after another candidate's, torch's threads may idle)
MARGIN = 0.95  # another candidate replaces the cost model's choice when it ran in at most this much of its
# time, round by round (closer, the trial's noise decides: two timings of one plan differ by up to 6%)
DROP = 3.0  # a candidate whose warm-up block's timed call took this many times the fastest one's (and
# over TRIAL_SECONDS) is not timed further
MAX_MEASURED = 4096  # signatures whose measured choice is remembered
# what a trial may compare: the contraction lowerings, and a last step's chunks where a clause
# follows a product larger than the cache (see plan._with_chunks_priced)
TIMED = (*CONTRACTIONS, CHUNKED)

_enabled = [True]
MEASURED: OrderedDict = OrderedDict()  # signature key -> Measured


def set_measuring(enabled: bool) -> None:
    """Turn the measurement of close calls on or off for this process (on by default)."""
    _enabled[0] = bool(enabled)


def measuring_enabled() -> bool:
    return _enabled[0] and os.environ.get(ENVIRONMENT, "1").strip().lower() not in ("0", "false", "off", "no")


def label(plan) -> str | None:
    """The lowerings of a plan's contraction steps (``matmul-broadcast + elementwise-sum``), or None
    when a step is another kind (chunked, fused) or there is none: what a trial compares."""
    kinds = [s.kind for s in plan.steps if s.estimate is not None]  # steps that were priced: not views, clauses, repeats
    if not kinds or any(k not in CONTRACTIONS for k in kinds):
        return None
    return " + ".join(kinds)


def close_calls(plan) -> tuple[str, ...]:
    """The lowerings near a plan's choice: every contraction lowering whose estimate is within
    :data:`CLOSE` of the winner's on some contraction step, nearest first (each alternative plan
    forces one of them on every step); empty when nothing is close."""
    if label(plan) is None:
        return ()
    nearest: dict[str, float] = {}
    for step in plan.steps:
        ranked = sorted((c for c in step.candidates if c.lowering in TIMED), key=lambda c: c.seconds)
        if len(ranked) < 2 or ranked[0].lowering != step.kind:
            continue
        for other in ranked[1:]:
            ratio = other.seconds / max(ranked[0].seconds, 1e-12)
            if ratio <= CLOSE:
                nearest[other.lowering] = min(ratio, nearest.get(other.lowering, ratio))
    return tuple(sorted(nearest, key=lambda lowering: nearest[lowering]))


def close_call(plan) -> str | None:
    """The nearest of :func:`close_calls`, or None."""
    return next(iter(close_calls(plan)), None)


@dataclass
class Measured:
    """What a close call measured: median seconds per lowering, and the one kept."""

    seconds: dict[str, float]
    kept: str
    warm_up_only: tuple[str, ...] = ()  # candidates timed by their warm-up alone (DROP times too slow)

    def describe(self) -> str:
        times = ", ".join(
            f"{name} {s * 1e6:.1f} us" + (" (warm-up only)" if name in self.warm_up_only else "")
            for name, s in sorted(self.seconds.items(), key=lambda kv: kv[1])
        )
        return f"measured on the first calls: {times}; kept {self.kept}"


def key_of(bound, memory_limit) -> tuple:
    """What a measured choice is remembered by: the pattern and every axis's size, the dtype, the
    device and the memory limit (the plan's options otherwise are the defaults)."""
    return (bound.resolved.pattern.text, tuple(bound.sizes.items()), bound.dtype, str(bound.device), memory_limit)


def remember(key, measured: Measured) -> None:
    MEASURED[key] = measured
    MEASURED.move_to_end(key)
    while len(MEASURED) > MAX_MEASURED:
        MEASURED.popitem(last=False)


@dataclass
class Trial:
    """The function of a program on trial: each call runs the next candidate and times it; after
    the last round, ``settle`` gets the name of the faster candidate and replaces this trial."""

    names: tuple[str, ...]
    functions: tuple[Callable, ...]
    device: torch.device
    settle: Callable[[str, Measured], None]
    times: dict = field(default_factory=dict)
    warm_ups: dict = field(default_factory=dict)  # name -> seconds of its warm-up block's timed call
    by_round: dict = field(default_factory=dict)  # name -> {round: seconds of its timed call}
    active: tuple = ()  # the candidates of the timed rounds (indices): every one until the warm-ups drop some
    block: int = BLOCK  # calls in a row of a timed round's block, set by the warm-ups (see block_for)
    calls: int = 0
    settled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.active = tuple(range(len(self.names)))

    def __call__(self, *tensors):
        with self.lock:
            turn = self.calls
            self.calls += 1
        warm_up = turn < len(self.names) * BLOCK
        k, timed = self.warm_up_turn(turn) if warm_up else self.candidate(turn - len(self.names) * BLOCK)
        round_ = -1 if warm_up else self.round_of(turn - len(self.names) * BLOCK)
        if self.settled or not timed:  # a block's first call, or one racing the settle
            return self.functions[k](*tensors)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        if sync is not None:
            sync(self.device)
        start = time.perf_counter()
        result = self.functions[k](*tensors)
        if sync is not None:
            sync(self.device)
        seconds = time.perf_counter() - start
        if warm_up:
            self._warmed(self.names[k], seconds)
        else:
            self._record(self.names[k], round_, seconds)
        return result

    @staticmethod
    def warm_up_turn(turn: int) -> tuple[int, bool]:
        """Which candidate runs on warm-up call ``turn``, and whether that call is timed: a block of
        :data:`BLOCK` calls of each candidate in order, the last timed, since a plan's first call in a
        process can pay one-time costs many times its own (a 25 us reduction's first call took 1.2 ms)
        that must not drop it."""
        k, offset = divmod(turn, BLOCK)
        return k, offset == BLOCK - 1

    @staticmethod
    def _far_slower(seconds: float, fastest: float) -> bool:
        """A warm-up over :data:`DROP` times the fastest one's and longer than a whole trial's timed
        calls (:data:`TRIAL_SECONDS`): a short call's warm-up can be ten times its own later calls (a
        25 us ``torch.linalg.vecdot`` took 720 us on its second call while torch's threads woke up),
        and timing it further costs little."""
        return seconds > DROP * fastest and seconds > TRIAL_SECONDS

    def _warmed(self, name: str, seconds: float) -> None:
        """After every warm-up block: a candidate far slower on its warm-up (see :meth:`_far_slower`)
        is out of the timed rounds (it cannot win, and a call that writes a large product flushes the
        caches of the call after it); the cost model's choice always stays in."""
        with self.lock:
            self.warm_ups[name] = seconds
            if len(self.warm_ups) < len(self.names):
                return
            fastest = min(self.warm_ups.values())
            self.block = self.block_for(fastest)
            self.active = tuple(k for k, n in enumerate(self.names) if k == 0 or not self._far_slower(self.warm_ups[n], fastest))
            if len(self.active) > 1 or self.settled:
                return
            self.settled = True  # every other candidate is out: the cost model's choice stays
        self._conclude()

    @staticmethod
    def block_for(seconds: float) -> int:
        """Calls in a row of a timed round's block when the fastest warm-up took ``seconds``: at least
        :data:`BLOCK`, and enough to last :data:`BLOCK_SECONDS` (:data:`MAX_BLOCK` at most).  A call of
        tens of microseconds right after another candidate's can find torch's threads asleep: a 25 us
        ``torch.linalg.vecdot`` timed 520 us as the second of two calls in a row, 16-26 us as the sixth,
        and blocks of two chose the slower plan in 4 of 8 processes, blocks of six in none of 6."""
        return min(MAX_BLOCK, max(BLOCK, math.ceil(BLOCK_SECONDS / max(seconds, 1e-9))))

    def candidate(self, turn: int) -> tuple[int, bool]:
        """Which candidate runs on timed-round call ``turn``, and whether that call is timed: each
        candidate in turn runs a block of calls in a row (:meth:`block_for`) and only the last is timed, as in the
        caller's loop of one plan (the call after another candidate finds that one's freed memory and
        flushed caches: 3x3 batched matmuls measured 10-14 ms in an alternating trial, 6 ms in a
        loop); the order is rotated by one every round, so no candidate always follows the same one."""
        block, offset = divmod(turn, self.block)
        rounds, position = divmod(block, len(self.active))
        return self.active[(position + rounds) % len(self.active)], offset == self.block - 1

    def round_of(self, turn: int) -> int:
        """The round timed-round call ``turn`` belongs to (every active candidate runs once a round)."""
        return turn // self.block // len(self.active)

    @staticmethod
    def _timed_enough(times: list) -> bool:
        """ROUNDS timed calls, and enough of them that they add up to TRIAL_SECONDS (a call of 40 us
        varies by 20% from one call to the next), MAX_ROUNDS at most."""
        return len(times) >= MAX_ROUNDS or (len(times) >= ROUNDS and sum(times) >= TRIAL_SECONDS)

    def _record(self, name: str, round_: int, seconds: float) -> None:
        with self.lock:
            self.times.setdefault(name, []).append(seconds)
            self.by_round.setdefault(name, {})[round_] = seconds
            if self.settled or not all(self._timed_enough(self.times.get(self.names[k], [])) for k in self.active):
                return
            self.settled = True
        self._conclude()

    def paired(self, name: str, base: str) -> float:
        """How much slower ``name`` ran than ``base``: the median, over the rounds that timed both, of
        its call over base's in the same round (by their medians where no round timed both).  The calls
        of one round are a few milliseconds apart, while the VMs einplan has run on have stretches of
        100-400 ms in which one op runs 1.3-3x slower: a stretch that falls on one candidate's calls
        moves its median and not the ratio (a 4x4 float64 bmm's trial kept a plan 1.23x slower by the
        medians)."""
        mine, theirs = self.by_round.get(name, {}), self.by_round.get(base, {})
        ratios = [mine[r] / theirs[r] for r in mine if r in theirs and theirs[r] > 0]
        if ratios:
            return statistics.median(ratios)
        return statistics.median(self.times[name]) / max(statistics.median(self.times[base]), 1e-12)

    def _conclude(self) -> None:
        """Settle on the timed candidate fastest against the cost model's choice, round by round (see
        :meth:`paired`), where it ran in at most :data:`MARGIN` of the choice's time; one out of the
        rounds (or the choice left alone, untimed) is reported by its warm-up block's timed call."""
        timed = [self.names[k] for k in self.active]
        seconds = {n: statistics.median(self.times[n]) if n in timed and n in self.times else self.warm_ups[n] for n in self.names}
        base, others = timed[0], timed[1:]  # the cost model's choice is always timed
        best = min(others, key=lambda n: self.paired(n, base), default=base)
        kept = best if best != base and self.paired(best, base) <= MARGIN else base
        self.settle(kept, Measured(seconds, kept, warm_up_only=tuple(n for n in self.names if n not in timed)))


def pending(plan, forced: Callable) -> tuple | None:
    """What a close call of ``plan`` compares: (its key, its label, what was measured before or
    None, {lowering: that lowering's plan}), or None when nothing is to be timed or swapped.
    ``forced(lowering)`` plans a candidate; one that einplan refuses is left out."""
    chosen = label(plan)
    key = key_of(plan.bound, plan.options.memory_limit)
    known = MEASURED.get(key)
    near = close_calls(plan)
    if chosen is None or (not near and known is None) or (known is not None and known.kept == chosen):
        return None
    others = {}
    for lowering in (known.kept,) if known is not None else near:
        try:
            others[lowering] = forced(lowering)
        except EinplanError:
            continue
    return (key, chosen, known, others) if others else None


def decide_now(first, forced: Callable, compiled: Callable, tensors: Callable) -> tuple:
    """For a kernel: (the plan to keep, the lowering forced in it when a near one is kept, else None).
    A close call's candidates are timed now on ``tensors()``, unless this signature was measured
    before; ``forced(lowering)`` plans a candidate, ``compiled(plan)`` is its function."""
    found = pending(first, forced) if measuring_enabled() else None
    if found is None:
        return first, None
    key, chosen, known, plans = found
    if known is None:
        functions = (compiled(first), *(compiled(p) for p in plans.values()))
        known = measure((chosen, *plans), functions, tensors(), first.bound.device)
        remember(key, known)
    return (first, None) if known.kept == chosen else (plans[known.kept], known.kept)


def measure(names: tuple[str, ...], functions: tuple[Callable, ...], tensors, device) -> Measured:
    """The candidates timed now on ``tensors``, in turn, as a trial on a program's first calls does."""
    found: list[Measured] = []
    trial = Trial(names, functions, device, lambda kept, measured: found.append(measured))
    while not found:
        trial(*tensors)
    return found[0]


def sample_tensors(shapes, dtype: torch.dtype, device) -> list[torch.Tensor]:
    """Tensors of ``shapes`` to time a kernel planned from shapes alone: normal numbers, small integers
    (an integer product stays small), or coin flips."""
    generator = torch.Generator().manual_seed(0)
    made = []
    for shape in shapes:
        if dtype == torch.bool:
            made.append(torch.rand(tuple(shape), generator=generator) > 0.5)
        elif dtype.is_floating_point or dtype.is_complex:
            made.append(torch.randn(tuple(shape), generator=generator, dtype=torch.float64).to(dtype))
        else:
            made.append(torch.randint(0, 3, tuple(shape), generator=generator).to(dtype))
    return [t.to(device) for t in made]
