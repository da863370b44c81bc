"""Every row of the README's "Coming from einops / torch.einsum" table, run both ways.

The table's second and third cells are Python expressions: the einops or torch call, and the
einplan one.  Each row is evaluated here on float64 tensors (booleans for ``mask``) and the two
results must agree: exactly for rearrangements, repeats, any/all and packing, to 1e-12 for sums
of products.
"""

from __future__ import annotations

import re
from pathlib import Path

import einops
import pytest
import torch

import einplan
from einplan import bl

README = Path(__file__).parents[1] / "README.md"
HEADING = "## Coming from einops / torch.einsum"


def _rows() -> list[tuple[str, str, str]]:
    text = README.read_text()
    section = text[text.index(HEADING) :]
    section = section[: section.index("\n## ", len(HEADING))]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        peer, mine = (c.strip("`").replace("\\|", "|") for c in cells[1:])
        rows.append((cells[0], peer, mine))
    return rows


ROWS = _rows()


def _namespace() -> dict:
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    head, tail = rand(2, 3, 4), rand(2, 4)
    packed, shapes = einops.pack([head, tail], "b * d")
    return {
        "torch": torch,
        "einops": einops,
        "einplan": einplan,
        "bl": bl,
        "x": rand(3, 4),
        "kv": rand(2, 3, 5, 4),
        "img": rand(2, 3, 4, 5),
        "mask": rand(2, 3, 4) > 0.5,
        "head": head,
        "tail": tail,
        "packed": packed,
        "shapes": shapes,
        "q": rand(2, 3, 5, 4),
        "k": rand(2, 3, 6, 4),
        "a": rand(3, 4),
        "w": rand(4, 5),
        "t": rand(2, 3, 3),
        "u": rand(2, 3, 4),
        "s": rand(2, 1, 3, 4),
    }


def _same(mine, peer) -> None:
    if isinstance(peer, torch.Size):  # pack's shapes: einops returns torch.Size for torch tensors
        assert isinstance(mine, torch.Size) and mine == peer
        return
    if isinstance(peer, (list, tuple)):
        assert isinstance(mine, (list, tuple)) and len(mine) == len(peer)
        for m, p in zip(mine, peer, strict=True):
            _same(m, p)
        return
    assert isinstance(peer, torch.Tensor), type(peer)
    assert mine.shape == peer.shape and mine.dtype == peer.dtype
    if peer.dtype.is_floating_point:
        torch.testing.assert_close(mine, peer, rtol=1e-12, atol=1e-12)
    else:
        assert torch.equal(mine, peer)


def test_the_table_has_every_form():
    forms = " ".join(form for form, _, _ in ROWS)
    for needed in ("repeat", "anonymous", "group", "product", "any", "pack", "unpack", "torch.einsum", "diagonal", "chain"):
        assert needed in forms, needed
    assert len(ROWS) >= 15


@pytest.mark.parametrize("form, peer, mine", ROWS, ids=[r[0] for r in ROWS])
def test_each_row_computes_the_same_both_ways(form, peer, mine):
    space = _namespace()
    want = eval(peer, space)  # noqa: S307 - the README's own table
    got = eval(mine, space)  # noqa: S307
    _same(got, want)
