"""Unit tests of the pieces behind the servers: JSON <-> tensors, TensorProto
parsing limits and the metrics text, without starting a server (the batcher:
test_batching.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from serving import tensors
from serving.errors import ServingError
from serving.metrics import Metrics
from serving.rollout import compare

FLOAT, UINT8, STRING = types_pb2.DT_FLOAT, types_pb2.DT_UINT8, types_pb2.DT_STRING


def test_json_row_and_columnar_inputs():
  arrays, fmt = tensors.json_to_inputs({"instances": [[1, 2.5], [3, 4]]}, {"x": FLOAT})
  assert fmt == "row" and arrays["x"].dtype == np.float32
  np.testing.assert_array_equal(arrays["x"], [[1, 2.5], [3, 4]])
  arrays, fmt = tensors.json_to_inputs(
      {"inputs": {"a": [[1, 2]], "s": [{"b64": "aGk="}, "yo"]}}, {"a": UINT8, "s": STRING})
  assert fmt == "columnar" and arrays["a"].dtype == np.uint8
  assert arrays["s"].tolist() == [b"hi", b"yo"]
  arrays, _ = tensors.json_to_inputs({"instances": [{"a": 1, "s": "x"}, {"a": 2, "s": "y"}]},
                                     {"a": UINT8, "s": STRING})
  assert arrays["a"].tolist() == [1, 2] and arrays["s"].tolist() == [b"x", b"y"]


@pytest.mark.parametrize("doc, message", [
    ({"instances": [[1, 2], [3]]}, "Encountered list at unexpected size"),
    ({"instances": [[1, True]]}, "Type: True is not of expected type: float"),
    ({"instances": [256]}, "out of range"),
    ({"instances": [1.5]}, "is not of expected type: uint8"),
    ({"instances": [{"x": 1, "y": 2}]}, "does not have named input: y"),
])
def test_json_input_errors(doc, message):
  dtype = UINT8 if doc["instances"] in ([256], [1.5]) else FLOAT
  with pytest.raises(ServingError, match=message):
    tensors.json_to_inputs(doc, {"x": dtype})


def test_json_outputs_follow_tf_serving_shapes():
  outputs = {"scores": np.array([[0.5, 0.25]], np.float32),
             "label_bytes": np.array([b"\xff"], dtype=object),
             "label": np.array([b"cat"], dtype=object)}
  row = tensors.outputs_to_json(outputs, "row")
  assert row == {"predictions": [{"label": "cat", "label_bytes": {"b64": "/w=="},
                                  "scores": [0.5, 0.25]}]}
  assert tensors.outputs_to_json({"y": np.array([1, 2], np.int32)}, "columnar") == \
      {"outputs": [1, 2]}
  with pytest.raises(ServingError, match="inconsistent batch size"):
    tensors.outputs_to_json({"a": np.zeros(2), "b": np.zeros(3)}, "row")


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
           tensor_pb2.TensorProto(dtype=FLOAT, tensor_content=b"abc")]
  cases[3].tensor_shape.dim.add(size=1)
  for proto in cases:
    with pytest.raises(ServingError, match="tensor parsing error: x") as info:
      tensors.to_numpy(proto, "x")
    assert info.value.code_name == "INVALID_ARGUMENT"
  assert tensors.clip("a" * 10**6).startswith("a" * 200 + "... (1000000 characters)")


def test_prometheus_text_follows_tf_serving():
  m = Metrics()
  m.record_request(model="m", version=1, signature="s", method="Predict", entrypoint="GRPC",
                   status="OK", latency_us=100, tf_api="Predict")
  m.record_request(model="m", version=2, signature="s", method="Predict", entrypoint="REST",
                   status="INVALID_ARGUMENT", latency_us=300, tf_api="predict")
  m.record_request(model="m", version=2, signature="", method="GetModelStatus",
                   entrypoint="GRPC", status="OK", latency_us=50, tf_api=None,
                   per_version=False)
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
  arms = compare(text, "m")
  assert {v: (a["requests"], a["errors"]) for v, a in arms.items()} == {
      "1": (1, 0), "2": (1, 1)}
  assert arms["1"]["p50_latency_ms"] >= 0.1 and arms["2"]["p99_latency_ms"] >= 0.3
