"""Graceful shutdown: SIGTERM lets the requests in flight finish, refuses new
ones, and the server exits 0 within its grace period.

"In flight" is made certain, not timed: the model here writes a file when a
call starts and then waits until the test creates a release file, so the
test sends SIGTERM while both calls (gRPC and REST) are provably inside the
server.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.support.remote import needs_embedded
from tests.support.tiny_models import ServerProcess, free_port

pytestmark = needs_embedded


def write_gate_model(path: Path, started: Path, release: Path) -> None:
  """`serving_default(id: int32 [1]) -> {"id"}`: writes `started`/<id>, then
  spins until `release` exists (MatchingFiles in a while loop: graph ops, so
  the SavedModel needs no Python to run)."""
  import tensorflow as tf

  class Gate(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([1], tf.int32, name="id")])
    def serving_default(self, id):  # noqa: A002  (the input's name)
      name = tf.strings.join([str(started) + "/", tf.strings.as_string(id[0])])
      # The pattern depends on the input (an empty substring of it), so
      # grappler cannot fold MatchingFiles into a constant at load time.
      pattern = tf.strings.join([str(release), tf.strings.substr(name, 0, 0)])
      with tf.control_dependencies([tf.io.write_file(name, "in flight")]):
        waited = tf.while_loop(
            lambda n: tf.equal(tf.size(tf.io.matching_files(pattern)), 0),
            lambda n: n + 1, [tf.constant(0)], parallel_iterations=1)
      with tf.control_dependencies(waited):
        return {"id": tf.identity(id)}

  gate = Gate()
  tf.saved_model.save(gate, str(path), signatures={"serving_default": gate.serving_default})


def _wait_for(predicate, timeout: float = 60.0) -> None:
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "condition not reached in time"
    time.sleep(0.05)


def test_sigterm_drains_requests_in_flight_and_exits_0(tmp_path):
  started, release = tmp_path / "started", tmp_path / "release"
  started.mkdir()
  write_gate_model(tmp_path / "gate" / "1", started, release)
  process = ServerProcess([f"--port={free_port()}", f"--rest_api_port={free_port()}",
                           "--model_name=gate", f"--model_base_path={tmp_path / 'gate'}"])
  channel = grpc.insecure_channel(process.grpc_address)
  try:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "gate"
    request.inputs["id"].int_val.append(1)
    request.inputs["id"].dtype = 3             # DT_INT32
    request.inputs["id"].tensor_shape.dim.add(size=1)
    via_grpc = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict.future(
        request, timeout=60)
    body = json.dumps({"instances": [2]}).encode()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      via_rest = pool.submit(lambda: json.load(urllib.request.urlopen(urllib.request.Request(
          f"http://{process.rest_address}/v1/models/gate:predict", data=body), timeout=60)))
      _wait_for(lambda: {p.name for p in started.iterdir()} == {"1", "2"})
      process.proc.send_signal(signal.SIGTERM)
      process.wait_for_log("Shutting down")
      release.touch()
      assert via_rest.result(timeout=60) == {"predictions": [2]}
    assert list(via_grpc.result(timeout=60).outputs["id"].int_val) == [1]
    try:
      exit_code = process.proc.wait(timeout=30)  # the gRPC grace is 2 s, REST's less
    except subprocess.TimeoutExpired:
      pytest.fail(f"no exit within 30 s of SIGTERM:\n{process.log}")
    assert exit_code == 0, process.log
  finally:
    release.touch()
    channel.close()
    if process.proc.poll() is None:
      process.proc.kill()
  new = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(
      process.grpc_address))
  with pytest.raises(grpc.RpcError) as refused:
    new.Predict(request, timeout=5)
  assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
