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
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.support.paths import ROOT
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


# A server whose SIGTERM lands on one of its other threads (gRPC's, TensorFlow's):
# the kernel may pick any thread that does not block the signal, and Python
# runs the handler only when the main thread next runs bytecode.
_SIGNAL_FROM_ANOTHER_THREAD = """
import signal, socket, sys, threading, time
from serving.__main__ import main

def terminate_from_this_thread(port):
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      time.sleep(0.1)
  signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

threading.Thread(target=terminate_from_this_thread, args=(int(sys.argv[1]),),
                 daemon=True).start()
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_received_by_another_thread_still_stops_the_server(tmp_path):
  """Kubernetes' SIGTERM must stop the server whichever thread receives it;
  a main thread asleep on an untimed wait would ignore it until SIGKILL."""
  from tests.support import tiny_models
  repository = tiny_models.write_repository(tmp_path / "repo")
  grpc_port, rest_port = free_port(), free_port()
  done = subprocess.run(
      [sys.executable, "-c", _SIGNAL_FROM_ANOTHER_THREAD, str(rest_port), f"--port={grpc_port}",
       f"--rest_api_port={rest_port}", f"--model_config_file={repository / 'models.config'}",
       "--allow_version_labels_for_unavailable_models"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2"),
      capture_output=True, text=True, timeout=90)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Shutting down" in done.stderr
