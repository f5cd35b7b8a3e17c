"""Warmup requests in TensorFlow Serving's format.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord file
of `tensorflow_serving.apis.PredictionLog` protos) when it loads a version,
before the version becomes available. A jax2tf graph compiles its model with
XLA once per new batch size, and the first request at each size pays that
compile, so the file holds a Predict request per batch size the server is
expected to see on the contract's default signature (the path of
preprocessed clients and of the A/B router), plus one small request on every
other signature of `contract.SIGNATURES` so that their own (cheap)
graphs are also built ahead of time. The images are deterministic noise;
only shapes matter.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

import contract
from export import signatures

FILENAME = "tf_serving_warmup_requests"


def _request(name: str, signature: str, key: str, value: np.ndarray
             ) -> prediction_log_pb2.PredictionLog:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = name
  request.model_spec.signature_name = signature
  request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
  return prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))


def requests(name: str, image_size: int, batch_sizes: Sequence[int]
             ) -> Iterator[prediction_log_pb2.PredictionLog]:
  """The warmup requests for a model served as `name`."""
  rng = np.random.default_rng(0)
  for spec in contract.SIGNATURES:
    for b in batch_sizes if spec == contract.DEFAULT else (1,):
      pixels = rng.integers(0, 256, (b, image_size, image_size, 3), dtype=np.uint8)
      yield _request(name, spec.name, spec.input_key, signatures.example_input(spec, pixels))


def write(path: str | os.PathLike, name: str, image_size: int, batch_sizes: Sequence[int]
          ) -> int:
  """Writes the warmup file; returns the number of records."""
  count = 0
  with tf.io.TFRecordWriter(os.fspath(path)) as writer:
    for log in requests(name, image_size, batch_sizes):
      writer.write(log.SerializeToString())
      count += 1
  return count
