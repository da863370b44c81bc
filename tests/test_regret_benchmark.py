"""benchmarks/regret.py's smoke run: a few cheap signatures with few repetitions; the per-signature
table, the summary lines and the JSON come out, without a traceback."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "regret.py"
CHEAP = ("S04", "S09", "S54")  # dot products of 16 and 256, a row max: microseconds a call
HEADER = ("pattern", "shapes", "default plan", "best lowering", "regret", "default/einsum")
SUMMARY = (
    "geometric-mean regret: ",
    "worst regret: ",
    "default plan runs the best lowering's own code ('=' above): ",
    "signatures more than 1.2x off the best lowering: ",
    "signatures more than 1.1x slower than torch.einsum: ",
    "worst 5:",
)


def load_regret():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("regret_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_table_and_summary(tmp_path):
    out_json = tmp_path / "regret.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--constants", "shipped", "--out", str(out_json)]
    for sid in CHEAP:
        command += ["--only", sid]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    header = next(line for line in proc.stdout.splitlines() if line.startswith("id "))
    assert all(word in header for word in HEADER), header
    for sid in CHEAP:
        assert any(line.startswith(sid + " ") for line in proc.stdout.splitlines()), output
    for line in SUMMARY:
        assert line in proc.stdout, output
    assert "constants: shipped" in proc.stdout and "CPU: " in proc.stdout
    data = json.loads(out_json.read_text())
    assert [s["id"] for s in data["signatures"]] == list(CHEAP)
    assert data["constants"] == "shipped" and data["summary"]["with_regret"] == len(CHEAP)
    for s in data["signatures"]:
        assert "default" in s["timings"] and s["regret"] > 0 and s["best_lowering"].startswith("lowering=")


def test_signatures_are_held_out_and_einsum_translation():
    regret = load_regret()
    sigs = regret.SIGNATURES
    assert len(sigs) >= 50 and len({s.label for s in sigs}) == len(sigs)
    assert all(len(s.shapes) == s.pattern.split("->")[0].count(",") + 1 for s in sigs)
    assert regret.einsum_equation("b h q d, b h k d -> b h q k") == "abcd,abed->abce"
    assert regret.einsum_equation("n, n ->") == "a,a->"
    assert regret.einsum_equation("b n, n n, b n -> b") is None  # a chain link, not einsum's diagonal
    assert regret.einsum_equation("q d, k d -> q | logsumexp k") is None
    assert regret.einsum_equation("b (h d) -> b h d") is None


def test_same_code_tells_a_tie_from_a_planning_choice():
    """A regret between the default plan and a forced lowering that renders the same code is timing
    spread; the summary keeps those apart from the regrets of a different choice."""
    regret = load_regret()
    sig = regret.Signature("S00", "matmul", "b n, n m -> b m", ((64, 32), (32, 16)))
    tensors = regret.make_tensors(sig)
    assert regret.same_code(sig, tensors, "lowering=matmul-broadcast")
    assert not regret.same_code(sig, tensors, "lowering=elementwise-sum")
    # a close call that kept another lowering runs that lowering's code, not the cost model's plan
    assert regret.same_code(sig, tensors, "lowering=elementwise-sum", kept="elementwise-sum")
    assert not regret.same_code(sig, tensors, "lowering=matmul-broadcast", kept="elementwise-sum")
    assert regret.same_code(sig, tensors, "lowering=matmul-broadcast", kept="matmul-broadcast")
    tie, choice = regret.Result(sig, regret=1.3, same_code=True), regret.Result(sig, regret=1.1)
    summary = regret.summarize([tie, choice])
    assert summary["worst_regret"] == 1.3 and summary["same_code_as_best"] == 1
    assert summary["worst_regret_different_code"] == 1.1


def test_paired_ratio_compares_samples_of_the_same_round():
    load_regret()  # puts benchmarks/ on the path
    from timing import Timing, paired_ratio

    def timing(samples, rounds):
        xs = sorted(samples)
        in_rounds = tuple((r, x) for r, x in zip(rounds, samples, strict=True) if r >= 0)  # -1: a calibration sample
        return Timing(xs[len(xs) // 2], xs[0], xs[-1], xs[0], len(xs), 1, in_rounds)

    # a slow stretch (rounds 3-6) that lands on b's samples more than on a's: medians say a is 1.5x
    # faster, round by round a is 2x slower
    a = timing([20, 20, 20, 40, 40, 40, 40], range(7))
    b = timing([10, 10, 10, 20, 20, 20, 20], range(7))
    assert paired_ratio(a, b) == 2.0
    b_late = timing([10, 10, 10, 200, 200, 200, 200], range(7))
    assert paired_ratio(a, b_late) == 40 / 200  # four of seven rounds say 0.2
    # a calibration sample (round -1) and rounds the other never sampled are left out
    c = timing([100, 30, 30, 30], [-1, 0, 1, 2])
    d = timing([10, 10, 10, 10, 10], range(5))
    assert paired_ratio(c, d) == 3.0
    # nothing in common: the ratio of the medians
    assert paired_ratio(timing([30], [-1]), timing([10], [-1])) == 3.0


def test_time_many_samples_in_a_fresh_order_each_round():
    """A sample's first call finds in cache what the candidate before it left there: the order of a
    round is shuffled (seeded, the same in every run), so no candidate always follows the same one,
    as an order only rotated would have it."""
    load_regret()  # puts benchmarks/ on the path
    from timing import time_many

    ran: list[str] = []
    names = "abcd"
    time_many({n: (lambda n=n: ran.append(n)) for n in names}, warmup=0, min_sample_s=0.0, budget_s=0.0, min_repeat=12, max_repeat=12)
    rounds = ran[len(names) :: 2]  # after each one's calibration call (its first sample): lead-in, sample
    assert ran[len(names) + 1 :: 2] == rounds and len(rounds) == 11 * len(names)
    orders = ["".join(rounds[i : i + len(names)]) for i in range(0, len(rounds), len(names))]
    assert all(sorted(o) == list(names) for o in orders)
    followed = {(prev, nxt) for prev, nxt in zip(rounds[:-1], rounds[1:], strict=True) if prev != nxt}
    assert {p for p, n in followed if n == "a"} == set("bcd")  # 'a' ran after every other candidate
    ran.clear()
    time_many({n: (lambda n=n: ran.append(n)) for n in names}, warmup=0, min_sample_s=0.0, budget_s=0.0, min_repeat=12, max_repeat=12)
    assert ran[len(names) :: 2] == rounds  # seeded: the same orders again


def test_time_many_times_each_sample_after_a_call_of_its_own_candidate():
    """A call right after another candidate's finds that one's data in cache, not its own: each
    sample is led in by an untimed call of its own candidate, so what is timed is its loop."""
    load_regret()  # puts benchmarks/ on the path
    import time as clock

    from timing import time_many

    last = [""]

    def candidate(name):
        def call():
            if last[0] != name:  # the first call after another candidate's: a cold start
                clock.sleep(0.004)
            last[0] = name
            clock.sleep(0.001)

        return call

    timings = time_many({n: candidate(n) for n in "ab"}, warmup=0, min_sample_s=0.0, budget_s=0.0, min_repeat=5, max_repeat=5)
    assert all(t.median_us < 3000 for t in timings.values()), timings  # 1 ms calls, never a 5 ms cold one


@pytest.mark.usefixtures("shipped_cost_model")
def test_the_default_plan_settles_its_close_call_before_it_is_timed(monkeypatch):
    """bl times a close call's candidates on a signature's first calls: the regret times the calls
    after, so the default plan is called until the trial has kept one, and a plan with nothing close
    is not called at all."""
    import einplan
    from einplan import measuring

    regret = load_regret()
    monkeypatch.setenv("EINPLAN_MEASURE", "1")
    measuring.set_measuring(True)
    measuring.MEASURED.clear()
    einplan.clear_cache()
    try:
        close = regret.Signature("S00", "dot", "b n, b n -> b", ((64, 4096), (64, 4096)))
        far = regret.Signature("S00", "matmul", "b n, m n -> b m", ((1000, 500), (1000, 500)))
        for sig, settles in ((close, True), (far, False)):
            tensors = regret.make_tensors(sig)
            calls = []
            before = set(regret.measured_choices())
            taken = regret.settle_trial(sig, tensors, lambda t=tensors, s=sig: calls.append(einplan.bl(s.pattern, *t)), before)
            assert taken == len(calls)
            assert (0 < taken < regret.SETTLE_CALLS) == settles
            assert bool(set(regret.measured_choices()) - before) == settles
    finally:
        measuring.MEASURED.clear()
        einplan.clear_cache()
