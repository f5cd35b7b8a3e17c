"""TF Serving's own test models (half_plus_two TF1 and TF2, half_plus_three,
a two-version model; see tf_serving_models.py) served as
tensorflow_model_server serves them: the answers its own tests expect
(model_servers/tensorflow_model_server_test.py), through the official stubs
and plain HTTP, and TF Serving's metrics for those calls.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     inference_pb2, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from tests.support import tf_serving_models, tiny_models
from tests.support.remote import needs_embedded

pytestmark = needs_embedded     # serves its own repository
VERSION = tf_serving_models.VERSION


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
  return tf_serving_models.write_repository(tmp_path_factory.mktemp("tfs_models"))


def _start(models: Path, *flags: str) -> tiny_models.ServerProcess:
  monitoring = models / "monitoring.config"
  monitoring.write_text("prometheus_config { enable: true }")
  return tiny_models.ServerProcess([
      f"--port={tiny_models.free_port()}", f"--rest_api_port={tiny_models.free_port()}",
      f"--model_config_file={models / 'models.config'}", "--file_system_poll_wait_seconds=0",
      f"--monitoring_config_file={monitoring}", *flags])


@pytest.fixture(scope="module")
def server(models):
  proc = _start(models)
  yield proc
  proc.stop()


@pytest.fixture(scope="module")
def stub(server):
  with grpc.insecure_channel(server.grpc_address) as channel:
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _http(url: str, body: dict | None = None) -> tuple[int, dict | str]:
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
  try:
    with urllib.request.urlopen(request, timeout=60) as response:
      text = response.read().decode()
      return response.status, json.loads(text) if text.startswith("{") else text
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _predict(model: str, x: np.ndarray, **spec) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  for key, value in spec.items():
    if key == "version":
      request.model_spec.version.value = value
    else:
      setattr(request.model_spec, key, value)
  request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
  return request


def _input(request, x: float) -> None:
  example = request.input.example_list.examples.add()
  example.features.feature["x"].float_list.value.append(x)


def _classify(model: str, signature: str, x: float = 2.0):
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name, request.model_spec.signature_name = model, signature
  _input(request, x)
  return request


def _regress(model: str, signature: str, x: float = 2.0):
  request = regression_pb2.RegressionRequest()
  request.model_spec.name, request.model_spec.signature_name = model, signature
  _input(request, x)
  return request


def test_rest_predict_of_any_shape_the_graph_takes(server):
  url = f"http://{server.rest_address}/v1/models/half_plus_two:predict"
  assert _http(url, {"instances": [2.0, 3.0, 4.0]}) == (200, {"predictions": [3.0, 3.5, 4.0]})
  assert _http(url, {"inputs": [2.0, 3.0, 4.0]}) == (200, {"outputs": [3.0, 3.5, 4.0]})
  url = f"http://{server.rest_address}/v1/models/half_plus_two:regress"
  assert _http(url, {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}) == \
      (200, {"results": [3.0]})


@pytest.mark.parametrize("model, x, want", [
    ("half_plus_two", [[2.0]], [[3.0]]), ("half_plus_two", [2.0, 3.0, 4.0], [3.0, 3.5, 4.0]),
    ("half_plus_two_tf2", [2.0], [3.0]), ("half_plus_three", [[2.0]], [[4.0]])])
def test_grpc_predict(stub, model, x, want):
  response = stub.Predict(_predict(model, np.array(x, np.float32)), timeout=30)
  assert tf.make_ndarray(response.outputs["y"]).tolist() == want
  assert response.outputs["y"].float_val            # AsProtoField by default
  assert (response.model_spec.name, response.model_spec.signature_name,
          response.model_spec.version.value) == (model, "serving_default", VERSION)


@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
def test_classify_regress_multi_inference_tf1_and_tf2(stub, model):
  # TF2 signatures all have method_name predict: served, since their
  # inputs and outputs fit (no --enable_signature_method_name_check).
  response = stub.Classify(_classify(model, "classify_x_to_y"), timeout=30)
  assert [[c.score for c in row.classes] for row in response.result.classifications] == [[3.0]]
  assert (response.model_spec.signature_name, response.model_spec.version.value) == \
      ("classify_x_to_y", VERSION)
  for signature, want in [("regress_x_to_y", 3.0), ("regress_x_to_y2", 4.0)]:
    response = stub.Regress(_regress(model, signature), timeout=30)
    assert [r.value for r in response.result.regressions] == [want]
  request = inference_pb2.MultiInferenceRequest()
  for signature, method in [("regress_x_to_y", "tensorflow/serving/regress"),
                            ("classify_x_to_y", "tensorflow/serving/classify")]:
    task = request.tasks.add(method_name=method)
    task.model_spec.name, task.model_spec.signature_name = model, signature
  _input(request, 2.0)
  results = stub.MultiInference(request, timeout=30).results
  assert results[0].regression_result.regressions[0].value == 3.0
  assert results[1].classification_result.classifications[0].classes[0].score == 3.0
  assert [r.model_spec.signature_name for r in results] == ["regress_x_to_y", "classify_x_to_y"]


def test_graph_and_signature_errors_are_invalid_argument(stub):
  cases = [
      # Serialized examples fed to a float input: the graph refuses them.
      (lambda: stub.Classify(_classify("half_plus_two_tf2", "classify_x2_to_y3"), timeout=30),
       "float"),
      (lambda: stub.Classify(_classify("half_plus_two", "nope"), timeout=30),
       "No signature was found with the name: nope"),
      (lambda: stub.Classify(_classify("half_plus_two", "serving_default"), timeout=30),
       "No classification inputs found in SignatureDef"),
      (lambda: stub.Regress(_regress("half_plus_two", "classify_x_to_y"), timeout=30),
       "No regression outputs found in SignatureDef"),
      (lambda: stub.Predict(_predict("half_plus_two", np.array([[1]], np.int32)), timeout=30),
       "to be float but int32 is provided"),
  ]
  for call, message in cases:
    with pytest.raises(grpc.RpcError) as info:
      call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert message in info.value.details()


def test_two_versions_and_metadata(stub, server):
  model = "half_plus_two_2_versions"
  latest = stub.Predict(_predict(model, np.array([[2.0]], np.float32)), timeout=30)
  assert (latest.model_spec.version.value, tf.make_ndarray(latest.outputs["y"]).tolist()) == \
      (VERSION + 1, [[4.0]])
  older = stub.Predict(_predict(model, np.array([[2.0]], np.float32), version=VERSION),
                       timeout=30)
  assert tf.make_ndarray(older.outputs["y"]).tolist() == [[3.0]]
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = "half_plus_two"
  response = stub.GetModelMetadata(request, timeout=30)
  signatures = get_model_metadata_pb2.SignatureDefMap()
  response.metadata["signature_def"].Unpack(signatures)
  assert sorted(signatures.signature_def) == [
      "classify_x_to_y", "regress_x2_to_y3", "regress_x_to_y", "regress_x_to_y2",
      "serving_default"]
  x = signatures.signature_def["serving_default"].inputs["x"]
  assert (x.name, [d.size for d in x.tensor_shape.dim]) == ("x:0", [-1, 1])
  status, doc = _http(f"http://{server.rest_address}/v1/models/{model}/versions/{VERSION}/"
                      "metadata")
  assert status == 200 and doc["model_spec"] == {"name": model, "signature_name": "",
                                                 "version": str(VERSION)}


def _samples(text: str, name: str) -> dict[tuple, float]:
  out = {}
  for line in text.splitlines():
    m = re.match(r"^" + re.escape(name) + r"\{(.*)\} (\S+)$", line)
    if m:
      out[tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m[1])))] = float(m[2])
  return out


def test_request_metrics_follow_tf_serving(server, stub):
  model = "half_plus_three"
  url = f"http://{server.rest_address}/monitoring/prometheus/metrics"

  def scrape() -> tuple[dict, dict]:
    _, text = _http(url)
    return (_samples(text, ":tensorflow:serving:request_count"),
            _samples(text, ":tensorflow:serving:request_latency_count"))

  counts_before, latency_before = scrape()
  stub.Predict(_predict(model, np.array([[2.0]], np.float32)), timeout=30)
  with pytest.raises(grpc.RpcError):
    stub.Predict(_predict(model, np.array([[2]], np.int32)), timeout=30)
  assert _http(f"http://{server.rest_address}/v1/models/{model}:predict",
               {"instances": [[1.0]]})[0] == 200
  counts, latency = scrape()
  added = {k: v - counts_before.get(k, 0) for k, v in counts.items()
           if v != counts_before.get(k, 0)}
  assert added == {(("model_name", model), ("status", "OK")): 2,
                   (("model_name", model), ("status", "INVALID_ARGUMENT")): 1}
  added = {k: v - latency_before.get(k, 0) for k, v in latency.items()
           if v != latency_before.get(k, 0)}
  # Latency of successful calls only; REST's API label is the lowercase verb.
  assert added == {(("API", "Predict"), ("entrypoint", "GRPC"), ("model_name", model)): 1,
                   (("API", "predict"), ("entrypoint", "REST"), ("model_name", model)): 1}


def test_flags_method_name_check_and_tensor_content(models):
  proc = _start(models, "--enable_signature_method_name_check",
                "--enable_serialization_as_tensor_content")
  try:
    with grpc.insecure_channel(proc.grpc_address) as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      with pytest.raises(grpc.RpcError) as info:
        stub.Classify(_classify("half_plus_two_tf2", "classify_x_to_y"), timeout=30)
      assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
      assert "Expected classification signature method_name to be " \
             "tensorflow/serving/classify. Was: tensorflow/serving/predict" in \
             info.value.details()
      response = stub.Classify(_classify("half_plus_two", "classify_x_to_y"), timeout=30)
      assert response.result.classifications[0].classes[0].score == 3.0
      y = stub.Predict(_predict("half_plus_two", np.array([[2.0]], np.float32)),
                       timeout=30).outputs["y"]
      assert y.tensor_content and not y.float_val
      assert tf.make_ndarray(y).tolist() == [[3.0]]
  finally:
    proc.stop()


def test_bad_model_config(tmp_path):
  # testBadModelConfig with its testdata/bad_model_config.txt: the parser's
  # line on stderr is what the test (and operators) look for.
  config = tmp_path / "bad_model_config.txt"
  config.write_text("improperly formatted file")
  with pytest.raises(RuntimeError, match="server exited") as failure:
    tiny_models.ServerProcess([f"--port={tiny_models.free_port()}", f"--model_config_file={config}"])
  assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in str(failure.value)
