"""The REST front end as an HTTP server: many simultaneous connections, slow
clients, chunked and gzip bodies, and hostile input, all over raw sockets
so nothing in a client library can hide what the server does.

The server runs with a 2 s --rest_api_timeout_in_ms so the slow-header test
is quick; with TF_SERVING_REST set, the tests that do not depend on that
run against a real tensorflow_model_server (see conftest.py).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import subprocess
import time
from typing import Iterator

import numpy as np
import pytest

from tests.support import tiny_models
from tests.support.remote import REMOTE_REST, needs_embedded

TINY = tiny_models.TF2_MODEL
S = tiny_models.IMAGE_SIZE
TIMEOUT_MS = 2000
PREDICT = f"/v1/models/{TINY}:predict"
METRICS = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory) -> Iterator[tiny_models.ServerProcess | None]:
  if REMOTE_REST:
    yield None
    return
  monitoring = tmp_path_factory.mktemp("monitoring") / "monitoring.config"
  monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS}" }}\n')
  proc = tiny_models.ServerProcess([
      f"--monitoring_config_file={monitoring}",
      f"--port={tiny_models.free_port()}", f"--rest_api_port={tiny_models.free_port()}",
      f"--model_config_file={repository / 'models.config'}",
      "--allow_version_labels_for_unavailable_models",  # as conftest.py's server
      "--file_system_poll_wait_seconds=0", f"--rest_api_timeout_in_ms={TIMEOUT_MS}",
      f"--rest_api_max_body_bytes={20 << 20}", "--rest_api_enable_cors_support"])
  yield proc
  proc.stop()


@pytest.fixture(scope="module")
def address(server) -> tuple[str, int]:
  host, port = (REMOTE_REST or server.rest_address).rsplit(":", 1)
  return host, int(port)


def _body() -> bytes:
  return json.dumps({"instances": [np.full((S, S, 3), 0.25).tolist()]}).encode()


def _request(method: str, path: str, body: bytes = b"", headers: dict | None = None, *,
             close: bool = False) -> bytes:
  """One HTTP/1.1 request; `close` asks the server to close after answering,
  so `_exchange` returns at once when no second response can follow."""
  headers = dict(headers or {"Content-Length": len(body)})
  if close:
    headers["Connection"] = "close"
  lines = [f"{method} {path} HTTP/1.1", "Host: test"]
  lines += [f"{k}: {v}" for k, v in headers.items()]
  return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _exchange(address: tuple[str, int], data: bytes, wait: float = 3.0) -> bytes:
  """Everything the server sends back within `wait` seconds (or until it
  closes): room for a second, smuggled response to show up."""
  with socket.create_connection(address, timeout=30) as sock:
    sock.sendall(data)
    sock.settimeout(0.2)
    received = b""
    end = time.monotonic() + wait
    while time.monotonic() < end:
      try:
        chunk = sock.recv(65536)
      except socket.timeout:
        continue
      if not chunk:
        break
      received += chunk
  return received


def _responses(raw: bytes) -> list[tuple[int, bytes]]:
  """(status, body) of each response in a byte stream of Content-Length
  framed responses."""
  out = []
  while raw:
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head)[1])
    out.append((status, rest[:length]))
    raw = rest[length:]
  return out


def _chunked(data: bytes, size: int) -> bytes:
  pieces = [data[i:i + size] for i in range(0, len(data), size)]
  return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


# ------------------------------------------------------------- concurrency

def test_300_simultaneous_connections_are_all_answered(address):
  """All 300 connect before any sends a byte, then all ask at once (the
  old server's backlog of 5 dropped or stalled most of them)."""
  async def main() -> list[int]:
    conns = await asyncio.gather(*[asyncio.open_connection(*address) for _ in range(300)])
    async def ask(reader, writer) -> int:
      writer.write(_request("GET", f"/v1/models/{TINY}", headers={"Connection": "close"}))
      await writer.drain()
      raw = await reader.read()
      writer.close()
      return _responses(raw)[0][0]
    # The client timeout: the old server answered 78-178 of 300 in it.
    return await asyncio.wait_for(asyncio.gather(*[ask(r, w) for r, w in conns]), 30)

  statuses = asyncio.run(main())
  assert statuses == [200] * 300


@needs_embedded
def test_listen_backlog_is_large(address):
  listening = subprocess.run(["ss", "-ltnH", f"sport = :{address[1]}"], capture_output=True,
                             text=True, check=True).stdout.split()
  assert int(listening[2]) >= 1024, listening  # State Recv-Q Send-Q(= backlog) ...


@needs_embedded
def test_slow_header_connections_are_closed_after_the_timeout(address):
  """Connections that dribble a header line slower than the REST timeout
  are closed (each one used to hold a thread forever); meanwhile the
  server answers others."""
  socks = [socket.create_connection(address, timeout=30) for _ in range(50)]
  started = time.monotonic()
  for sock in socks:
    sock.sendall(b"GET /v1/models/tiny HTTP/1.1\r\nHost: slow\r\n")
  assert _responses(_exchange(address, _request(
      "GET", f"/v1/models/{TINY}", headers={"Connection": "close"})))[0][0] == 200
  open_socks = list(socks)
  while open_socks and time.monotonic() - started < 30:
    time.sleep(0.5)
    for sock in list(open_socks):
      try:
        sock.sendall(b"X")  # a byte of a header that never ends
      except OSError:
        open_socks.remove(sock)
  closed_after = time.monotonic() - started
  for sock in socks:
    sock.close()
  assert not open_socks, f"{len(open_socks)} of 50 still open after {closed_after:.0f} s"
  assert closed_after >= TIMEOUT_MS / 1000


@needs_embedded
def test_cors_preflight_and_headers(address):
  """http_server.cc: OPTIONS is a preflight that needs an http(s) Origin;
  with --rest_api_enable_cors_support every answer carries the headers."""
  raw = _exchange(address, _request("OPTIONS", PREDICT, headers={"Origin": "https://app"})
                  + _request("OPTIONS", PREDICT) + _request(
                      "GET", f"/v1/models/{TINY}", headers={"Connection": "close"}))
  assert [s for s, _ in _responses(raw)] == [200, 400, 200]
  assert raw.count(b"Access-Control-Allow-Origin: *") == 3
  assert b"Origin header is missing in CORS preflight" in raw


# --------------------------------------------------------- body framing

def test_chunked_body_is_read_as_one_request(address):
  plain = _responses(_exchange(address, _request("POST", PREDICT, _body(), close=True)))
  chunked = _responses(_exchange(address, _request(
      "POST", PREDICT, _chunked(_body(), 100), headers={"Transfer-Encoding": "chunked"},
      close=True)))
  assert [s for s, _ in plain] == [200] and [s for s, _ in chunked] == [200]
  assert json.loads(chunked[0][1]) == json.loads(plain[0][1])


def test_chunked_body_that_looks_like_a_request_is_not_smuggled(address):
  smuggled = _request("GET", "/v1/models/smuggled")
  replies = _responses(_exchange(address, _request(
      "POST", PREDICT, _chunked(smuggled, 16), headers={"Transfer-Encoding": "chunked"})))
  assert len(replies) == 1, replies
  status, body = replies[0]
  assert status == 400 and "JSON Parse error" in json.loads(body)["error"]


def test_gzip_body_is_accepted(address):
  plain = _responses(_exchange(address, _request("POST", PREDICT, _body(), close=True)))
  packed = gzip.compress(_body())
  zipped = _responses(_exchange(address, _request("POST", PREDICT, packed, headers={
      "Content-Encoding": "gzip", "Content-Length": len(packed)}, close=True)))
  assert [s for s, _ in zipped] == [200]
  assert json.loads(zipped[0][1]) == json.loads(plain[0][1])


@needs_embedded
def test_gzip_body_is_bounded_after_decompression(address):
  bomb = gzip.compress(b" " * (30 << 20))   # 30 KB that inflate past the 20 MB limit
  replies = _responses(_exchange(address, _request("POST", PREDICT, bomb, headers={
      "Content-Encoding": "gzip", "Content-Length": len(bomb)}, close=True)))
  assert [s for s, _ in replies] == [413]
  assert "exceeds the limit" in json.loads(replies[0][1])["error"]


FRAMING_ERRORS = {
    "content-length and chunked": _request("POST", PREDICT, b"0\r\n\r\n", headers={
        "Content-Length": 5, "Transfer-Encoding": "chunked"}, close=True),
    "bad chunk size": _request("POST", PREDICT, b"zz\r\nabc\r\n0\r\n\r\n",
                               headers={"Transfer-Encoding": "chunked"}, close=True),
    "not gzip data": _request("POST", PREDICT, b"hello", headers={
        "Content-Encoding": "gzip", "Content-Length": 5}, close=True),
}


@pytest.mark.parametrize("case", sorted(FRAMING_ERRORS))
def test_bad_framing_is_one_400_and_no_traceback(server, address, case):
  logged = len(server.lines) if server else 0
  replies = _responses(_exchange(address, FRAMING_ERRORS[case]))
  assert [s for s, _ in replies] == [400], replies
  if server is not None:
    time.sleep(0.3)
    assert not any("Traceback" in line for line in server.lines[logged:]), server.lines[logged:]


# ------------------------------------------------------------- bad input

_DEEP = b'{"instances":' + b"[" * 10000 + b"]" * 10000 + b"}"
_ROW = np.zeros((S, S, 3)).tolist()
BAD_INPUT = {
    "json nested 10,000 deep": (PREDICT, _DEEP, "JSON Parse error"),
    "version beyond int64": (f"/v1/models/{TINY}/versions/99999999999999999999", None,
                             "Failed to convert version: 99999999999999999999 to numeric."),
    "lone surrogate in signature_name": (
        PREDICT, b'{"signature_name": "\\ud800", "instances": [1]}', "JSON Parse error"),
    "10 MB signature name": (
        PREDICT, json.dumps({"signature_name": "s" * (10 << 20), "instances": [_ROW]}).encode(),
        "not found in signature def"),
    "malformed json": (PREDICT, b'{"instances": [1,', "JSON Parse error"),
    "invalid utf-8": (PREDICT, b'{"instances": ["\xff"]}', "JSON Parse error"),
    "huge integer": (PREDICT, b'{"instances": [' + b"9" * 5000 + b"]}", "JSON Parse error"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_a_400_with_a_short_message(server, address, case):
  path, body, message = BAD_INPUT[case]
  logged = len(server.lines) if server else 0
  raw = _request("GET", path) if body is None else _request("POST", path, body)
  replies = _responses(_exchange(address, raw + _request(
      "GET", f"/v1/models/{TINY}", headers={"Connection": "close"}), wait=30))
  assert [s for s, _ in replies] == [400, 200], replies
  error = json.loads(replies[0][1])["error"]
  if server is not None:
    # Texts differ from tensorflow_model_server's where it parses further
    # (rapidjson takes any nesting and unvalidated UTF-8) or echoes 10 MB.
    assert message in error and len(error) < 2000
    # One log line for the bad request, no traceback.
    end = time.monotonic() + 10
    while time.monotonic() < end and not any("-> 400" in s for s in server.lines[logged:]):
      time.sleep(0.1)
    time.sleep(0.3)
    new = server.lines[logged:]
    assert len([line for line in new if "-> 400" in line]) == 1, new
    assert not any("Traceback" in line for line in new), new


def _failed_count(address: tuple[str, int], model: str) -> float:
  raw = _exchange(address, _request("GET", METRICS, headers={"Connection": "close"}))
  text = _responses(raw)[0][1].decode()
  found = re.search(r':tensorflow:serving:request_count\{model_name="%s",'
                    r'status="INVALID_ARGUMENT"\} (\S+)' % model, text)
  return float(found[1]) if found else 0.0


@needs_embedded
def test_requests_failing_before_the_model_are_counted(address):
  """http_server.cc counts every /v1 request by model and status, also one
  whose JSON never parsed."""
  before = _failed_count(address, TINY)
  replies = _responses(_exchange(address, _request("POST", PREDICT, b"{") + _request(
      "GET", f"/v1/models/{TINY}", headers={"Connection": "close"})))
  assert [s for s, _ in replies] == [400, 200]
  assert _failed_count(address, TINY) == before + 1
