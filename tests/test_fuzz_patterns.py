"""Hostile pattern text against every entry point.

Arbitrary text and near-miss mutations of valid patterns go to ``parse``,
``bl`` (with a few small tensors), ``code`` and ``explain`` (with shapes).
Each call either succeeds or raises an ``EinplanError`` whose message quotes
the pattern (non-printable characters shown as spaces); nothing else is
allowed, and nothing may hang.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from datetime import timedelta

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import einplan
from einplan import EinplanError
from einplan.parse import parse

VALID = [
    "b n, m n -> b m",
    "b1 b2 n, b1 b2 n -> b1 b2",
    "b1 b2 n, n n, b1 b2 n -> b1 b2",
    "b i j, b j k -> b i k",
    "m d, n d -> | max m n",
    "q d, k d -> q | argmax k",
    "q d, k d -> q | logsumexp k",
    "... i, ... i -> ...",
    "b (h d), h d e -> b h e",
    "n n -> n",
    "b n n -> b",
    "b n, n n', b n' -> b",
    "n n, b n -> b n",
    "n n, n n -> n n",
    "*batch i, *batch i -> *batch",
    "a 3 -> a",
    "a 1 -> a 1",
    "a b -> a | mean b",
    "a b -> | argmin a b",
    "-> ",
    "a, -> a",
    "i, j -> i j",
]

# characters and tokens that sit close to the language
NEAR = list("ab n'(),.*|->_ 0123\t\n$#") + [
    "...",
    "->",
    " | ",
    " sum ",
    " max ",
    " argmax ",
    "*x",
    "'",
    "(",
    ")",
    ",",
    "1",
    "\x00",
    "\u00e9",
    "\u2192",
]

SHAPES = [[(2, 2)], [(2, 2), (2, 2)], [(2, 3), (3, 2), (2, 2)], [(2, 2, 2), (2, 2)]]
TENSORS = [
    [torch.arange(float(4 * k), float(4 * k) + torch.Size(s).numel(), dtype=torch.float64).reshape(s) for k, s in enumerate(shapes)]
    for shapes in SHAPES
]

TIME_LIMIT = 5.0  # seconds any single call may take


def shown(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise ``Hang`` if the block runs longer than ``seconds`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise Hang(f"call took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def entry_points(pattern: str):
    """(name, thunk) for each way a pattern reaches einplan."""
    calls = [("parse", lambda: parse(pattern))]
    for tensors in TENSORS:
        calls.append((f"bl{[tuple(t.shape) for t in tensors]}", lambda tensors=tensors: einplan.bl(pattern, *tensors)))
    calls.append(("code", lambda: einplan.code(pattern, (2, 2), (2, 2))))
    calls.append(("explain", lambda: einplan.explain(pattern, (2, 3), (3, 2))))
    return calls


def outcome(pattern: str, name: str, call):
    """Run one call; return the EinplanError it raised (or None). Anything else fails."""
    try:
        with time_limit(TIME_LIMIT):
            call()
    except EinplanError as error:
        return error
    except Hang:
        pytest.fail(f"{name}({pattern!r}) hung")
    except Exception as error:  # noqa: BLE001 - the point is to catch everything else
        pytest.fail(f"{name}({pattern!r}) raised {type(error).__name__}: {error}")
    return None


def check_types(pattern: str) -> None:
    for name, call in entry_points(pattern):
        outcome(pattern, name, call)


def check_quotes(pattern: str) -> None:
    for name, call in entry_points(pattern):
        error = outcome(pattern, name, call)
        if error is not None:
            message = shown(str(error))
            assert shown(pattern) in message, f"{name}({pattern!r}): {type(error).__name__} does not quote the pattern: {str(error)!r}"


@st.composite
def mutated(draw):
    """A valid pattern with one to three characters or tokens inserted, deleted or replaced."""
    pattern = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(pattern)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(NEAR) | st.characters(codec="utf-8"))
        if kind == "insert":
            pattern = pattern[:where] + piece + pattern[where:]
        elif kind == "delete":
            pattern = pattern[:where] + pattern[where + 1 :]
        else:
            pattern = pattern[:where] + piece + pattern[where + 1 :]
    return pattern


# text built from the pattern alphabet reaches deeper than uniformly random text
patternish = st.lists(
    st.sampled_from(["a", "b", "n", "n'", "3", "1", "...", "*x", "(", ")", ",", "->", "|", "sum", "max", "argmax", " ", "  "]),
    max_size=16,
).map("".join)

SETTINGS = settings(
    max_examples=75,
    derandomize=True,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)


@SETTINGS
@given(st.text(max_size=60))
@example("")
@example("\x00->\x00")
@example("a -> a" + "'" * 200)
@example("(" * 300 + "a" + ")" * 300 + " -> a")
@example(", " * 500 + "-> ")
def test_arbitrary_text_raises_only_einplan_errors(pattern):
    check_types(pattern)


@SETTINGS
@given(patternish)
def test_patternish_text_raises_only_einplan_errors(pattern):
    check_types(pattern)


@SETTINGS
@given(mutated())
@example("*b i *s i -> *b")
@example("b (h d), hb e -> b h e")
def test_near_misses_raise_only_einplan_errors(pattern):
    check_types(pattern)


@SETTINGS
@given(st.one_of(mutated(), patternish, st.text(max_size=40)))
def test_every_error_quotes_the_pattern(pattern):
    check_quotes(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        "*b i *s i -> *b",  # two variadic groups in one operand
        "... i *s -> i",
        "b (h d), hb e -> b h e",  # a composite that cannot be split
        "(a b) -> a",
        "a b -> a | sum c",
        "a\tb -> c",
        "a\x00b -> a",
        "\ud800 -> a",  # a lone surrogate
        "(" * 600 + "a" + ")" * 600 + " -> a",  # deep nesting, well under the length limit
        "(" * 1500 + "a" + ")" * 1500 + " -> a",
        "a -> " + "(" * 1000 + "a" + ")" * 1000,
    ],
    ids=lambda p: repr(p) if len(p) < 40 else f"{len(p)} chars",
)
def test_hostile_patterns_quote_themselves(pattern):
    check_types(pattern)
    check_quotes(pattern)


def test_time_limit_catches_a_hang():
    """The guard the tests rely on does fire."""
    import time

    with pytest.raises(Hang):
        with time_limit(0.2):
            time.sleep(2)


def test_valid_patterns_stay_valid():
    """The seeds of the mutations are all accepted, so mutations are near misses."""
    for pattern in VALID:
        parse(pattern)
    assert einplan.bl("b n, m n -> b m", *TENSORS[1]).shape == (2, 2)
