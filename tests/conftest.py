"""Shared helpers for the differential tests against ``torch.einsum``.

* ``einplan_to_einsum``: an einplan pattern (names, primes, ``...``) -> a
  torch.einsum letter string.  It implements the SPEC's reading of a name
  repeated inside one operand on its own (diagonal when no other input has
  the name, matrix-chain link otherwise), so it is an independent oracle for
  the chain reading, not a copy of einplan's resolver.
* ``einsum_to_einplan``: a torch/numpy einsum string -> einplan spelling with
  multi-character axis names and an explicit output.
* ``random_tensors`` / ``assert_matches`` / ``call_bl``: tensors, comparison
  with dtype-aware tolerances, and a ``bl`` call that turns "not implemented
  yet" of a forced lowering (or the unrolled lowering declining a step) into a skip.
"""

from __future__ import annotations

import os

# Tests plan with the shipped (or a test's own) constants: never a calibration of this machine.
os.environ.setdefault("EINPLAN_CALIBRATE", "0")
# ... and the cost model's choice of lowering, never one timed on a loaded machine (tests/test_measuring.py turns it on)
os.environ.setdefault("EINPLAN_MEASURE", "0")

# Without a CUDA device, Triton kernels (the fused lowering) run on CPU tensors in Triton's
# interpreter; it must be on before triton is first imported.
if "TRITON_INTERPRET" not in os.environ:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import re
import string
from collections import Counter
from collections.abc import Sequence

import pytest
import torch

import einplan

# The default plan and the two general lowerings: every step of every pattern can be forced to these.
IMPLEMENTED = (None, "matmul-broadcast", "elementwise-sum")

# The default plan and every lowering einplan names; see ``call_bl`` for what may decline.
ALL_LOWERINGS = (None,) + tuple(einplan.LOWERINGS)

NOT_IMPLEMENTED = "not implemented yet"

LETTERS = string.ascii_lowercase + string.ascii_uppercase

# --- einsum letters -> einplan names -----------------------------------------------------------

# Every einsum letter gets a multi-character einplan name.  Some are words that
# are Python keywords or builtins, to check they never leak into generated code.
LETTER_NAMES = {
    "a": "batch",
    "b": "chan",
    "c": "height",
    "d": "width",
    "e": "ex",
    "f": "f2",
    "g": "g_",
    "h": "head",
    "i": "ix",
    "j": "jx",
    "k": "kx",
    "l": "lambda",
    "m": "m1",
    "n": "n_1",
    "o": "out",
    "p": "pp",
    "q": "query",
    "r": "row",
    "s": "seq",
    "t": "time",
    "u": "u0",
    "v": "vec",
    "w": "w_w",
    "x": "xx",
    "y": "yy",
    "z": "z9",
}
LETTER_NAMES.update({c: f"{c}_cap" for c in string.ascii_uppercase})
LETTER_NAMES.update({"A": "Alpha", "B": "Batch", "K": "Key", "N": "None_", "S": "sum"})


def parse_einsum(equation: str) -> tuple[list[list[str]], list[str]]:
    """Operands and output of an einsum string as token lists (letters or ``...``).

    Implicit output (no ``->``): ``...`` if any operand has one, then the letters
    that occur exactly once over all operands, sorted (torch's and numpy's rule).
    """
    text = equation.replace(" ", "")
    lhs, arrow, rhs = text.partition("->")

    def tokens(part: str) -> list[str]:
        found = []
        rest = part
        while rest:
            if rest.startswith("..."):
                found.append("...")
                rest = rest[3:]
            elif rest[0] in LETTERS:
                found.append(rest[0])
                rest = rest[1:]
            else:
                raise ValueError(f"not an einsum subscript: {part!r} in {equation!r}")
        return found

    operands = [tokens(p) for p in lhs.split(",")]
    if arrow:
        output = tokens(rhs)
    else:
        counts = Counter(t for op in operands for t in op if t != "...")
        output = (["..."] if any("..." in op for op in operands) else []) + sorted(t for t, c in counts.items() if c == 1)
    return operands, output


def chain_conflicts(operands: Sequence[Sequence[str]]) -> set[str]:
    """Letters that repeat inside one operand AND occur in another operand.

    einsum reads those as a diagonal; einplan reads them as a matrix chain, so an
    expression with any of them means something else in einplan.
    """
    found = set()
    for k, op in enumerate(operands):
        for letter, count in Counter(t for t in op if t != "...").items():
            if count >= 2 and any(letter in other for j, other in enumerate(operands) if j != k):
                found.add(letter)
    return found


