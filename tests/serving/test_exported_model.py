"""A real exported model (tests/data/vit_a_token.npz through
export.exporter.export_checkpoint) served by the embedded server, started
with the single-model flags: every signature's outputs over gRPC and REST
equal the SavedModel called in-process."""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import contract
from tests.support import tiny_models
from tests.support.logs import FOREIGN
from tests.support.remote import needs_embedded

pytestmark = needs_embedded
NAME = "vit"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, vit_a_token_version):
  repo = tmp_path_factory.mktemp("exported")
  path = vit_a_token_version(repo / NAME / "1")
  return repo / NAME, path


@pytest.fixture(scope="module")
def served(exported):
  base, _ = exported
  server = tiny_models.ServerProcess([f"--port={tiny_models.free_port()}",
                                  f"--rest_api_port={tiny_models.free_port()}",
                                  f"--model_name={NAME}", f"--model_base_path={base}",
                                  "--xla_cpu_compilation_enabled=true"])
  yield server
  server.stop()


def _inputs(signature: str, size: int) -> tuple[str, np.ndarray]:
  rng = np.random.default_rng(5)
  pixels = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  if signature == "serving_default":
    return "images", (pixels / 127.5 - 1).astype(np.float32)
  if signature == "predict_uint8":
    return "images", pixels
  encoded = np.empty(2, dtype=object)
  for i in range(2):
    out = io.BytesIO()
    Image.fromarray(pixels[i]).resize((size + 7, size + 3)).save(out, format="PNG")
    encoded[i] = out.getvalue()
  return "image_bytes", encoded


def test_log_is_the_servers_own(served):
  """No TensorFlow C++ start-up lines, cuInit error or custom-gradient
  warnings per version load (serving/quiet.py)."""
  served.wait_for_log("Running gRPC ModelServer")
  assert [line for line in served.lines if FOREIGN.search(line)] == []


@pytest.mark.parametrize("signature", [spec.name for spec in contract.SIGNATURES])
def test_served_equals_in_process(exported, served, signature):
  _, path = exported
  loaded = tf.saved_model.load(str(path))
  size = loaded.signatures["serving_default"].structured_input_signature[1]["images"].shape[1]
  name, value = _inputs(signature, size)
  want = {k: v.numpy() for k, v in
          loaded.signatures[signature](**{name: tf.constant(value)}).items()}

  import grpc
  with grpc.insecure_channel(served.grpc_address) as channel:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = NAME, signature
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        request, timeout=120)
  got = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
  assert sorted(got) == sorted(want)

  json_value = ([{"b64": base64.b64encode(v).decode()} for v in value]
                if value.dtype == object else value.tolist())
  body = json.dumps({"signature_name": signature, "inputs": {name: json_value}}).encode()
  with urllib.request.urlopen(urllib.request.Request(
      f"http://{served.rest_address}/v1/models/{NAME}:predict", data=body), timeout=120) as r:
    rest = json.loads(r.read())["outputs"]

  for key, expected in want.items():
    if expected.dtype == object:
      assert got[key].tolist() == expected.tolist()
      assert rest[key] == [[s.decode() for s in row] for row in expected]
    else:
      np.testing.assert_allclose(got[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
      np.testing.assert_allclose(rest[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
