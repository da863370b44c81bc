"""A shared matrix times a batch of vectors, without copying the matrix (seed 000).

A is (m, n), B is a batch of b vectors (b, n); C[i] = A @ B[i].  In einplan's
words that is one pattern, "b n, m n -> b m": the planner folds the batch into
one matmul against A's transpose (a view), so A is never expanded or copied.
"""

import torch

import einplan
from _timing import per_call, report
from einplan import bl


def inefficient_matmul(A, B):
    """The loop from the question: one matrix-vector product per batch row."""
    b = B.shape[0]
    C = torch.empty((b, A.shape[0]), dtype=A.dtype, device=A.device)
    for i in range(b):
        C[i] = A @ B[i]
    return C


torch.manual_seed(0)
m, n, b = 1000, 500, 100
A = torch.randn(m, n)
B = torch.randn(b, n)

pattern = "b n, m n -> b m"
print(einplan.explain(pattern, B, A))

C = bl(pattern, B, A)
torch.testing.assert_close(C, inefficient_matmul(A, B), atol=1e-4, rtol=1e-4)
torch.testing.assert_close(C, torch.einsum("bn,mn->bm", B, A), atol=1e-4, rtol=1e-4)
print(f"\n{pattern}: result {tuple(C.shape)} matches the loop and torch.einsum")

# The same product when the vectors come as a (b, n, 1) stack: a literal 1 is dropped.
B1 = B[:, :, None]
torch.testing.assert_close(bl("b n 1, m n -> b m", B1, A), C)

# Keep the plan: a kernel whose batch axis may change size between calls.
matvec = einplan.kernel(pattern, B, A, dynamic="b", name="matvec")
print("\nthe kernel's function (b is dynamic, so its annotation leaves b free):")
print(matvec.source[matvec.source.index("def matvec") :])
for rows in (17, 64, 100):
    torch.testing.assert_close(matvec(B[:rows], A), inefficient_matmul(A, B[:rows]), atol=1e-4, rtol=1e-4)

report(
    f"b={b} vectors times a shared {m}x{n} matrix (per call)",
    [
        ("einplan bl", per_call(bl, pattern, B, A)),
        ("einplan kernel (check=False)", per_call(einplan.kernel(pattern, B, A, check=False), B, A)),
        ("loop (naive)", per_call(inefficient_matmul, A, B)),
        ("torch.einsum", per_call(torch.einsum, "bn,mn->bm", B, A)),
    ],
)
