"""The largest inner product over all pairs, its value and its index (seed 003).

A is (M, D), B is (N, D).  The value is "m d, n d -> | max m n" and the pair
that attains it is "m d, n d -> | argmax m n": the clause after "|" reduces the
axes the output drops.  With a memory limit the planner may reduce in chunks
instead of building the whole M x N matrix of products.
"""

import sys

import torch

import einplan
from _timing import per_call, report
from einplan import EinplanError, bl


def max_inner_product_naive(A, B):
    """The loops from the question: one dot product per pair."""
    best = -float("inf")
    for i in range(A.shape[0]):
        for j in range(B.shape[0]):
            best = max(best, torch.dot(A[i], B[j]).item())
    return best


def max_inner_product_mm(A, B):
    return torch.max(torch.mm(A, B.T))


torch.manual_seed(0)
A = torch.randn(100, 128, dtype=torch.float64)
B = torch.randn(200, 128, dtype=torch.float64)
value_pattern = "m d, n d -> | max m n"
index_pattern = "m d, n d -> | argmax m n"

try:
    print(einplan.explain(value_pattern, A, B))
    print(einplan.code(index_pattern, A, B))
    value = bl(value_pattern, A, B)
    i, j = bl(index_pattern, A, B)
except EinplanError as error:  # reductions are newer than the rest of the language
    print(f"this version of einplan cannot run the clause yet:\n{type(error).__name__}: {error}")
    sys.exit(0)

naive = max_inner_product_naive(A, B)
assert abs(value.item() - naive) < 1e-9, (value.item(), naive)
assert abs(torch.dot(A[i], B[j]).item() - naive) < 1e-9
torch.testing.assert_close(value, torch.einsum("md,nd->mn", A, B).max())
print(f"max inner product {value.item():.6f} at pair ({i.item()}, {j.item()}), as the loops find")

# Without the full M x N matrix: ask for a chunked reduction under a memory limit.
limit = A.shape[0] * B.shape[0] * A.element_size() // 8
try:
    chunked = einplan.code(value_pattern, A, B, memory_limit=limit)
    print(f"\nwith memory_limit={limit} bytes:\n{chunked}")
    torch.testing.assert_close(bl(value_pattern, A, B, memory_limit=limit), value)
except EinplanError as error:
    print(f"\nmemory_limit={limit}: {type(error).__name__}: {error}")

report(
    f"max inner product of {A.shape[0]} x {B.shape[0]} pairs, D={A.shape[1]} (per call)",
    [
        ("einplan value", per_call(bl, value_pattern, A, B)),
        ("einplan index", per_call(bl, index_pattern, A, B)),
        ("loops (naive)", per_call(max_inner_product_naive, A, B)),
        ("torch.mm + max", per_call(max_inner_product_mm, A, B)),
        ("torch.einsum + max", per_call(lambda a, b: torch.einsum("md,nd->mn", a, b).max(), A, B)),
    ],
)
