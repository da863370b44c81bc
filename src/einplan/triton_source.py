"""The source of the ``fused`` lowering's Triton kernel: one fixed template per reducer.

Each program of the kernel owns ``BLOCK_M`` rows of ``a @ b.T`` (batched by the
grid's second axis), loops over blocks of ``BLOCK_N`` columns, accumulates each
tile in float32 with ``tl.dot`` over blocks of ``BLOCK_K``, and folds the tile into
one running number per row: a max/min (with the first index, or the count of
tied columns), a logsumexp (shifted as torch.logsumexp shifts), or a sum.  Rows
and columns past the ends are masked.  Only a generated name is put into the
template: nothing of a user's pattern reaches this text.
"""

from __future__ import annotations

_HEAD = '''@triton.jit
def {name}(a, b, {outputs}, M, N, K, a_batch, a_row, a_k, b_batch, b_col, b_k,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    """{doc}"""
    batch = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    a_rows = a + batch * a_batch + rows[:, None] * a_row
    b_base = b + batch * b_batch
{start}    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        scores = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k in range(0, K, BLOCK_K):
            ks = k + tl.arange(0, BLOCK_K)
            x = tl.load(a_rows + ks[None, :] * a_k, mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
            y = tl.load(b_base + cols[None, :] * b_col + ks[:, None] * b_k, mask=(ks[:, None] < K) & (cols[None, :] < N), other=0.0)
            if WIDEN:  # Triton's interpreter multiplies bfloat16 tiles wrongly: widen them there
                x = x.to(tl.float32)
                y = y.to(tl.float32)
            scores = tl.dot(x, y, scores, input_precision=PRECISION)
        valid = cols[None, :] < N
{fold}    keep = rows < M
    at = batch * M + rows
{store}'''

_EXTREME_START = """    best = tl.full([BLOCK_M], float("-inf"), tl.float32)  # the running extreme ({sign}scores)
    first_nan = tl.full([BLOCK_M], N, tl.int64)  # the first NaN column (N: none yet)
{more}"""
_EXTREME_FOLD = """        nan = (scores != scores) & valid
        first_nan = tl.minimum(first_nan, tl.min(tl.where(nan, cols[None, :], N), 1))
        keyed = tl.where(nan | ~valid, float("-inf"), {sign}scores)
        tile = tl.max(keyed, 1)
{more}        best = tl.maximum(best, tile)
"""
_EXTREME_STORE = """    found = first_nan < N
    tl.store(value + at, tl.where(found, float("nan"), {sign}best), mask=keep)
{more}"""
_INDEX = (
    "    index_at = tl.zeros([BLOCK_M], tl.int64)  # its first column\n",
    "        index_at = tl.where(tile > best, tl.argmax(keyed, 1, tie_break_left=True) + start, index_at)\n",
    "    tl.store(index + at, tl.where(found, first_nan, index_at), mask=keep)\n",
)
_TIES = (
    "    count = tl.zeros([BLOCK_M], tl.float32)  # how many columns tie for it\n",
    "        tied = tl.sum(((keyed == tile[:, None]) & valid).to(tl.float32), 1)\n"
    "        count = tl.where(tile > best, tied, tl.where(tile == best, count + tied, count))\n",
    "    tl.store(ties + at, tl.where(found, 0.0, count), mask=keep)\n",
)
_LOGSUMEXP = (
    '    high = tl.full([BLOCK_M], float("-inf"), tl.float32)  # the running max (NaN aside)\n'
    "    total = tl.zeros([BLOCK_M], tl.float32)  # sum of exp(scores - shift)\n",
    '        clean = tl.where((scores != scores) | ~valid, float("-inf"), scores)\n'
    "        new_high = tl.maximum(high, tl.max(clean, 1))\n"
    '        shift = tl.where(tl.abs(new_high) == float("inf"), 0.0, new_high)  # torch.logsumexp\'s shift\n'
    '        old_shift = tl.where(tl.abs(high) == float("inf"), 0.0, high)\n'
    "        total = tl.where(total == 0.0, 0.0, total * tl.exp(old_shift - shift))\n"
    "        total += tl.sum(tl.where(valid, tl.exp(scores - shift[:, None]), 0.0), 1)\n"
    "        high = new_high\n",
    '    shift = tl.where(tl.abs(high) == float("inf"), 0.0, high)\n    tl.store(value + at, tl.log(total) + shift, mask=keep)\n',
)
_SUM = (
    "    total = tl.zeros([BLOCK_M], tl.float32)  # the running sum\n",
    "        total += tl.sum(tl.where(valid, scores, 0.0), 1)\n",
    "    tl.store(value + at, total, mask=keep)\n",
)


def kernel_source(name: str, reducer: str, ties: bool) -> str:
    """The Triton source of one kernel: ``name`` is a generated identifier, everything else is
    this template (``ties``: a max/min also counts the columns tied for it, for its gradient)."""
    if not name.isidentifier():
        raise ValueError(f"not a generated name: {name!r}")
    doc = f"Each row's {'sum' if reducer == 'mean' else reducer} over the columns of a @ b.T, one block of rows per program."
    if reducer in ("logsumexp", "sum", "mean"):
        start, fold, store = _LOGSUMEXP if reducer == "logsumexp" else _SUM
        outputs = "value"
    else:
        sign = "-" if reducer in ("min", "argmin") else ""
        extra = [_INDEX] if reducer.startswith("arg") else [_TIES] if ties else []
        outputs = "value" + "".join(", index" if part is _INDEX else ", ties" for part in extra)
        start = _EXTREME_START.format(sign=sign, more="".join(p[0] for p in extra))
        fold = _EXTREME_FOLD.format(sign=sign, more="".join(p[1] for p in extra))
        store = _EXTREME_STORE.format(sign=sign, more="".join(p[2] for p in extra))
    return _HEAD.format(name=name, outputs=outputs, doc=doc, start=start, fold=fold, store=store)
