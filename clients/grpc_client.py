"""The gRPC transport: TF Serving's PredictionService and ModelService.

One channel per client, reused by every call (a channel is a pool of
HTTP/2 connections; making one per request costs a handshake each time).
Message limits are raised from gRPC's 4 MiB default, which a batch of eight
224 px float32 images (4.8 MB) already exceeds. Every call has one deadline
that covers its retries; UNAVAILABLE is retried with backoff (RetryPolicy)
unless it cannot heal (wrong port, a server certificate the client rejects;
a handshake the server refuses reads "Socket closed", like a dropped
connection, and is retried), anything else is raised as a ClientError at once. The request/response functions here are shared with
the asyncio client (clients.aio).
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from clients import connection, tensors
from contract import protos
from clients.base import Call, Client, Headers, ModelRef
from clients.batching import DEFAULT_BATCH_SIZE
from clients.connection import Tls
from clients.errors import ClientError
from clients.results import (ModelMetadata, Prediction, VersionStatus,
                             metadata_from_proto, status_from_proto)
from clients.retry import RetryPolicy, call_with_retries

DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024
# gRPC name resolvers passed through as they are (e.g. "dns:///host:8500").
_RESOLVERS = ("dns:", "unix:", "ipv4:", "ipv6:")


class GrpcClient(Client):
  """Client over gRPC; `target` is "host[:port]" (TF Serving's --port, 8500).

  `tls=True` (the system's roots) or a connection.Tls (a CA, a client
  certificate) makes the channel secure; `credentials` takes ready-made
  grpc.ChannelCredentials instead.
  """

  transport = "grpc"

  def __init__(self, target: str, *, timeout: float = 30.0, retry: RetryPolicy | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, headers: Headers | None = None,
               compression: bool = False, tls: Tls | bool | None = None,
               credentials: grpc.ChannelCredentials | None = None,
               max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
    address, options, credentials = channel_args(target, tls, credentials, max_message_bytes)
    super().__init__(address, timeout=timeout, retry=retry, batch_size=batch_size,
                     headers=headers, compression=compression)
    gzip = grpc.Compression.Gzip if compression else None
    self._channel = (grpc.secure_channel(address, credentials, options, compression=gzip)
                     if credentials else
                     grpc.insecure_channel(address, options, compression=gzip))
    self._stubs = {m.path: self._channel.unary_unary(
        m.path, request_serializer=m.request_serializer,
        response_deserializer=m.response_deserializer)
        for m in (protos.PREDICT, protos.GET_MODEL_METADATA, protos.GET_MODEL_STATUS,
                  protos.HANDLE_RELOAD_CONFIG, protos.HEALTH_CHECK)}

  def close(self) -> None:
    self._channel.close()

  def _predict(self, model: ModelRef, signature: str, inputs: dict[str, np.ndarray],
               call: Call) -> Prediction:
    response = self._rpc(protos.PREDICT, predict_request(model, signature, inputs, call),
                         f"Predict {model} signature {signature!r}", call)
    return prediction(response, inputs)

  def _metadata(self, model: ModelRef, call: Call) -> ModelMetadata:
    response = self._rpc(protos.GET_MODEL_METADATA, metadata_request(model),
                         f"GetModelMetadata {model}", call)
    return metadata_result(response, model)

  def _status(self, model: ModelRef, call: Call) -> list[VersionStatus]:
    return status_from_proto(self._rpc(protos.GET_MODEL_STATUS, status_request(model),
                                       f"GetModelStatus {model}", call))

  def reload_config(self, config: Any, *, timeout: float | None = None,
                    headers: Headers | None = None) -> None:
    """ModelService.HandleReloadConfigRequest: makes `config` (a
    ModelServerConfig, e.g. from contract.model_config) the server's models.

    gRPC only (TF Serving has no REST equivalent). The server answers once
    the models new to the config are AVAILABLE, so `timeout` should cover a
    load; a refused config raises ClientError with the server's code.
    """
    request = protos.ReloadConfigRequest()
    request.config.CopyFrom(config)
    self._rpc(protos.HANDLE_RELOAD_CONFIG, request, "HandleReloadConfigRequest",
              self._call(timeout, headers))

  def _live(self, call: Call) -> bool:
    where = f"Health/Check at grpc://{self.target}"
    try:
      response = self._stubs[protos.HEALTH_CHECK.path](
          protos.HealthCheckRequest(), timeout=call.timeout, metadata=call.headers or None)
      return response.status == protos.SERVING
    except grpc.RpcError as e:
      return live_after(error(e, call.timeout, where))

  def _rpc(self, method: protos.Method, request: Any, what: str, call: Call) -> Any:
    stub = self._stubs[method.path]
    where = f"{what} at grpc://{self.target}"

    def attempt(seconds: float) -> Any:
      try:
        return stub(request, timeout=seconds, metadata=call.headers or None)
      except grpc.RpcError as e:
        raise error(e, call.timeout, where) from e

    return call_with_retries(self.retry, call.timeout, attempt)


def channel_args(target: str, tls: Tls | bool | None,
                 credentials: grpc.ChannelCredentials | None,
                 max_message_bytes: int) -> tuple[str, list[tuple[str, Any]],
                                                  grpc.ChannelCredentials | None]:
  """The address, channel options and credentials (None: plaintext) of a channel."""
  address = (target if target.startswith(_RESOLVERS)
             else connection.parse(target, rest=False).address)
  options: list[tuple[str, Any]] = [("grpc.max_send_message_length", max_message_bytes),
                                    ("grpc.max_receive_message_length", max_message_bytes)]
  if tls is True:
    tls = Tls()
  if isinstance(tls, Tls):
    if credentials is not None:
      raise ValueError("give tls or credentials, not both")
    credentials = tls.grpc_credentials()
    options += tls.grpc_options()
  return address, options, credentials


def predict_request(model: ModelRef, signature: str, inputs: dict[str, np.ndarray],
                    call: Call) -> Any:
  request = protos.PredictRequest(output_filter=call.output_filter)
  _fill_spec(request.model_spec, model, signature)
  for name, array in inputs.items():
    request.inputs[name].CopyFrom(tensors.make_tensor_proto(array))
  return request


def prediction(response: Any, inputs: dict[str, np.ndarray]) -> Prediction:
  outputs = {name: tensors.make_ndarray(t) for name, t in response.outputs.items()}
  version = (response.model_spec.version.value
             if response.model_spec.HasField("version") else None)
  rows = next(iter(inputs.values())).shape[0]
  return Prediction(outputs, version, (version,) * rows)


def metadata_request(model: ModelRef) -> Any:
  request = protos.GetModelMetadataRequest(metadata_field=["signature_def"])
  _fill_spec(request.model_spec, model)
  return request


def metadata_result(response: Any, model: ModelRef) -> ModelMetadata:
  signatures = protos.SignatureDefMap()
  response.metadata["signature_def"].Unpack(signatures)
  answered = (response.model_spec.version.value
              if response.model_spec.HasField("version") else None)
  return metadata_from_proto(response.model_spec.name or model.name, answered, signatures)


def status_request(model: ModelRef) -> Any:
  request = protos.GetModelStatusRequest()
  _fill_spec(request.model_spec, model)
  return request


def error(e: grpc.RpcError, timeout: float, where: str) -> ClientError:
  """A ClientError for a failed RPC, saying what to try when a retry cannot help."""
  code = e.code().name if e.code() is not None else "UNKNOWN"
  details = e.details() or code
  if code == "DEADLINE_EXCEEDED":
    return ClientError(code, f"no answer within the {timeout:g} s deadline", where)
  if "HTTP/2" in details or "http1" in details.lower():
    return ClientError(code, details, where, transient=False,
                       hint="is this the REST port? try --rest (RestClient), or the gRPC "
                            f"port ({connection.GRPC_PORT} by default)")
  if code == "UNAVAILABLE" and ("SSL" in details or "handshake" in details.lower()
                                or "certificate" in details.lower()):
    return ClientError(code, details, where, transient=False,
                       hint="a TLS mismatch: does the server serve TLS on this port "
                            "(--tls), and does --ca-cert sign its certificate?")
  return ClientError(code, details, where)


def live_after(failure: ClientError) -> bool:
  """Liveness from a failed health check: the server answered unless it was
  unreachable; UNIMPLEMENTED is TF Serving without --enable_grpc_healthcheck_service."""
  if not failure.transient:
    raise failure
  return failure.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def _fill_spec(spec: Any, model: ModelRef, signature: str | None = None) -> None:
  spec.name = model.name
  if model.version is not None:
    spec.version.value = model.version
  if model.label is not None:
    spec.version_label = model.label
  if signature is not None:
    spec.signature_name = signature
