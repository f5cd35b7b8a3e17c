"""--ssl_config_file: gRPC over TLS as tensorflow_model_server serves it
(server.cc: BuildServerCredentials), mutual TLS with client_verify, REST
plain HTTP as in TF Serving unless --rest_api_enable_ssl (embedded only),
and every config that cannot be served stops the server instead of
falling back to plaintext. The CA is made in the test (tests/support/pki.py).
"""

from __future__ import annotations

import concurrent.futures
import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from tests.support.pki import Pki, write_pki
from tests.support import tiny_models
from tests.support.remote import needs_embedded

pytestmark = needs_embedded
TINY = tiny_models.TF2_MODEL


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
  return write_pki(tmp_path_factory.mktemp("pki"))


def _ssl_config(path: Path, pki: Pki, *, client_verify: bool = False, key: str | None = None,
                ca: bool = True) -> Path:
  fields = {"server_key": key if key is not None else pki.server_key.read_text(),
            "server_cert": pki.server_cert.read_text(),
            "custom_ca": pki.ca.read_text() if ca else ""}
  # JSON string literals are valid text-proto string literals for ASCII PEM.
  text = "".join(f"{k}: {json.dumps(v)}\n" for k, v in fields.items() if v)
  path.write_text(text + f"client_verify: {str(client_verify).lower()}\n")
  return path


def _start(repository: Path, config: Path, *extra: str) -> tiny_models.ServerProcess:
  return tiny_models.ServerProcess([
      f"--port={tiny_models.free_port()}", f"--rest_api_port={tiny_models.free_port()}",
      f"--model_config_file={repository / 'models.config'}",
      "--allow_version_labels_for_unavailable_models",  # as conftest.py's server
      "--file_system_poll_wait_seconds=0", f"--ssl_config_file={config}", *extra])


def _status(channel: grpc.Channel) -> int:
  stub = model_service_pb2_grpc.ModelServiceStub(channel)
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = TINY
  return len(stub.GetModelStatus(request, timeout=10).model_version_status)


def _credentials(pki: Pki, client_cert: bool) -> grpc.ChannelCredentials:
  if not client_cert:
    return grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
  return grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes(),
                                      private_key=pki.client_key.read_bytes(),
                                      certificate_chain=pki.client_cert.read_bytes())


def _https_context(pki: Pki, client_cert: bool = False) -> ssl.SSLContext:
  context = ssl.create_default_context(cafile=str(pki.ca))
  if client_cert:
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
  return context


def test_grpc_tls_and_https_rest(repository, pki, tmp_path):
  server = _start(repository, _ssl_config(tmp_path / "ssl.config", pki), "--rest_api_enable_ssl")
  try:
    assert "Using SSL credentials" in server.log
    with grpc.secure_channel(server.grpc_address, _credentials(pki, False)) as channel:
      assert _status(channel) == 2
    with grpc.insecure_channel(server.grpc_address) as channel, \
        pytest.raises(grpc.RpcError) as info:
      _status(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    url = f"https://{server.rest_address}/v1/models/{TINY}"
    with urllib.request.urlopen(url, timeout=10, context=_https_context(pki)) as response:
      assert len(json.loads(response.read())["model_version_status"]) == 2
    with pytest.raises(OSError):  # plain HTTP on the https port: no answer
      urllib.request.urlopen(f"http://{server.rest_address}/v1/models/{TINY}", timeout=10)
  finally:
    server.stop()


def test_client_verify_requires_a_client_certificate(repository, pki, tmp_path):
  config = _ssl_config(tmp_path / "ssl.config", pki, client_verify=True)
  server = _start(repository, config)
  try:
    with grpc.secure_channel(server.grpc_address, _credentials(pki, True)) as channel:
      assert _status(channel) == 2
    with grpc.secure_channel(server.grpc_address, _credentials(pki, False)) as channel, \
        pytest.raises(grpc.RpcError) as info:
      _status(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # TF Serving's REST server has no TLS: with an SSLConfig it stays plain HTTP.
    with urllib.request.urlopen(f"http://{server.rest_address}/v1/models/{TINY}",
                                timeout=10) as response:
      assert response.status == 200
  finally:
    server.stop()


def _bad_configs(tmp_path: Path, pki: Pki) -> dict[str, tuple[list[str], str]]:
  """{case: (server flags, the reason its error must give)}."""
  other_key = write_pki(tmp_path / "other").server_key.read_text()
  garbage = tmp_path / "garbage.config"
  garbage.write_text("server_key: 'unterminated\n")

  def flag(name: str, **kwargs) -> list[str]:
    return [f"--ssl_config_file={_ssl_config(tmp_path / name, pki, **kwargs)}"]

  return {
      "missing file": ([f"--ssl_config_file={tmp_path / 'nope'}"], "cannot read"),
      "not a text proto": ([f"--ssl_config_file={garbage}"], "not an SSLConfig text proto"),
      "no key": (flag("a", key=""), "server_key and server_cert are required"),
      "key of another certificate": (flag("b", key=other_key), "do not load as a PEM key pair"),
      "client_verify without custom_ca": (flag("c", client_verify=True, ca=False),
                                          "client_verify needs custom_ca"),
      "alts": (["--use_alts_credentials"], "ALTS is not supported"),
      "https without a config": (["--rest_api_enable_ssl"], "needs --ssl_config_file"),
  }


def test_unusable_ssl_configs_stop_the_server(tmp_path, pki):
  cases = _bad_configs(tmp_path, pki)

  def start(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving", f"--port={tiny_models.free_port()}",
         "--model_name=m", f"--model_base_path={tmp_path / 'models'}", *args],
        capture_output=True, text=True, timeout=120, cwd=tiny_models.ROOT,
        env={"PYTHONPATH": str(tiny_models.ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin"})

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    results = dict(zip(cases, pool.map(start, [args for args, _ in cases.values()])))
  for case, (_, message) in cases.items():
    result = results[case]
    assert result.returncode != 0, case
    assert "Failed to start server" in result.stderr and message in result.stderr, \
        (case, result.stderr[-2000:])
    assert "Running gRPC ModelServer" not in result.stderr, case
