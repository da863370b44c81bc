"""A contrastive (InfoNCE) loss and a hard-negative term, trained through einplan.

    loss = mean_q( logsumexp_k <q, k> / t  -  <q, k_q> / t )  +  mean_q( max_k <q, k> )

The log-partition ``q d, k d -> q | logsumexp k`` and the hardest negative
``q d, k d -> q | max k`` never build the q x k matrix of scores, in the
forward or in the backward: when autograd records the call, each chunked step
is an autograd function whose backward runs over the same tiles, recomputing
each one.  The gradients are checked against the materialized torch form.
"""

import torch

import einplan
from einplan import bl

torch.manual_seed(0)
Q = torch.randn(3000, 64, dtype=torch.float64, requires_grad=True)
K = torch.randn(3000, 64, dtype=torch.float64, requires_grad=True)
temperature = 0.5
limit = 4 * 2**20  # bytes: the q x k scores (72 MB) would not fit


def loss_einplan(Q, K):
    partition = bl("q d, k d -> q | logsumexp k", Q / temperature, K, memory_limit=limit)
    positives = bl("q d, q d -> q", Q, K) / temperature
    hardest = bl("q d, k d -> q | max k", Q, K, memory_limit=limit)
    return (partition - positives).mean() + hardest.mean()


def loss_torch(Q, K):
    scores = Q @ K.T
    partition = torch.logsumexp(scores / temperature, 1)
    positives = (Q * K).sum(1) / temperature
    return (partition - positives).mean() + scores.amax(1).mean()


print(einplan.explain("q d, k d -> q | logsumexp k", Q / temperature, K, memory_limit=limit))
got = torch.autograd.grad(loss_einplan(Q, K), (Q, K))
want = torch.autograd.grad(loss_torch(Q, K), (Q, K))
for name, g, w in zip("QK", got, want, strict=True):
    error = (g - w).abs().max().item()
    print(f"gradient of {name}: max difference from torch's materialized form {error:.1e}")
    if error > 1e-9:
        raise SystemExit(f"gradient of {name} differs from torch's by {error}")

# a few steps of gradient descent on the loss, as a training loop would run them
optimizer = torch.optim.SGD([Q, K], lr=0.1)
for step in range(3):
    optimizer.zero_grad()
    loss = loss_einplan(Q, K)
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.4f}")
