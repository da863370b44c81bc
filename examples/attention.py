"""Multi-head attention scores and the softmax normaliser, written as einplan patterns.

Queries, keys and values arrive as (batch, tokens, heads*dim).  The composite
axis "(h d)" splits the last dim into heads, so there is no reshape or
transpose to get wrong:

    scores      "b q (h d), b k (h d) -> b h q k"
    normaliser  "b q (h d), b k (h d) -> b h q | logsumexp k"   (log of the softmax denominator)
    output      "b h q k, b k (h d) -> b q (h d)"
"""

import math

import torch

import einplan
from _timing import per_call, report
from einplan import EinplanError, bl

SCORES = "b q (h d), b k (h d) -> b h q k"
NORMALISER = "b q (h d), b k (h d) -> b h q | logsumexp k"
MIX = "b h q k, b k (h d) -> b q (h d)"


def attention_einplan(x_q, x_k, x_v, heads, normaliser=True):
    q = x_q * (x_q.shape[-1] // heads) ** -0.5
    scores = bl(SCORES, q, x_k, h=heads)
    if normaliser:
        log_z = bl(NORMALISER, q, x_k, h=heads)
    else:
        log_z = torch.logsumexp(scores, -1)
    weights = (scores - log_z[..., None]).exp()
    return bl(MIX, weights, x_v, h=heads), weights


def attention_naive(x_q, x_k, x_v, heads):
    """The usual reshape / transpose / matmul / softmax version."""
    b, t, width = x_q.shape
    d = width // heads

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, d).transpose(1, 2)  # b h t d

    q, k, v = split(x_q), split(x_k), split(x_v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, t, width), weights


def attention_einsum(x_q, x_k, x_v, heads):
    b, t, width = x_q.shape
    d = width // heads
    q = x_q.reshape(b, t, heads, d)
    k = x_k.reshape(b, -1, heads, d)
    v = x_v.reshape(b, -1, heads, d)
    weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d), dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, width), weights


torch.manual_seed(0)
batch, tokens, heads, dim = 4, 128, 8, 32
x_q, x_k, x_v = (torch.randn(batch, tokens, heads * dim) for _ in range(3))

for pattern, operands in ((SCORES, (x_q, x_k)), (NORMALISER, (x_q, x_k)), (MIX, (torch.rand(batch, heads, tokens, tokens), x_v))):
    print(f"=== {pattern}")
    try:
        print(einplan.code(pattern, *operands, h=heads))
    except EinplanError as error:
        print(f"not available in this version of einplan: {type(error).__name__}: {error}\n")

try:
    bl(NORMALISER, x_q, x_k, h=heads)
    use_normaliser = True
except EinplanError as error:
    print(f"the logsumexp clause is not available here ({error}); using torch.logsumexp for it")
    use_normaliser = False

out, weights = attention_einplan(x_q, x_k, x_v, heads, use_normaliser)
expected, expected_weights = attention_naive(x_q, x_k, x_v, heads)
torch.testing.assert_close(weights.sum(-1), torch.ones(batch, heads, tokens))
torch.testing.assert_close(weights, expected_weights)
torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
torch.testing.assert_close(out, attention_einsum(x_q, x_k, x_v, heads)[0], atol=1e-5, rtol=1e-4)
torch.testing.assert_close(
    out,
    torch.nn.functional.scaled_dot_product_attention(*(x.reshape(batch, tokens, heads, dim).transpose(1, 2) for x in (x_q, x_k, x_v)))
    .transpose(1, 2)
    .reshape(batch, tokens, heads * dim),
    atol=1e-5,
    rtol=1e-4,
)
print(f"attention output {tuple(out.shape)}: matches the naive version, torch.einsum and scaled_dot_product_attention")

report(
    f"attention, batch={batch} tokens={tokens} heads={heads} dim={dim} (per call)",
    [
        ("einplan patterns", per_call(attention_einplan, x_q, x_k, x_v, heads, use_normaliser)),
        ("reshape/transpose/matmul (naive)", per_call(attention_naive, x_q, x_k, x_v, heads)),
        ("torch.einsum", per_call(attention_einsum, x_q, x_k, x_v, heads)),
    ],
)
