"""serving.server.Server in this process: options made from the flags,
start-up that fails cleanly, and the request metrics each front end
records as TF Serving's do (prediction_service_impl.cc, http_server.cc).
Exit codes, signals and log lines of `python -m serving` are
test_lifecycle.py's and test_flags_config.py's (subprocesses)."""

from __future__ import annotations

import dataclasses
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import flags
from serving.errors import ServingError
from serving.server import Server, ServerOptions
from tests.support import tiny_models

S = tiny_models.IMAGE_SIZE
MODEL = tiny_models.TF2_MODEL


def _options(*argv: str) -> ServerOptions:
  """Always with XLA on: without an XLA flag build_and_start calls
  DisableXlaCompilation(), which is process-wide and cannot be undone, and
  every later jax2tf graph in this test process would fail."""
  return ServerOptions.from_flags(flags.parse(["--xla_cpu_compilation_enabled=true", *argv]))


def test_options_are_every_flag_the_server_acts_on():
  fields = {f.name: f.type for f in dataclasses.fields(ServerOptions)}
  acted_on = {name for name, flag in flags.FLAGS.items() if flag.used and name != "version"}
  assert set(fields) == acted_on | {"use_alts_credentials"}     # an error, not ignored
  for name, type_ in fields.items():
    assert type_ == flags.FLAGS[name].type.__name__, name
  options = _options("--port", "9000", "--noenable_model_warmup")
  assert (options.port, options.enable_model_warmup, options.rest_api_port) == (9000, False, 0)
  with pytest.raises(dataclasses.FrozenInstanceError):
    options.port = 1


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory) -> Iterator[Server]:
  monitoring = tmp_path_factory.mktemp("server") / "monitoring.config"
  monitoring.write_text('prometheus_config { enable: true path: "/metrics" }\n')
  server = Server(_options(
      f"--port={tiny_models.free_port()}", f"--rest_api_port={tiny_models.free_port()}",
      f"--model_config_file={repository / 'models.config'}",
      "--allow_version_labels_for_unavailable_models", "--file_system_poll_wait_seconds=0",
      f"--monitoring_config_file={monitoring}"))
  server.build_and_start()
  yield server
  server.stop()


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
    yield channel


def _predict(dtype: type = np.float32) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = MODEL
  request.model_spec.version.value = 1
  request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, S, S, 3), dtype)))
  return request


def _rest(server: Server, method: str, path: str, body: dict | None = None) -> int:
  request = urllib.request.Request(
      f"http://127.0.0.1:{server.rest_port}{path}", method=method,
      data=None if body is None else json.dumps(body).encode())
  try:
    with urllib.request.urlopen(request, timeout=30) as response:
      return response.status
  except urllib.error.HTTPError as e:
    return e.code


def _delta(server: Server, action) -> dict[str, dict]:
  """What `action` adds to the request metrics, by metric."""
  m = server.metrics
  families = {"count": m.request_count, "latency": m.request_latency,
              "version": m.version_request_count}

  def values() -> dict[str, dict]:
    return {k: (f.values() if k != "latency" else {key: s["count"]
                                                  for key, s in f.summary().items()})
            for k, f in families.items()}

  before = values()
  action()
  after = values()
  return {k: {key: n - before[k].get(key, 0) for key, n in after[k].items()
              if n != before[k].get(key, 0)} for k in families}


