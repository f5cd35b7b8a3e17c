"""Runs exports the way tensorflow_model_server does, in another TensorFlow.

The side half of `make check-tfserving`. It runs in the side environment
(tensorflow-cpu of the serving image's version, see checks/tfserving_venv.sh)
and imports only the standard library, numpy, tensorflow and the
tensorflow-serving-api protos: never the project's JAX code, which needs the
main environment's TensorFlow.

For each model of a plan (written by checks/tfserving_prepare.py) it follows
tensorflow_model_server's path:

  1. Load the version into a Session with the "serve" tag:
     `tf.compat.v1.saved_model.loader.load`, as SavedModelBundle loading does
     (tensorflow_serving/servables/tensorflow/saved_model_bundle_factory.cc).
  2. Replay every record of assets.extra/tf_serving_warmup_requests as the
     server does before a version becomes AVAILABLE
     (tensorflow_serving/servables/tensorflow/saved_model_warmup.cc): each
     PredictionLog's request is run like a Predict call, and an error fails
     the load.
  3. Run the plan's own requests (every signature, several batch sizes).
  4. With --check-xla-flag (make check-tfserving), last, for the first
     model: what the server does without
     --xla_cpu_compilation_enabled / --xla_gpu_compilation_enabled. main.cc
     then calls tensorflow::DisableXlaCompilation() (exported by
     libtensorflow_cc, called here through ctypes); the export's warmup must
     fail with "XLA compilation disabled", the reason every deployment file
     and `make serve` set the flag. (Process-wide, hence last.)

A Predict is run as tensorflow_serving/servables/tensorflow/predict_util.cc
runs it: the request's signature (default "serving_default"), its inputs fed
by the signature's tensor names, every output of the signature fetched by
tensor name in one Session.run. Each output named in the expectations is
compared with the JAX model's output; the largest difference must stay within
the plan's tolerance (the exporter's, relative to the output's magnitude).

Prints a table (model, source, signature, requests, max error, tolerance, ok),
records the result in each export's manifest (the plan names the file) under
"serving_checks" (keyed by the TensorFlow version it ran under), and exits 1
on any mismatch or error.

  python checks/tfserving_session.py PLAN.json [--expect-tensorflow 2.20.0]
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import importlib.metadata
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
SERVING_PATH = ("tf.compat.v1.saved_model.loader.load(tags=['serve']) + Session.run of "
                "signature tensor names, warmup replayed first (tensorflow_model_server's path)")


@dataclasses.dataclass
class Row:
  """One line of the result table: the worst difference over a group of requests."""
  model: str
  source: str  # "warmup", "check" or "load"
  signature: str
  requests: int = 0
  batch_sizes: set[int] = dataclasses.field(default_factory=set)
  max_error: float = 0.0
  tolerance: float = 0.0
  error: str = ""

  @property
  def ok(self) -> bool:
    return not self.error and self.max_error <= self.tolerance


def read_requests(path: Path) -> Iterator[prediction_log_pb2.PredictionLog]:
  """The PredictionLog records of a TFRecord file, as the warmup reader takes them."""
  for record in tf.compat.v1.io.tf_record_iterator(str(path)):
    yield prediction_log_pb2.PredictionLog.FromString(record)


def run_predict(session: tf.compat.v1.Session, signatures: Any,
                log: prediction_log_pb2.PredictionLog) -> tuple[str, dict[str, np.ndarray]]:
  """Runs one logged Predict request as predict_util.cc does; returns the
  signature name and every output of the signature by its alias."""
  if not log.HasField("predict_log"):
    raise ValueError(f"unsupported warmup record {log.WhichOneof('log_type')!r}; "
                     "the exports hold Predict requests only")
  request = log.predict_log.request
  name = request.model_spec.signature_name or "serving_default"
  if name not in signatures:
    raise KeyError(f'Serving signature name: "{name}" not found in signature def')
  signature = signatures[name]
  unknown = set(request.inputs) - set(signature.inputs)
  if unknown or len(request.inputs) != len(signature.inputs):
    raise ValueError(f"request inputs {sorted(request.inputs)} do not match signature "
                     f"{name!r} inputs {sorted(signature.inputs)}")
  feed = {signature.inputs[key].name: tf.make_ndarray(tensor)
          for key, tensor in request.inputs.items()}
  fetch = {alias: info.name for alias, info in signature.outputs.items()}
  return name, session.run(fetch, feed_dict=feed)


def max_error(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
  """Largest |served - expected| over the expected outputs; inf when an output
  is missing, mis-shaped or not finite, so such a result can never pass."""
  worst = 0.0
  for key, want in expected.items():
    got = outputs.get(key)
    if got is None or got.shape != want.shape:
      return math.inf
    if got.size:
      diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
      if not math.isfinite(diff):
        return math.inf
      worst = max(worst, diff)
  return worst


def expectations(npz: Any, prefix: str) -> dict[str, np.ndarray]:
  """The expected outputs stored under `<prefix>/<output alias>`."""
  return {k[len(prefix) + 1:]: npz[k] for k in npz.files if k.startswith(prefix + "/")}


def check_model(model: dict[str, Any]) -> list[Row]:
  """Loads one export, replays its warmup file, runs the plan's requests."""
  name, tolerance = model["name"], float(model["tolerance"])
  version_dir = Path(model["version_dir"])
  rows: dict[tuple[str, str], Row] = {}
  expected = np.load(model["expected"], allow_pickle=False)
  graph = tf.Graph()
  with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
    try:
      meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version_dir))
    except Exception as e:  # any load failure is the result being measured
      return [Row(name, "load", "-", error=_first_line(e))]
    signatures = meta_graph.signature_def
    sources = [("warmup", version_dir / WARMUP_FILE), ("check", Path(model["requests"]))]
    for source, path in sources:
      for index, log in enumerate(read_requests(path)):
        signature = log.predict_log.request.model_spec.signature_name or "serving_default"
        row = rows.setdefault((source, signature), Row(name, source, signature,
                                                       tolerance=tolerance))
        row.requests += 1
        try:
          _, outputs = run_predict(session, signatures, log)
        except Exception as e:  # TF Serving fails the load on a warmup error
          row.error = row.error or _first_line(e)
          continue
        row.batch_sizes.add(int(next(iter(outputs.values())).shape[0]))
        want = expectations(expected, f"{source}/{index}")
        if not want:
          row.error = row.error or f"no expected outputs for {source} request {index}"
          continue
        row.max_error = max(row.max_error, max_error(outputs, want))
    for signature in signatures:
      if signature != "__saved_model_init_op" and ("check", signature) not in rows:
        rows[("check", signature)] = Row(name, "check", signature, tolerance=tolerance,
                                         error="signature not exercised by the plan")
  return list(rows.values())


