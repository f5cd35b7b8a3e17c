"""Retries, deadlines and errors of both transports, against fake servers
that count the attempts they see (and a port where nothing listens)."""

from __future__ import annotations

import random
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest

from clients import ClientError, GrpcClient, RestClient, RetryPolicy
from contract import protos
from tests.support.tiny_models import free_port
from tests.support.fake_http import FakeHttpServer

FAST = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02, jitter=0.0)
IMAGES = np.zeros((1, 4, 4, 3), np.float32)


def test_backoff_grows_exponentially_capped_and_jittered():
  policy = RetryPolicy(attempts=6, initial_backoff=0.1, multiplier=2, max_backoff=0.5, jitter=0)
  assert list(policy.delays()) == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
  jittered = list(RetryPolicy(attempts=4, jitter=0.5).delays(random.Random(0)))
  assert all(0.5 * d <= j <= d for j, d in zip(jittered, [0.1, 0.2, 0.4]))
  assert list(RetryPolicy(attempts=1).delays()) == []


class FakeGrpc:
  """A PredictionService whose Predict fails with `code` (or sleeps), counting calls."""

  def __init__(self, code: grpc.StatusCode | None, sleep: float = 0.0):
    self.calls = 0
    self.done = threading.Event()

    def predict(request, context):
      self.calls += 1
      if sleep:
        self.done.wait(sleep)
      if code is not None:
        context.abort(code, f"fake says {code.name}")
      return protos.PredictResponse()

    handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
        "Predict": grpc.unary_unary_rpc_method_handler(
            predict, request_deserializer=protos.PredictRequest.FromString,
            response_serializer=protos.PredictResponse.SerializeToString)})
    self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    self.server.add_generic_rpc_handlers([handler])
    self.port = self.server.add_insecure_port("127.0.0.1:0")
    self.server.start()

  def stop(self) -> None:
    self.done.set()
    self.server.stop(None)


@pytest.fixture
def fake_grpc(request):
  fake = FakeGrpc(*request.param)
  yield fake
  fake.stop()


@pytest.mark.parametrize("fake_grpc", [(grpc.StatusCode.UNAVAILABLE,)], indirect=True)
def test_grpc_unavailable_is_retried_then_raised(fake_grpc):
  with GrpcClient(f"127.0.0.1:{fake_grpc.port}", retry=FAST, timeout=5) as client:
    with pytest.raises(ClientError) as error:
      client.predict_images("vit", IMAGES, label="canary")
  assert fake_grpc.calls == 3 and error.value.attempts == 3
  assert error.value.code == "UNAVAILABLE"
  assert "fake says UNAVAILABLE" in str(error.value)
  assert "model 'vit' label 'canary'" in str(error.value) and "after 3 attempts" in str(error.value)


@pytest.mark.parametrize("fake_grpc", [(grpc.StatusCode.INVALID_ARGUMENT,),
                                       (grpc.StatusCode.NOT_FOUND,)], indirect=True)
def test_grpc_permanent_errors_are_not_retried(fake_grpc):
  with GrpcClient(f"127.0.0.1:{fake_grpc.port}", retry=FAST, timeout=5) as client:
    with pytest.raises(ClientError) as error:
      client.predict_images("vit", IMAGES, version=2)
  assert fake_grpc.calls == 1 and error.value.attempts == 1
  assert error.value.code in ("INVALID_ARGUMENT", "NOT_FOUND")
  assert "version 2" in error.value.request


@pytest.mark.parametrize("fake_grpc", [(None, 5.0)], indirect=True)
def test_grpc_deadline_is_enforced_and_not_retried(fake_grpc):
  with GrpcClient(f"127.0.0.1:{fake_grpc.port}", retry=FAST, timeout=0.2) as client:
    with pytest.raises(ClientError) as error:
      client.predict_images("vit", IMAGES)
  assert error.value.code == "DEADLINE_EXCEEDED" and fake_grpc.calls == 1
  assert "0.2 s deadline" in error.value.message


def test_grpc_server_down_fails_after_configured_attempts():
  with GrpcClient(f"127.0.0.1:{free_port()}", retry=FAST, timeout=2) as client:
    with pytest.raises(ClientError) as error:
      client.status("vit")
  assert error.value.code == "UNAVAILABLE" and error.value.attempts == 3
  assert "GetModelStatus model 'vit'" in str(error.value)


@pytest.mark.parametrize("status,code,attempts", [(503, "UNAVAILABLE", 3),
                                                  (400, "INVALID_ARGUMENT", 1),
                                                  (404, "NOT_FOUND", 1)])
def test_rest_errors_map_to_status_codes_and_retry_only_unavailable(status, code, attempts):
  fake = FakeHttpServer({"error": "Servable not found for request: Latest(vit)"},
                        status=status)
  try:
    with RestClient(f"127.0.0.1:{fake.port}", retry=FAST, timeout=5) as client:
      with pytest.raises(ClientError) as error:
        client.status("vit")
  finally:
    fake.stop()
  assert error.value.code == code and error.value.attempts == attempts == fake.calls
  assert error.value.message == "Servable not found for request: Latest(vit)"
  assert f"http://127.0.0.1:{fake.port}/v1/models/vit" in error.value.request


def test_rest_server_down_fails_after_configured_attempts():
  with RestClient(f"127.0.0.1:{free_port()}", retry=FAST, timeout=2) as client:
    with pytest.raises(ClientError) as error:
      client.metadata("vit", label="stable")
  assert error.value.code == "UNAVAILABLE" and error.value.attempts == 3
  assert "/v1/models/vit/labels/stable/metadata" in error.value.request


def test_rest_lone_output_without_name_is_decoded_with_metadata_types():
  # TF Serving's columnar response drops the output name when there is one.
  info = {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}, {"size": "2"}]}}
  metadata = {"model_spec": {"name": "feat", "version": "4", "signature_name": ""},
              "metadata": {"signature_def": {"signature_def": {"serving_default": {
                  "inputs": {"images": info}, "outputs": {"features": info},
                  "method_name": "tensorflow/serving/predict"}}}}}
  fake = FakeHttpServer({"outputs": [[0.5, -1.25]]},
                        by_path={"/v1/models/feat/metadata": metadata,
                                 "/v1/models/feat/versions/4/metadata": metadata})
  try:
    with RestClient(f"127.0.0.1:{fake.port}", retry=FAST, resolve_versions=True) as client:
      result = client.predict_images("feat", IMAGES)
  finally:
    fake.stop()
  assert list(result.outputs) == ["features"] and result.model_version == 4
  assert result["features"].dtype == np.float32
  np.testing.assert_array_equal(result["features"], [[0.5, -1.25]])
