"""Transport features against in-process fake servers that record what they get:
addresses, TLS (a test CA), headers, compression, whole-call deadlines,
non-transient errors, the server's batch limit, and async concurrency."""

from __future__ import annotations

import asyncio
import itertools
import gzip
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from clients import ClientError, GrpcClient, RestClient, RetryPolicy, Tls, connection
from contract import protos
from clients.aio import AsyncGrpcClient, AsyncRestClient
from tests.support.pki import write_pki
from tests.support.fake_http import FakeHttpServer
from tests.support.tiny_models import ROOT, free_port

NO_WAIT = RetryPolicy(attempts=1)
IMAGES = np.zeros((1, 4, 4, 3), np.float32)


class Recorder:
  """A gRPC PredictionService answering each Predict with its batch size.

  Records the metadata of each call; rejects batches over `limit` as TF
  Serving's batching does; with `gather` set, holds each call until that
  many are in flight at once (or 10 s pass), which proves concurrency.
  """

  def __init__(self, *, limit: int | None = None, gather: int = 0, code=None,
               credentials: grpc.ServerCredentials | None = None):
    self.metadata: list[dict[str, str]] = []
    self.batches: list[int] = []
    self.calls = 0
    self._lock = threading.Lock()
    self._barrier = threading.Barrier(gather, timeout=10) if gather else None

    def predict(request, context):
      with self._lock:
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
      if code is not None:
        context.abort(code, f"fake says {code.name}")
      rows = request.inputs["images"].tensor_shape.dim[0].size
      if limit is not None and rows > limit:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"Task size {rows} is larger than maximum input batch size {limit}")
      if self._barrier is not None:
        self._barrier.wait()
      with self._lock:
        self.batches.append(rows)
      response = protos.PredictResponse()
      response.outputs["rows"].CopyFrom(
          protos.TensorProto(dtype=protos.DATA_TYPES["DT_INT32"], int_val=[rows] * rows,
                             tensor_shape={"dim": [{"size": rows}]}))
      return response

    handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
        "Predict": grpc.unary_unary_rpc_method_handler(
            predict, request_deserializer=protos.PredictRequest.FromString,
            response_serializer=protos.PredictResponse.SerializeToString)})
    self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max(gather, 4)))
    self.server.add_generic_rpc_handlers([handler])
    self.port = (self.server.add_secure_port("127.0.0.1:0", credentials) if credentials
                 else self.server.add_insecure_port("127.0.0.1:0"))
    self.server.start()

  def stop(self) -> None:
    if self._barrier is not None:
      self._barrier.abort()
    self.server.stop(None)


