"""What the batching tuner and warmup coverage are worth, measured here in
one run, for the default model (vit_digits, as `make export` builds it) and
ViT-S/16 (random weights, 64 px, 10 classes: a small export of a real
architecture):

1. Warmup coverage: on the embedded server with batches allowed up to 32
   and an export that warms 1, 2, 4 and 8 only, the first request at batch
   size 16 (not warmed: XLA compiles it on the request path) against the
   first at batch size 8 (warmed at load) and the second at 16 (compiled).
2. Tuned against shipped: `ops.tune` with a TUNE_BUDGET_S budget picks a
   configuration, then the tuned and the shipped CPU configuration
   (deploy/config/batching_parameters.config) are measured one after the
   other on fresh servers at c = 1..32 (clients.perf's closed loop, batch-1
   requests): throughput at the p99 target at each level and their ratio.
   When the tuner keeps the shipped configuration (nothing beat it by more
   than its noise rule allows), there is no second configuration: the rows
   then say so and give the shipped configuration's second run against its
   first, this machine's run-to-run noise, instead of a gain.

Figures are this (shared, 2-core) machine's; ratios come from one run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_tune"
SHIPPED = ROOT / "deploy" / "config" / "batching_parameters.config"
LEVELS = [1, 2, 4, 8, 16, 32]
SECONDS = float(os.environ.get("BENCH_TUNE_SECONDS", "3"))
BUDGET_S = float(os.environ.get("TUNE_BUDGET_S", "240"))
TARGETS_MS = {"vit_digits": 50.0, "vit_s16_64": 150.0}


def models() -> Path:
  """models.config with the default model and the S/16 export (absolute paths)."""
  import export
  from benchmarks import bench_perf
  from benchmarks.exports import export_random
  digits_config, _ = bench_perf.default_model()
  s16 = export_random("vit_s16_64", export.get_config("S/16") | {"num_classes": 10}, 64,
                      (1, 2, 4, 8), CACHE)
  CACHE.mkdir(parents=True, exist_ok=True)
  config = CACHE / "models.config"
  config.write_text("model_config_list {\n" + "".join(
      f'  config {{ name: "{n}" base_path: "{p}" model_platform: "tensorflow" }}\n'
      for n, p in (("vit_digits", digits_config.parent / "models" / "vit_digits"),
                   ("vit_s16_64", s16))) + "}\n")
  return config


@contextlib.contextmanager
def _served(config: Path, model: str) -> Iterator[Path]:
  """The tuner's one-model models.config for `model`, removed afterwards."""
  from ops.tune.tuner import Settings, served_model
  path, _, _ = served_model(Settings(model=model, model_config=config, p99_ms=1e9,
                                     levels=[1], budget_s=1))
  try:
    yield path
  finally:
    shutil.rmtree(path.parent, ignore_errors=True)


def first_requests(config: Path, model: str) -> dict[str, float]:
  """Milliseconds of the first batch-8 (warmed), first batch-16 (cold) and
  second batch-16 request on a fresh server padding to sizes up to 32."""
  from clients import GrpcClient, perf
  from ops.tune import measure, search
  with _served(config, model) as path, tempfile.TemporaryDirectory() as workdir:
    server = measure.Server(measure.DEFAULT_COMMAND, search.make(32, 0, 1, 32), Path(workdir),
                            path, model, timeout=600)
    try:
      with GrpcClient(server.grpc_address, timeout=600) as client:
        signature = client.metadata(model).signatures["serving_default"]
        times = {}
        for key, batch in (("warmed_8", 8), ("cold_16", 16), ("compiled_16", 16)):
          inputs = perf.random_inputs(signature, batch)
          started = time.perf_counter()
          client.predict(model, inputs, batch_size=batch, progress=False)
          times[key] = (time.perf_counter() - started) * 1e3
    finally:
      server.stop()
  return times


def tuned_vs_shipped(config: Path, model: str) -> tuple[dict, bool, list[dict], list[dict]]:
  """The tuner's choice, whether it kept the shipped configuration, and the
  levels of the tuned and the shipped configuration measured fresh, one
  after the other (when it kept the shipped one: its second and first run)."""
  from ops.tune import measure, search
  from ops.tune.tuner import Settings, Tuner
  target = TARGETS_MS[model]
  settings = Settings(model=model, model_config=config, p99_ms=target, levels=LEVELS,
                      budget_s=BUDGET_S, shipped=SHIPPED)
  report = Tuner(settings, lambda used, what: None).run()
  chosen, shipped = report["chosen"], search.read_batching_file(SHIPPED)
  kept = chosen["source"] == "shipped"
  tuned = shipped if kept else search.OFF if not chosen["batching"] else search.Candidate(
      chosen["max_batch_size"], chosen["batch_timeout_micros"], chosen["num_batch_threads"],
      chosen["max_enqueued_batches"], tuple(chosen["allowed_batch_sizes"]))
  plan = measure.Plan(model, "serving_default", 1, LEVELS, 1.0, 600)
  measured = []
  for candidate in (shipped, tuned):
    with _served(config, model) as path, tempfile.TemporaryDirectory() as workdir:
      server = measure.Server(measure.DEFAULT_COMMAND, candidate, Path(workdir), path, model,
                              timeout=600)
      try:   # every level, even past the target: the comparison is per level
        measured.append(measure.measure(server, plan, SECONDS, p99_ms=1e9))
      finally:
        server.stop()
  return report, kept, measured[1], measured[0]


def _ratio(mine: float, theirs: float) -> float:
  """mine / theirs; nan where neither meets the target, inf where only mine does."""
  if theirs:
    return round(mine / theirs, 2)
  return float("inf") if mine else float("nan")


def run() -> list[dict]:
  from ops.tune import search
  config = models()
  rows = []
  for model in TARGETS_MS:
    t = first_requests(config, model)
    rows.append({"metric": f"{model} first request at unwarmed batch 16 / warmed batch 8",
                 "value": round(t["cold_16"] / t["warmed_8"], 2), "unit": "x",
                 "note": f"{t['cold_16']:.0f} ms vs {t['warmed_8']:.1f} ms; the second "
                         f"batch-16 request {t['compiled_16']:.1f} ms"})
  for model, target in TARGETS_MS.items():
    report, kept, tuned, shipped = tuned_vs_shipped(config, model)
    good_t, good_s = search.goodput(tuned, target), search.goodput(shipped, target)
    what = ("shipped run 2/run 1 (tuner kept the shipped configuration: noise)" if kept
            else "tuned/shipped")
    for c in LEVELS:
      lt = next((lv for lv in tuned if lv["concurrency"] == c), None)
      ls = next((lv for lv in shipped if lv["concurrency"] == c), None)
      rows.append({
          "metric": f"{model} c={c} {what} throughput at p99 <= {target:g} ms",
          "value": _ratio(good_t.get(c, 0.0), good_s.get(c, 0.0)), "unit": "x",
          "note": ", ".join(f"{side} {lv['throughput']:.0f} req/s p99 {lv['p99_ms']:.0f} ms"
                            for side, lv in (("run 2" if kept else "tuned", lt),
                                             ("run 1" if kept else "shipped", ls)) if lv)})
    rows.append({"metric": f"{model} {what} summed throughput at target",
                 "value": _ratio(sum(good_t.values()), sum(good_s.values())), "unit": "x",
                 "note": f"tuner chose {report['chosen']['name']} in {report['used_s']:.0f} s, "
                         f"{len(report['candidates'])} measurements; why: {report['why']}"})
  return rows
