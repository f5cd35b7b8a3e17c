"""Client mistakes over gRPC: TF Serving's INVALID_ARGUMENT (never INTERNAL
or UNKNOWN), names clipped in messages, one log line per bad request and no
traceback, and the next good request still answered."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_status_pb2, predict_pb2,
                                     regression_pb2)

from tests.support import tiny_models
from tests.support.remote import needs_embedded

S = tiny_models.IMAGE_SIZE
PREDICT = "/tensorflow.serving.PredictionService/Predict"
MEGABYTE_NAME = "s" * (1 << 20)


def _good() -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = tiny_models.TF2_MODEL
  request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, S, S, 3), np.float32)))
  return request


def _unknown_dtype() -> bytes:
  request = _good()
  request.inputs["images"].dtype = 999            # no such DataType; proto3 keeps it
  return request.SerializeToString()


def _huge_shape() -> bytes:
  request = _good()
  images = request.inputs["images"]
  images.ClearField("tensor_content")
  images.float_val.append(0.0)
  images.tensor_shape.dim[0].size = 2**40          # 2^40 images of 8x8x3 floats
  return request.SerializeToString()


def _version_beyond_int64() -> bytes:
  """ModelSpec.version = 2^70: a varint no int64 holds (what a JSON or
  hand-written client can send), so the request does not parse."""
  value = 2**70
  varint = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    varint.append(byte | (0x80 if value else 0))
    if not value:
      break
  version = b"\x08" + bytes(varint)                 # Int64Value.value = field 1
  name = tiny_models.TF2_MODEL.encode()
  spec = b"\x0a" + bytes([len(name)]) + name + b"\x12" + bytes([len(version)]) + version
  return b"\x0a" + bytes([len(spec)]) + spec        # PredictRequest.model_spec = field 1


def _missing_spec() -> bytes:
  request = _good()
  request.ClearField("model_spec")
  return request.SerializeToString()


def _empty_name() -> bytes:
  request = _good()
  request.model_spec.name = ""
  request.model_spec.signature_name = "serving_default"
  return request.SerializeToString()


def _megabyte_signature() -> bytes:
  request = _good()
  request.model_spec.signature_name = MEGABYTE_NAME
  return request.SerializeToString()


CASES = {
    "unknown dtype enum": (_unknown_dtype, grpc.StatusCode.INVALID_ARGUMENT, "images"),
    "malformed protobuf bytes": (lambda: b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT,
                                 ""),
    "2^40 images": (_huge_shape, grpc.StatusCode.INVALID_ARGUMENT, "images"),
    "version beyond int64": (_version_beyond_int64, grpc.StatusCode.INVALID_ARGUMENT, ""),
    "missing ModelSpec": (_missing_spec, grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    "empty model name": (_empty_name, grpc.StatusCode.INVALID_ARGUMENT,
                         "ModelSpec has no name specified"),
    "megabyte signature name": (_megabyte_signature, grpc.StatusCode.FAILED_PRECONDITION,
                                'Serving signature key "sss'),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_predict_bytes(channel, stub, case):
  build, code, message = CASES[case]
  predict = channel.unary_unary(PREDICT)            # raw bytes in, raw bytes out
  with pytest.raises(grpc.RpcError) as info:
    predict(build(), timeout=60)
  assert info.value.code() == code, info.value.details()
  assert message in info.value.details()
  assert len(info.value.details()) < 5000
  assert stub.Predict(_good(), timeout=60).outputs["logits"].tensor_shape.dim[0].size == 1


def test_classify_and_regress_bad_signatures(stub):
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name, request.model_spec.signature_name = tiny_models.TF1_MODEL, MEGABYTE_NAME
  request.input.example_list.examples.add().ParseFromString(tiny_models.example_bytes([1.0, 2.0]))
  with pytest.raises(grpc.RpcError) as info:
    stub.Classify(request, timeout=60)
  assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "No signature was found with the name: sss" in info.value.details()
  assert len(info.value.details()) < 5000
  regress = regression_pb2.RegressionRequest(input=request.input)
  with pytest.raises(grpc.RpcError) as info:
    stub.Regress(regress, timeout=60)
  assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                       "Missing ModelSpec")


def test_model_status_without_spec(model_stub):
  with pytest.raises(grpc.RpcError) as info:
    model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(), timeout=60)
  assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                       "Missing ModelSpec")


@needs_embedded
def test_one_log_line_per_bad_request_and_no_traceback(server, channel):
  predict = channel.unary_unary(PREDICT)
  before = len(server.lines)
  for build, _, _ in CASES.values():
    with pytest.raises(grpc.RpcError):
      predict(build(), timeout=60)
  deadline = time.monotonic() + 30
  while True:               # the log is read on a thread: wait for the last line
    lines = server.lines[before:]
    failed = [line for line in lines if "Predict failed:" in line]
    if len(failed) >= len(CASES) or time.monotonic() > deadline:
      break
    time.sleep(0.1)
  assert len(failed) == len(CASES), lines
  assert not any("Traceback" in line for line in lines)
  assert max(len(line) for line in lines) < 1000
