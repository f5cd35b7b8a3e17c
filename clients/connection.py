"""Where a client connects, and how: server addresses and TLS settings.

A service names its server many ways ("host", "host:8500", "[::1]:8501",
"https://models.example.com"); both transports and the CLI parse them here.
A bare host means TF Serving's own ports (--port 8500, --rest_api_port 8501),
a URL with a scheme but no port that scheme's port (443 for https), since an
https URL usually names a load balancer, not the server itself.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import grpc

GRPC_PORT = 8500
REST_PORT = 8501


@dataclasses.dataclass(frozen=True)
class Tls:
  """TLS for either transport: a CA to trust (None: the system's roots) and,
  for mutual TLS, this client's certificate chain and private key (PEM files).

  `server_name` checks the server's certificate against that name instead of
  the host connected to (an address, or a name the certificate lacks).
  """
  root_certificates: str | Path | None = None
  certificate_chain: str | Path | None = None
  private_key: str | Path | None = None
  server_name: str | None = None

  def __post_init__(self) -> None:
    if (self.certificate_chain is None) != (self.private_key is None):
      raise ValueError("a client certificate needs its private key, and the key its certificate")

  def grpc_credentials(self) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(self.root_certificates),
        private_key=_read(self.private_key), certificate_chain=_read(self.certificate_chain))

  def grpc_options(self) -> list[tuple[str, str]]:
    return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

  def ssl_context(self) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=None if self.root_certificates is None else str(self.root_certificates))
    if self.certificate_chain is not None:
      context.load_cert_chain(str(self.certificate_chain), str(self.private_key))
    return context


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """A parsed server address."""
  host: str
  port: int
  tls: bool = False

  @property
  def address(self) -> str:
    """"host:port", with an IPv6 host in brackets (what gRPC and URLs take)."""
    host = f"[{self.host}]" if ":" in self.host else self.host
    return f"{host}:{self.port}"

  @property
  def url(self) -> str:
    return f"{'https' if self.tls else 'http'}://{self.address}"


def parse(server: str, *, rest: bool) -> Endpoint:
  """An Endpoint from "host", "host:port", "[v6]:port" or an http(s):// URL.

  gRPC takes no URL scheme (TLS is a client setting there); REST's https://
  turns TLS on.
  """
  text = server.strip().rstrip("/")
  scheme = ""
  if "://" in text:
    scheme = text.split("://", 1)[0].lower()
    if not rest:
      raise ValueError(f"{server!r}: gRPC takes HOST:PORT, not a URL (TLS is --tls)")
    if scheme not in ("http", "https"):
      raise ValueError(f"{server!r}: REST takes http:// or https://")
  parts = urlsplit(text if scheme else f"//{text}")
  try:
    port = parts.port
  except ValueError:
    raise ValueError(f"{server!r}: the port is not a number from 1 to 65535") from None
  if not parts.hostname or parts.path or parts.query:
    raise ValueError(f"{server!r}: expected HOST, HOST:PORT or a URL without a path")
  if port is None:
    port = {"https": 443, "http": 80}.get(scheme, REST_PORT if rest else GRPC_PORT)
  return Endpoint(parts.hostname, port, tls=scheme == "https")


def _read(path: str | Path | None) -> bytes | None:
  return None if path is None else Path(path).read_bytes()
