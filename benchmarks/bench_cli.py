"""How long each command line takes to answer --help (target: under 0.5 s).

Help is parsed before TensorFlow or JAX are imported (tests/test_cli_help.py
checks that nothing heavy is imported; the seconds are measured here, since a
timed test would flake on a loaded machine). Each command runs `python -m
MODULE --help` in a fresh interpreter ROUNDS times; reported is the median
wall time, with the bare interpreter's start-up (`python -c pass`) measured
alongside so that a loaded machine shows in both.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("export", "export.zoo", "export.finetune", "export.default_model", "serving",
            "ops.rollout", "clients", "benchmarks")
ROUNDS = 5
TARGET_SECONDS = 0.5


def _median_seconds(args: list[str]) -> float:
  times = []
  for _ in range(ROUNDS):
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, check=True,
                   timeout=120)
    times.append(time.perf_counter() - started)
  return statistics.median(times)


def run() -> list[dict]:
  rows = [{"metric": "python -c pass", "value": _median_seconds(["-c", "pass"]), "unit": "s"}]
  for module in COMMANDS:
    seconds = _median_seconds(["-m", module, "--help"])
    rows.append({"metric": f"python -m {module} --help", "value": seconds, "unit": "s",
                 "target": TARGET_SECONDS, "met": seconds < TARGET_SECONDS})
  return rows
