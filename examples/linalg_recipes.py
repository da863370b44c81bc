"""The batched linear-algebra recipes, each as one pattern (seed 001).

Each recipe in "Batched linear algebra in Python, Torch, and JAX" needs its own
trick with `@`, `None` indexing and `squeeze`.  With einplan each is one line
that names the axes; the planner picks matmul or multiply+sum by cost.  The
article measured multiply+sum at about half the time of matmul for a batch of
dot products on its CPU; the last table times both, forced, on this machine.
"""

import torch

import einplan
from _timing import per_call, report
from einplan import bl

torch.manual_seed(0)
b1, b2, m, n, p = 80, 20, 16, 64, 24

l_mat = torch.rand(b1, b2, m, n)  # a (b1 x b2) batch of (m x n) matrices
r_mat = torch.rand(b1, b2, n, p)  # a (b1 x b2) batch of (n x p) matrices
r_vec = torch.rand(b1, b2, n)  # a (b1 x b2) batch of (n,) arrays
l_vec = torch.rand(b1, b2, m)  # a (b1 x b2) batch of (m,) arrays
v = torch.rand(b1, b2, n)
w = torch.rand(b1, b2, n)
A1 = torch.rand(b1, b2, n, n)  # one matrix per batch element
A2 = torch.rand(n, n)  # one matrix shared across the batch

# name, einplan pattern, operands, the seed's recipe (naive), torch.einsum equation
recipes = [
    ("GEMM", "b1 b2 m n, b1 b2 n p -> b1 b2 m p", (l_mat, r_mat), lambda l, r: l @ r, "xymn,xynp->xymp"),
    ("GEMV", "b1 b2 m n, b1 b2 n -> b1 b2 m", (l_mat, r_vec), lambda l, r: (l @ r[..., None]).squeeze(-1), "xymn,xyn->xym"),
    ("vector-matrix", "b1 b2 m, b1 b2 m n -> b1 b2 n", (l_vec, l_mat), lambda l, r: (l[..., None, :] @ r).squeeze(-2), "xym,xymn->xyn"),
    ("dot", "b1 b2 n, b1 b2 n -> b1 b2", (v, w), lambda l, r: (l[..., None, :] @ r[..., None]).squeeze(), "xyn,xyn->xy"),
    ("outer", "b1 b2 m, b1 b2 n -> b1 b2 m n", (l_vec, v), lambda l, r: l[..., None] @ r[..., None, :], "xym,xyn->xymn"),
    (
        "quadratic form, shared A",
        "b1 b2 n, n n, b1 b2 n -> b1 b2",
        (v, A2, v),
        lambda l, A, r: (l[..., None, :] @ A @ r[..., None]).squeeze(-1).squeeze(-1),
        "xyn,nm,xym->xy",
    ),
    (
        "quadratic form, A per batch",
        "b1 b2 n, b1 b2 n n, b1 b2 n -> b1 b2",
        (v, A1, v),
        lambda l, A, r: (l[..., None, :] @ A @ r[..., None]).squeeze(-1).squeeze(-1),
        "xyn,xynm,xym->xy",
    ),
]

for name, pattern, operands, naive, equation in recipes:
    print(f"\n=== {name}: {pattern}")
    print(einplan.code(pattern, *operands))
    out = bl(pattern, *operands)
    torch.testing.assert_close(out, naive(*operands))
    torch.testing.assert_close(out, torch.einsum(equation, *operands))
    plan = einplan.runtime.plan_for(pattern, *operands)
    lowerings = ", ".join(step.kind for step in plan.steps if step.estimate is not None)
    print(f"result {tuple(out.shape)} matches the seed's recipe and torch.einsum; lowering: {lowerings}")

for name, pattern, operands, naive, equation in recipes:
    report(
        f"{name}  ({pattern})",
        [
            ("einplan", per_call(bl, pattern, *operands)),
            ("seed recipe (@)", per_call(naive, *operands)),
            ("torch.einsum", per_call(torch.einsum, equation, *operands)),
        ],
    )

# The seed's point about dot products: multiply+sum against matmul, forced.
dot = "b1 b2 n, b1 b2 n -> b1 b2"
report(
    "dot product, each lowering forced",
    [
        ("default plan", per_call(bl, dot, v, w)),
        ("elementwise-sum", per_call(lambda a, b: bl(dot, a, b, lowering=einplan.ELEMENTWISE), v, w)),
        ("matmul-broadcast", per_call(lambda a, b: bl(dot, a, b, lowering=einplan.MATMUL), v, w)),
    ],
)
