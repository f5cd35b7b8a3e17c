"""The TF Serving API end to end, as a client written for TF Serving sees it:
official `tensorflow_serving.apis` gRPC stubs and plain HTTP.  Served outputs
must equal the SavedModel called in-process; every bad input gets TF
Serving's status and a usable message, and the next good request is still
answered.  Runs against a real tensorflow_model_server when TF_SERVING_GRPC /
TF_SERVING_REST are set (see conftest.py).
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, predict_pb2,
                                     regression_pb2)

from tests.support import tiny_models
from tests.support.remote import needs_embedded

TINY, TF1 = tiny_models.TF2_MODEL, tiny_models.TF1_MODEL
S = tiny_models.IMAGE_SIZE
OUTPUTS = ("logits", "probabilities", "top_k_scores", "top_k_classes", "top_k_labels")


def _png(seed: int, size: tuple[int, int] = (13, 9)) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  return out.getvalue()


def _inputs(signature: str) -> tuple[str, np.ndarray]:
  rng = np.random.default_rng(1)
  if signature == "serving_default":
    return "images", rng.uniform(-1, 1, (2, S, S, 3)).astype(np.float32)
  if signature == "predict_uint8":
    return "images", rng.integers(0, 256, (2, S, S, 3), dtype=np.uint8)
  images = np.empty(2, dtype=object)
  images[:] = [_png(1), _png(2, (20, 31))]
  return "image_bytes", images


@pytest.fixture(scope="module")
def reference(repository: Path):
  """Signature functions of the SavedModels, called in this process."""
  loaded = {}

  def get(model: str, version: int, signature: str):
    key = (model, version)
    if key not in loaded:
      loaded[key] = tf.saved_model.load(str(repository / model / str(version)))
    return loaded[key].signatures[signature]
  return get


def _expected(reference, signature: str, version: int = 2) -> dict[str, np.ndarray]:
  name, value = _inputs(signature)
  out = reference(TINY, version, signature)(**{name: tf.constant(value)})
  return {k: v.numpy() for k, v in out.items()}


def _assert_same(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
  assert sorted(actual) == sorted(expected)
  for key, want in expected.items():
    got = np.asarray(actual[key])
    if want.dtype == object:
      assert got.tolist() == want.tolist(), key
    else:
      assert got.shape == want.shape, key
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=key)


def _predict_request(signature: str = "serving_default", model: str = TINY,
                     **inputs: np.ndarray) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = signature
  if not inputs:
    name, value = _inputs(signature)
    inputs = {name: value}
  for key, value in inputs.items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
  return request


def _http(url: str, body: object | bytes | None = None) -> tuple[int, dict]:
  data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
  try:
    with urllib.request.urlopen(request, timeout=60) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _json_value(value: np.ndarray) -> list:
  if value.dtype == object:
    return [{"b64": base64.b64encode(v).decode()} for v in value]
  return value.tolist()


def _decode_outputs(rows_or_columns: object, fmt: str) -> dict[str, np.ndarray]:
  if fmt == "row":
    return {k: np.array([row[k] for row in rows_or_columns], dtype=None if k != "top_k_labels"
                        else object) for k in OUTPUTS}
  return {k: np.array(v, dtype=None if k != "top_k_labels" else object)
          for k, v in rows_or_columns.items()}


# ---------------------------------------------------------------- outputs

@pytest.mark.parametrize("signature", ["serving_default", "predict_uint8", "predict_bytes"])
def test_grpc_predict_equals_in_process(stub, reference, signature):
  response = stub.Predict(_predict_request(signature), timeout=60)
  assert response.model_spec.name == TINY
  assert response.model_spec.version.value == 2
  assert response.model_spec.signature_name == signature
  actual = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
  expected = _expected(reference, signature)
  expected["top_k_labels"] = expected["top_k_labels"].astype(object)
  _assert_same(actual, expected)


@pytest.mark.parametrize("signature", ["serving_default", "predict_uint8", "predict_bytes"])
@pytest.mark.parametrize("fmt", ["row", "columnar"])
def test_rest_predict_equals_in_process(rest_url, reference, signature, fmt):
  name, value = _inputs(signature)
  body = {"signature_name": signature}
  if fmt == "row":
    body["instances"] = (_json_value(value) if signature == "predict_bytes"
                         else value.tolist())
  else:
    body["inputs"] = {name: _json_value(value)}
  status, doc = _http(f"{rest_url}/v1/models/{TINY}:predict", body)
  assert status == 200, doc
  key = "predictions" if fmt == "row" else "outputs"
  assert list(doc) == [key]
  actual = _decode_outputs(doc[key], fmt)
  expected = _expected(reference, signature)
  expected["top_k_labels"] = np.array(
      [[s.decode() for s in row] for row in expected["top_k_labels"]], dtype=object)
  _assert_same(actual, expected)


def test_output_filter_returns_only_requested(stub):
  request = _predict_request()
  request.output_filter.append("top_k_classes")
  response = stub.Predict(request, timeout=60)
  assert list(response.outputs) == ["top_k_classes"]


def test_versions_and_labels_route_to_their_version(stub, rest_url, reference):
  for choice, version in [({"version": 1}, 1), ({"version_label": "stable"}, 1),
                          ({"version_label": "canary"}, 2), ({}, 2)]:
    request = _predict_request()
    if "version" in choice:
      request.model_spec.version.value = choice["version"]
    if "version_label" in choice:
      request.model_spec.version_label = choice["version_label"]
    response = stub.Predict(request, timeout=60)
    assert response.model_spec.version.value == version
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["logits"]),
                               _expected(reference, "serving_default", version)["logits"],
                               rtol=1e-6)
  _, images = _inputs("serving_default")
  for path, version in [("versions/1", 1), ("labels/stable", 1), ("labels/canary", 2)]:
    status, doc = _http(f"{rest_url}/v1/models/{TINY}/{path}:predict",
                        {"inputs": {"images": images.tolist()}})
    assert status == 200, doc
    np.testing.assert_allclose(doc["outputs"]["logits"],
                               _expected(reference, "serving_default", version)["logits"],
                               rtol=1e-6)


def test_single_output_rows_are_plain_values(rest_url):
  status, doc = _http(f"{rest_url}/v1/models/{TF1}:predict", {"instances": [[1.0, 2.0]]})
  assert status == 200, doc
  w = tiny_models.TF1_WEIGHTS
  np.testing.assert_allclose(doc["predictions"], [[1.0, 2.0]] @ w, rtol=1e-6)
  status, doc = _http(f"{rest_url}/v1/models/{TF1}:predict", {"inputs": [[1.0, 2.0], [0, 1]]})
  assert status == 200, doc
  np.testing.assert_allclose(doc["outputs"], [[1.0, 2.0], [0, 1]] @ w, rtol=1e-6)


# ------------------------------------------------------ classify / regress

def _examples(*rows: list[float]) -> classification_pb2.ClassificationRequest:
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = TF1
  request.model_spec.signature_name = "classify"
  for row in rows:
    request.input.example_list.examples.add().ParseFromString(tiny_models.example_bytes(row))
  return request


def _tf1_reference(reference, signature: str, rows: list[list[float]]) -> dict[str, np.ndarray]:
  serialized = tf.constant([tiny_models.example_bytes(r) for r in rows])
  return {k: v.numpy() for k, v in reference(TF1, 1, signature)(inputs=serialized).items()}


def test_classify_regress_multi_inference_equal_in_process(stub, rest_url, reference):
  rows = [[1.0, 2.0], [-0.5, 0.25]]
  expected = _tf1_reference(reference, "classify", rows)
  response = stub.Classify(_examples(*rows), timeout=60)
  assert response.model_spec.version.value == 1
  for i, result in enumerate(response.result.classifications):
    assert [c.label.encode() for c in result.classes] == list(expected["classes"][i])
    np.testing.assert_allclose([c.score for c in result.classes], expected["scores"][i],
                               rtol=1e-6)

  regress = regression_pb2.RegressionRequest(input=_examples(*rows).input)
  regress.model_spec.name, regress.model_spec.signature_name = TF1, "regress"
  want = _tf1_reference(reference, "regress", rows)["outputs"]
  got = [r.value for r in stub.Regress(regress, timeout=60).result.regressions]
  np.testing.assert_allclose(got, want, rtol=1e-6)

  multi = inference_pb2.MultiInferenceRequest()
  multi.input.CopyFrom(_examples(*rows).input)
  for signature, method in [("classify", "tensorflow/serving/classify"),
                            ("regress", "tensorflow/serving/regress")]:
    task = multi.tasks.add(method_name=method)
    task.model_spec.name, task.model_spec.signature_name = TF1, signature
  results = stub.MultiInference(multi, timeout=60).results
  np.testing.assert_allclose([c.score for c in results[0].classification_result
                              .classifications[1].classes], expected["scores"][1], rtol=1e-6)
  np.testing.assert_allclose([r.value for r in results[1].regression_result.regressions],
                             want, rtol=1e-6)

  body = {"signature_name": "classify", "examples": [{"x": r} for r in rows]}
  status, doc = _http(f"{rest_url}/v1/models/{TF1}:classify", body)
  assert status == 200, doc
  assert [[c[0] for c in row] for row in doc["results"]] == [["red", "green", "blue"]] * 2
  np.testing.assert_allclose([[c[1] for c in row] for row in doc["results"]],
                             expected["scores"], rtol=1e-6)
  status, doc = _http(f"{rest_url}/v1/models/{TF1}:regress",
                      {"signature_name": "regress", "context": {"x": [1.0, 2.0]},
                       "examples": [{}]})
  assert status == 200, doc
  np.testing.assert_allclose(doc["results"], [3.0], rtol=1e-6)


# --------------------------------------------------------- metadata, status

def test_metadata(stub, rest_url):
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = TINY
  response = stub.GetModelMetadata(request, timeout=60)
  sigs = get_model_metadata_pb2.SignatureDefMap()
  response.metadata["signature_def"].Unpack(sigs)
  assert {"serving_default", "predict_uint8", "predict_bytes"} <= set(sigs.signature_def)
  images = sigs.signature_def["serving_default"].inputs["images"]
  assert [d.size for d in images.tensor_shape.dim] == [-1, S, S, 3]
  assert images.dtype == tf.float32.as_datatype_enum

  status, doc = _http(f"{rest_url}/v1/models/{TINY}/versions/1/metadata")
  assert status == 200, doc
  assert doc["model_spec"]["name"] == TINY and doc["model_spec"]["version"] == "1"
  assert doc["metadata"]["signature_def"]["signature_def"]["predict_bytes"]["inputs"][
      "image_bytes"]["dtype"] == "DT_STRING"


def test_model_status(model_stub, rest_url):
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = TINY
  response = model_stub.GetModelStatus(request, timeout=60)
  states = {s.version: s.state for s in response.model_version_status}
  available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
  assert states == {1: available, 2: available}
  # Status reads only the name and version, not a label (get_model_status_impl.cc),
  # and REST's GET .../labels/L goes through it (http_rest_api_handler.cc).
  request.model_spec.version_label = "no-such-label"
  response = model_stub.GetModelStatus(request, timeout=60)
  assert sorted(s.version for s in response.model_version_status) == [1, 2]
  for label in ("stable", "no-such-label"):
    status, doc = _http(f"{rest_url}/v1/models/{TINY}/labels/{label}")
    assert status == 200, doc
    assert sorted(s["version"] for s in doc["model_version_status"]) == ["1", "2"]
  status, doc = _http(f"{rest_url}/v1/models/nope")
  assert status == 404
  assert "Could not find any versions of model nope" in doc["error"]


# -------------------------------------------------------------- bad inputs

def _bad(**changes):
  """A request builder applying `changes` to a good serving_default request."""
  def build() -> predict_pb2.PredictRequest:
    request = _predict_request()
    spec = request.model_spec
    if "model" in changes:
      spec.name = changes["model"]
    if "version" in changes:
      spec.version.value = changes["version"]
    if "label" in changes:
      spec.version_label = changes["label"]
    if "signature" in changes:
      spec.signature_name = changes["signature"]
    if "inputs" in changes:
      request.ClearField("inputs")
      for k, v in changes["inputs"].items():
        request.inputs[k].CopyFrom(v if not isinstance(v, np.ndarray)
                                   else tf.make_tensor_proto(v))
    if "output_filter" in changes:
      request.output_filter.append(changes["output_filter"])
    return request
  return build


def _truncated_content():
  proto = tf.make_tensor_proto(np.zeros((1, S, S, 3), np.float32))
  proto.tensor_content = proto.tensor_content[:-4]
  return proto


GOOD = np.zeros((1, S, S, 3), np.float32)
GRPC_ERRORS = {
    "unknown model": (_bad(model="nope"), grpc.StatusCode.NOT_FOUND,
                      "Servable not found for request: Latest(nope)"),
    "unknown version": (_bad(version=7), grpc.StatusCode.NOT_FOUND,
                        f"Servable not found for request: Specific({TINY}, 7)"),
    "unknown label": (_bad(label="nope"), grpc.StatusCode.INVALID_ARGUMENT,
                      "Unrecognized servable version label: nope"),
    "unknown signature": (_bad(signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
                          'Serving signature key "nope" not found.'),
    "wrong dtype": (_bad(inputs={"images": GOOD.astype(np.int32)}),
                    grpc.StatusCode.INVALID_ARGUMENT, "to be float but int32 is provided"),
    # The graph, not the SignatureDef, decides: 4x4 images would be answered.
    "shape the graph rejects": (_bad(inputs={"images": np.zeros((1, S, S, 2), np.float32)}),
                                grpc.StatusCode.INVALID_ARGUMENT, "size-incompatible"),
    "missing input": (_bad(inputs={}), grpc.StatusCode.INVALID_ARGUMENT,
                      "input size does not match signature"),
    "extra input": (_bad(inputs={"images": GOOD, "extra": GOOD}),
                    grpc.StatusCode.INVALID_ARGUMENT, "Sent extra: {extra}"),
    "truncated tensor_content": (_bad(inputs={"images": _truncated_content()}),
                                 grpc.StatusCode.INVALID_ARGUMENT, "images"),
    "unknown output": (_bad(output_filter="nope"), grpc.StatusCode.INVALID_ARGUMENT,
                       "output tensor alias not found in signature: nope"),
    "undecodable image": (lambda: _predict_request(
        "predict_bytes", image_bytes=np.array([b"not an image"], dtype=object)),
        grpc.StatusCode.INVALID_ARGUMENT, "Unknown image file format"),
}


@pytest.mark.parametrize("case", sorted(GRPC_ERRORS))
def test_grpc_bad_request(stub, case):
  build, code, message = GRPC_ERRORS[case]
  with pytest.raises(grpc.RpcError) as info:
    stub.Predict(build(), timeout=60)
  assert info.value.code() == code, info.value.details()
  assert message in info.value.details()
  assert stub.Predict(_predict_request(), timeout=60).outputs["logits"].tensor_shape.dim[0].size == 2


def test_grpc_empty_batch_is_answered_empty(stub):
  response = stub.Predict(_predict_request(images=np.zeros((0, S, S, 3), np.float32)),
                          timeout=60)
  assert [d.size for d in response.outputs["logits"].tensor_shape.dim] == [0, 4]


def _image_row() -> list:
  return np.zeros((S, S, 3)).tolist()


REST_ERRORS = {
    "malformed json": (TINY + ":predict", b'{"instances": [1,', 400, "JSON Parse error"),
    "empty body": (TINY + ":predict", b"", 400, "JSON Parse error"),
    "not an object": (TINY + ":predict", [1, 2], 400, "Is not object"),
    "missing key": (TINY + ":predict", {"instancez": []}, 400,
                    "Missing 'inputs' or 'instances' key"),
    "empty batch": (TINY + ":predict", {"instances": []}, 400, "No values in 'instances'"),
    "wrong type": (TINY + ":predict", {"instances": [[["a"] * 3] * S] * S}, 400,
                   "is not of expected type: float"),
    "ragged": (TINY + ":predict", {"inputs": [[[[0, 0, 0]] * S] * S, [[[0, 0]] * S] * S]},
               400, "Encountered list at unexpected size"),
    "shape the graph rejects": (TINY + ":predict", {"instances": [[[[0.0, 0.0]]]]}, 400,
                                "size-incompatible"),
    "both formats": (TINY + ":predict", {"instances": [1], "inputs": [1]}, 400,
                     "expecting only one of 'inputs' or 'instances'"),
    "bad base64": (TINY + ":predict", {"signature_name": "predict_bytes",
                                       "instances": [{"b64": "%%%"}]}, 400,
                   "Unable to base64 decode"),
    "undecodable image": (TINY + ":predict", {"signature_name": "predict_bytes", "instances": [
        {"b64": base64.b64encode(b"not an image").decode()}]}, 400, "Unknown image file format"),
    "unknown model": ("nope:predict", {"instances": [_image_row()]}, 404,
                      "Servable not found for request: Latest(nope)"),
    "unknown version": (TINY + "/versions/7:predict", {"instances": [_image_row()]}, 404,
                        f"Servable not found for request: Specific({TINY}, 7)"),
    "unknown label": (TINY + "/labels/nope:predict", {"instances": [_image_row()]}, 400,
                      "Unrecognized servable version label: nope"),
    "unknown signature": (TINY + ":predict", {"signature_name": "nope",
                                              "instances": [_image_row()]}, 400,
                          # http_rest_api_handler.cc: GetInfoMap
                          'Serving signature name: "nope" not found in signature def'),
    "bad signature_name": (TINY + ":predict", {"signature_name": 3, "instances": [1]}, 400,
                           "'signature_name' key must be a string value."),
    "malformed url": (TINY + ":explode", {"instances": [1]}, 400, "Malformed request"),
    "classify without examples": (TF1 + ":classify", {"signature_name": "classify"}, 400,
                                  "'examples' is expected"),
}


@pytest.mark.parametrize("case", sorted(REST_ERRORS))
def test_rest_bad_request(rest_url, case):
  path, body, http_status, message = REST_ERRORS[case]
  status, doc = _http(f"{rest_url}/v1/models/{path}", body)
  assert status == http_status, doc
  assert list(doc) == ["error"] and message in doc["error"]
  status, doc = _http(f"{rest_url}/v1/models/{TINY}:predict", {"instances": [_image_row()]})
  assert status == 200, doc


def test_health_service_is_off_by_default(channel):
  # --enable_grpc_healthcheck_service defaults to false in tensorflow_model_server
  # (main.cc; server.cc registers grpc.health.v1 only when it is set), so
  # a health check against a server started without it is UNIMPLEMENTED.
  from grpc_health.v1 import health_pb2, health_pb2_grpc
  with pytest.raises(grpc.RpcError) as error:
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                              timeout=30)
  assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


@needs_embedded     # its own server, with the flag
def test_health_service_with_the_flag(repository):
  from grpc_health.v1 import health_pb2, health_pb2_grpc
  server = tiny_models.ServerProcess([f"--port={tiny_models.free_port()}",
                                  f"--model_config_file={repository / 'models.config'}",
                                  "--allow_version_labels_for_unavailable_models",
                                  "--enable_grpc_healthcheck_service=true"])
  try:
    with grpc.insecure_channel(server.grpc_address) as channel:
      health = health_pb2_grpc.HealthStub(channel)
      for service in ("", "PredictionService", "ModelService"):   # server.cc's names
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
  finally:
    server.stop()
