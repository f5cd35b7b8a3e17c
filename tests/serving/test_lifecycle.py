"""Model lifecycle on a server we control: versions dropped into the
repository are served without a restart, a corrupt version never replaces
the serving one, config reloads follow TF Serving's rules, failures that
would be an outage are survived, start-up blocks or fails like
tensorflow_model_server, and batching, monitoring and size limits hold.

Tests that change models, files or flags start a server of their own
(`fresh`), so each passes alone and in any order; the read-only ones share
one (`shared`).  Embedded server only (it writes into the server's
repository).  "Zero failed requests" is checked with clients that never
retry and with the server's own error count.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from contract import prometheus
from tests.support import tiny_models
from tests.support.remote import needs_embedded

pytestmark = needs_embedded
S = tiny_models.IMAGE_SIZE
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
METRICS = "/monitoring/prometheus/metrics"
FAST_POLLS = ("--file_system_poll_wait_seconds=1", "--model_config_file_poll_wait_seconds=1",
              "--max_num_load_retries=0")


def _entry(name: str, base_path: str | Path, extra: str = "") -> str:
  return (f'config {{ name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" '
          f'{extra} }}')


def _config_text(*entries: str) -> str:
  return "model_config_list {\n  " + "\n  ".join(entries) + "\n}\n"


class Server:
  """A running embedded server over its own repository, with stubs."""

  def __init__(self, root: Path, process: tiny_models.ServerProcess):
    self.root, self.process = root, process
    self.channel = grpc.insecure_channel(process.grpc_address,
                                         options=[("grpc.max_send_message_length", 64 << 20)])
    self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
    self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
    self.rest = f"http://{process.rest_address}"

  def close(self) -> None:
    self.channel.close()
    self.process.stop()

  def states(self, model: str = "live") -> dict[int, tuple[int, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    return {s.version: (s.state, s.status.error_message)
            for s in self.models.GetModelStatus(request, timeout=30).model_version_status}

  def reload(self, config: model_server_config_pb2.ModelServerConfig):
    return self.models.HandleReloadConfigRequest(
        model_management_pb2.ReloadConfigRequest(config=config), timeout=120)

  def failed_requests(self) -> float:
    """Requests the server itself counted as failed (any status but OK)."""
    samples = prometheus.scrape(self.process.rest_address, METRICS)
    return sum(s.value for s in samples
               if s.name == ":tensorflow:serving:request_count" and s.labels["status"] != "OK")


def _start(root: Path, *flags: str, config: str | None = None) -> tiny_models.ServerProcess:
  (root / "monitoring.config").write_text(
      f'prometheus_config {{ enable: true path: "{METRICS}" }}\n')
  if config is not None:
    (root / "models.config").write_text(config)
  return tiny_models.ServerProcess([
      f"--port={tiny_models.free_port()}", f"--rest_api_port={tiny_models.free_port()}",
      f"--model_config_file={root / 'models.config'}",
      f"--monitoring_config_file={root / 'monitoring.config'}", *flags], cwd=root)


def _copy_version(repository: Path, root: Path, version: int, to: int | None = None) -> Path:
  """Version 1 (with warmup data) or 2 (+1 on the logits) of the tiny model."""
  target = root / "live" / str(to or version)
  shutil.copytree(repository / tiny_models.TF2_MODEL / str(version), target)
  return target


@pytest.fixture
def fresh(tmp_path: Path, repository: Path, monkeypatch) -> Iterator[Callable[..., Server]]:
  """Starts a server of this test's own on `live` (version 1 unless told),
  logging each finished poll (see `_after_polls`)."""
  monkeypatch.setenv("TF_CPP_VMODULE", "file_system_storage_path_source=1")
  started: list[Server] = []

  def start(*flags: str, versions: tuple[int, ...] = (1,), config: str | None = None) -> Server:
    for v in versions:
      _copy_version(repository, tmp_path, v)
    server = Server(tmp_path, _start(tmp_path, *flags, config=config or _config_text(
        _entry("live", tmp_path / "live"))))
    started.append(server)
    return server

  yield start
  for server in started:
    server.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, repository: Path) -> Iterator[Server]:
  """One server for the tests that change nothing: `live` versions 1 and 2,
  batching to 4, 1 MB message limits, a UNIX socket, a relative config path."""
  root = tmp_path_factory.mktemp("shared")
  for v in (1, 2):
    _copy_version(repository, root, v)
  (root / "models.config").write_text(_config_text(
      _entry("live", "live", "model_version_policy { all {} }")))   # relative: to the cwd
  (root / "batching.config").write_text(
      "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 500000 }\n"
      "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 1 }\n"
      "allowed_batch_sizes: 2\nallowed_batch_sizes: 4\n")
  server = Server(root, _start(
      root, "--enable_batching", "--batching_parameters_file=batching.config",
      f"--grpc_socket_path={root / 'grpc.sock'}",
      "--grpc_channel_arguments=grpc.max_receive_message_length=1000000",
      "--rest_api_max_body_bytes=1000000"))
  yield server
  server.close()


def _request(images: np.ndarray, version: int | None = None,
             model: str = "live") -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  if version is not None:
    request.model_spec.version.value = version
  request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
  return request


ONE = np.zeros((1, S, S, 3), np.float32)


def _after_polls(server: Server, poller: str, polls: int = 1) -> None:
  """Waits until `polls` passes of `poller` ("fs-poll": the repositories,
  "config-poll": --model_config_file) started after this call and finished.
  So a check that nothing changed has seen the server look."""
  done = server.process.log.count(f"{poller} pass ")
  # The pass under way now may have looked before the caller's change.
  _wait_for(lambda: server.process.log.count(f"{poller} pass ") >= done + polls + 1)


def _wait_for(predicate, timeout: float = 60.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(0.2)
  raise AssertionError("condition not reached in time")


class Traffic:
  """Two threads predicting on `live` through the official stub (which never
  retries) until stopped; every failure is kept."""

  def __init__(self, server: Server):
    self.server, self.ok, self.failures = server, 0, []
    self._stop = threading.Event()
    self._lock = threading.Lock()
    self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]
    for t in self._threads:
      t.start()

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        self.server.predict.Predict(_request(ONE), timeout=10)
      except grpc.RpcError as e:
        with self._lock:
          self.failures.append(f"{e.code().name}: {e.details()}")
        continue
      with self._lock:
        self.ok += 1

  def stop(self) -> None:
    self._stop.set()
    for t in self._threads:
      t.join(timeout=30)


# ----------------------------------------------------------- repository polling

def _assert_served_throughout(server: Server, traffic: Traffic) -> None:
  """No request failed, as the (non-retrying) clients and the server itself
  count them, and version 1 is still the one AVAILABLE."""
  assert traffic.failures == [], traffic.failures[:5]
  assert traffic.ok > 20
  assert server.failed_requests() == 0
  assert server.states() == {1: (AVAILABLE, "")}


# ------------------------------------------------------------ config reloads

def _live_config(server: Server, versions: tuple[int, ...], **labels: int
                 ) -> model_server_config_pb2.ModelServerConfig:
  config = model_server_config_pb2.ModelServerConfig()
  model = config.model_config_list.config.add(
      name="live", base_path=str(server.root / "live"), model_platform="tensorflow")
  model.model_version_policy.specific.versions.extend(versions)
  for label, version in labels.items():
    model.version_labels[label] = version
  return config


# -------------------------------------------------------- config file polling

def test_config_file_changes_are_polled(fresh):
  server = fresh(*FAST_POLLS, versions=(1, 2))
  (server.root / "models.config").write_text(_config_text(
      _entry("live", "live"), _entry("again", "live", "model_version_policy { specific { "
                                     "versions: 1 } }")))
  _wait_for(lambda: _status_or_none(server, "again") == {1: (AVAILABLE, "")})


def _status_or_none(server: Server, model: str):
  try:
    return server.states(model)
  except grpc.RpcError:
    return None


# ------------------------------------------------------------------ start-up

def test_startup_waits_for_a_missing_model_with_ports_closed(tmp_path, repository):
  """tensorflow_model_server opens its ports only once every model is
  AVAILABLE (server.cc): a base path that appears later is waited for."""
  port = tiny_models.free_port()
  (tmp_path / "models.config").write_text(_config_text(_entry("live", tmp_path / "live")))
  process = tiny_models.ServerProcess([f"--port={port}", "--rest_api_port=0",
                                       f"--model_config_file={tmp_path / 'models.config'}"],
                                      cwd=tmp_path, wait=False)
  try:
    process.wait_for_log(r"Could not find base path .*live for servable live")
    with socket.socket() as s:
      assert s.connect_ex(("127.0.0.1", port)) != 0     # refused while waiting
    _copy_version(repository, tmp_path, 1)
    process.wait_until_serving()
    lines = process.log.splitlines()
    loaded = next(i for i, line in enumerate(lines) if "Successfully loaded" in line)
    listening = next(i for i, line in enumerate(lines) if "Running gRPC ModelServer" in line)
    assert loaded < listening
  finally:
    process.stop()


def test_startup_fails_when_a_model_does_not_load(tmp_path, repository):
  _copy_version(repository, tmp_path, 1)
  (tmp_path / "broken" / "1").mkdir(parents=True)
  (tmp_path / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
  (tmp_path / "models.config").write_text(_config_text(
      _entry("live", tmp_path / "live"), _entry("broken", tmp_path / "broken")))
  port = tiny_models.free_port()
  with pytest.raises(RuntimeError, match="server exited with 1") as info:
    tiny_models.ServerProcess([f"--port={port}", "--max_num_load_retries=0",
                           f"--model_config_file={tmp_path / 'models.config'}"], cwd=tmp_path)
  assert ("Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
          "{{{name: broken version: 1} due to error: ") in str(info.value)
  assert "Running gRPC ModelServer" not in str(info.value)


def _broken_version(directory: Path) -> Path:
  directory.mkdir(parents=True)
  (directory / "saved_model.pb").write_bytes(b"not a SavedModel")
  return directory


def test_failed_loads_are_retried_max_num_load_retries_times(tmp_path, repository):
  """--max_num_load_retries=2: three attempts in all, `load_retry_interval`
  apart, before start-up gives up (LoaderHarness's retries, server_core.cc)."""
  _copy_version(repository, tmp_path, 1)
  _broken_version(tmp_path / "broken" / "1")
  (tmp_path / "models.config").write_text(_config_text(
      _entry("live", tmp_path / "live"), _entry("broken", tmp_path / "broken")))
  with pytest.raises(RuntimeError, match="server exited with 1") as info:
    tiny_models.ServerProcess([f"--port={tiny_models.free_port()}", "--max_num_load_retries=2",
                               "--load_retry_interval_micros=100000",
                               f"--model_config_file={tmp_path / 'models.config'}"],
                              cwd=tmp_path)
  log = str(info.value)
  assert log.count("Loading servable: {name: broken version: 1} failed") == 3, log
  assert log.count("Successfully loaded servable version {name: live version: 1}") == 1


def test_a_load_that_fails_then_succeeds_on_a_retry_serves(tmp_path, repository):
  """A version whose files are not complete yet at the first attempt (a slow
  copy) loads at a retry; start-up waits for it."""
  version = _broken_version(tmp_path / "live" / "1")
  (tmp_path / "models.config").write_text(_config_text(_entry("live", tmp_path / "live")))
  process = tiny_models.ServerProcess(
      [f"--port={tiny_models.free_port()}", "--max_num_load_retries=5",
       "--load_retry_interval_micros=500000",
       f"--model_config_file={tmp_path / 'models.config'}"], cwd=tmp_path, wait=False)
  try:
    process.wait_for_log(r"Loading servable: \{name: live version: 1\} failed")
    good = repository / tiny_models.TF2_MODEL / "1"
    for item in ("variables", "assets.extra"):
      shutil.copytree(good / item, version / item)
    shutil.copy(good / "saved_model.pb", tmp_path / "saved_model.pb")
    os.replace(tmp_path / "saved_model.pb", version / "saved_model.pb")   # last, at once
    process.wait_until_serving()
    with grpc.insecure_channel(process.grpc_address) as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      assert stub.Predict(_request(ONE), timeout=30).model_spec.version.value == 1
  finally:
    process.stop()
  assert process.log.count("Successfully loaded servable version {name: live version: 1}") == 1
  assert 1 <= process.log.count("Loading servable: {name: live version: 1} failed") <= 5


def test_second_server_on_a_busy_port_fails(fresh):
  """gRPC's default SO_REUSEPORT let a second server start and take half the
  connections; both ports must fail the start instead."""
  first = fresh()
  for busy in (first.process.grpc_address, first.process.rest_address):
    ports = [tiny_models.free_port(), tiny_models.free_port()]
    ports[busy == first.process.rest_address] = int(busy.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="server exited with 1") as info:
      tiny_models.ServerProcess([f"--port={ports[0]}", f"--rest_api_port={ports[1]}",
                             f"--model_config_file={first.root / 'models.config'}"],
                            cwd=first.root)
    assert "Failed to start server. Error:" in str(info.value)
    assert "already in use" in str(info.value)
  assert first.predict.Predict(_request(ONE), timeout=30).outputs     # first one unharmed


# ------------------------------------------------------- shared, read-only

def test_unix_socket(shared):
  with grpc.insecure_channel(f"unix:{shared.root / 'grpc.sock'}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(_request(ONE), timeout=30)
  assert response.outputs["logits"].tensor_shape.dim[0].size == 1


def _batch_count(server: Server) -> float:
  # TF Serving's batching metrics carry no model name (batching_util.h).
  return prometheus.total(prometheus.scrape(server.process.rest_address, METRICS),
                          ":tensorflow:serving:batching_session:processed_batch_size_count")


def test_batching_merges_concurrent_requests(shared):
  stub = shared.predict
  rng = np.random.default_rng(3)
  images = rng.uniform(-1, 1, (8, S, S, 3)).astype(np.float32)
  alone = np.concatenate([tf.make_ndarray(stub.Predict(_request(images[i:i + 4], 2),
                                                       timeout=30).outputs["logits"])
                          for i in (0, 4)])
  batches_before = _batch_count(shared)
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    replies = list(pool.map(lambda i: stub.Predict(_request(images[i:i + 1], 2), timeout=60),
                            range(8)))
  for i, reply in enumerate(replies):
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs["logits"]), alone[i:i + 1],
                               rtol=1e-5, atol=1e-6)
  # 8 single-image requests ran as fewer model calls.
  assert 0 < _batch_count(shared) - batches_before < 8


