"""Print the README's target table (markdown) from a results.json written by run.py.

    python benchmarks/readme_table.py [benchmarks/results.json]

Each row is one target of one workload: its verdict from the medians, the
ratio measured in that run, what it needs, and the run's note (the best peer,
or the ceiling when something einplan cannot beat bounds the target).
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
            lines.append(
                f"| {verdict} | {case['workload']} {case['case']}: {target['text']}: {value} "
                f"(need {target['need']}{detail}) |"
            )
    return lines


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else Path(__file__).with_name("results.json")
    results = json.loads(path.read_text())
    machine = results["machine"]
    print(
        f"{results['targets_met']} of {results['targets_total']} targets met; einplan {results['einplan']}, "
        f"torch {machine['torch']}, {machine['threads']} threads on {machine['cpus']} CPUs.\n"
    )
    print("\n".join(rows(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
