"""Write a kernels module with the einplan CLI, then import it like any other module.

    einplan codegen -k "quad = b1 b2 n, n n, b1 b2 n -> b1 b2 : b1=80 b2=20 n=64" \\
                    -k "dot = b1 b2 n, b1 b2 n -> b1 b2 : b1=80 b2=20 n=64" \\
                    -k "matvec = b n, m n -> b m : 100x500 1000x500" -o kernels.py

The module imports only torch and jaxtyping: check it into a repository and use
it where einplan is not installed.
"""

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _timing import per_call, report

SPECS = [
    "quad = b1 b2 n, n n, b1 b2 n -> b1 b2 : b1=80 b2=20 n=64",
    "dot = b1 b2 n, b1 b2 n -> b1 b2 : b1=80 b2=20 n=64",
    "matvec = b n, m n -> b m : 100x500 1000x500",
]

with tempfile.TemporaryDirectory() as folder:
    target = Path(folder) / "kernels.py"
    command = [sys.executable, "-m", "einplan", "codegen", "--title", "Kernels for examples/codegen_kernels.py."]
    for spec in SPECS:
        command += ["-k", spec]
    command += ["-o", str(target)]
    print("$", " ".join(repr(c) if " " in c else c for c in command[1:]))
    result = subprocess.run(command, capture_output=True, text=True)
    print(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(result.returncode)
    print(target.read_text())

    spec = importlib.util.spec_from_file_location("kernels", target)
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)

torch.manual_seed(0)
l = torch.randn(80, 20, 64)
r = torch.randn(80, 20, 64)
A = torch.randn(64, 64)
x = torch.randn(100, 500)
M = torch.randn(1000, 500)

checks = [
    (
        "quad",
        kernels.quad,
        (l, A, l),
        lambda l, A, r: (l[..., None, :] @ A @ r[..., None]).squeeze(-1).squeeze(-1),
        (l, A, l),
        "xyn,nm,xym->xy",
    ),
    ("dot", kernels.dot, (l, r), lambda a, b: (a[..., None, :] @ b[..., None]).squeeze(), (l, r), "xyn,xyn->xy"),
    ("matvec", kernels.matvec, (x, M), lambda v, m: torch.matmul(m, v.transpose(0, 1)).transpose(0, 1), (x, M), "bn,mn->bm"),
]
for name, fn, args, naive, naive_args, equation in checks:
    out = fn(*args)
    torch.testing.assert_close(out, naive(*naive_args), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, torch.einsum(equation, *args), atol=1e-4, rtol=1e-4)
    print(f"kernels.{name}: result {tuple(out.shape)} matches the naive version and torch.einsum")
    report(
        f"kernels.{name} (per call)",
        [
            (f"kernels.{name}", per_call(fn, *args)),
            ("naive", per_call(naive, *naive_args)),
            ("torch.einsum", per_call(torch.einsum, equation, *args)),
        ],
    )
