"""Print the target table (markdown) from a results.json written by run.py.

    python benchmarks/readme_table.py [benchmarks/results.json]           # every target (benchmarks/README.md)
    python benchmarks/readme_table.py --short [benchmarks/results.json]   # one row per case (README.md)

Each row of the full table is one target of one workload: its verdict from the
medians, the ratio measured in that run, what it needs, and the run's note (the
best peer, or the ceiling when something einplan cannot beat bounds the target).
The short table has one row per case: einplan.bl's median and the fastest eager
peer's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(results: dict) -> list[str]:
    lines = ["| verdict | workload and target (ratio measured in one run) |", "|---|---|"]
    for case in results["cases"]:
        for target in case["targets"]:
            value = "n/a" if target["value"] is None else f"{target['value']:.2f}"
            detail = f"; {target['detail']}" if target.get("detail") else ""
            verdict = "MET" if target["met"] else "NOT MET"
            lines.append(f"| {verdict} | {case['workload']} {case['case']}: {target['text']}: {value} (need {target['need']}{detail}) |")
    return lines


def fmt_us(us: float) -> str:
    return f"{us / 1e3:.1f} ms" if us >= 1e3 else f"{us:.1f} us"


def _median(row: dict) -> float | None:
    return row["timing_us"]["median_us"] if row["status"] == "ok" and row["timing_us"] else None


def short_rows(results: dict) -> list[str]:
    lines = ["| workload | case | einplan.bl | fastest peer | peer / einplan |", "|---|---|---:|---|---:|"]
    for case in results["cases"]:
        ours = next((_median(r) for r in case["rows"] if r["name"] == "einplan.bl"), None)
        peers = [(_median(r), r["name"]) for r in case["rows"] if r["kind"] == "peer" and r["mode"] == "eager" and _median(r)]
        if ours is None or not peers:
            continue
        peer_us, peer = min(peers)
        name = peer.replace("|", "\\|")
        lines.append(f"| {case['workload']} | {case['case']} | {fmt_us(ours)} | `{name}` {fmt_us(peer_us)} | {peer_us / ours:.2f}x |")
    return lines


def main(argv: list[str]) -> int:
    short = "--short" in argv
    paths = [a for a in argv if a != "--short"]
    path = Path(paths[0]) if paths else Path(__file__).with_name("results.json")
    results = json.loads(path.read_text())
    machine = results["machine"]
    print(
        f"{results['targets_met']} of {results['targets_total']} targets met; einplan {results['einplan']}, "
        f"torch {machine['torch']}, {machine['threads']} threads on {machine['cpus']} CPUs.\n"
    )
    print("\n".join(short_rows(results) if short else rows(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
