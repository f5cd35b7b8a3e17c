"""Both ends of TLS together: the embedded server serving --ssl_config_file
(TF Serving's SSLConfig: PEM texts, client_verify = mutual TLS; REST https with
--rest_api_enable_ssl) and the clients and CLI with a test CA, on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clients import NO_RETRY, ClientError, GrpcClient, RestClient, RetryPolicy, Tls
from tests.support.pki import write_pki
from tests.support.tiny_models import ROOT, ServerProcess, free_port, write_tf2_model

# Retries allowed, so a failure that is retried shows in ClientError.attempts.
RETRYING = RetryPolicy(attempts=4, initial_backoff=0.01, jitter=0.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
  return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki):
  root = tmp_path_factory.mktemp("tls")
  write_tf2_model(root / "tiny" / "1")
  config = root / "ssl.config"
  config.write_text(f"server_key: {json.dumps(pki.server_key.read_text())}\n"
                    f"server_cert: {json.dumps(pki.server_cert.read_text())}\n"
                    f"custom_ca: {json.dumps(pki.ca.read_text())}\n"
                    "client_verify: true\n")
  process = ServerProcess([f"--port={free_port()}", f"--rest_api_port={free_port()}",
                           "--model_name=tiny", f"--model_base_path={root / 'tiny'}",
                           f"--ssl_config_file={config}", "--rest_api_enable_ssl"])
  yield process
  process.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
  path = tmp_path_factory.mktemp("img") / "one.png"
  Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 9, 3), np.uint8)).save(path)
  return path


def test_mutual_tls_on_both_transports(server, pki, image):
  mutual = Tls(pki.ca, pki.client_cert, pki.client_key)
  with GrpcClient(server.grpc_address, tls=mutual, retry=NO_RETRY) as g, \
      RestClient(f"https://{server.rest_address}", tls=mutual, retry=NO_RETRY) as r:
    via_grpc = g.predict_encoded("tiny", [image])
    via_rest = r.predict_encoded("tiny", [image], version=1)
    assert g.is_server_live() and r.is_model_ready("tiny", version=1)
  assert via_grpc.model_version == 1
  np.testing.assert_allclose(via_rest["logits"], via_grpc["logits"], atol=1e-6)


def test_a_certificate_the_client_rejects_fails_at_once(server, pki, tmp_path):
  """No retry on a TLS mismatch the client sees (the server's certificate is
  not signed by --ca-cert): for gRPC this is decided from grpc's error text
  ("Tls handshake failed", clients/grpc_client.py), checked here against the
  server's real handshake."""
  other_ca = Tls(write_pki(tmp_path / "other").ca, pki.client_cert, pki.client_key)
  for client in (GrpcClient(server.grpc_address, tls=other_ca, retry=RETRYING, timeout=10),
                 RestClient(f"https://{server.rest_address}", tls=other_ca, retry=RETRYING,
                            timeout=10),
                 RestClient(f"https://{server.rest_address}", retry=RETRYING, timeout=10)):
    with client, pytest.raises(ClientError) as error:
      client.status("tiny")
    assert error.value.code == "UNAVAILABLE", client.url
    assert error.value.attempts == 1 and not error.value.transient, repr(error.value)
    assert "a TLS mismatch" in str(error.value)


def test_a_connection_the_server_refuses_is_retried_like_a_dropped_one(server, pki):
  """What the server rejects (no client certificate under client_verify,
  plaintext on its TLS ports) reaches the client only as a closed socket
  ("Socket closed" in grpc's text, RemoteDisconnected over http), which a
  restarting server gives too: retried until the attempts run out."""
  for client in (GrpcClient(server.grpc_address, tls=Tls(pki.ca), retry=RETRYING, timeout=10),
                 GrpcClient(server.grpc_address, retry=RETRYING, timeout=10),
                 RestClient(server.rest_address, retry=RETRYING, timeout=10)):
    with client, pytest.raises(ClientError) as error:
      client.status("tiny")
    assert error.value.code == "UNAVAILABLE", client.url
    assert error.value.attempts == RETRYING.attempts and error.value.transient, repr(error.value)


@pytest.mark.parametrize("rest", [False, True])
def test_cli_tls_flags(server, pki, image, rest):
  address = f"https://{server.rest_address}" if rest else server.grpc_address
  done = subprocess.run(
      [sys.executable, "-m", "clients", "predict", "--server", address,
       *(["--rest", "--version", "1"] if rest else []), "--model", "tiny", "--top-k", "1",
       "--ca-cert", str(pki.ca), "--client-cert", str(pki.client_cert),
       "--client-key", str(pki.client_key), str(image)],
      cwd=ROOT, text=True, capture_output=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert "tiny version 1 via " + ("https://" if rest else "grpc://") in done.stdout
