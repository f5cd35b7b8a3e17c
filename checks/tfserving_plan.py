"""The files `make check-tfserving` hands from the main to the side environment.

The JAX side (checks/tfserving_prepare.py) knows the expected outputs; the
serving side (checks/tfserving_session.py) must not import JAX. They meet in
files that need nothing but TensorFlow's own formats and numpy:

  <dir>/plan.json                 the models: version directory, its export
                                  manifest, tolerance, the two files below
  <dir>/<model>/requests.tfrecord PredictionLog records, the warmup file's
                                  format, so requests and warmup records are
                                  run by the same code
  <dir>/<model>/expected.npz      `check/<i>/<output>` for request i of
                                  requests.tfrecord, `warmup/<i>/<output>` for
                                  record i of the export's warmup file
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


def predict_log(model: str, signature: str, inputs: Mapping[str, np.ndarray]
                ) -> prediction_log_pb2.PredictionLog:
  """A Predict request wrapped as TF Serving's warmup files hold it."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = signature
  for key, value in inputs.items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
  return prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))


def read_logs(path: str | os.PathLike) -> Iterator[prediction_log_pb2.PredictionLog]:
  for record in tf.data.TFRecordDataset(os.fspath(path)).as_numpy_iterator():
    yield prediction_log_pb2.PredictionLog.FromString(record)


def request_inputs(log: prediction_log_pb2.PredictionLog) -> tuple[str, dict[str, np.ndarray]]:
  """(signature name, inputs as arrays) of a logged Predict request."""
  request = log.predict_log.request
  return (request.model_spec.signature_name or "serving_default",
          {k: tf.make_ndarray(v) for k, v in request.inputs.items()})


def write_model(directory: Path, *, name: str, version_dir: Path, manifest: Path,
                tolerance: float, requests: Sequence[prediction_log_pb2.PredictionLog],
                expected_check: Sequence[Mapping[str, np.ndarray]],
                expected_warmup: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Any]:
  """Writes one model's requests and expectations; returns its plan entry."""
  if len(requests) != len(expected_check):
    raise ValueError(f"{len(requests)} requests but {len(expected_check)} expectations")
  directory.mkdir(parents=True, exist_ok=True)
  requests_path = directory / "requests.tfrecord"
  with tf.io.TFRecordWriter(os.fspath(requests_path)) as writer:
    for log in requests:
      writer.write(log.SerializeToString())
  arrays = {}
  for source, outputs in (("check", expected_check), ("warmup", expected_warmup)):
    for index, by_key in enumerate(outputs):
      for key, value in by_key.items():
        arrays[f"{source}/{index}/{key}"] = np.asarray(value)
  expected_path = directory / "expected.npz"
  np.savez(expected_path, **arrays)
  return {"name": name, "version_dir": os.fspath(version_dir.resolve()),
          "manifest": os.fspath(manifest.resolve()), "tolerance": float(tolerance), "requests": os.fspath(requests_path.resolve()),
          "expected": os.fspath(expected_path.resolve())}


def write_plan(directory: Path, models: Sequence[Mapping[str, Any]]) -> Path:
  path = directory / "plan.json"
  path.write_text(json.dumps({"models": list(models)}, indent=2) + "\n")
  return path
