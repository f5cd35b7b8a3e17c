"""Unit tests of the pieces behind the servers: TensorProto parsing limits
and the metrics text, without starting a server (the batcher:
test_batching.py; REST's JSON: test_rest_json.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from contract import prometheus
from serving import tensors
from serving.errors import ServingError
from serving.metrics import Call, Metrics
from ops.rollout import compare

FLOAT = types_pb2.DT_FLOAT


def test_tensor_proto_round_trip():
  for array in [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.uint8),
                np.array([[True, False]]), np.array([b"a", b"bc"], dtype=object),
                np.arange(4, dtype=np.int64)]:
    back = tensors.to_numpy(tensors.to_proto(array))
    assert back.dtype == array.dtype and back.tolist() == array.tolist()


def test_tensor_protos_tf_would_not_parse_are_invalid_argument():
  from tensorflow.core.framework import tensor_pb2
  huge = tensor_pb2.TensorProto(dtype=FLOAT, float_val=[1.0])
  for size in (2**40, 224, 224, 3):
    huge.tensor_shape.dim.add(size=size)
  cases = [tensor_pb2.TensorProto(dtype=999), tensor_pb2.TensorProto(dtype=0), huge,
           tensor_pb2.TensorProto(dtype=FLOAT, tensor_content=b"abc"),
           tensor_pb2.TensorProto(dtype=types_pb2.DT_INT8, int_val=[1000]),
           tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE)]
  cases[3].tensor_shape.dim.add(size=1)
  for proto in cases:
    with pytest.raises(ServingError, match="tensor parsing error: x") as info:
      tensors.to_numpy(proto, "x")
    assert info.value.code_name == "INVALID_ARGUMENT"
  assert tensors.clip("a" * 10**6).startswith("a" * 200 + "... (1000000 characters)")


def test_prometheus_text_follows_tf_serving():
  m = Metrics()
  m.record_request(Call(entrypoint="GRPC", api="Predict", method="Predict", model="m",
                        version=1, signature="s"), "OK", 100)
  m.record_request(Call(entrypoint="REST", api="predict", method="Predict", model="m",
                        version=2, signature="s"), "INVALID_ARGUMENT", 300)
  m.record_request(Call(entrypoint="GRPC", api=None, method="GetModelStatus", model="m",
                        version=2), "OK", 50)
  m.record_load("/models/m/1", True, 1.5)
  m.record_load("/models/m/2", False, 0.1)
  text = m.prometheus_text()
  assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 1' in text
  assert ':tensorflow:serving:request_count{model_name="m",status="INVALID_ARGUMENT"} 1' in text
  assert ':tensorflow:serving:request_latency_count{model_name="m",API="Predict",' \
         'entrypoint="GRPC"} 1' in text
  assert 'API="predict"' not in text          # latency of successful requests only
  assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="/models/m/1",' \
         'status="success"} 1' in text
  assert 'status="fail"} 1' in text
  assert ':tensorflow:cc:saved_model:load_latency{model_path="/models/m/1"} 1500000' in text
  assert 'load_latency{model_path="/models/m/2"}' not in text
  # What the rollout tool's `compare` reads from a scrape: every call on a version.
  arms = compare(prometheus.parse(text), "m")
  assert {v: (a["requests"], a["errors"]) for v, a in arms.items()} == {
      "1": (1, 0), "2": (1, 1)}
  assert arms["1"]["p50_latency_ms"] >= 0.1 and arms["2"]["p99_latency_ms"] >= 0.3