def test_grpc_records_what_prediction_service_impl_records(server, channel):
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  added = _delta(server, lambda: stub.Predict(_predict(), timeout=30))
  assert added == {"count": {(MODEL, "OK"): 1},
                   "latency": {(MODEL, "Predict", "GRPC"): 1},
                   "version": {(MODEL, "1", "serving_default", "Predict", "GRPC", "OK"): 1}}

  def failing() -> None:
    with pytest.raises(grpc.RpcError):
      stub.Predict(_predict(np.int32), timeout=30)
  added = _delta(server, failing)       # counted on its version, no latency
  assert added == {"count": {(MODEL, "INVALID_ARGUMENT"): 1}, "latency": {},
                   "version": {(MODEL, "1", "serving_default", "Predict", "GRPC",
                                "INVALID_ARGUMENT"): 1}}

  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = MODEL
  added = _delta(server, lambda: stub.GetModelMetadata(request, timeout=30))
  assert added == {"count": {}, "latency": {},    # TF Serving keeps no metrics for it
                   "version": {(MODEL, "2", "", "GetModelMetadata", "GRPC", "OK"): 1}}
  models = model_service_pb2_grpc.ModelServiceStub(channel)
  status = get_model_status_pb2.GetModelStatusRequest()
  status.model_spec.name = MODEL
  assert _delta(server, lambda: models.GetModelStatus(status, timeout=30)) == {
      "count": {}, "latency": {}, "version": {}}


def test_rest_records_every_request_as_http_server_does(server):
  path = f"/v1/models/{MODEL}/versions/1:predict"
  body = {"instances": np.zeros((1, S, S, 3)).tolist()}
  added = _delta(server, lambda: _rest(server, "POST", path, body))
  assert added == {"count": {(MODEL, "OK"): 1},
                   "latency": {(MODEL, "predict", "REST"): 1},
                   "version": {(MODEL, "1", "serving_default", "Predict", "REST", "OK"): 1}}
  added = _delta(server, lambda: _rest(server, "POST", path, {"nothing": 1}))
  assert added == {"count": {(MODEL, "INVALID_ARGUMENT"): 1}, "latency": {},
                   "version": {}}                  # refused before reaching the model
  added = _delta(server, lambda: _rest(server, "GET", f"/v1/models/{MODEL}"))
  assert added == {"count": {(MODEL, "OK"): 1}, "latency": {(MODEL, "", "REST"): 1},
                   "version": {}}                  # a status poll is about no version
  added = _delta(server, lambda: _rest(server, "OPTIONS", path))
  assert added == {"count": {("", "FAILED_PRECONDITION"): 1}, "latency": {}, "version": {}}
  assert _delta(server, lambda: _rest(server, "GET", "/metrics")) == {
      "count": {}, "latency": {}, "version": {}}


def _tiny_repository(root: Path, *, broken: bool = False) -> Path:
  tiny_models.write_tf2_model(root / "live" / "1")
  entries = [f'config {{ name: "live" base_path: "{root / "live"}" '
             'model_platform: "tensorflow" }']
  if broken:
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    entries.append(f'config {{ name: "broken" base_path: "{root / "broken"}" '
                   'model_platform: "tensorflow" }')
  (root / "models.config").write_text("model_config_list { " + " ".join(entries) + " }")
  return root / "models.config"


def _free(port: int) -> bool:
  with socket.socket() as s:
    try:
      s.bind(("127.0.0.1", port))
    except OSError:
      return False
  return True


def test_start_up_fails_before_opening_a_port_when_a_model_does_not_load(tmp_path):
  port = tiny_models.free_port()
  server = Server(_options(f"--port={port}", "--max_num_load_retries=0",
                           f"--model_config_file={_tiny_repository(tmp_path, broken=True)}"))
  with pytest.raises(ServingError, match=r"1 servable\(s\) did not become available: "
                                         r"\{\{\{name: broken version: 1\}"):
    server.build_and_start()
  assert server.grpc_server is None and _free(port)


def test_a_busy_port_fails_start_up_and_closes_what_had_opened(tmp_path):
  grpc_port = tiny_models.free_port()
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    server = Server(_options(f"--port={grpc_port}", f"--rest_api_port={busy.getsockname()[1]}",
                             f"--model_config_file={_tiny_repository(tmp_path)}"))
    with pytest.raises(OSError, match="in use"):
      server.build_and_start()
  assert server.grpc_port == grpc_port and _free(grpc_port)    # opened, then closed again