STATUS = {"model_version_status": [{"version": "3", "state": "AVAILABLE",
                                    "status": {"error_code": "OK", "error_message": ""}}]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
  return write_pki(tmp_path_factory.mktemp("pki"))


def test_server_addresses_default_to_tf_servings_ports():
  parse = connection.parse
  assert parse("models", rest=False) == connection.Endpoint("models", 8500)
  assert parse("models", rest=True) == connection.Endpoint("models", 8501)
  assert parse("10.0.0.1:9000", rest=False).address == "10.0.0.1:9000"
  assert parse("[::1]:8500", rest=False).address == "[::1]:8500"
  assert parse("https://models.example.com", rest=True).url == "https://models.example.com:443"
  assert parse("http://h:8601/", rest=True).url == "http://h:8601"
  for bad, rest in (("https://h", False), ("h:port", False), ("http://h/v1", True),
                    ("ftp://h", True)):
    with pytest.raises(ValueError):
      parse(bad, rest=rest)
  # The bug this replaced: https:// used to become http://https://...
  with RestClient("https://127.0.0.1:1") as client:
    assert client.url == "https://127.0.0.1:1"


def test_deadline_covers_every_retry():
  fake = Recorder(code=grpc.StatusCode.UNAVAILABLE)
  patient = RetryPolicy(attempts=1000, initial_backoff=0.05, multiplier=1.0, jitter=0.0)
  try:
    with GrpcClient(f"127.0.0.1:{fake.port}", retry=patient, timeout=0.5) as client:
      began = time.monotonic()
      with pytest.raises(ClientError) as error:
        client.predict_images("m", IMAGES)
      took = time.monotonic() - began
  finally:
    fake.stop()
  # 1000 attempts would take over 50 s; the 0.5 s deadline allows about ten.
  assert error.value.code == "UNAVAILABLE" and 2 <= fake.calls <= 11
  assert error.value.attempts == fake.calls and took < 5


def test_rest_deadline_covers_every_retry():
  fake = FakeHttpServer({"error": "down"}, status=503)
  patient = RetryPolicy(attempts=1000, initial_backoff=0.05, multiplier=1.0, jitter=0.0)
  try:
    with RestClient(f"127.0.0.1:{fake.port}", retry=patient, timeout=0.5) as client:
      with pytest.raises(ClientError) as error:
        client.status("m")
  finally:
    fake.stop()
  assert error.value.code == "UNAVAILABLE" and 2 <= len(fake.requests) <= 11


def test_wrong_port_is_not_retried_and_says_what_to_try():
  rest, grpc_fake = FakeHttpServer(STATUS), Recorder()
  try:
    with GrpcClient(f"127.0.0.1:{rest.port}", retry=RetryPolicy(attempts=5)) as client:
      with pytest.raises(ClientError) as error:
        client.status("m")
    assert error.value.attempts == 1 and not error.value.transient
    assert "is this the REST port? try --rest" in str(error.value)
    with RestClient(f"127.0.0.1:{grpc_fake.port}", retry=RetryPolicy(attempts=5)) as client:
      with pytest.raises(ClientError) as error:
        client.status("m")
    assert error.value.attempts == 1 and "is this the gRPC port?" in str(error.value)
    done = subprocess.run([sys.executable, "-m", "clients", "status", "--server",
                           f"127.0.0.1:{rest.port}", "--model", "m"], cwd=ROOT, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 1 and "try --rest" in done.stderr
  finally:
    rest.stop()
    grpc_fake.stop()


def test_the_servers_batch_limit_is_adopted():
  fake = Recorder(limit=3)
  try:
    with GrpcClient(f"127.0.0.1:{fake.port}", retry=NO_WAIT) as client:
      assert client.batch_size == 8
      result = client.predict_images("m", np.zeros((10, 4, 4, 3), np.float32))
      assert client.batch_size == 3
      client.predict_images("m", np.zeros((4, 4, 4, 3), np.float32))
  finally:
    fake.stop()
  assert result["rows"].tolist() == [3] * 9 + [1]
  assert fake.batches == [3, 3, 3, 1, 3, 1]  # the rejected 8 is not among them
  with pytest.raises(ValueError, match="batch_size"):
    GrpcClient("127.0.0.1:1", batch_size=0)


def test_headers_go_with_every_call_on_both_transports():
  fake, rest = Recorder(), FakeHttpServer(STATUS)
  try:
    with GrpcClient(f"127.0.0.1:{fake.port}", headers={"Authorization": "Bearer a"}) as client:
      client.predict_images("m", IMAGES, headers={"x-request-id": "7"})
      client.predict_images("m", IMAGES)
    with RestClient(f"127.0.0.1:{rest.port}", headers=[("Authorization", "Bearer b")]) as client:
      client.status("m", headers={"X-Request-Id": "8"})
  finally:
    fake.stop()
    rest.stop()
  assert fake.metadata[0]["authorization"] == "Bearer a" and fake.metadata[0]["x-request-id"] == "7"
  assert "x-request-id" not in fake.metadata[1]
  headers = rest.requests[0][0]
  assert headers["authorization"] == "Bearer b" and headers["x-request-id"] == "8"


def test_rest_bodies_are_gzipped_with_compression():
  metadata = {"model_spec": {"name": "m", "version": "3"}, "metadata": {"signature_def": {
      "signature_def": {"serving_default": {
          "inputs": {"images": {"dtype": "DT_FLOAT"}},
          "outputs": {"rows": {"dtype": "DT_INT32"}}}}}}}
  fake = FakeHttpServer({"outputs": [1], **metadata})
  try:
    with RestClient(f"127.0.0.1:{fake.port}", compression=True) as client:
      client.predict_images("m", np.zeros((1, 64, 64, 3), np.float32))
  finally:
    fake.stop()
  headers, body = fake.requests[-1]
  assert headers["content-encoding"] == "gzip"
  request = json.loads(gzip.decompress(body))
  assert request["signature_name"] == "serving_default"
  assert len(body) < len(gzip.decompress(body)) / 10


def _proxy(target_port: int) -> tuple[int, list[int], socket.socket]:
  """A TCP relay to target_port counting the bytes sent towards it."""
  listener = socket.create_server(("127.0.0.1", 0))
  sent = [0]

  def pipe(src: socket.socket, dst: socket.socket, count: bool) -> None:
    try:
      while data := src.recv(65536):
        if count:
          sent[0] += len(data)
        dst.sendall(data)
    except OSError:
      pass  # the other direction closed both sockets
    finally:
      src.close()
      dst.close()

  def serve() -> None:
    while True:
      try:
        client, _ = listener.accept()
      except OSError:
        return
      upstream = socket.create_connection(("127.0.0.1", target_port))
      threading.Thread(target=pipe, args=(client, upstream, True), daemon=True).start()
      threading.Thread(target=pipe, args=(upstream, client, False), daemon=True).start()

  threading.Thread(target=serve, daemon=True).start()
  return listener.getsockname()[1], sent, listener


def test_grpc_compression_shrinks_what_goes_on_the_wire():
  fake = Recorder()
  zeros = np.zeros((1, 128, 128, 3), np.float32)  # 196 KB of float32 zeros
  sizes = {}
  try:
    for compression in (False, True):
      port, sent, listener = _proxy(fake.port)
      with GrpcClient(f"127.0.0.1:{port}", compression=compression) as client:
        client.predict_images("m", zeros)
      listener.close()
      sizes[compression] = sent[0]
  finally:
    fake.stop()
  assert sizes[False] > zeros.nbytes and sizes[True] < zeros.nbytes / 10


def test_grpc_tls_and_mutual_tls(pki):
  server_credentials = grpc.ssl_server_credentials(
      [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
      root_certificates=pki.ca.read_bytes(), require_client_auth=True)
  fake = Recorder(credentials=server_credentials)
  mutual = Tls(pki.ca, pki.client_cert, pki.client_key)
  try:
    with GrpcClient(f"127.0.0.1:{fake.port}", tls=mutual) as client:
      assert client.predict_images("m", IMAGES)["rows"].tolist() == [1]
    with GrpcClient(f"localhost:{fake.port}", tls=Tls(pki.ca, pki.client_cert, pki.client_key,
                                                      server_name="localhost")) as client:
      client.predict_images("m", IMAGES)
    for tls in (Tls(pki.ca), None):  # no client certificate; no TLS at all
      with GrpcClient(f"127.0.0.1:{fake.port}", tls=tls, retry=RetryPolicy(attempts=3),
                      timeout=5) as client:
        with pytest.raises(ClientError) as error:
          client.predict_images("m", IMAGES)
      assert error.value.code == "UNAVAILABLE"
    assert fake.calls == 2
  finally:
    fake.stop()


def test_rest_https_with_a_ca_and_a_client_certificate(pki):
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(pki.server_cert, pki.server_key)
  context.load_verify_locations(pki.ca)
  context.verify_mode = ssl.CERT_REQUIRED
  fake = FakeHttpServer(STATUS, context=context)
  url = f"https://127.0.0.1:{fake.port}"
  try:
    with RestClient(url, tls=Tls(pki.ca, pki.client_cert, pki.client_key)) as client:
      assert [s.version for s in client.status("m")] == [3]
    with RestClient(url, retry=RetryPolicy(attempts=3)) as client:  # system CAs only
      with pytest.raises(ClientError) as error:
        client.status("m")
    assert error.value.attempts == 1 and "TLS" in str(error.value)
    done = subprocess.run([sys.executable, "-m", "clients", "status", "--server", url,
                           "--rest", "--ca-cert", str(pki.ca), "--client-cert",
                           str(pki.client_cert), "--client-key", str(pki.client_key),
                           "--model", "m"], cwd=ROOT, text=True, capture_output=True,
                          timeout=60)
    assert done.returncode == 0 and "version 3  AVAILABLE" in done.stdout, done.stderr
  finally:
    fake.stop()


def test_async_clients_keep_many_calls_in_flight(pki):
  many = 16
  fake = Recorder(gather=many)
  rest = FakeHttpServer(STATUS, gather=many)

  async def run() -> tuple[list, list]:
    async with AsyncGrpcClient(f"127.0.0.1:{fake.port}", retry=NO_WAIT) as g, \
        AsyncRestClient(f"127.0.0.1:{rest.port}", retry=NO_WAIT) as r:
      # Each server holds every call until `many` are in flight at once: with
      # fewer in flight, its barrier times out and the calls fail.
      predictions = await asyncio.gather(*(g.predict_images("m", IMAGES)
                                           for _ in range(many)))
      statuses = await asyncio.gather(*(r.status("m") for _ in range(many)))
      return predictions, statuses

  try:
    predictions, statuses = asyncio.run(run())
  finally:
    fake.stop()
    rest.stop()
  assert [p["rows"].tolist() for p in predictions] == [[1]] * many
  assert all(s[0].version == 3 for s in statuses) and len(rest.requests) == many


def test_async_errors_match_the_sync_ones():
  rest = FakeHttpServer(STATUS)

  async def run() -> ClientError:
    async with AsyncGrpcClient(f"127.0.0.1:{rest.port}") as client:
      with pytest.raises(ClientError) as error:
        await client.status("m")
      return error.value

  try:
    error = asyncio.run(run())
  finally:
    rest.stop()
  assert error.attempts == 1 and "try --rest" in str(error)


def test_a_server_without_the_health_service_is_live():
  # TF Serving serves grpc.health.v1 only with --enable_grpc_healthcheck_service;
  # its UNIMPLEMENTED answer still shows the server is up.
  fake = Recorder()
  try:
    with GrpcClient(f"127.0.0.1:{fake.port}") as client:
      assert client.is_server_live(timeout=5) is True
  finally:
    fake.stop()


def test_liveness_of_an_unreachable_server_is_false():
  port = free_port()
  for client in (GrpcClient(f"127.0.0.1:{port}"), RestClient(f"127.0.0.1:{port}")):
    with client:
      assert client.is_server_live(timeout=2) is False
      assert client.is_model_ready("m", timeout=2) is False


def test_perf_counts_failures_by_code_and_stops_at_the_request_bound():
  from clients import perf
  calls = itertools.count()

  def send() -> None:
    n = next(calls)
    if n % 3 == 1:
      raise ClientError("UNAVAILABLE", "busy", "fake")
    if n % 3 == 2:
      raise ClientError("RESOURCE_EXHAUSTED", "queue full", "fake")

  level = perf.measure(send, 4, duration=30, max_requests=30)
  assert level.requests == 30 and sum(level.errors.values()) == 20
  assert set(level.errors) == {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}
  assert level.seconds < 30 and level.p50_ms <= level.p99_ms <= level.max_ms
  with pytest.raises(ValueError):
    perf.measure(send, 0, duration=1)
