"""Close calls, measured: which signatures are timed, the trial itself, what is kept and remembered,
the off switches, and that a settled call costs what it always did."""

from __future__ import annotations

import time

import pytest
import torch

import einplan
from einplan import measuring, programs
from einplan.runtime import plan_for

pytestmark = pytest.mark.usefixtures("shipped_cost_model")

CLOSE = ("b n, b n -> b", (64, 4096), (64, 4096))  # elementwise-sum 111 us, matmul-broadcast 161 us: within 2x
FAR = ("b n, m n -> b m", (1000, 500), (1000, 500))  # one GEMM, far ahead of a broadcast product


@pytest.fixture
def measuring_on(monkeypatch):
    monkeypatch.setenv("EINPLAN_MEASURE", "1")
    measuring.set_measuring(True)
    measuring.MEASURED.clear()
    einplan.clear_cache()
    yield
    measuring.MEASURED.clear()
    einplan.clear_cache()


def program_of(pattern, *tensors):
    return programs.lookup(pattern, tuple(map(programs.metadata, tensors)), (), None, None)


def test_which_signatures_are_close_calls():
    pattern, *shapes = CLOSE
    assert measuring.close_call(plan_for(pattern, *shapes)) == "matmul-broadcast"
    pattern, *shapes = FAR
    assert measuring.close_call(plan_for(pattern, *shapes)) is None
    assert measuring.close_call(plan_for("m d, n d -> | max m n", (3000, 64), (3000, 64))) is None  # chunked


def most_calls(candidates: int) -> int:
    """The most calls a trial of this many candidates takes to settle: a warm-up block of BLOCK calls
    each, then MAX_ROUNDS rounds of blocks of MAX_BLOCK calls (calls shorter than BLOCK_SECONDS)."""
    return candidates * (measuring.BLOCK + measuring.MAX_BLOCK * measuring.MAX_ROUNDS)


def test_a_trial_of_three_takes_turns_and_keeps_the_fastest():
    kept = []

    def after(seconds):
        def run(x):
            time.sleep(seconds)
            return x * 2

        return run

    names = ("chosen", "second", "third")
    trial = measuring.Trial(names, (after(0.004), after(0.003), after(0.002)), torch.device("cpu"), lambda k, m: kept.append((k, m)))
    results = [trial(k) for k in range(most_calls(3))]
    assert results == [2 * k for k in range(len(results))]
    ((name, measured),) = kept
    assert name == "third" and set(measured.seconds) == set(names)
    assert measured.seconds["chosen"] > measured.seconds["second"] > measured.seconds["third"]


