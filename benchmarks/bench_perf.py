"""`python -m clients perf` against the default deployment: the default model
(`vit_digits`, made by `python -m export.default_model`, as `make export`
does) on the embedded server with the shipped CPU batching config
(deploy/config/batching_parameters.config), swept over concurrency 1..32 on
gRPC and on REST with one of the model's own sample images (predict_bytes).

The load generator runs as a user runs it, in its own process, and writes
its JSON and latency-vs-throughput plot to benchmarks/results/perf_<api>.json
and .png; the rows here are read from that JSON. Both sweeps share the
machine with the server (and, here, with other work): absolute figures are
this machine's, the REST/gRPC ratio is measured in one run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_perf"
RESULTS = Path(__file__).parent / "results"
MODEL = "vit_digits"
LEVELS = "1,2,4,8,16,32"
SECONDS = float(os.environ.get("BENCH_PERF_SECONDS", "5"))


def _python(*args: str, timeout: float) -> str:
  done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)
  if done.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
  return done.stdout


def default_model() -> tuple[Path, Path]:
  """The exported default model's models.config (its base_path is relative
  to CACHE), and one sample image; exported once, then cached."""
  repo, config = CACHE / "models", CACHE / "models.config"
  _python("-m", "export.default_model", "--repo", str(repo), "--model-config", str(config),
          timeout=3600)
  _python("-m", "export.default_model", "--write-images", str(CACHE / "images"), "--count", "1",
          timeout=600)
  return config, sorted((CACHE / "images").iterdir())[0]


def _sweep(address: str, image: Path, api: str) -> dict:
  out, png = RESULTS / f"perf_{api}.json", RESULTS / f"perf_{api}.png"
  _python("-m", "clients", "perf", "--server", address, *(["--rest"] if api == "rest" else []),
          "--model", MODEL, "--image", str(image), "--concurrency", LEVELS,
          "--duration", str(SECONDS), "--warmup", "1", "--json", str(out), "--plot", str(png),
          timeout=600)
  return json.loads(out.read_text())


def run() -> list[dict]:
  from ops.process import ServerProcess, free_port
  RESULTS.mkdir(exist_ok=True)
  config, image = default_model()
  server = ServerProcess([f"--port={free_port()}", f"--rest_api_port={free_port()}",
                          f"--model_config_file={config}", "--enable_batching",
                          "--xla_cpu_compilation_enabled=true",
                          f"--batching_parameters_file={ROOT}/deploy/config/"
                          "batching_parameters.config"],
                         cwd=CACHE, timeout=300)  # models.config's base_path is relative
  try:
    reports = {"grpc": _sweep(server.grpc_address, image, "grpc"),
               "rest": _sweep(server.rest_address, image, "rest")}
  finally:
    server.stop()
  rows = []
  for api, report in reports.items():
    for level in report["levels"]:
      errors = sum(level["errors"].values())
      rows.append({"metric": f"{api} c={level['concurrency']} throughput",
                   "value": round(level["throughput"], 1), "unit": "req/s",
                   "p50_ms": round(level["p50_ms"], 2), "p99_ms": round(level["p99_ms"], 2),
                   "errors": errors, "plot": f"benchmarks/results/perf_{api}.png"})
      rows.append({"metric": f"{api} c={level['concurrency']} p99 latency",
                   "value": round(level["p99_ms"], 2), "unit": "ms"})
  best = {api: max(lv["throughput"] for lv in r["levels"]) for api, r in reports.items()}
  rows.append({"metric": "rest/grpc peak throughput",
               "value": round(best["rest"] / best["grpc"], 2), "unit": "x", "note": f"peaks {best['rest']:.0f} and {best['grpc']:.0f} req/s, "
                                   f"{SECONDS:g} s per level, one run"})
  return rows