XLA_DISABLED = "XLA compilation disabled"


def check_without_xla_flags(model: dict[str, Any]) -> tuple[bool, str]:
  """(as expected, what happened) for the first warmup record of `model` after
  tensorflow::DisableXlaCompilation(), as tensorflow_model_server runs it
  without either XLA flag (main.cc)."""
  library = ctypes.CDLL(os.path.join(os.path.dirname(tf.__file__), "libtensorflow_cc.so.2"))
  library._ZN10tensorflow21DisableXlaCompilationEv()
  version_dir = Path(model["version_dir"])
  graph = tf.Graph()
  with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version_dir))
    log = next(read_requests(version_dir / WARMUP_FILE))
    try:
      run_predict(session, meta_graph.signature_def, log)
    except Exception as e:  # the failure is the expected result
      text = _first_line(e)
      return XLA_DISABLED in text, f"warmup fails: {text}"
  return False, f"warmup ran: the export does not need XLA (expected '{XLA_DISABLED}')"


def _first_line(error: BaseException) -> str:
  """The line that says what went wrong: TF's op errors open with a generic
  "Graph execution error:" and end with node names, which are skipped."""
  text = getattr(error, "message", None) or str(error)
  lines = [line.strip() for line in text.splitlines()
           if line.strip() and not line.startswith("Graph execution error")
           and not line.strip().startswith("[[")]
  return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def serving_tensorflow() -> dict[str, str]:
  versions = {"tensorflow": tf.__version__}
  try:
    versions["tensorflow_serving_api"] = importlib.metadata.version("tensorflow-serving-api")
  except importlib.metadata.PackageNotFoundError:
    versions["tensorflow_serving_api"] = "not installed"
  return versions


