"""The einplan demo: plan a batched quadratic form, show the code, check it against torch.einsum."""

import torch

import einplan
from einplan import bl

torch.manual_seed(0)
l = torch.randn(80, 20, 64, dtype=torch.float64)
A = torch.randn(64, 64, dtype=torch.float64)
pattern = "b1 b2 n, n n, b1 b2 n -> b1 b2"

print(einplan.explain(pattern, l, A, l))

out = bl(pattern, l, A, l)
# torch.einsum needs the primes written out: "b1 b2 n, n n" there would be diag(A)
reference = torch.einsum("xyn,nm,xym->xy", l, A, l)
error = (out - reference).abs().max().item()
print(f"result {tuple(out.shape)}, max |einplan - torch.einsum| = {error:.3g}")
assert error < 1e-9, error
print(
    "einsum's reading of the same letters (diagonal):",
    f"{torch.einsum('xyn,nn,xyn->xy', l, A, l)[0, 0].item():.6f} vs einplan {out[0, 0].item():.6f}",
)
