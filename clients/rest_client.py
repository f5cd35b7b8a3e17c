"""The REST transport: TF Serving's HTTP/JSON API (--rest_api_port, 8501).

Requests use the columnar format (`{"signature_name", "inputs": {name: ...}}`),
strings go as `{"b64": ...}`. Responses are JSON numbers without types, and a
single-output signature's response omits the output's name, so output names
and dtypes come from the signature's metadata, fetched once per model and
signature and cached. Metadata and status JSON are parsed into the same
protos the gRPC transport gets, so both return identical results.

Which version answered: TF Serving's REST predict response does not say.
Asking for an explicit version pins it; with `resolve_versions=True` a label
or "latest" is first resolved to a version through the metadata endpoint
(one extra request) and the prediction is sent to /versions/<v>, so the
reported version is the one that answered. Otherwise `model_version` is None.

One keep-alive HTTP connection per thread, reused across calls.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
from typing import Any
from urllib.parse import quote

import numpy as np
from google.protobuf import json_format

from clients import protos, tensors
from clients.base import Client, ModelRef
from clients.errors import ClientError
from clients.results import (ModelMetadata, Prediction, Signature, VersionStatus,
                             metadata_from_proto, status_from_proto)
from clients.retry import RetryPolicy, call_with_retries

# HTTP status -> the status name TF Serving's REST layer derived it from.
_HTTP_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
               404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ABORTED",
               429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
               503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class RestClient(Client):
  """Client over HTTP/JSON; `target` is "host:port" (or "http://host:port")."""

  transport = "rest"

  def __init__(self, target: str, *, timeout: float = 30.0, retry: RetryPolicy | None = None,
               batch_size: int = 32, resolve_versions: bool = False):
    super().__init__(target.removeprefix("http://").rstrip("/"), timeout=timeout, retry=retry,
                     batch_size=batch_size)
    host, _, port = self.target.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"REST target must be host:port, got {target!r}")
    self._host, self._port = host.strip("[]"), int(port)
    self.resolve_versions = resolve_versions
    self._local = threading.local()       # one keep-alive connection per thread
    self._connections: list[http.client.HTTPConnection] = []
    self._connections_lock = threading.Lock()
    self._signatures: dict[tuple[str, str], Signature] = {}

  def close(self) -> None:
    """Closes the connections of every thread that used this client."""
    with self._connections_lock:
      connections, self._connections = self._connections, []
    for connection in connections:
      connection.close()
    self._local = threading.local()

  def _predict(self, model: ModelRef, signature: str,
               inputs: dict[str, np.ndarray]) -> Prediction:
    if self.resolve_versions and model.version is None:
      model = ModelRef(model.name, self.metadata(model.name, label=model.label).version)
    outputs_info = self._signature(model, signature).outputs
    body = {"signature_name": signature,
            "inputs": {name: _to_json(array) for name, array in inputs.items()}}
    what = f"Predict {model} signature {signature!r}"
    outputs = _field(self._request("POST", _path(model, ":predict"), body, what), "outputs",
                     f"{what} at http://{self.target}")
    named = isinstance(outputs, dict) and set(outputs) <= set(outputs_info)
    if len(outputs_info) == 1 and not named:
      outputs = {next(iter(outputs_info)): outputs}  # TF Serving drops a lone output's name
    elif not named:
      raise ClientError("INTERNAL", f"unexpected outputs in the response: {str(outputs)[:200]}",
                        f"{what} at http://{self.target}")
    arrays = {name: _from_json(value, outputs_info[name].dtype)
              for name, value in outputs.items()}
    rows = next(iter(inputs.values())).shape[0]
    return Prediction(arrays, model.version, (model.version,) * rows)

  def metadata(self, model: str, *, version: int | None = None,
               label: str | None = None) -> ModelMetadata:
    ref = ModelRef(model, version, label)
    what = f"GetModelMetadata {ref}"
    answer = self._request("GET", _path(ref, "/metadata"), None, what)
    where = f"{what} at http://{self.target}"
    signature_map = _field(_field(answer, "metadata", where), "signature_def", where)
    signatures = json_format.ParseDict(signature_map, protos.SignatureDefMap(),
                                       ignore_unknown_fields=True)
    spec = answer.get("model_spec", {})
    answered = int(spec["version"]) if spec.get("version") not in (None, "") else None
    return metadata_from_proto(spec.get("name") or model, answered, signatures)

  def status(self, model: str, *, version: int | None = None) -> list[VersionStatus]:
    ref = ModelRef(model, version)
    answer = self._request("GET", _path(ref, ""), None, f"GetModelStatus {ref}")
    return status_from_proto(json_format.ParseDict(
        answer, protos.GetModelStatusResponse(), ignore_unknown_fields=True))

  def _signature(self, model: ModelRef, signature: str) -> Signature:
    key = (model.name, signature)
    if key not in self._signatures:
      signatures = self.metadata(model.name, version=model.version,
                                 label=model.label).signatures
      if signature not in signatures:
        raise ClientError("INVALID_ARGUMENT",
                          f"no signature {signature!r}; the model has {sorted(signatures)}",
                          f"Predict {model} at http://{self.target}")
      self._signatures.update({(model.name, k): v for k, v in signatures.items()})
    return self._signatures[key]

  def _request(self, method: str, path: str, body: Any, what: str) -> Any:
    where = f"{what} at http://{self.target}{path}"
    payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()

    headers = {"Content-Type": "application/json"} if payload is not None else {}

    def exchange() -> tuple[int, bytes]:
      connection = self._connection()
      reused = connection.sock is not None
      try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
      except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        if not reused:
          raise
      # The server closed an idle keep-alive connection: reconnect once, now.
      self.close()
      connection = self._connection()
      connection.request(method, path, body=payload, headers=headers)
      response = connection.getresponse()
      return response.status, response.read()

    def attempt() -> Any:
      try:
        status, data = exchange()
      except (TimeoutError, socket.timeout) as e:
        self.close()
        raise ClientError("DEADLINE_EXCEEDED",
                          f"no answer within the {self.timeout:g} s deadline", where) from e
      except (OSError, http.client.HTTPException) as e:
        self.close()
        raise ClientError("UNAVAILABLE", f"connection failed: {e!r}", where) from e
      if status != 200:
        raise ClientError(_HTTP_CODES.get(status, "UNKNOWN"), _error_message(status, data), where)
      try:
        return json.loads(data)
      except ValueError as e:
        raise ClientError("INTERNAL", f"response is not JSON: {data[:200]!r}", where) from e

    return call_with_retries(self.retry, attempt)

  def _connection(self) -> http.client.HTTPConnection:
    connection = getattr(self._local, "connection", None)
    if connection is None:
      connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
      self._local.connection = connection
      with self._connections_lock:
        self._connections.append(connection)
    return connection


def _path(model: ModelRef, suffix: str) -> str:
  path = f"/v1/models/{quote(model.name, safe='')}"
  if model.version is not None:
    path += f"/versions/{model.version}"
  elif model.label is not None:
    path += f"/labels/{quote(model.label, safe='')}"
  return path + suffix


def _to_json(array: np.ndarray) -> Any:
  if array.dtype == object or array.dtype.kind in "SU":
    flat = [{"b64": base64.b64encode(tensors.as_bytes(v)).decode("ascii")}
            for v in array.reshape(-1)]
    return np.array(flat, dtype=object).reshape(array.shape).tolist()
  return array.tolist()


def _from_json(value: Any, dtype_name: str) -> np.ndarray:
  dtype = tensors.numpy_dtype(dtype_name)
  if dtype != object:
    return np.asarray(value, dtype=dtype)
  array = np.asarray(value, dtype=object)
  flat = [base64.b64decode(v["b64"]) if isinstance(v, dict) else str(v).encode("utf-8")
          for v in array.reshape(-1)]
  out = np.empty(len(flat), dtype=object)
  out[:] = flat
  return out.reshape(array.shape)


def _field(answer: Any, key: str, what: str) -> Any:
  if not isinstance(answer, dict) or key not in answer:
    raise ClientError("INTERNAL", f"response has no {key!r}: {str(answer)[:200]}", what)
  return answer[key]


def _error_message(status: int, data: bytes) -> str:
  try:
    return str(json.loads(data)["error"])
  except (ValueError, KeyError, TypeError):
    text = data.decode("utf-8", "replace").strip()
    return f"HTTP {status}: {text[:500]}" if text else f"HTTP {status}"
