"""The gRPC transport: TF Serving's PredictionService and ModelService.

One channel per client, reused by every call (a channel is a pool of
HTTP/2 connections; making one per request costs a handshake each time).
Message limits are raised from gRPC's 4 MiB default, which a batch of eight
224 px float32 images (4.8 MB) already exceeds. Every call has a deadline;
UNAVAILABLE is retried with backoff (RetryPolicy), anything else is raised
as a ClientError at once.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from clients import protos, tensors
from clients.base import Client, ModelRef
from clients.errors import ClientError
from clients.results import (ModelMetadata, Prediction, VersionStatus,
                             metadata_from_proto, status_from_proto)
from clients.retry import RetryPolicy, call_with_retries

DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024


class GrpcClient(Client):
  """Client over gRPC; `target` is "host:port" (TF Serving's --port, 8500).

  Pass `credentials` (grpc.ssl_channel_credentials(...)) for a TLS endpoint.
  """

  transport = "grpc"

  def __init__(self, target: str, *, timeout: float = 30.0, retry: RetryPolicy | None = None,
               batch_size: int = 32, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
               credentials: grpc.ChannelCredentials | None = None):
    super().__init__(target, timeout=timeout, retry=retry, batch_size=batch_size)
    options = [("grpc.max_send_message_length", max_message_bytes),
               ("grpc.max_receive_message_length", max_message_bytes)]
    self._channel = (grpc.secure_channel(target, credentials, options) if credentials
                     else grpc.insecure_channel(target, options))
    self._stubs = {m.path: self._channel.unary_unary(
        m.path, request_serializer=m.request_serializer,
        response_deserializer=m.response_deserializer)
        for m in (protos.PREDICT, protos.GET_MODEL_METADATA, protos.GET_MODEL_STATUS)}

  def close(self) -> None:
    self._channel.close()

  def _predict(self, model: ModelRef, signature: str,
               inputs: dict[str, np.ndarray]) -> Prediction:
    request = protos.PredictRequest()
    _fill_spec(request.model_spec, model, signature)
    for name, array in inputs.items():
      request.inputs[name].CopyFrom(tensors.make_tensor_proto(array))
    response = self._call(protos.PREDICT, request, f"Predict {model} signature {signature!r}")
    outputs = {name: tensors.make_ndarray(t) for name, t in response.outputs.items()}
    version = (response.model_spec.version.value
               if response.model_spec.HasField("version") else None)
    rows = next(iter(inputs.values())).shape[0]
    return Prediction(outputs, version, (version,) * rows)

  def metadata(self, model: str, *, version: int | None = None,
               label: str | None = None) -> ModelMetadata:
    ref = ModelRef(model, version, label)
    request = protos.GetModelMetadataRequest(metadata_field=["signature_def"])
    _fill_spec(request.model_spec, ref)
    response = self._call(protos.GET_MODEL_METADATA, request, f"GetModelMetadata {ref}")
    signatures = protos.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    answered = (response.model_spec.version.value
                if response.model_spec.HasField("version") else None)
    return metadata_from_proto(response.model_spec.name or model, answered, signatures)

  def status(self, model: str, *, version: int | None = None) -> list[VersionStatus]:
    ref = ModelRef(model, version)
    request = protos.GetModelStatusRequest()
    _fill_spec(request.model_spec, ref)
    return status_from_proto(self._call(protos.GET_MODEL_STATUS, request, f"GetModelStatus {ref}"))

  def _call(self, method: protos.Method, request: Any, what: str) -> Any:
    stub = self._stubs[method.path]
    where = f"{what} at grpc://{self.target}"

    def attempt() -> Any:
      try:
        return stub(request, timeout=self.timeout)
      except grpc.RpcError as e:
        code = e.code().name if e.code() is not None else "UNKNOWN"
        if code == "DEADLINE_EXCEEDED":
          message = f"no answer within the {self.timeout:g} s deadline"
        else:
          message = e.details() or code
        raise ClientError(code, message, where) from e

    return call_with_retries(self.retry, attempt)


def _fill_spec(spec: Any, model: ModelRef, signature: str | None = None) -> None:
  spec.name = model.name
  if model.version is not None:
    spec.version.value = model.version
  if model.label is not None:
    spec.version_label = model.label
  if signature is not None:
    spec.signature_name = signature