def einsum_to_einplan(equation: str, names: dict[str, str] = LETTER_NAMES) -> str:
    """``'ij,jk'`` -> ``'ix jx, jx kx -> ix kx'`` (explicit output, multi-character names)."""
    operands, output = parse_einsum(equation)
    conflicts = chain_conflicts(operands)
    if conflicts:
        raise ValueError(f"{equation!r}: {sorted(conflicts)} would be read as a chain by einplan")

    def spell(tokens: Sequence[str]) -> str:
        return " ".join(t if t == "..." else names[t] for t in tokens)

    return ", ".join(spell(op) for op in operands) + " -> " + spell(output)


# --- einplan pattern -> einsum letters (independent reading of the SPEC) -----------------------

_TOKEN = re.compile(r"\.\.\.|[A-Za-z_][A-Za-z0-9_]*'*")


def _split_operand(text: str) -> list[str]:
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != "".join(text.split()):
        raise ValueError(f"unsupported operand for the translator: {text!r}")
    return tokens


def chain_reading(operands: Sequence[Sequence[str]]):
    """Index ids per operand token, and for each chain name the ids left for the output.

    Plain names are their own id; the k-th index of chain name t is ``(t, k)``.
    Returns ``(ids_per_operand, queue)``; ``queue[t]`` lists, in order, the indices
    of chain name t that occur in exactly one input.
    """
    in_operands = Counter(t for op in operands for t in set(op) if t != "...")
    chains = {t for op in operands for t, c in Counter(x for x in op if x != "...").items() if c >= 2 and in_operands[t] >= 2}
    current = {t: (t, 0) for t in chains}
    created = {t: [(t, 0)] for t in chains}
    ids_per_operand = []
    for op in operands:
        seen = set()
        ids = []
        for t in op:
            if t in chains:
                if t in seen:
                    current[t] = (t, len(created[t]))
                    created[t].append(current[t])
                ids.append(current[t])
            else:
                ids.append(t)
            seen.add(t)
        ids_per_operand.append(ids)
    holding = Counter(i for ids in ids_per_operand for i in set(ids))
    queue = {t: [i for i in created[t] if holding[i] == 1] for t in chains}
    return ids_per_operand, queue


def einplan_to_einsum(pattern: str) -> str:
    """An einplan sum-product pattern (names, primes, ``...``) as a torch.einsum string.

    Each distinct axis gets its own letter.  A name repeated inside one operand is
    a diagonal if no other input has it; otherwise it is read as a matrix chain
    (SPEC, Meaning 3): left to right, an operand's first occurrence joins the
    name's current index, each further occurrence opens a new index that becomes
    current, and single occurrences in later operands join the current index.
    Output occurrences take, in order, the indices found in exactly one input.
    """
    if "|" in pattern:
        raise ValueError("clauses are not sum-product patterns")
    lhs, arrow, rhs = pattern.partition("->")
    if not arrow:
        raise ValueError("'->' is required")
    operands = [_split_operand(p) for p in lhs.split(",")]
    output = _split_operand(rhs)

    ids_per_operand, queue = chain_reading(operands)
    chains = set(queue)
    wanted = Counter(output)
    for t in chains:
        if wanted[t] not in (0, len(queue[t])):
            raise ValueError(f"output names chain {t!r} {wanted[t]} time(s), chain leaves {len(queue[t])}")
    queue = {t: list(q) for t, q in queue.items()}
    out_ids = [queue[t].pop(0) if t in chains else t for t in output]

    letters: dict = {}

    def letter(i) -> str:
        if i == "...":
            return "..."
        if i not in letters:
            if len(letters) >= len(LETTERS):
                raise ValueError("too many axes for einsum letters")
            letters[i] = LETTERS[len(letters)]
        return letters[i]

    lhs_text = ",".join("".join(letter(i) for i in ids) for ids in ids_per_operand)
    return lhs_text + "->" + "".join(letter(i) for i in out_ids)


# --- tensors and comparisons -------------------------------------------------------------------


