"""Peak extra resident memory of one call, measured from /proc (Linux only).

The kernel keeps a high-water mark of the process's resident set (``VmHWM`` in
/proc/self/status).  Writing ``5`` to /proc/self/clear_refs resets that mark to
the current resident size, so

    reset; before = VmRSS; call(); extra = VmHWM - before

is the largest amount of memory the call added at any moment, transient
buffers included (the result too, if it is kept).

Measure in a *fresh* subprocess (:func:`measure_in_subprocess`): in a process
that has already run big workloads, freed memory may still be mapped and a
call could reuse it without raising the mark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

MiB = 1 << 20

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def read_status() -> dict:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open(_STATUS) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024  # the kernel reports kB
    return out


def reset_peak() -> None:
    """Reset VmHWM to the current resident size."""
    with open(_CLEAR_REFS, "w") as f:
        f.write("5")


def available() -> bool:
    """Whether the high-water mark can be reset and read here."""
    try:
        reset_peak()
        read_status()["VmHWM"]
        return True
    except (OSError, KeyError):
        return False


def measure_here(fn: Callable[[], object]) -> dict:
    """Run ``fn`` once in this process; the peak extra resident memory it caused."""
    reset_peak()
    before = read_status()
    result = fn()
    after = read_status()
    del result
    return {
        "rss_before": before["VmRSS"],
        "peak": after["VmHWM"],
        "extra_bytes": max(0, after["VmHWM"] - before["VmRSS"]),
    }


_CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import memory
{setup}
{warmup}
def _call():
{call}
report = memory.measure_here(_call)
print("MEMORY-REPORT " + json.dumps(report))
"""


def measure_in_subprocess(setup: str, call: str, warmup: str = "", timeout: float = 600.0) -> dict:
    """Peak extra memory of ``call`` in a fresh Python process.

    ``setup`` (imports, inputs) and ``warmup`` (e.g. the same call at tiny sizes,
    so lazy imports and plan machinery are loaded) run before the mark is reset;
    ``call`` is the body of a function whose return value is the result (it is
    kept until the mark is read, so the result counts as extra memory).

    Returns ``{"extra_bytes", "peak", "rss_before"}`` or ``{"error": ...}``.
    """
    if not available():
        return {"error": "/proc/self/clear_refs or VmHWM not available (not Linux?)"}
    source = _CHILD.format(
        here=os.path.dirname(os.path.abspath(__file__)),
        setup=textwrap.dedent(setup),
        warmup=textwrap.dedent(warmup),
        call=textwrap.indent(textwrap.dedent(call).strip(), "    "),
    )
    try:
        proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY-REPORT "):
            return json.loads(line[len("MEMORY-REPORT ") :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


if __name__ == "__main__":
    # self-check: a 256 MiB temporary shows up as about 256 MiB extra
    r = measure_in_subprocess("import torch", f"return torch.ones({64 * MiB}).sum()")
    print(r if "error" in r else f"torch.ones(64Mi float32).sum(): peak extra {fmt_bytes(r['extra_bytes'])}")
