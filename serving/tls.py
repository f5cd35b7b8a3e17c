"""`--ssl_config_file`: TF Serving's SSLConfig, applied as it applies it.

tensorflow_model_server reads an ascii SSLConfig proto
(tensorflow_serving/config/ssl_config.proto: server_key, server_cert,
custom_ca, client_verify; the PEM texts themselves, not paths) and serves
gRPC over TLS with it, on the TCP port and the UNIX socket alike
(model_servers/server.cc: BuildServerCredentials).  Its REST server stays
plain HTTP whatever the config says (http_server.cc has no TLS), and so
does ours unless `--rest_api_enable_ssl` (embedded server only) asks for
https with the same key pair.

A config that cannot be used stops the server with the reason: nothing
here falls back to plaintext.  The PEMs are checked with Python's ssl
module first, because gRPC only reports a bad key when a client connects.
"""

from __future__ import annotations

import os
import ssl
import tempfile

import grpc
from google.protobuf import text_format

from contract import protos


# Not in the tensorflow-serving-api wheel (no ssl_config_pb2): declared once,
# in the descriptor set contract/_gen_protos.py writes (a private pool).
SSLConfig = protos.message_class("tensorflow.serving.SSLConfig")


class TlsConfigError(ValueError):
  """An --ssl_config_file the server cannot serve with."""


def read_ssl_config(path: str) -> "SSLConfig":
  """The parsed and checked SSLConfig at `path`."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise TlsConfigError(f"cannot read --ssl_config_file {path}: {e.strerror}") from None
  config = SSLConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise TlsConfigError(f"--ssl_config_file {path} is not an SSLConfig text proto: {e}") \
        from None
  if not config.server_key or not config.server_cert:
    raise TlsConfigError(f"--ssl_config_file {path}: server_key and server_cert are required "
                         "(the PEM texts)")
  if config.client_verify and not config.custom_ca:
    # Python's gRPC needs the roots to verify clients against; the C++
    # server would fall back to its default root set, which trusts any
    # public CA's client certificate.
    raise TlsConfigError(f"--ssl_config_file {path}: client_verify needs custom_ca (the CA "
                         "that signs client certificates)")
  server_context(config)  # raises for keys, certificates or CAs that do not load
  return config


def grpc_credentials(config: "SSLConfig") -> grpc.ServerCredentials:
  """server.cc: BuildServerCredentials. client_verify means "request and
  require a client certificate and verify it"; otherwise none is requested."""
  return grpc.ssl_server_credentials(
      [(config.server_key.encode(), config.server_cert.encode())],
      root_certificates=config.custom_ca.encode() if config.custom_ca else None,
      require_client_auth=config.client_verify)


def server_context(config: "SSLConfig") -> ssl.SSLContext:
  """An ssl context serving the same key pair, with the same client
  verification (for --rest_api_enable_ssl)."""
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  with tempfile.TemporaryDirectory() as directory:  # load_cert_chain reads files only
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    for path, text in ((cert, config.server_cert), (key, config.server_key)):
      with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(text)
    try:
      context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
      raise TlsConfigError(f"--ssl_config_file: server_key/server_cert do not load as a PEM "
                           f"key pair: {e.reason or e}") from None
  if config.custom_ca:
    try:
      context.load_verify_locations(cadata=config.custom_ca)
    except (ssl.SSLError, ValueError) as e:
      raise TlsConfigError(f"--ssl_config_file: custom_ca does not load as PEM "
                           f"certificates: {e}") from None
  if config.client_verify:
    context.verify_mode = ssl.CERT_REQUIRED
  return context


__all__ = ["SSLConfig", "TlsConfigError", "grpc_credentials", "read_ssl_config",
           "server_context"]
