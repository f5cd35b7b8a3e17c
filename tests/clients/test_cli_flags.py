"""The CLI's connection flags do what they say, seen from the server's side:
--header reaches the server, --attempts is the number of tries, --timeout
bounds a call to a server that never answers, --tls switches to TLS,
--compression gzips request bodies."""

from __future__ import annotations

import gzip
import socket
import ssl

import pytest

from clients.__main__ import main
from tests.support.fake_http import FakeHttpServer
from tests.support.pki import write_pki

STATUS = {"model_version_status": [{"version": "3", "state": "AVAILABLE",
                                    "status": {"error_code": "OK", "error_message": ""}}]}


def _status(server: str, *flags: str) -> int:
  return main(["status", "--server", server, "--rest", "--model", "m", *flags])


def test_header_is_sent_with_every_request_and_a_bad_one_is_refused(capsys):
  fake = FakeHttpServer(STATUS)
  try:
    assert _status(f"127.0.0.1:{fake.port}", "--header", "Authorization: Bearer t0k",
                   "--header", "x-team:  vision ") == 0
    headers = fake.requests[0][0]
    assert headers["authorization"] == "Bearer t0k" and headers["x-team"] == "vision"
    capsys.readouterr()
    assert _status(f"127.0.0.1:{fake.port}", "--header", "no colon") != 0
    assert capsys.readouterr().err == "error: --header 'no colon' is not 'Name: value'\n"
    assert fake.calls == 1
  finally:
    fake.stop()


@pytest.mark.parametrize("attempts", [1, 3])
def test_attempts_is_the_number_of_tries(attempts, capsys):
  fake = FakeHttpServer({"error": "restarting"}, status=503)
  try:
    assert _status(f"127.0.0.1:{fake.port}", "--attempts", str(attempts)) == 1
  finally:
    fake.stop()
  assert fake.calls == attempts
  err = capsys.readouterr().err
  assert "UNAVAILABLE" in err and (f"after {attempts} attempts" in err) == (attempts > 1), err


def test_timeout_bounds_a_call_to_a_server_that_never_answers(capsys):
  with socket.socket() as silent:          # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    assert _status(f"127.0.0.1:{port}", "--timeout", "0.5", "--attempts", "1") == 1
  err = capsys.readouterr().err
  assert "DEADLINE_EXCEEDED" in err and "0.5 s deadline" in err, err


def test_tls_switches_to_tls_and_ca_cert_trusts_the_test_ca(tmp_path, capsys):
  pki = write_pki(tmp_path / "pki")
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(pki.server_cert, pki.server_key)
  fake = FakeHttpServer(STATUS, context=context)
  address = f"127.0.0.1:{fake.port}"
  try:
    assert _status(address, "--attempts", "1") == 1           # plain http to a TLS port
    capsys.readouterr()
    assert _status(address, "--tls") == 1                     # TLS, but the system's CAs
    err = capsys.readouterr().err
    assert "CERTIFICATE_VERIFY_FAILED" in err and "a TLS mismatch" in err, err
    assert fake.calls == 0
    assert _status(address, "--tls", "--ca-cert", str(pki.ca)) == 0
    assert "version 3  AVAILABLE" in capsys.readouterr().out
    assert fake.calls == 1
  finally:
    fake.stop()


@pytest.mark.parametrize("compression", [False, True])
def test_compression_gzips_request_bodies(compression, tmp_path, capsys):
  info = {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}, {"size": "2"}]}}
  metadata = {"model_spec": {"name": "m", "version": "3", "signature_name": ""},
              "metadata": {"signature_def": {"signature_def": {"predict_bytes": {
                  "inputs": {"image_bytes": {"dtype": "DT_STRING",
                                             "tensor_shape": {"dim": [{"size": "-1"}]}}},
                  "outputs": {"probabilities": info},
                  "method_name": "tensorflow/serving/predict"}}}}}
  image = tmp_path / "a.png"
  image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))       # sent as bytes, not decoded
  fake = FakeHttpServer({"outputs": [[0.25, 0.75]]},
                        by_path={"/v1/models/m/metadata": metadata})
  try:
    main(["predict", "--server", f"127.0.0.1:{fake.port}", "--rest", "--model", "m",
          *(["--compression"] if compression else []), str(image)])
  finally:
    fake.stop()
  capsys.readouterr()
  posts = [(headers, body) for headers, body in fake.requests if body]
  assert len(posts) == 1
  headers, body = posts[0]
  assert (headers.get("content-encoding") == "gzip") == compression
  text = gzip.decompress(body) if compression else body
  assert b'"b64"' in text and b"image_bytes" in text
