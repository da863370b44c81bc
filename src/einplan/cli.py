"""The ``einplan`` command: explain, codegen, bench and tune (also ``python -m einplan``).

This module is the argument parser and ``main``; the commands themselves are
in :mod:`einplan.cli_commands`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import plan as planner
from .cli_commands import (  # noqa: F401  (part of this module's interface since before the split)
    COMPILED_HELP,
    UsageError,
    cmd_bench,
    cmd_codegen,
    cmd_explain,
    cmd_tune,
    einsum_reference,
    parse_shape,
    parse_sizes,
    shapes_from_sizes,
)
from .errors import EinplanError
from .version import __version__

LANGUAGE = """\
the pattern language:
  pattern  := inputs -> output ( | reducer axes )...
  Operands are separated by commas, axes by spaces.  A name is an axis whose
  size comes from the shapes; every occurrence must agree.

  b n, m n -> b m                  each row of x times a shared A (x @ A.T); A is never copied
  b1 b2 n, b1 b2 n -> b1 b2        batched dot product
  b1 b2 n, n n, b1 b2 n -> b1 b2   batched quadratic form l.A.l: "n n" beside other operands
                                   is a chain link, read as b1 b2 n, n n', b1 b2 n' -> b1 b2
  b i j, b j k -> b i k            batched matmul (also many tiny 2x2 / 3x3 ones)
  b n, n n' -> b n'                primes: n' is another index of n's size
  n n -> n          b n n -> b     diagonal, batched trace (a name repeated, in no other input)
  ... i, ... i -> ...              any batch dims ("*batch" names a group: two may differ)
  b (h d), h d e -> b h e          composite axis: one dim made of h and d (needs h=8 or d=...)
  b 3, 3 k -> b k                  a number is an axis of that fixed size
  m d, n d -> | max m n            the largest inner product over all pairs
  q d, k d -> q | argmax k         for each query, the index of the best key
  q d, k d -> q | logsumexp k      log-partition of the scores
  reducers: sum max min mean logsumexp argmax argmin (argmax/argmin last)

shapes, one per operand in order:   -s 80x20x64 -s 64x64 -s 80x20x64   ('()' is 0-d)
or sizes by axis name:               --size b1=80 b2=20 n=64
"""

EXAMPLES = """\
examples:
  einplan explain "b1 b2 n, n n, b1 b2 n -> b1 b2" -s 80x20x64 -s 64x64 -s 80x20x64
  einplan explain "b (h d), h d e -> b h e" --size b=32 h=8 d=64 e=16
  einplan bench "b1 b2 n, b1 b2 n -> b1 b2" --size b1=80 b2=20 n=64
  einplan codegen "b n, m n -> b m" -s 100x500 -s 1000x500 --name matvec -o kernels.py
  einplan codegen -k "quad = b1 b2 n, n n, b1 b2 n -> b1 b2 : b1=80 b2=20 n=64" \\
                  -k "dot = b n, b n -> b : 4096x64 4096x64" -o kernels.py
  python -c "import kernels; help(kernels)"
