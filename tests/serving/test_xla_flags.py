"""--xla_cpu_compilation_enabled / --xla_gpu_compilation_enabled as
tensorflow_model_server 2.20 has them: without either, main.cc calls
tensorflow::DisableXlaCompilation(), so a jax2tf export (an XlaCallModule
that XLA compiles at its first run) fails with INTERNAL "XLA compilation
disabled" (measured in tensorflow-cpu 2.20.0, the TensorFlow of the pinned
image: docs/deployment.md), at warmup, i.e. its load, or at its first
request; a graph without XLA is served either way.  The embedded server
calls the same TensorFlow function, so `make serve`'s command line fails or
works exactly as it would in the image.  These tests start servers with
their own flags, so they run on the embedded server only.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.support import tiny_models
from tests.support.remote import needs_embedded

pytestmark = needs_embedded


def _write_jax2tf_model(path: Path, *, warmup: bool) -> Path:
  """y = 2 sin(x) through jax2tf's native serialization (one XlaCallModule),
  as export/ writes every ViT."""
  import jax.numpy as jnp
  from jax.experimental import jax2tf

  module = tf.Module()
  module.f = tf.function(
      jax2tf.convert(lambda x: 2.0 * jnp.sin(x), polymorphic_shapes=["(b, 3)"]),
      autograph=False, input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
  tf.saved_model.save(module, str(path), signatures={"serving_default": module.f})
  assert b"XlaCallModule" in (path / "saved_model.pb").read_bytes()
  if warmup:
    tiny_models.write_warmup(path, "serving_default", {"x": np.ones((1, 3), np.float32)})
  return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("xla")
  _write_jax2tf_model(root / "jax_warm" / "1", warmup=True)
  _write_jax2tf_model(root / "jax_cold" / "1", warmup=False)
  tiny_models.write_tf2_model(root / "plain" / "1")
  return root


def _config(repo: Path, *names: str) -> Path:
  path = repo / f"{'_'.join(names)}.config"
  path.write_text("model_config_list {\n" + "".join(
      f'  config {{ name: "{n}" base_path: "{repo / n}" model_platform: "tensorflow" }}\n'
      for n in names) + "}\n")
  return path


def _predict(address: str, model: str, x: np.ndarray) -> np.ndarray:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
  with grpc.insecure_channel(address) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(request, timeout=60)
  return tf.make_ndarray(next(iter(response.outputs.values())))


def test_without_the_flags_a_warmed_jax2tf_export_fails_start_up(repo):
  with pytest.raises(RuntimeError, match="server exited") as failure:
    tiny_models.ServerProcess([f"--port={tiny_models.free_port()}",
                           "--max_num_load_retries=0",
                           f"--model_config_file={_config(repo, 'jax_warm')}"])
  assert "Failed to start server. Error:" in str(failure.value)
  assert "XLA compilation disabled" in str(failure.value)


def test_without_the_flags_requests_fail_and_plain_graphs_serve(repo):
  server = tiny_models.ServerProcess([f"--port={tiny_models.free_port()}",
                                  f"--model_config_file={_config(repo, 'jax_cold', 'plain')}"])
  try:
    with pytest.raises(grpc.RpcError) as error:
      _predict(server.grpc_address, "jax_cold", np.ones((2, 3), np.float32))
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "XLA compilation disabled" in error.value.details()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "plain"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(
        np.zeros((1, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE, 3), np.float32)))
    with grpc.insecure_channel(server.grpc_address) as channel:
      response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
          request, timeout=60)
    assert "top_k_labels" in response.outputs
  finally:
    server.stop()


@pytest.mark.parametrize("flag", ["--xla_cpu_compilation_enabled=true",
                                  "--xla_gpu_compilation_enabled"])
def test_either_flag_keeps_xla_on(repo, flag):
  server = tiny_models.ServerProcess([f"--port={tiny_models.free_port()}", flag,
                                  "--max_num_load_retries=0",
                           f"--model_config_file={_config(repo, 'jax_warm')}"])
  try:
    x = np.array([[0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_allclose(_predict(server.grpc_address, "jax_warm", x),
                               2 * np.sin(x), rtol=1e-5)
  finally:
    server.stop()
