"""einplan: a shape-annotated einsum DSL that plans and emits readable PyTorch code.

    >>> from einplan import bl
    >>> bl("b1 b2 n, n n, b1 b2 n -> b1 b2", l, A, l)   # batched quadratic form

The pipeline, one module per stage: ``parse`` (grammar -> AST), ``resolve``
(primes, chains), ``bind`` (sizes), ``signatures`` (jaxtyping annotations and
checks), ``plan`` (path, lowering per step, ``cost`` model), ``codegen`` and
``source`` (source text), ``programs`` (the plan cache), ``tracing``
(torch.compile), ``runtime`` (``bl``, ``einsum``, ``code``), ``explain``, ``kernels`` and
``cli``.
"""

from . import distributed  # noqa: F401  (DTensor operands: their programs, and einplan.distributed.bl)
from .calibration import set_calibration
from .errors import EinplanError, PatternError, PatternSyntaxError, ShapeError, UnsupportedError
from .explain import explain  # noqa: E402  (binds the function over the module of that name)
from .kernels import Kernel, kernel
from .measuring import set_measuring
from .packing import pack, unpack
from .plan import CHUNKED, ELEMENTWISE, FUSED, LOWERINGS, MATMUL, UNROLLED
from .runtime import bl, cache_info, clear_cache, code, einsum
from .version import __version__

__all__ = [
    "bl",
    "einsum",
    "code",
    "explain",
    "pack",
    "unpack",
    "kernel",
    "Kernel",
    "cache_info",
    "clear_cache",
    "set_calibration",
    "set_measuring",
    "EinplanError",
    "PatternError",
    "PatternSyntaxError",
    "ShapeError",
    "UnsupportedError",
    "FUSED",
    "LOWERINGS",
    "MATMUL",
    "ELEMENTWISE",
    "UNROLLED",
    "CHUNKED",
    "__version__",
]
