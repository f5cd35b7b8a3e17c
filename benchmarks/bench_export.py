"""Export cost and SavedModel speed for ViT-B/16 at 224 px (random weights).

A randomly initialised B/16 (1000 classes) is written as a published-format
checkpoint and exported by `python -m export` in a subprocess, the real
pipeline end to end. Reported: the export's wall time (with the interpreter
and library imports) and its pipeline time from the manifest, the SavedModel
size, and the subprocess's peak resident memory (`ru_maxrss` from
`os.wait4`, which covers TF and XLA's native allocations that tracemalloc
cannot see).

Then the SavedModel's `serving_default` (loaded in this process, TF eager
call of the signature) and `jax.jit` of the same Flax model run the same
batches of 1 and 8 images, interleaved call by call so that load from other
processes hits both alike; throughput is the median per-call time. Ratios
are SavedModel / JAX (above 1: the SavedModel is faster).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import contract

ROOT = Path(__file__).resolve().parents[1]
MODEL = "B/16"
IMAGE_SIZE = 224
CALLS = {1: 8, 8: 4}  # timed calls per batch size, after one warmup call


def _export(workdir: Path, checkpoint: Path) -> tuple[Path, float, float]:
  """Runs the CLI; returns the version dir, wall seconds and peak RSS (MiB)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  out, err = workdir / "export.stdout", workdir / "export.stderr"
  started = time.perf_counter()
  with open(out, "w") as stdout, open(err, "w") as stderr:
    proc = subprocess.Popen(
        [sys.executable, "-m", "export", "--checkpoint", str(checkpoint), "--name", "b16",
         "--repo", str(workdir / "models"), "--model", MODEL],
        env=env, stdout=stdout, stderr=stderr)
    _, status, usage = os.wait4(proc.pid, 0)  # reaped here, for its own rusage
  seconds = time.perf_counter() - started
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f"export failed ({status}):\n{err.read_text()[-3000:]}")
  return Path(out.read_text().strip()), seconds, usage.ru_maxrss / 1024


def _median_seconds(calls: list[tuple[str, Callable[[], Any]]], repeats: int
                    ) -> dict[str, float]:
  for _, fn in calls:  # compile / warm up
    fn()
  times: dict[str, list[float]] = {name: [] for name, _ in calls}
  for _ in range(repeats):
    for name, fn in calls:
      started = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - started)
  return {name: statistics.median(t) for name, t in times.items()}


def run() -> list[dict]:
  import jax
  import tensorflow as tf

  import export
  from export import repository

  cfg = export.get_config(MODEL) | {"num_classes": 1000}
  model = export.build_model(cfg)
  x0 = jax.ShapeDtypeStruct((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x0)["params"]
  # The head is zero-initialised; random weights make the logits (and the
  # export's verification) non-trivial.
  params["head"]["kernel"] = 0.02 * jax.random.normal(jax.random.PRNGKey(1),
                                                      params["head"]["kernel"].shape)
  rows: list[dict] = []
  with tempfile.TemporaryDirectory(prefix="bench_export-") as tmp:
    workdir = Path(tmp)
    checkpoint = workdir / "b16_random.npz"
    export.save_checkpoint(params, checkpoint)
    del params
    version_dir, export_seconds, peak_mib = _export(workdir, checkpoint)
    manifest = json.loads((version_dir / repository.MANIFEST).read_text())
    size = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())
    rows += [
        {"metric": "export_wall_time", "value": round(export_seconds, 1), "unit": "s",
         "note": "python -m export subprocess, B/16 224px, incl. imports"},
        {"metric": "export_pipeline_time", "value": manifest["export_seconds"], "unit": "s",
         "note": "fetch..publish, from the manifest"},
        {"metric": "export_peak_rss", "value": round(peak_mib), "unit": "MiB",
         "note": "ru_maxrss of the export subprocess (os.wait4)"},
        {"metric": "checkpoint_size", "value": round(checkpoint.stat().st_size / 2**20, 1),
         "unit": "MiB"},
        {"metric": "savedmodel_size", "value": round(size / 2**20, 1), "unit": "MiB"},
        {"metric": "verify_max_abs_diff", "value": manifest["verification"]["max_abs_diff"],
         "unit": "abs"},
    ]

    params = export.load_checkpoint(checkpoint, cfg, IMAGE_SIZE)
    jax_fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
    serving = tf.saved_model.load(str(version_dir)).signatures[contract.DEFAULT.name]
    rng = np.random.default_rng(0)
    for batch, repeats in CALLS.items():
      x = rng.uniform(-1, 1, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
      x_tf = tf.constant(x)
      x_jax = jax.device_put(x)
      np.testing.assert_allclose(serving(images=x_tf)["logits"].numpy(),
                                 np.asarray(jax_fn(params, x_jax)), atol=1e-3)
      median = _median_seconds([
          ("savedmodel", lambda: serving(images=x_tf)["logits"].numpy()),
          ("jax_jit", lambda: jax_fn(params, x_jax).block_until_ready()),
      ], repeats)
      sm, jx = batch / median["savedmodel"], batch / median["jax_jit"]
      rows += [
          {"metric": f"savedmodel_throughput_b{batch}", "value": round(sm, 2),
           "unit": "img/s", "note": "serving_default, in-process TF, CPU"},
          {"metric": f"jax_jit_throughput_b{batch}", "value": round(jx, 2), "unit": "img/s"},
          {"metric": f"savedmodel_vs_jax_b{batch}", "value": round(sm / jx, 3), "unit": "x",
           "note": "SavedModel / JAX jit throughput, same run, same batches"},
      ]
  return rows


if __name__ == "__main__":
  for row in run():
    print(row)
