"""Runs every `benchmarks/bench_*.py`, writes `benchmarks/results/<name>.json`
and prints one table. `python -m benchmarks [NAME ...]` runs a subset.

Each module's `run()` returns rows `{"metric": str, "value": float,
"unit": str, ...}`; ratios measured within one run carry unit "x".
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def available() -> list[str]:
  """The benchmarks' names, from the file names (nothing is imported)."""
  return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m benchmarks",
      description="Run the benchmarks, write benchmarks/results/<name>.json and print "
                  "one table (ratios measured within one run carry unit 'x').")
  p.add_argument("names", nargs="*", metavar="NAME",
                 help=f"benchmarks to run (default: all of {', '.join(available())})")
  args = p.parse_args(argv)
  unknown = sorted(set(args.names) - set(available()))
  if unknown:
    p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(available())}")
  return args


def main(argv: list[str]) -> int:
  names = parse_args(argv).names or available()
  (HERE / "results").mkdir(exist_ok=True)
  table: list[tuple[str, str, str]] = []
  for name in names:
    module = importlib.import_module(f"benchmarks.bench_{name}")
    started = time.time()
    rows = module.run()
    result = {"benchmark": name, "host": platform.node(), "cpu_count": _cpus(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
              "seconds": round(time.time() - started, 1), "rows": rows}
    (HERE / "results" / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table += [(name, r["metric"], f"{r['value']:.4g} {r['unit']}") for r in rows]
  widths = [max(len(row[i]) for row in table) for i in range(3)] if table else [0, 0, 0]
  for row in table:
    print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
  return 0


def _cpus() -> int:
  return len(os.sched_getaffinity(0))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