"""

DTYPES = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
)


# --- the parser ------------------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=100)


def _planning_options(parser: argparse.ArgumentParser, shapes_required_help: str) -> None:
    parser.add_argument("-s", "--shape", action="extend", nargs="+", default=[], metavar="SHAPE", help=shapes_required_help)
    parser.add_argument(
        "--size",
        action="extend",
        nargs="+",
        default=[],
        metavar="AXIS=N",
        help="sizes by axis name, e.g. --size b1=80 b2=20 n=64 (alone: builds the shapes; "
        "with -s: extra constraints such as h=8 for a composite (h d))",
    )
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to plan for (default float32)")
    parser.add_argument("--device", default="cpu", help="device to plan for: cpu (default) or cuda")
    parser.add_argument("--memory-limit", metavar="BYTES", help="bytes an intermediate may take, e.g. 64M")


def _plan_choices(parser: argparse.ArgumentParser) -> None:
    """--lowering, --compiled, --grad and --einsum: choices about the plan itself (explain, codegen; bench times them all)."""
    parser.add_argument("--lowering", choices=planner.LOWERINGS, help="force one lowering for every step")
    parser.add_argument("--compiled", action="store_true", help=COMPILED_HELP)
    parser.add_argument(
        "--grad",
        action="store_true",
        help="plan for training: each chunked step is an autograd function whose backward runs in chunks too",
    )
    parser.add_argument(
        "--einsum",
        action="store_true",
        help="PATTERN is a torch.einsum equation ('bij,bjk->bik'), read as einplan.einsum reads it (a repeated letter is a diagonal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="einplan",
        formatter_class=_Formatter,
        description="einplan: write an einsum pattern in the words of your shapes; einplan plans it,\n"
        "shows the torch code it runs, times it, and saves that code as a kernel.\n\n" + LANGUAGE,
        epilog=EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"einplan {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _explain_parser(commands)
    _codegen_parser(commands)
    _bench_parser(commands)
    _tune_parser(commands)
    return parser


SHAPE_HELP = "an operand's shape, e.g. 80x20x64; repeat (or list) one per operand, in order"


def _explain_parser(commands) -> None:
    explain = commands.add_parser(
        "explain",
        formatter_class=_Formatter,
        help="the primed pattern, sizes, path, each step's lowering and cost, and the source",
        description="Plan PATTERN for the given shapes and print the primed pattern, the axis sizes, "
        "the contraction path, each step's lowering with its FLOPs, bytes and memory estimate, "
        "and the generated source.\n\n" + LANGUAGE,
        epilog='example:\n  einplan explain "b1 b2 n, n n, b1 b2 n -> b1 b2" -s 80x20x64 -s 64x64 -s 80x20x64\n',
    )
    explain.add_argument("pattern", metavar="PATTERN", help='e.g. "b1 b2 n, n n, b1 b2 n -> b1 b2"')
    _planning_options(explain, SHAPE_HELP)
    _plan_choices(explain)
    explain.set_defaults(run=cmd_explain)


def _codegen_parser(commands) -> None:
    codegen = commands.add_parser(
        "codegen",
        formatter_class=_Formatter,
        help="write planned kernels into one Python module (imports only torch and jaxtyping)",
        description="Plan one or more patterns and write them as named functions into one standalone "
        "module that imports only torch and jaxtyping.  Each function is specialised to its "
        "shapes; its jaxtyping annotations pin them.\n\n"
        "A kernel is PATTERN with -s/--size and --name, and/or any number of\n"
        "  -k 'NAME = PATTERN : SHAPES'   where SHAPES is '80x20x64 64x64 80x20x64' or 'b1=80 b2=20 n=64'",
        epilog="examples:\n"
        '  einplan codegen "b n, m n -> b m" -s 100x500 -s 1000x500 --name matvec -o kernels.py\n'
        '  einplan codegen -k "quad = b1 b2 n, n n, b1 b2 n -> b1 b2 : b1=80 b2=20 n=64" \\\n'
        '                  -k "dot = b n, b n -> b : 4096x64 4096x64" -o kernels.py\n',
    )
    codegen.add_argument("pattern", metavar="PATTERN", nargs="?", help="a pattern (optional with --kernel)")
    _planning_options(codegen, SHAPE_HELP)
    codegen.add_argument("--name", default="einplan_kernel", help="function name for PATTERN (default einplan_kernel)")
    codegen.add_argument("-k", "--kernel", action="append", metavar="NAME=PATTERN:SHAPES", help="one more kernel; repeat for several")
    _plan_choices(codegen)
    codegen.add_argument("--title", default="Kernels generated by einplan.", help="the module docstring's first line")
    codegen.add_argument("-o", "--output", metavar="FILE", help="the .py file to write (default: print it)")
    codegen.set_defaults(run=cmd_codegen)


def _bench_parser(commands) -> None:
    bench = commands.add_parser(
        "bench",
        formatter_class=_Formatter,
        help="time every applicable lowering, the default plan and torch.einsum",
        description="Time PATTERN with each lowering forced, with the planner's default choice, and "
        "with torch.einsum, on random tensors of the given shapes; check each result against "
        "torch.einsum.  Lowerings that cannot compute the pattern show as n/a.",
        epilog='example:\n  einplan bench "b1 b2 n, b1 b2 n -> b1 b2" --size b1=80 b2=20 n=64\n',
    )
    bench.add_argument("pattern", metavar="PATTERN")
    _planning_options(bench, SHAPE_HELP)
    bench.add_argument("--repeat", type=int, default=5, help="timing repeats; the best is shown (default 5)")
    bench.add_argument("--threads", type=int, help="torch CPU threads to time with (default: torch's)")
    bench.set_defaults(run=cmd_bench)


def _tune_parser(commands) -> None:
    tune = commands.add_parser(
        "tune",
        formatter_class=_Formatter,
        help="measure this machine's cost-model constants and store them for later runs",
        description="Measure the cost model's constants (op overhead, GEMM and elementwise rates, "
        "bandwidth) on this machine and store them in the user cache file that later runs read.",
    )
    tune.add_argument("--device", default="cpu", help="device to tune: cpu (default) or cuda")
    tune.add_argument("--quick", action="store_true", help="smaller, faster measurements")
    tune.set_defaults(run=cmd_tune)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except EinplanError as error:
        print(f"einplan {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a command line gets one line and exit 2, never a traceback
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"einplan {args.command}: error: {type(error).__name__}: {first}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
