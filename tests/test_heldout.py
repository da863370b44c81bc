"""Held-out einsum expressions from other projects' test suites, checked against torch.einsum.

tests/data/heldout_einsum.txt holds one expression per line: the original
einsum string, its einplan spelling, and the sizes to use.  Each runs in
float64 and float32 with the default plan and with the matmul-broadcast and
elementwise-sum lowerings forced, and in float64 with chunked-reduction forced;
each must equal torch.einsum on the original string.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import einplan
from conftest import (
    IMPLEMENTED,
    assert_matches,
    einsum_shapes,
    einsum_to_einplan,
    random_tensors,
)

DATA = Path(__file__).parent / "data" / "heldout_einsum.txt"


def _read() -> list[tuple[int, str, str, str]]:
    rows = []
    for number, line in enumerate(DATA.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        original, pattern, sizes = line.split("\t")
        rows.append((number, original, pattern, sizes))
    return rows


ROWS = _read()


def test_file_is_large_and_consistent():
    """At least 300 expressions; every pattern is the translation of its original."""
    assert len(ROWS) >= 300, len(ROWS)
    originals = [r[1].replace(" ", "") for r in ROWS]
    assert len(set(originals)) == len(originals), "duplicate expressions"
    for number, original, pattern, sizes in ROWS:
        assert einsum_to_einplan(original) == pattern, f"line {number}: {original!r}"
        einsum_shapes(original, sizes)  # parses
    assert any("..." in r[1] for r in ROWS), "no ellipsis expression"
    assert any(op == "" for r in ROWS for op in r[1].replace(" ", "").split("->")[0].split(",")), "no 0-d operand"


# The default plan and the two general lowerings in float64 and float32, plus the
# chunked-reduction lowering in float64.  The unrolled lowering declines most of
# these steps (it writes out a few static terms only); test_hypothesis forces it.
COMBOS = [(lowering, dtype) for dtype in (torch.float64, torch.float32) for lowering in IMPLEMENTED]
COMBOS.append((einplan.CHUNKED, torch.float64))


@pytest.mark.parametrize("row", ROWS, ids=[f"L{r[0]}-{r[1].replace(' ', '')}" for r in ROWS])
def test_heldout(row):
    """The default plan and each lowering in COMBOS; all runs happen even if one
    fails, and the failure lists every failing run."""
    number, original, pattern, sizes = row
    shapes = einsum_shapes(original, sizes)
    failures = []
    for lowering, dtype in COMBOS:
        tensors = random_tensors(shapes, dtype=dtype, seed=number)
        want = torch.einsum(original, *tensors)
        context = f"line {number}: {original!r} as {pattern!r}, shapes {shapes}, lowering={lowering}, {dtype}"
        try:
            got = einplan.bl(pattern, *tensors, lowering=lowering)
            assert_matches(got, want, context)
        except Exception as error:  # noqa: BLE001 - every run is reported below
            failures.append(f"{context}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)
