"""einplan: a shape-annotated einsum DSL that plans and emits readable PyTorch code.

    >>> from einplan import bl
    >>> bl("b1 b2 n, n n, b1 b2 n -> b1 b2", l, A, l)   # batched quadratic form

The pipeline, one module per stage: ``parse`` (grammar -> AST), ``semantics``
(axes, primes, chains, sizes, jaxtyping check), ``plan`` (path, lowering per
step, ``cost`` model), ``codegen`` (source), ``runtime`` (cache, ``bl``,
``Kernel``) and ``cli``.
"""

from .errors import EinplanError, PatternError, PatternSyntaxError, ShapeError, UnsupportedError
from .plan import CHUNKED, ELEMENTWISE, LOWERINGS, MATMUL, UNROLLED
from .runtime import bl, cache_info, clear_cache, code, explain
from .kernels import Kernel, kernel

__version__ = "0.1.0"

__all__ = [
    "bl",
    "code",
    "explain",
    "kernel",
    "Kernel",
    "cache_info",
    "clear_cache",
    "EinplanError",
    "PatternError",
    "PatternSyntaxError",
    "ShapeError",
    "UnsupportedError",
    "LOWERINGS",
    "MATMUL",
    "ELEMENTWISE",
    "UNROLLED",
    "CHUNKED",
    "__version__",
]
