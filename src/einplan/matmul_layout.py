"""How matmul-broadcast lays one step out for ``torch.matmul``: which operand is on the left, and
its batch, row (m), column (n) and contracted groups.

The layout decides the code (one plain ``torch.matmul``, a vector for torch's dot
and mv, or grouped views around it) and what it costs (the copies a merge of
permuted dims makes, a one-column result); :mod:`einplan.lowerings` prices and
emits from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contraction import Contraction, Value


@dataclass(frozen=True)
class MatmulLayout:
    """The groups of one matmul: ``left`` is batch + m + contracted, ``right`` batch + contracted + n."""

    left: Value
    right: Value
    batch: list[str]
    m: list[str]
    n: list[str]
    contracted: list[str]

    @property
    def direct(self) -> bool:
        """One axis per group (or torch folding the left's leading dims): no flatten, no unflatten."""
        return len(self.contracted) == 1 and len(self.n) == 1 and (len(self.m) == 1 or (not self.batch and bool(self.m)))

    @property
    def vector(self) -> bool:
        """A dot product or a matrix times a vector, unbatched: torch.matmul of a vector runs torch's
        dot and mv, which a 1-wide GEMM does not (a dot product of 10^6 as a 1x1 GEMM ran 30x
        slower than ``torch.dot``; a matvec 1.6x slower than ``torch.mv`` at 1024x64)."""
        return not self.batch and len(self.contracted) == 1 and len(self.m) <= 1 and not self.n

    @property
    def out_axes(self) -> tuple[str, ...]:
        return tuple(self.batch + self.m + self.n)


def rows_times_matrices(step: Contraction, left: Value, right: Value) -> bool:
    """Whether a batch of vectors (``right``: no axis of its own) times a batch of matrices stored
    contracted axes first (``left``: ``b k n``) runs as rows times the matrices (M = 1) rather than
    the matrices transposed times columns (N = 1): torch's batched GEMM ran the first 7.5x faster
    (64 x 1x128 by 128x128: 88 us against 662 us on 2 cores of an AMD EPYC).  Either order gives
    the same result axes, since the vectors add none."""
    own = [x for x in left.axes if x not in right.axes]
    contracted = [x for x in left.axes if x in right.axes and x not in step.keep]
    batched = any(x in step.keep for x in left.axes if x in right.axes)
    if not batched or not own or not contracted or any(x not in left.axes for x in right.axes):
        return False
    return max(left.axes.index(x) for x in contracted) < min(left.axes.index(x) for x in own)


def matmul_layout(step: Contraction) -> MatmulLayout:
    """Batch axes (in both operands, kept) lead on both sides, so torch never broadcasts
    one operand against the other's batch and never copies it."""
    rank = step.rank

    def first_private(v: Value, w: Value) -> tuple:
        return min((rank(x) for x in v.axes if x not in w.axes), default=(1e9,))

    left, right = (step.a, step.b) if first_private(step.a, step.b) <= first_private(step.b, step.a) else (step.b, step.a)
    if rows_times_matrices(step, left, right):
        left, right = right, left
    shared = [x for x in left.axes if x in right.axes]
    return MatmulLayout(
        left,
        right,
        batch=sorted((x for x in shared if x in step.keep), key=rank),
        m=sorted((x for x in left.axes if x not in right.axes), key=rank),
        n=sorted((x for x in right.axes if x not in left.axes), key=rank),
        contracted=[x for x in shared if x not in step.keep],
    )


def copies_made(step: Contraction, layout: MatmulLayout) -> tuple[int, int]:
    """Elements torch copies on each side: merging dims that a permute moved apart copies them."""
    if layout.direct:
        return 0, 0
    copies = []
    for value, groups in ((layout.left, (layout.m, layout.contracted)), (layout.right, (layout.contracted, layout.n))):
        order = layout.batch + groups[0] + groups[1]
        permutation = [value.axes.index(a) for a in order]
        merged = any(len(g) != 1 for g in groups)
        copies.append(step.numel(order) if merged and permutation != sorted(permutation) else 0)
    return copies[0], copies[1]
