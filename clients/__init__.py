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
ships with it (clients.protos), so a caller pays for grpc and numpy only.
"""

from __future__ import annotations

from typing import Any

from clients.base import ModelRef
from clients.connection import Tls
from clients.errors import ClientError
from clients.grpc_client import GrpcClient
from clients.rest_client import RestClient
from clients.results import (ModelMetadata, Prediction, SignatureInfo, TensorInfo, TopK,
                             VersionStatus)
from clients.retry import NO_RETRY, RetryPolicy
from clients.routing import Arm, RoutedClient, Router, label_arms, version_arms

__all__ = ["Arm", "ClientError", "GrpcClient", "ModelMetadata", "ModelRef", "NO_RETRY",
           "Prediction", "RestClient", "RetryPolicy", "RoutedClient", "Router", "SignatureInfo",
           "TensorInfo", "Tls", "TopK", "VersionStatus", "connect", "label_arms", "version_arms"]


def connect(server: str, *, rest: bool = False, **kwargs: Any) -> GrpcClient | RestClient:
  """A GrpcClient for "host[:port]", or a RestClient with rest=True (or an https:// URL)."""
  rest = rest or server.startswith(("http://", "https://"))
  return RestClient(server, **kwargs) if rest else GrpcClient(server, **kwargs)
