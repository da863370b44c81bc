"""The generated code of chunked plans reads like code a person would write.

One ``for`` loop per cut axis, its bound read from the tensor and Python's
slicing clamping the last chunk: no loop body written twice, no loop that runs
once, and the memory-bounded reductions stay short.  Each plan's source is run
here with a ``range`` that counts its iterations, against torch's own answer.
"""

from __future__ import annotations

import builtins
import re

import jaxtyping
import pytest
import torch

import einplan

pytestmark = pytest.mark.usefixtures("shipped_cost_model")

# (pattern, shapes, options): plans that cut one axis, two (tiles), or run a screen
CHUNKED = [
    ("q d, k d -> q | logsumexp k", [(2000, 64), (3000, 64)], {"memory_limit": 2**20}),
    ("q d, k d -> q | max k", [(700, 16), (1100, 16)], {"memory_limit": 2**16}),
    ("m d, n d -> | argmax m n", [(2000, 128), (2000, 128)], {"memory_limit": 2**20}),
    ("m d, n d -> | min m n", [(1500, 32), (2100, 32)], {"memory_limit": 2**20}),
    ("m d, n d -> | max m n", [(3000, 64), (2500, 64)], {}),
    ("m d, n d -> | argmin m n", [(3000, 64), (2500, 64)], {}),
    ("b i j, b j k -> b i k", [(5000, 4, 4), (5000, 4, 4)], {"lowering": "chunked-reduction"}),
    ("b i j, b j k -> b | logsumexp i k", [(4099, 4, 4), (4099, 4, 4)], {"lowering": "unrolled", "memory_limit": 2**16}),
    ("b n, b n -> ", [(3001, 64), (3001, 64)], {"lowering": "chunked-reduction"}),
    ("a b, b c -> a | argmax c", [(301, 40), (40, 513)], {"memory_limit": 2**14}),
]
REFERENCES = {
    "q d, k d -> q | logsumexp k": lambda a, b: torch.logsumexp(a @ b.T, 1),
    "q d, k d -> q | max k": lambda a, b: torch.amax(a @ b.T, 1),
    "m d, n d -> | argmax m n": lambda a, b: torch.unravel_index((a @ b.T).argmax(), (a.shape[0], b.shape[0])),
    "m d, n d -> | min m n": lambda a, b: torch.amin(a @ b.T),
    "m d, n d -> | max m n": lambda a, b: torch.amax(a @ b.T),
    "m d, n d -> | argmin m n": lambda a, b: torch.unravel_index((a @ b.T).argmin(), (a.shape[0], b.shape[0])),
    "b i j, b j k -> b i k": lambda a, b: a @ b,
    "b i j, b j k -> b | logsumexp i k": lambda a, b: torch.logsumexp((a @ b).flatten(1), 1),
    "b n, b n -> ": lambda a, b: (a * b).sum(),
    "a b, b c -> a | argmax c": lambda a, b: (a @ b).argmax(1),
}


def _run_counting(source: str, tensors) -> tuple[object, list[int]]:
    """Run a generated function with a ``range`` that records how many times each loop runs."""
    trips: list[int] = []

    def counting_range(*args):
        span = builtins.range(*args)
        trips.append(len(span))
        return span

    namespace = {"torch": torch, "Tensor": torch.Tensor, "range": counting_range}
    namespace.update({kind: getattr(jaxtyping, kind) for kind in ("Bool", "Complex", "Float", "Int", "Int64", "Integer", "Shaped")})
    exec(compile(source, "<loops>", "exec"), namespace)
    return namespace["einplan_kernel"](*tensors), trips


def _loop_bodies(source: str) -> list[str]:
    """Each loop's body, with generated names' numbers dropped (``chunk3`` -> ``chunk``)."""
    lines = source.splitlines()
    bodies = []
    for k, line in enumerate(lines):
        if not line.lstrip().startswith("for "):
            continue
        indent = len(line) - len(line.lstrip())
        body = []
        for inner in lines[k + 1 :]:
            if len(inner) - len(inner.lstrip()) <= indent:
                break
            body.append(re.sub(r"\b([a-z]+)\d+\b", r"\1", inner.split("  #")[0].strip()))
        bodies.append("\n".join(body))
    return bodies


@pytest.mark.parametrize("screen", [False, True], ids=["float32 tiles", "bfloat16 screen"])
@pytest.mark.parametrize("pattern, shapes, options", CHUNKED, ids=[c[0] for c in CHUNKED])
def test_one_loop_per_cut_axis_that_runs_more_than_once(cpu_screen, screen, pattern, shapes, options):
    cpu_screen(screen)
    gen = torch.Generator().manual_seed(len(pattern))
    tensors = [torch.randn(*shape, generator=gen) for shape in shapes]
    plan = einplan.runtime.plan_for(pattern, *tensors, **options)
    assert plan.steps[-1].kind == einplan.CHUNKED, einplan.explain(pattern, *tensors, **options)
    source = einplan.runtime.render(plan)
    got, trips = _run_counting(source, tensors)
    exact_pass = "exact pass" in source  # its trip count is the number of rows the screen keeps: data
    assert trips and all(count >= 2 for count in (trips[:-1] if exact_pass else trips)), (trips, source)
    bodies = _loop_bodies(source)
    assert len(set(bodies)) == len(bodies), source  # no loop body written twice
    assert not re.search(r"for \w+ in range\(\d+, \d+, \d+\)", source), source  # bounds are read from the tensors
    want = REFERENCES[pattern](*tensors)
    if isinstance(want, tuple):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), (got, want)
    elif want.dtype == torch.int64:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _code_lines(pattern: str, *shapes) -> int:
    return len(einplan.code(pattern, *shapes).splitlines())


@pytest.mark.parametrize("screen", [False, True], ids=["float32 tiles", "bfloat16 screen"])
def test_memory_bounded_reductions_read_in_a_few_lines(cpu_screen, screen):
    cpu_screen(screen)
    assert _code_lines("q d, k d -> q | logsumexp k", (8000, 64), (8000, 64)) <= 22
    assert _code_lines("m d, n d -> | argmax m n", (20000, 128), (20000, 128)) <= 34
    assert _code_lines("m d, n d -> | max m n", (20000, 128), (20000, 128)) <= 30
