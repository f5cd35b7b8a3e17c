"""Fixtures for the serving tests: the tiny model repository, one embedded
server per test module (each start imports TensorFlow: about 4 s of CPU), gRPC
stubs and the REST base URL.

Set TF_SERVING_GRPC=host:port and TF_SERVING_REST=host:port to run the API
tests against a real tensorflow_model_server serving the repository written
by `python -m tests.support.tiny_models DIR /models` instead (tests that need to
change the server's files or flags are skipped then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import grpc
import pytest

from tests.support import tiny_models
from tests.support.remote import REMOTE_GRPC, REMOTE_REST


@pytest.fixture(autouse=True, scope="session")
def _xla_stays_enabled_in_the_test_process() -> Iterator[None]:
  """DisableXlaCompilation() (what a server started without an XLA flag
  calls, as main.cc does) is process-wide and cannot be undone: in the test
  process it would fail every later jax2tf test, far from the cause. So an
  in-process server that would call it fails at once instead; the tests of
  that behaviour start their servers as child processes."""
  from serving import servable

  def refuse() -> None:
    raise AssertionError("an in-process server would disable XLA for the whole test "
                         "process: pass --xla_cpu_compilation_enabled=true")
  original, servable.disable_xla_compilation = servable.disable_xla_compilation, refuse
  yield
  servable.disable_xla_compilation = original


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
  return tiny_models.write_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[tiny_models.ServerProcess | None]:
  """The embedded server on free ports (None when a real one is given)."""
  if REMOTE_GRPC or REMOTE_REST:
    yield None
    return
  proc = tiny_models.ServerProcess([
      f"--port={tiny_models.free_port()}", f"--rest_api_port={tiny_models.free_port()}",
      f"--model_config_file={repository / 'models.config'}",
      # Its labels name versions that load at start-up; tensorflow_model_server
      # needs this flag for that too (server_core.cc).
      "--allow_version_labels_for_unavailable_models",
      "--file_system_poll_wait_seconds=0"])
  yield proc
  proc.stop()


@pytest.fixture(scope="module")
def grpc_address(server) -> str:
  return REMOTE_GRPC or server.grpc_address


@pytest.fixture(scope="module")
def rest_url(server) -> str:
  return f"http://{REMOTE_REST or server.rest_address}"


@pytest.fixture(scope="module")
def channel(grpc_address: str) -> Iterator[grpc.Channel]:
  options = [("grpc.max_receive_message_length", 64 << 20),
             ("grpc.max_send_message_length", 64 << 20)]
  with grpc.insecure_channel(grpc_address, options=options) as ch:
    yield ch


@pytest.fixture(scope="module")
def stub(channel):
  from tensorflow_serving.apis import prediction_service_pb2_grpc
  return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
  from tensorflow_serving.apis import model_service_pb2_grpc
  return model_service_pb2_grpc.ModelServiceStub(channel)