def record(model: dict[str, Any], rows: list[Row]) -> None:
  """Adds this run to the export's manifest, so the version itself says which
  serving TensorFlow it was proven under (and with what margin)."""
  path = Path(model["manifest"])
  manifest = json.loads(path.read_text())
  result = {
      **serving_tensorflow(), "path": SERVING_PATH,
      "ok": all(r.ok for r in rows),
      "max_abs_diff": max((r.max_error for r in rows), default=0.0),
      "tolerance": float(model["tolerance"]),
      "requests": {"warmup": sum(r.requests for r in rows if r.source == "warmup"),
                   "check": sum(r.requests for r in rows if r.source == "check")},
      "errors": [f"{r.source} {r.signature}: {r.error}" for r in rows if r.error],
      "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  manifest.setdefault("serving_checks", {})[tf.__version__] = result
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=2) + "\n")
  tmp.replace(path)


def format_table(rows: list[Row]) -> str:
  header = ("model", "source", "signature", "requests", "batch sizes", "max error",
            "tolerance", "ok")
  lines = [header]
  for r in rows:
    lines.append((r.model, r.source, r.signature, str(r.requests),
                  ",".join(map(str, sorted(r.batch_sizes))) or "-", f"{r.max_error:.3g}",
                  f"{r.tolerance:.3g}", "ok" if r.ok else f"FAIL {r.error}".rstrip()))
  widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1]
                   for line in lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("plan", type=Path, help="plan.json from checks/tfserving_prepare.py")
  parser.add_argument("--expect-tensorflow", metavar="VERSION",
                      help="fail unless this environment's TensorFlow is VERSION")
  parser.add_argument("--no-record", action="store_true",
                      help="leave the exports' export_manifest.json alone")
  parser.add_argument("--check-xla-flag", action="store_true",
                      help="then disable XLA compilation as tensorflow_model_server does "
                           "without --xla_cpu_compilation_enabled, and expect the first "
                           "model's warmup to fail (process-wide: a separate run)")
  args = parser.parse_args(argv)
  if args.expect_tensorflow and tf.__version__ != args.expect_tensorflow:
    print(f"tfserving_session: error: TensorFlow {tf.__version__} here, expected "
          f"{args.expect_tensorflow}", file=sys.stderr)
    return 2
  # The v1 loader's deprecation notices are noise here: it is the point.
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  plan = json.loads(args.plan.read_text())
  started = time.perf_counter()
  rows: list[Row] = []
  for model in plan["models"]:
    model_rows = check_model(model)
    if not args.no_record:
      record(model, model_rows)
    rows += model_rows
  print(f"TensorFlow {tf.__version__}, {SERVING_PATH}")
  print(format_table(rows))
  failed = [r for r in rows if not r.ok]
  print(f"{len(rows) - len(failed)}/{len(rows)} ok in {time.perf_counter() - started:.1f}s")
  expected = True
  if args.check_xla_flag:
    expected, text = check_without_xla_flags(plan["models"][0])
    print(f"without --xla_cpu/gpu_compilation_enabled, {plan['models'][0]['name']}: {text}"
          f"{'' if expected else '  FAIL'}")
  return 1 if failed or not expected else 0


if __name__ == "__main__":
  sys.exit(main())