def axis_base(axis: str) -> str:
    """A generated axis name without its primes: ``n''`` -> ``n``."""
    return axis.rstrip("'")


def operand_shapes(operands, sizes, ellipsis_dims) -> list[tuple[int, ...]]:
    """Each operand's shape: its axes' sizes, with operand k's ``...`` standing for ``ellipsis_dims[k]``."""
    shapes = []
    for k, op in enumerate(operands):
        shape = []
        for token in op:
            shape.extend(ellipsis_dims[k] if token == "..." else [sizes[axis_base(token)]])
        shapes.append(tuple(shape))
    return shapes


def einsum_shapes(original: str, sizes: str) -> list[tuple[int, ...]]:
    """Operand shapes from a data line's sizes: 'x=N' per letter, '@k=2x3' for operand k's '...' ('-': none)."""
    letters: dict[str, int] = {}
    ellipses: dict[int, tuple[int, ...]] = {}
    for item in sizes.split():
        key, value = item.split("=")
        if key.startswith("@"):
            ellipses[int(key[1:])] = () if value == "-" else tuple(int(v) for v in value.split("x"))
        else:
            letters[key] = int(value)
    operands, _ = parse_einsum(original)
    shapes = []
    for k, operand in enumerate(operands):
        shape: list[int] = []
        for token in operand:
            shape.extend(ellipses[k] if token == "..." else [letters[token]])
        shapes.append(tuple(shape))
    return shapes


def random_tensors(shapes, dtype=torch.float64, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(s), generator=generator, dtype=torch.float64).to(dtype) for s in shapes]


TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-4, 1e-4),
}


def assert_matches(got, want: torch.Tensor, context: str = "") -> None:
    """Same shape and dtype as torch's answer, values within the dtype's tolerance."""
    assert isinstance(got, torch.Tensor), f"{context}: einplan returned {type(got).__name__}"
    assert got.shape == want.shape, f"{context}: shape {tuple(got.shape)} != torch {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{context}: dtype {got.dtype} != torch {want.dtype}"
    rtol, atol = TOLERANCES[want.dtype]
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale, msg=lambda m: f"{context}\n{m}")


def call_bl(pattern: str, *tensors, lowering: str | None = None, **kwargs):
    """``einplan.bl`` with ``lowering`` forced.

    Skips the test if that lowering is not implemented yet, or if it is the
    unrolled lowering declining a step (it only writes out contractions over a
    few static terms: SPEC, "tiny static sizes").  Any other error propagates.
    """
    try:
        return einplan.bl(pattern, *tensors, lowering=lowering, **kwargs)
    except einplan.UnsupportedError as error:
        if lowering is not None and NOT_IMPLEMENTED in str(error):
            pytest.skip(f"{lowering}: {error}")
        if lowering == einplan.UNROLLED and "cannot compute" in str(error):
            pytest.skip(f"unrolled declines: {error}")
        raise


def lowering_id(lowering: str | None) -> str:
    return "default" if lowering is None else lowering


def load_benchmark(monkeypatch, script, name: str):
    """A script of benchmarks/ as a module named ``name``, imported as it runs (it puts its own
    folder on sys.path for its helpers); sys.modules and sys.path are restored after the test."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shipped_cost_model(monkeypatch, tmp_path):
    """Plan with the shipped cost constants, never a tuned cache file of this machine."""
    from einplan import calibration, cost

    monkeypatch.setenv("EINPLAN_CACHE_DIR", str(tmp_path))
    cost._loaded.clear()
    calibration.set_calibration(True)  # clears the calibrated models; EINPLAN_CALIBRATE=0 keeps it off
    yield
    cost._loaded.clear()
    calibration.set_calibration(True)


@pytest.fixture
def cpu_screen(monkeypatch):
    """Pin the CPU model's bfloat16 GEMM rate, whatever this machine has: ``cpu_screen(True)`` plans
    as on a CPU with AMX (large max/min/argmax/argmin are screened), ``cpu_screen(False)`` as on
    one without (never screened).  Returns the model."""
    from dataclasses import replace

    from einplan import cost, runtime

    def use(on: bool):
        model = replace(cost.CPU, screen_rate=4.0 * cost.CPU.gemm_rate if on else 0.0)
        monkeypatch.setitem(cost._loaded, "cpu", model)
        runtime.clear_cache()
        return model

    yield use
    runtime.clear_cache()
