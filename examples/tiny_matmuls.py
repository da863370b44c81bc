"""Many tiny 2x2 and 3x3 matmuls (seed 002).

The question measured torch.bmm at 40x the time of written-out arithmetic for a
large batch of 2x2 products on a GPU.  In einplan the product is one pattern,
"b i j, b j k -> b i k"; the planner prices matmul, multiply+sum and
written-out ("unrolled") code for these sizes and this device, and picks one.
This script shows the pick, checks it, and times it against torch.bmm, the
written-out version, multiply+sum and torch.einsum on this machine.
"""

import torch

import einplan
from _timing import per_call, report
from einplan import EinplanError, bl


def fast_2x2_bmm(a, b):
    """The written-out 2x2 product from the question."""
    return torch.stack(
        [
            torch.stack(
                [
                    a[..., 0, 0] * b[..., 0, 0] + a[..., 0, 1] * b[..., 1, 0],
                    a[..., 1, 0] * b[..., 0, 0] + a[..., 1, 1] * b[..., 1, 0],
                ],
                dim=-1,
            ),
            torch.stack(
                [
                    a[..., 0, 0] * b[..., 0, 1] + a[..., 0, 1] * b[..., 1, 1],
                    a[..., 1, 0] * b[..., 0, 1] + a[..., 1, 1] * b[..., 1, 1],
                ],
                dim=-1,
            ),
        ],
        dim=-1,
    )


def broadcast_bmm(a, b):
    """The multiply+sum suggested in the replies."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(dim=-2)


torch.manual_seed(0)
batch = 65536
pattern = "b i j, b j k -> b i k"

for size in (2, 3):
    a = torch.randn(batch, size, size)
    b = torch.randn(batch, size, size)
    print(f"\n=== {batch} products of {size}x{size} matrices: {pattern}")
    print(einplan.explain(pattern, a, b))
    out = bl(pattern, a, b)
    torch.testing.assert_close(out, torch.bmm(a, b), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, broadcast_bmm(a, b), atol=1e-5, rtol=1e-5)
    if size == 2:
        torch.testing.assert_close(out, fast_2x2_bmm(a, b), atol=1e-5, rtol=1e-5)
    rows = [("einplan (default plan)", per_call(bl, pattern, a, b))]
    for lowering in (einplan.UNROLLED, einplan.ELEMENTWISE, einplan.MATMUL):
        try:
            torch.testing.assert_close(bl(pattern, a, b, lowering=lowering), out, atol=1e-5, rtol=1e-5)
        except EinplanError as error:
            print(f"{lowering}: {error}")
            continue
        rows.append((f"einplan, {lowering} forced", per_call(lambda x, y: bl(pattern, x, y, lowering=lowering), a, b)))
    rows += [
        ("torch.bmm (naive)", per_call(torch.bmm, a, b)),
        ("multiply+sum", per_call(broadcast_bmm, a, b)),
        ("torch.einsum", per_call(torch.einsum, "bij,bjk->bik", a, b)),
    ]
    if size == 2:
        rows.append(("written out", per_call(fast_2x2_bmm, a, b)))
    report(f"{batch} x ({size}x{size} @ {size}x{size}), per call", rows)