def test_prometheus_metrics(shared):
  shared.predict.Predict(_request(ONE, 2), timeout=30)
  with urllib.request.urlopen(f"{shared.rest}{METRICS}", timeout=30) as response:
    text = response.read().decode()
  assert "# TYPE :tensorflow:serving:request_count counter" in text
  samples = prometheus.parse(text)
  assert prometheus.total(samples, ":tensorflow:serving:request_count", model_name="live",
                          status="OK") >= 1
  assert prometheus.total(samples, ":embedded_serving:request_count", model_name="live",
                          model_version="2", signature_name="serving_default") >= 1


def test_oversize_messages_are_refused(shared):
  huge = np.zeros((2000, S, S, 3), np.float32)   # 1.5 MB: over the 1 MB limits
  with pytest.raises(grpc.RpcError) as info:
    shared.predict.Predict(_request(huge, 2), timeout=60)
  assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
  # The server answers from Content-Length alone, before reading the body;
  # sending the body too would race its close (a broken pipe, not a 413).
  size = len(json.dumps({"inputs": huge.tolist()}))
  connection = http.client.HTTPConnection(urllib.parse.urlsplit(shared.rest).netloc,
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
  assert shared.predict.Predict(_request(np.zeros((4, S, S, 3), np.float32), 2),
                                timeout=60).outputs


def test_batch_larger_than_max_batch_size_is_refused(shared):
  with pytest.raises(grpc.RpcError) as info:
    shared.predict.Predict(_request(np.zeros((5, S, S, 3), np.float32), 2), timeout=30)
  assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "Task size 5 is larger than maximum input batch size 4" in info.value.details()


def test_clients_adopt_the_servers_batch_limit(shared):
  """The clients' default slice (8 rows) is over this server's max_batch_size
  of 4: the first request is refused with TF Serving's text, the clients cut
  the rest to 4 rows and keep that limit; answers stay in input order."""
  from clients import NO_RETRY, GrpcClient, RestClient
  images = np.random.default_rng(5).uniform(-1, 1, (10, S, S, 3)).astype(np.float32)
  one_by_one = np.concatenate([tf.make_ndarray(shared.predict.Predict(
      _request(images[i:i + 1], 2), timeout=30).outputs["logits"]) for i in range(10)])
  for client in (GrpcClient(shared.process.grpc_address, retry=NO_RETRY),
                 RestClient(shared.process.rest_address, retry=NO_RETRY)):
    with client:
      assert client.batch_size == 8
      logits = client.predict_images("live", images, version=2, progress=False)["logits"]
      assert client.batch_size == 4, client.url
    np.testing.assert_allclose(logits, one_by_one, atol=1e-5)


def test_relative_base_path_and_warmup(shared):
  line = shared.process.wait_for_log(r"Loading servable version \{name: live version: 1\}")
  assert str(shared.root / "live" / "1") in line
  shared.process.wait_for_log(r"live/1\. Number of warmup records read: 1\.")