def test_a_trial_compares_calls_of_the_same_round_not_medians():
    """A slow stretch of the machine (100-400 ms in which one op runs 1.3-3x slower) can fall on one
    candidate's calls and not the other's: here on the other's in round 2 and on both after it, so
    its median is 2.4x the choice's while in 4 of 5 rounds it ran 0.8x as long.  Compared round by
    round it wins; by their medians (a 4x4 float64 bmm's trial, so) the choice stayed."""
    stretch = {"chosen": (1, 1, 1, 3, 3), "other": (0.8, 0.8, 2.4, 2.4, 2.4)}  # milliseconds, by round
    kept = []

    def scheduled(name):
        calls = [0]

        def run(x):  # the trial runs blocks of BLOCK calls (these last over BLOCK_SECONDS): a warm-up, then a round each
            time.sleep(stretch[name][min(max(calls[0] // measuring.BLOCK - 1, 0), 4)] / 1000)
            calls[0] += 1
            return x

        return run

    trial = measuring.Trial(tuple(stretch), tuple(map(scheduled, stretch)), torch.device("cpu"), lambda k, m: kept.append((k, m)))
    while not kept:
        trial(0)
    ((name, measured),) = kept
    assert measured.seconds["other"] > 1.5 * measured.seconds["chosen"]  # the medians
    assert name == "other" and trial.paired("other", "chosen") == pytest.approx(0.8, rel=0.2)
    assert trial.block == measuring.BLOCK and sorted(trial.by_round["other"]) == list(range(5))


def test_a_candidate_replaces_the_choice_only_when_clearly_faster():
    """Within MARGIN of the cost model's choice the trial's noise decides (two timings of one plan
    differed by up to 6%): the choice stays; clearly faster, the other is kept."""

    def kept_of(other_ms: float) -> str:
        kept = []
        sleeps = {"chosen": 2.0, "other": other_ms}
        functions = tuple((lambda ms: lambda x: time.sleep(ms / 1000) or x)(ms) for ms in sleeps.values())
        trial = measuring.Trial(tuple(sleeps), functions, torch.device("cpu"), lambda k, m: kept.append(k))
        while not kept:
            trial(0)
        return kept[0]

    assert kept_of(2.0 * 0.99) == "chosen"
    assert kept_of(2.0 * 0.7) == "other"


def test_short_calls_are_timed_until_their_time_adds_up():
    """A trial settles once each candidate has ROUNDS timed calls that add up to TRIAL_SECONDS, or
    MAX_ROUNDS calls: calls of a few microseconds get many samples, calls of milliseconds few."""

    def calls_to_settle(function) -> int:
        kept = []
        trial = measuring.Trial(("a", "b"), (function, function), torch.device("cpu"), lambda k, m: kept.append(k))
        calls = 0
        while not kept:
            trial(calls)
            calls += 1
        return calls

    assert calls_to_settle(lambda x: x) == most_calls(2)  # instant calls: the most rounds, the longest blocks
    slow = measuring.TRIAL_SECONDS / measuring.ROUNDS * 1.2
    assert calls_to_settle(lambda x: time.sleep(slow)) == 2 * measuring.BLOCK * (1 + measuring.ROUNDS)  # ROUNDS such calls add up


def test_each_candidate_runs_a_block_in_a_row_and_the_order_rotates():
    """As in the caller's loop of one plan, a candidate's timed call follows a call of itself, and
    no candidate always runs after the same other one."""
    ran, kept = [], []
    functions = tuple((lambda name: lambda x: ran.append(name) or x)(name) for name in "abc")
    trial = measuring.Trial(("a", "b", "c"), functions, torch.device("cpu"), lambda k, m: kept.append(k))
    warm_up, block = 3 * measuring.BLOCK, measuring.MAX_BLOCK  # instant calls: the longest blocks
    for call in range(warm_up + 9 * block):
        trial(call)
    assert trial.block == block
    blocks = ["".join(ran[i : i + measuring.BLOCK]) for i in range(0, warm_up, measuring.BLOCK)]
    blocks += ["".join(ran[i : i + block]) for i in range(warm_up, warm_up + 9 * block, block)]
    assert blocks == [name * measuring.BLOCK for name in "abc"] + [name * block for name in "abcbcacab"]  # warm-ups, rounds


def test_short_calls_run_longer_blocks_so_the_timed_one_follows_calls_of_itself():
    """A timed round's block lasts BLOCK_SECONDS at least: after another candidate's calls, torch's
    threads may idle, and a call of tens of microseconds pays for waking them."""
    assert measuring.Trial.block_for(10 * measuring.BLOCK_SECONDS) == measuring.BLOCK
    assert measuring.Trial.block_for(measuring.BLOCK_SECONDS / 4) == 4
    assert measuring.Trial.block_for(measuring.BLOCK_SECONDS / 100) == measuring.MAX_BLOCK
    assert measuring.Trial.block_for(0.0) == measuring.MAX_BLOCK
    ran, kept = [], []
    pause = measuring.BLOCK_SECONDS / 3  # block_for: 3 or, slowed by the machine, fewer (BLOCK at least)
    functions = tuple((lambda name: lambda x: time.sleep(pause) or ran.append(name) or x)(name) for name in "ab")
    trial = measuring.Trial(("a", "b"), functions, torch.device("cpu"), lambda k, m: kept.append(k))
    for call in range(2 * measuring.BLOCK + 4 * 3):
        trial(call)
    assert measuring.BLOCK <= trial.block <= 3
    rounds = "".join(ran[2 * measuring.BLOCK :])
    assert rounds.startswith("a" * trial.block + "b" * trial.block)


def test_a_candidate_far_slower_on_its_warm_up_is_not_timed_again():
    """A warm-up over DROP times the fastest one's: the candidate is out, reported by its warm-up."""
    calls, kept = {"chosen": 0, "slow": 0, "fast": 0}, []

    def counted(name, seconds):
        def run(x):
            calls[name] += 1
            time.sleep(seconds)
            return x

        return run

    fast = 0.01  # sleeps long enough that a loaded machine's oversleeping cannot undo the ratios
    functions = (counted("chosen", fast), counted("slow", fast * measuring.DROP * 4), counted("fast", fast / 2))
    trial = measuring.Trial(tuple(calls), functions, torch.device("cpu"), lambda k, m: kept.append((k, m)))
    while not kept:
        trial(0)
    ((name, measured),) = kept
    assert name == "fast" and calls["slow"] == measuring.BLOCK and calls["chosen"] > measuring.BLOCK
    assert measured.warm_up_only == ("slow",) and "slow" in measured.describe() and "(warm-up only)" in measured.describe()


def test_a_slow_first_call_alone_does_not_drop_a_candidate():
    """A plan's first call in a process can pay one-time costs many times its own (a 25 us
    reduction's first call took 1.2 ms): the warm-up times the call after it, so that plan stays in
    the rounds and wins when it is the fastest."""
    calls, kept = {"chosen": 0, "first-call-slow": 0}, []

    def counted(name, seconds, first=None):
        def run(x):
            calls[name] += 1
            time.sleep(first if first is not None and calls[name] == 1 else seconds)
            return x

        return run

    fast = 0.01
    functions = (counted("chosen", 2 * fast), counted("first-call-slow", fast, first=fast * measuring.DROP * 8))
    trial = measuring.Trial(tuple(calls), functions, torch.device("cpu"), lambda k, m: kept.append((k, m)))
    while not kept:
        trial(0)
    ((name, measured),) = kept
    assert name == "first-call-slow" and measured.warm_up_only == ()
    assert calls["first-call-slow"] > measuring.BLOCK


def test_a_short_call_slow_only_while_warming_up_stays_in_the_trial(monkeypatch):
    """A warm-up over DROP times the fastest one's but shorter than a whole trial's timed calls does
    not drop a candidate: short calls' warm-ups can be ten times their later calls (torch's threads
    waking up), and timing them further costs little.  (TRIAL_SECONDS is raised so that sleeps long
    enough for a loaded machine play the short calls.)"""
    monkeypatch.setattr(measuring, "TRIAL_SECONDS", 1.0)
    calls, kept = {"chosen": 0, "warms-up-slowly": 0}, []

    def counted(name, seconds, warming=None):
        def run(x):
            calls[name] += 1
            time.sleep(warming if warming is not None and calls[name] <= measuring.BLOCK else seconds)
            return x

        return run

    functions = (counted("chosen", 0.02), counted("warms-up-slowly", 0.005, warming=0.02 * measuring.DROP * 2))
    trial = measuring.Trial(tuple(calls), functions, torch.device("cpu"), lambda k, m: kept.append((k, m)))
    while not kept:
        trial(0)
    ((name, measured),) = kept
    assert name == "warms-up-slowly" and measured.warm_up_only == ()


def test_a_trial_whose_others_are_all_far_slower_keeps_the_choice_after_the_warm_ups():
    kept = []
    fast = 0.01  # as above: a margin no oversleeping closes
    functions = (lambda x: time.sleep(fast), lambda x: time.sleep(fast * measuring.DROP * 4))
    trial = measuring.Trial(("chosen", "slow"), functions, torch.device("cpu"), lambda k, m: kept.append(k))
    for _ in range(2 * measuring.BLOCK):
        trial(0)
    assert kept == ["chosen"]


def test_every_lowering_near_the_choice_is_a_candidate():
    """262 144 dot products of 4 (S03 of benchmarks/regret.py): the shipped estimates put all three
    contraction lowerings within 2x of each other, so the trial times all three."""
    plan = plan_for("b n, b n -> b", (262144, 4), (262144, 4))
    near = measuring.close_calls(plan)
    assert set(near) | {plan.steps[0].kind} == {"matmul-broadcast", "elementwise-sum", "unrolled"}
    assert measuring.close_call(plan) == near[0]


def test_bl_times_every_near_lowering_and_keeps_one(measuring_on):
    a, b = torch.randn(262144, 4), torch.randn(262144, 4)
    for _ in range(most_calls(3)):
        torch.testing.assert_close(einplan.bl("b n, b n -> b", a, b), (a * b).sum(-1))
    (measured,) = measuring.MEASURED.values()
    assert set(measured.seconds) == {"matmul-broadcast", "elementwise-sum", "unrolled"}
    program = program_of("b n, b n -> b", a, b)
    assert not isinstance(program.function, measuring.Trial) and program.plan.steps[0].kind == measured.kept


def test_a_close_call_followed_by_a_repeat_or_a_clause_is_still_one(measuring_on):
    """Steps that are not priced (a view of an input, a clause, a created axis) do not hide a close call."""
    pattern, *shapes = CLOSE
    repeated = plan_for("b n, b n -> b r", *shapes, r=2)
    assert measuring.label(repeated) == measuring.label(plan_for(pattern, *shapes))
    assert measuring.close_call(repeated) == "matmul-broadcast"


def test_a_chain_is_measured_against_its_closest_steps_runner_up_on_every_step(measuring_on):
    """``b i, b i j, b j -> b`` (float64): a batched matvec, then dot products, both matmuls; the
    closest call's runner-up is elementwise-sum, and the alternative plan forces it on both steps."""
    shapes = ((256, 64), (256, 64, 64), (256, 64))
    tensors = [torch.randn(s, dtype=torch.float64) for s in shapes]
    plan = plan_for("b i, b i j, b j -> b", *tensors)
    assert measuring.label(plan) == "matmul-broadcast + matmul-broadcast"
    runner = measuring.close_call(plan)
    assert runner == "elementwise-sum"
    want = torch.einsum("bi,bij,bj->b", *tensors)
    for _ in range(most_calls(2)):
        torch.testing.assert_close(einplan.bl("b i, b i j, b j -> b", *tensors), want)
    (measured,) = measuring.MEASURED.values()
    assert set(measured.seconds) == {"matmul-broadcast + matmul-broadcast", runner}
    assert "measured on the first calls" in einplan.explain("b i, b i j, b j -> b", *tensors)


LOGSUMEXP = "q d, k d -> q | logsumexp k"


def test_a_clause_over_a_product_beyond_the_cache_times_its_chunks_too(measuring_on):
    """S58 of benchmarks/regret.py: a 4 MB product that logsumexp reduces, written in full, has its
    chunks (each reduced while in cache) as a candidate that the close call times; a product that
    fits the cache, a forced lowering and a plan that is chunked already have none."""
    big = ((256, 64), (4096, 64))
    plan = plan_for(LOGSUMEXP, *big)
    assert plan.steps[0].kind == "matmul-broadcast" and "chunked-reduction" in measuring.close_calls(plan)
    small = plan_for(LOGSUMEXP, (64, 64), (256, 64))
    assert "chunked-reduction" not in [c.lowering for c in small.steps[0].candidates]
    forced = plan_for(LOGSUMEXP, *big, lowering="matmul-broadcast")
    assert "chunked-reduction" not in [c.lowering for c in forced.steps[0].candidates]
    assert measuring.close_calls(plan_for(LOGSUMEXP, *big, lowering="chunked-reduction")) == ()
    q, k = torch.randn(*big[0]), torch.randn(*big[1])
    want = torch.logsumexp(q @ k.T, 1)
    for _ in range(most_calls(len(measuring.close_calls(plan)) + 1)):
        torch.testing.assert_close(einplan.bl(LOGSUMEXP, q, k), want)
    (measured,) = measuring.MEASURED.values()
    assert {"matmul-broadcast", "chunked-reduction"} <= set(measured.seconds)
    kept = program_of(LOGSUMEXP, q, k).plan.steps[0].kind
    assert kept == ("chunked-reduction" if measured.kept == "chunked-reduction" else "matmul-broadcast")


def test_a_trial_keeps_the_faster_and_returns_every_result():
    kept = []

    def slow(x):
        time.sleep(0.004)
        return x + 1

    trial = measuring.Trial(("slow", "fast"), (slow, lambda x: x + 1), torch.device("cpu"), lambda k, m: kept.append((k, m)))
    results = [trial(k) for k in range(most_calls(2) + 2)]
    assert results == [k + 1 for k in range(len(results))]
    ((name, measured),) = kept  # settled once
    assert name == "fast" and measured.seconds["slow"] > measured.seconds["fast"] and "kept fast" in measured.describe()


def test_bl_times_a_close_call_then_runs_the_kept_plan_alone(measuring_on):
    pattern, *shapes = CLOSE
    a, b = (torch.randn(s) for s in shapes)
    want = (a * b).sum(-1)
    assert isinstance(program_of(pattern, a, b).function, measuring.Trial)
    for _ in range(most_calls(2)):
        torch.testing.assert_close(einplan.bl(pattern, a, b), want, rtol=1e-4, atol=1e-3)  # float32 sums of 4096
    program = program_of(pattern, a, b)
    (measured,) = measuring.MEASURED.values()
    assert not isinstance(program.function, measuring.Trial)  # later calls: the compiled function itself
    assert program.function.__name__ == "einplan_kernel"
    assert set(measured.seconds) == {"matmul-broadcast", "elementwise-sum"} and measured.kept in measured.seconds
    assert [s.kind for s in program.plan.steps] == [measured.kept]
    assert "measured on the first calls" in einplan.explain(pattern, *shapes)
    einplan.clear_cache()  # a re-plan of the signature runs the kept plan, without a trial
    again = program_of(pattern, a, b)
    assert not isinstance(again.function, measuring.Trial) and again.plan.steps[0].kind == measured.kept


def test_far_calls_forced_lowerings_and_recorded_calls_are_not_timed(measuring_on):
    pattern, *shapes = FAR
    a, b = (torch.randn(s) for s in shapes)
    assert not isinstance(program_of(pattern, a, b).function, measuring.Trial)
    pattern, *shapes = CLOSE
    a, b = (torch.randn(s) for s in shapes)
    forced = programs.lookup(pattern, tuple(map(programs.metadata, (a, b))), (), "matmul-broadcast", None)
    assert not isinstance(forced.function, measuring.Trial)
    compiled = programs.lookup(pattern, tuple(map(programs.metadata, (a, b))), (), None, None, True)
    assert not isinstance(compiled.function, measuring.Trial)


@pytest.mark.parametrize("switch", ["environment", "option"])
def test_off_switches_keep_the_cost_models_choice(measuring_on, monkeypatch, switch):
    if switch == "environment":
        monkeypatch.setenv("EINPLAN_MEASURE", "0")
    else:
        einplan.set_measuring(False)
    pattern, *shapes = CLOSE
    a, b = (torch.randn(s) for s in shapes)
    for _ in range(10):
        einplan.bl(pattern, a, b)
    program = program_of(pattern, a, b)
    assert not isinstance(program.function, measuring.Trial) and program.plan.steps[0].kind == "elementwise-sum"
    assert not measuring.MEASURED
    einplan.set_measuring(True)


# --- kernels: a close call is timed when the kernel is made -------------------------------------------


def _runner_wins(monkeypatch):
    """measure() as if the runner-up were faster (timings decide nothing here: the rule does)."""

    def measure(names, functions, tensors, device):
        for function in functions:  # both candidates still run, on the tensors given
            function(*tensors)
        return measuring.Measured({names[0]: 2.0, names[1]: 1.0}, names[1])

    monkeypatch.setattr(measuring, "measure", measure)


def test_a_kernel_times_its_close_call_once_when_made_and_keeps_the_faster(measuring_on, monkeypatch):
    _runner_wins(monkeypatch)
    pattern, *shapes = CLOSE
    a, b = (torch.randn(s) for s in shapes)
    made = einplan.kernel(pattern, a, b, dynamic="b")
    assert [s.kind for s in made.plan_object.steps] == ["matmul-broadcast"]
    assert "torch.matmul" in made.source and "vecdot" not in made.source
    (measured,) = measuring.MEASURED.values()
    assert measured.kept == "matmul-broadcast"
    torch.testing.assert_close(made(a, b), (a * b).sum(-1), rtol=1e-4, atol=1e-3)  # float32 sums of 4096
    fewer = (a[:10], b[:10])  # a dynamic size plans again with the kept lowering forced: the same structure
    torch.testing.assert_close(made(*fewer), (fewer[0] * fewer[1]).sum(-1), rtol=1e-4, atol=1e-3)
    again = einplan.kernel(pattern, *shapes)  # made from shapes: the remembered choice, not timed again
    assert [s.kind for s in again.plan_object.steps] == ["matmul-broadcast"]


def test_a_kernel_made_from_shapes_times_on_tensors_of_those_shapes(measuring_on):
    pattern, *shapes = CLOSE
    made = einplan.kernel(pattern, *shapes)
    (measured,) = measuring.MEASURED.values()
    assert set(measured.seconds) == {"matmul-broadcast", "elementwise-sum"}
    assert [s.kind for s in made.plan_object.steps] == [measured.kept]


def test_a_kernel_does_not_time_when_off_forced_or_far(measuring_on, monkeypatch):
    _runner_wins(monkeypatch)
    pattern, *shapes = CLOSE
    assert einplan.kernel(pattern, *shapes, lowering="elementwise-sum").plan_object.steps[0].kind == "elementwise-sum"
    einplan.kernel(FAR[0], *FAR[1:])
    assert not measuring.MEASURED
    einplan.set_measuring(False)
    try:
        assert einplan.kernel(pattern, *shapes).plan_object.steps[0].kind == "elementwise-sum"
    finally:
        einplan.set_measuring(True)
    assert not measuring.MEASURED
