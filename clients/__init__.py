"""Thin gRPC/REST clients for TF Serving (and the embedded server).

    from clients import GrpcClient, preprocessing
    with GrpcClient("127.0.0.1:8500") as client:
      result = client.predict_encoded("vit", ["cat.jpg"], label="stable")
      print(result.model_version, result.top_k(3))

Both transports share one API (clients.base.Client), and so do their asyncio
twins (clients.aio: AsyncGrpcClient, AsyncRestClient; the latter needs the
[aio] extra); A/B routing is in clients.routing, the CLI (predict, metadata,
status, health, perf) in `python -m clients`. Importing this package does
not import TensorFlow: the protocol messages come from a descriptor set that
ships with it (contract.protos), so a caller pays for grpc and numpy only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from clients.grpc_client import GrpcClient
  from clients.rest_client import RestClient

# The public names, imported on first use: export/ reads contract
# (e.g. `python -m export.zoo --help`), which must not pay ~0.3 s for grpc and
# numpy through this package's __init__.
_API = {
    "ModelRef": "clients.base", "Tls": "clients.connection", "ClientError": "clients.errors",
    "GrpcClient": "clients.grpc_client", "RestClient": "clients.rest_client",
    **dict.fromkeys(("ModelMetadata", "Prediction", "SignatureInfo", "TensorInfo", "TopK",
                     "VersionStatus"), "clients.results"),
    **dict.fromkeys(("NO_RETRY", "RetryPolicy"), "clients.retry"),
    **dict.fromkeys(("Arm", "RoutedClient", "Router", "label_arms", "version_arms"),
                    "clients.routing"),
}

__all__ = sorted([*_API, "connect"])


def __getattr__(name: str) -> Any:
  if name not in _API:
    raise AttributeError(f"module 'clients' has no attribute {name!r}")
  return getattr(importlib.import_module(_API[name]), name)


def connect(server: str, *, rest: bool = False, **kwargs: Any) -> GrpcClient | RestClient:
  """A GrpcClient for "host[:port]", or a RestClient with rest=True (or an https:// URL)."""
  if rest or server.startswith(("http://", "https://")):
    from clients.rest_client import RestClient
    return RestClient(server, **kwargs)
  from clients.grpc_client import GrpcClient
  return GrpcClient(server, **kwargs)
