"""Model lifecycle, batching, monitoring and limits on a server we control:
versions dropped into the repository are served without a restart, a corrupt
version never replaces the serving one, config reloads move labels, batching
merges concurrent requests, Prometheus metrics are exported, and the size
limits hold.  Embedded server only (it writes into the server's repository).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from tests.serving import helpers
from tests.serving.conftest import needs_embedded

pytestmark = needs_embedded
S = helpers.IMAGE_SIZE
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


@pytest.fixture(scope="module")
def setup(tmp_path_factory, repository):
  root = tmp_path_factory.mktemp("lifecycle")
  shutil.copytree(repository / helpers.TF2_MODEL / "1", root / "live" / "1")
  config = root / "models.config"
  config.write_text('model_config_list { config { name: "live" base_path: "live" '
                    'model_platform: "tensorflow" } }\n')
  (root / "batching.config").write_text(
      "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 500000 }\n"
      "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 1 }\n"
      "allowed_batch_sizes: 2\nallowed_batch_sizes: 4\n")
  (root / "monitoring.config").write_text(
      'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
  socket_path = root / "grpc.sock"
  server = helpers.ServerProcess([
      "--port", str(helpers.free_port()), f"--rest_api_port={helpers.free_port()}",
      "--model_config_file=models.config",      # relative: resolved against cwd, as TF Serving
      "--file_system_poll_wait_seconds=1", "--model_config_file_poll_wait_seconds=1",
      "--enable_batching", "--batching_parameters_file=batching.config",
      "--monitoring_config_file=monitoring.config",
      f"--grpc_socket_path={socket_path}",
      "--grpc_channel_arguments=grpc.max_receive_message_length=1000000",
      "--rest_api_max_body_bytes=1000000"], cwd=root)
  channel = grpc.insecure_channel(server.grpc_address,
                                  options=[("grpc.max_send_message_length", 64 << 20)])
  yield {"root": root, "server": server, "socket": socket_path,
         "stub": prediction_service_pb2_grpc.PredictionServiceStub(channel),
         "models": model_service_pb2_grpc.ModelServiceStub(channel),
         "rest": f"http://{server.rest_address}"}
  channel.close()
  server.stop()


def _request(images: np.ndarray, version: int | None = None) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = "live"
  if version is not None:
    request.model_spec.version.value = version
  request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
  return request


def _states(models) -> dict[int, tuple[int, str]]:
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = "live"
  return {s.version: (s.state, s.status.error_message)
          for s in models.GetModelStatus(request, timeout=30).model_version_status}


def _wait_for(predicate, timeout: float = 60.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(0.2)
  raise AssertionError("condition not reached in time")


def test_version_dropped_in_is_served_without_restart(setup):
  root, stub, models = setup["root"], setup["stub"], setup["models"]
  images = np.zeros((1, S, S, 3), np.float32)
  before = stub.Predict(_request(images), timeout=30)
  assert before.model_spec.version.value == 1
  (root / "live" / ".tmp-9").mkdir()       # an exporter mid-write: ignored
  helpers.write_tf2_model(root / "staging", bias=1.0)
  os.rename(root / "staging", root / "live" / "2")
  _wait_for(lambda: _states(models).get(2, (None,))[0] == AVAILABLE)
  after = stub.Predict(_request(images), timeout=30)
  assert after.model_spec.version.value == 2
  delta = tf.make_ndarray(after.outputs["logits"]) - tf.make_ndarray(before.outputs["logits"])
  np.testing.assert_allclose(delta, 1.0, rtol=1e-5)
  _wait_for(lambda: _states(models).get(1, (None,))[0] == END)    # unloaded after 2 is up
  assert 9 not in _states(models)


def test_corrupt_version_does_not_replace_the_serving_one(setup):
  root, stub, models = setup["root"], setup["stub"], setup["models"]
  (root / "staging").mkdir()
  (root / "staging" / "saved_model.pb").write_bytes(b"\x00garbage, not a SavedModel")
  os.rename(root / "staging", root / "live" / "3")
  state, message = _wait_for(lambda: _states(models).get(3))
  assert state == END and message, (state, message)
  assert _states(models)[2][0] == AVAILABLE
  response = stub.Predict(_request(np.zeros((1, S, S, 3), np.float32)), timeout=30)
  assert response.model_spec.version.value == 2


def test_reload_config_moves_labels(setup):
  stub, models = setup["stub"], setup["models"]
  config = model_server_config_pb2.ModelServerConfig()
  model = config.model_config_list.config.add(
      name="live", base_path=str(setup["root"] / "live"), model_platform="tensorflow")
  model.model_version_policy.specific.versions.extend([1, 2])
  model.version_labels["stable"] = 1
  model.version_labels["canary"] = 2
  reply = models.HandleReloadConfigRequest(
      model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
  assert reply.status.error_code == 0
  request = _request(np.zeros((1, S, S, 3), np.float32))
  request.model_spec.version_label = "stable"
  assert stub.Predict(request, timeout=30).model_spec.version.value == 1

  model.version_labels["stable"] = 9
  with pytest.raises(grpc.RpcError) as info:
    models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                     timeout=60)
  assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
  assert ("Request to assign label to version 9 of model live, which is not currently "
          "available for inference") in info.value.details()
  assert stub.Predict(request, timeout=30).model_spec.version.value == 1   # old labels kept


def test_unix_socket(setup):
  with grpc.insecure_channel(f"unix:{setup['socket']}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(_request(np.zeros((1, S, S, 3), np.float32)), timeout=30)
  assert response.outputs["logits"].tensor_shape.dim[0].size == 1


def _metrics(setup) -> str:
  with urllib.request.urlopen(f"{setup['rest']}/monitoring/prometheus/metrics",
                              timeout=30) as response:
    return response.read().decode()


def test_batching_merges_concurrent_requests(setup):
  stub = setup["stub"]
  rng = np.random.default_rng(3)
  images = rng.uniform(-1, 1, (8, S, S, 3)).astype(np.float32)
  alone = tf.make_ndarray(stub.Predict(_request(images[:4], 2), timeout=30).outputs["logits"])
  alone = np.concatenate([alone, tf.make_ndarray(
      stub.Predict(_request(images[4:], 2), timeout=30).outputs["logits"])])
  batches_before = _batch_count(_metrics(setup))
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    replies = list(pool.map(lambda i: stub.Predict(_request(images[i:i + 1], 2), timeout=60),
                            range(8)))
  for i, reply in enumerate(replies):
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs["logits"]), alone[i:i + 1],
                               rtol=1e-5, atol=1e-6)
  # 8 single-image requests ran as fewer model calls.
  assert 0 < _batch_count(_metrics(setup)) - batches_before < 8


def _batch_count(text: str) -> int:
  total = 0
  for line in text.splitlines():
    # TF Serving's batching metrics carry no model name (batching_util.h).
    if line.startswith(":tensorflow:serving:batching_session:processed_batch_size_count"):
      total += int(line.rsplit(" ", 1)[1])
  return total


def test_prometheus_metrics(setup):
  text = _metrics(setup)
  assert "# TYPE :tensorflow:serving:request_count counter" in text
  assert ':tensorflow:serving:request_count{model_name="live",status="OK"}' in text
  assert ':tensorflow:serving:request_latency_bucket{model_name="live",API="Predict",' \
         'entrypoint="GRPC",le="+Inf"}' in text
  per_version = [line for line in text.splitlines()
                 if line.startswith(':embedded_serving:request_count{model_name="live",'
                                    'model_version="2",signature_name="serving_default"')]
  assert per_version, text


def test_oversize_messages_are_refused(setup):
  small = np.zeros((4, S, S, 3), np.float32)
  huge = np.zeros((2000, S, S, 3), np.float32)   # 1.5 MB: over the 1 MB limits
  with pytest.raises(grpc.RpcError) as info:
    setup["stub"].Predict(_request(huge, 2), timeout=60)
  assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
  # The server answers from Content-Length alone, before reading the body;
  # sending the body too would race its close (a broken pipe, not a 413).
  size = len(json.dumps({"inputs": huge.tolist()}))
  connection = http.client.HTTPConnection(urllib.parse.urlsplit(setup["rest"]).netloc,
                                          timeout=60)
  try:
    connection.putrequest("POST", "/v1/models/live:predict")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(size))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert "exceeds the limit" in json.loads(response.read())["error"]
  finally:
    connection.close()
  assert setup["stub"].Predict(_request(small, 2), timeout=60).outputs


def test_batch_larger_than_max_batch_size_is_refused(setup):
  with pytest.raises(grpc.RpcError) as info:
    setup["stub"].Predict(_request(np.zeros((5, S, S, 3), np.float32), 2), timeout=30)
  assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "Task size 5 is larger than maximum input batch size 4" in info.value.details()


def test_corrupt_path_in_log(setup):
  setup["server"].wait_for_log(r"Loading servable: \{name: live version: 3\} failed")


def test_relative_base_path_and_warmup(setup):
  line = setup["server"].wait_for_log(r"Loading servable version \{name: live version: 1\}")
  assert str(Path(setup["root"]) / "live" / "1") in line
  setup["server"].wait_for_log(r"live/1\. Number of warmup records read: 1\.")


def test_config_file_changes_are_polled(setup):
  """Last: it replaces the config the reload test installed."""
  (setup["root"] / "models.config").write_text(
      'model_config_list { config { name: "live" base_path: "live" } '
      'config { name: "again" base_path: "live" '
      'model_version_policy { specific { versions: 2 } } } }\n')
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = "again"

  def again_available():
    try:
      reply = setup["models"].GetModelStatus(request, timeout=30)
    except grpc.RpcError:
      return False
    return [(s.version, s.state) for s in reply.model_version_status] == [(2, AVAILABLE)]
  _wait_for(again_available)
