"""torch.autograd.gradcheck through einplan's generated code, float64, each lowering forced.

gradcheck compares the analytic gradient of ``bl`` with finite differences, and
the result itself is compared with torch.einsum first so that a wrong forward
value cannot pass as a consistent gradient.
"""

from __future__ import annotations

import pytest
import torch

import einplan
from conftest import ALL_LOWERINGS, assert_matches, call_bl, lowering_id

# (einplan pattern, torch.einsum equation, shapes)
CASES = [
    ("b n, m n -> b m", "bn,mn->bm", [(3, 4), (2, 4)]),
    ("b1 b2 n, n n, b1 b2 n -> b1 b2", "xyn,nm,xym->xy", [(2, 3, 4), (4, 4), (2, 3, 4)]),
    ("b i j, b j k -> b i k", "bij,bjk->bik", [(2, 3, 3), (2, 3, 3)]),
    ("n n -> n", "ii->i", [(4, 4)]),
    ("b n n -> b", "bii->b", [(2, 3, 3)]),
    ("... i, ... i -> ...", "...i,...i->...", [(2, 1, 3), (4, 3)]),
    ("b1 b2 m, b1 b2 n -> b1 b2 m n", "xym,xyn->xymn", [(2, 2, 3), (2, 2, 2)]),
    (", ix -> ix", ",i->i", [(), (3,)]),
    ("ix jx, jx kx, kx lambda -> lambda ix", "ij,jk,kl->li", [(2, 3), (3, 4), (4, 2)]),
    ("n n, b n -> b n", "nm,bm->bn", [(3, 3), (2, 3)]),
    ("in sum, sum -> in", "ij,j->i", [(3, 4), (4,)]),
    ("a b c, a -> b", "abc,a->b", [(2, 3, 2), (2,)]),
]


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradcheck(case, lowering):
    pattern, equation, shapes = case
    g = torch.Generator().manual_seed(7)
    tensors = tuple(torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes)
    assert_matches(
        call_bl(pattern, *tensors, lowering=lowering).detach(),
        torch.einsum(equation, *tensors).detach(),
        f"{pattern!r} lowering={lowering}",
    )
    assert torch.autograd.gradcheck(lambda *xs: einplan.bl(pattern, *xs, lowering=lowering), tensors, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("lowering", ALL_LOWERINGS, ids=lowering_id)
def test_gradient_equals_einsum_gradient_with_shared_tensor(lowering):
    """The same tensor passed twice (l in lᵀAl): its gradient sums both uses."""
    g = torch.Generator().manual_seed(3)
    l = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    call_bl("b1 b2 n, n n, b1 b2 n -> b1 b2", l, A, l, lowering=lowering).sum().backward()
    got_l, got_A = l.grad.clone(), A.grad.clone()
    l.grad = A.grad = None
    torch.einsum("xyn,nm,xym->xy", l, A, l).sum().backward()
    assert_matches(got_l, l.grad, "grad l")
    assert_matches(got_A, A.grad, "grad A")
