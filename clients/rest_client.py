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

`output_filter` has no REST counterpart in TF Serving (its JSON predict
request has no such field), so unwanted outputs are dropped on arrival.
With compression on, request bodies are gzipped (`Content-Encoding: gzip`,
which TF Serving inflates: util/net_http/server/internal/evhttp_request.cc).

One keep-alive HTTP(S) connection per thread, reused across calls. The
request/response functions here are shared with the asyncio client.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import ssl
import threading
from typing import Any
from urllib.parse import quote

import numpy as np
from google.protobuf import json_format

from clients import connection, tensors
from contract import protos
from clients.base import Call, Client, Headers, ModelRef
from clients.batching import DEFAULT_BATCH_SIZE
from clients.connection import Tls
from clients.errors import ClientError
from clients.results import (ModelMetadata, Prediction, SignatureInfo, VersionStatus,
                             metadata_from_proto, status_from_proto)
from clients.retry import RetryPolicy, call_with_retries

# HTTP status -> the status name TF Serving's REST layer derived it from.
_HTTP_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
               404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ABORTED",
               429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
               503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class RestClient(Client):
  """Client over HTTP/JSON; `target` is "host[:port]" or an http(s):// URL.

  https:// (or `tls`: True or a connection.Tls with a CA / client
  certificate) speaks HTTPS.
  """

  transport = "rest"

  def __init__(self, target: str, *, timeout: float = 30.0, retry: RetryPolicy | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, headers: Headers | None = None,
               compression: bool = False, tls: Tls | bool | None = None,
               resolve_versions: bool = False):
    self.endpoint, self._ssl = endpoint_and_context(target, tls)
    super().__init__(self.endpoint.address, timeout=timeout, retry=retry,
                     batch_size=batch_size, headers=headers, compression=compression)
    self.url = self.endpoint.url
    self.resolve_versions = resolve_versions
    self._local = threading.local()       # one keep-alive connection per thread
    self._connections: list[http.client.HTTPConnection] = []
    self._connections_lock = threading.Lock()
    self._signatures: dict[tuple[str, str], SignatureInfo] = {}

  def close(self) -> None:
    """Closes the connections of every thread that used this client."""
    with self._connections_lock:
      connections, self._connections = self._connections, []
    for c in connections:
      c.close()
    self._local = threading.local()

  def _predict(self, model: ModelRef, signature: str, inputs: dict[str, np.ndarray],
               call: Call) -> Prediction:
    if self.resolve_versions and model.version is None:
      model = ModelRef(model.name, self._metadata(ModelRef(model.name, label=model.label),
                                                  call).version)
    outputs_info = self._signature(model, signature, call).outputs
    what = f"Predict {model} signature {signature!r}"
    answer = self._request("POST", path(model, ":predict"), predict_body(signature, inputs),
                           what, call)
    return prediction(answer, outputs_info, model, inputs, call,
                      f"{what} at {self.endpoint.url}")

  def _metadata(self, model: ModelRef, call: Call) -> ModelMetadata:
    what = f"GetModelMetadata {model}"
    answer = self._request("GET", path(model, "/metadata"), None, what, call)
    return metadata_result(answer, model, f"{what} at {self.endpoint.url}")

  def _status(self, model: ModelRef, call: Call) -> list[VersionStatus]:
    return status_result(self._request("GET", path(model, ""), None,
                                       f"GetModelStatus {model}", call))

  def _live(self, call: Call) -> bool:
    where = f"GET {LIVE_PATH} at {self.endpoint.url}"
    try:
      status, _ = self._exchange("GET", LIVE_PATH, None, call.headers, call.timeout)
    except (OSError, http.client.HTTPException) as e:
      self.close()
      return live_after(transport_error(e, call.timeout, where))
    return status < 500

  def _signature(self, model: ModelRef, signature: str, call: Call) -> SignatureInfo:
    key = (model.name, signature)
    if key not in self._signatures:
      signatures = self._metadata(model, call).signatures
      self._signatures.update({(model.name, k): v for k, v in signatures.items()})
    return signature_info(self._signatures, model, signature, self.endpoint.url)

  def _request(self, method: str, url_path: str, body: Any, what: str, call: Call) -> Any:
    where = f"{what} at {self.endpoint.url}{url_path}"
    payload, headers = encode(body, call.headers, self.compression)

    def attempt(seconds: float) -> Any:
      try:
        status, data = self._exchange(method, url_path, payload, headers, seconds)
      except (OSError, http.client.HTTPException) as e:
        self.close()
        raise transport_error(e, call.timeout, where) from e
      return decode(status, data, where)

    return call_with_retries(self.retry, call.timeout, attempt)

  def _exchange(self, method: str, url_path: str, payload: bytes | None,
                headers: Any, seconds: float) -> tuple[int, bytes]:
    connection_ = self._connection()
    connection_.timeout = seconds
    if connection_.sock is not None:
      connection_.sock.settimeout(seconds)
    reused = connection_.sock is not None
    try:
      connection_.request(method, url_path, body=payload, headers=dict(headers))
      response = connection_.getresponse()
      return response.status, response.read()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
      if not reused:
        raise
    # The server closed an idle keep-alive connection: reconnect once, now.
    self.close()
    connection_ = self._connection()
    connection_.timeout = seconds
    connection_.request(method, url_path, body=payload, headers=dict(headers))
    response = connection_.getresponse()
    return response.status, response.read()

  def _connection(self) -> http.client.HTTPConnection:
    current = getattr(self._local, "connection", None)
    if current is None:
      host, port = self.endpoint.host, self.endpoint.port
      current = (http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                             context=self._ssl)
                 if self._ssl is not None
                 else http.client.HTTPConnection(host, port, timeout=self.timeout))
      self._local.connection = current
      with self._connections_lock:
        self._connections.append(current)
    return current


GRPC_PORT_HINT = ("is this the gRPC port? drop --rest, or use the REST port "
                  f"({connection.REST_PORT} by default)")

# TF Serving has no REST health endpoint; any answer to a GET (a 404 for this
# path, which names no model) shows the HTTP server is up.
LIVE_PATH = "/v1/models"


def endpoint_and_context(target: str, tls: Tls | bool | None
                         ) -> tuple[connection.Endpoint, ssl.SSLContext | None]:
  """The endpoint and, for HTTPS, the SSL context to connect with."""
  endpoint = connection.parse(target, rest=True)
  if tls and not endpoint.tls:
    endpoint = connection.Endpoint(endpoint.host, endpoint.port, tls=True)
  if not endpoint.tls:
    return endpoint, None
  settings = tls if isinstance(tls, Tls) else Tls()
  if settings.server_name:
    raise ValueError("Tls.server_name is for gRPC; over HTTPS connect to a name the "
                     "server's certificate has")
  return endpoint, settings.ssl_context()


def path(model: ModelRef, suffix: str) -> str:
  url = f"/v1/models/{quote(model.name, safe='')}"
  if model.version is not None:
    url += f"/versions/{model.version}"
  elif model.label is not None:
    url += f"/labels/{quote(model.label, safe='')}"
  return url + suffix


def predict_body(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
  return {"signature_name": signature,
          "inputs": {name: _to_json(array) for name, array in inputs.items()}}


def encode(body: Any, headers: tuple[tuple[str, str], ...],
           compression: bool) -> tuple[bytes | None, tuple[tuple[str, str], ...]]:
  """The request body (JSON, gzipped with compression on) and its headers."""
  if body is None:
    return None, headers
  payload = json.dumps(body, separators=(",", ":")).encode()
  headers = headers + (("content-type", "application/json"),)
  if compression:
    payload = gzip.compress(payload, compresslevel=5)
    headers += (("content-encoding", "gzip"),)
  return payload, headers


def decode(status: int, data: bytes, where: str) -> Any:
  """The JSON of a 200 answer; a ClientError for any other."""
  if status != 200:
    raise ClientError(_HTTP_CODES.get(status, "UNKNOWN"), _error_message(status, data), where)
  try:
    return json.loads(data)
  except ValueError as e:
    raise ClientError("INTERNAL", f"response is not JSON: {data[:200]!r}", where) from e


def transport_error(e: BaseException, timeout: float, where: str) -> ClientError:
  """A ClientError for a request that got no HTTP answer, with a hint when a
  retry cannot help (the gRPC port, a TLS mismatch)."""
  if isinstance(e, (TimeoutError, socket.timeout)):
    return ClientError("DEADLINE_EXCEEDED", f"no answer within the {timeout:g} s deadline",
                       where)
  text = repr(e)
  if answered_in_http2(e):
    return ClientError("UNAVAILABLE", f"the server answered in HTTP/2 frames: {text[:80]}",
                       where, transient=False, hint=GRPC_PORT_HINT)
  if isinstance(e, ssl.SSLError):
    return ClientError("UNAVAILABLE", f"TLS failed: {e}", where, transient=False,
                       hint="a TLS mismatch: is the server's URL https:// (or http://), and "
                            "does --ca-cert sign its certificate?")
  return ClientError("UNAVAILABLE", f"connection failed: {text}", where)


def answered_in_http2(e: BaseException) -> bool:
  """Whether a bad status line was HTTP/2 frames (a gRPC port): they start with
  a 3-byte length whose high bytes are zero, where HTTP/1.1 has "HTTP/"."""
  return any("\\x00\\x00" in text for text in (repr(e), str(getattr(e, "message", ""))))


def live_after(failure: ClientError) -> bool:
  """False when the server is unreachable; raises a failure a retry cannot fix."""
  if not failure.transient:
    raise failure
  return False


def signature_info(known: dict[tuple[str, str], SignatureInfo], model: ModelRef,
                   signature: str, url: str) -> SignatureInfo:
  try:
    return known[(model.name, signature)]
  except KeyError:
    names = sorted(k for m, k in known if m == model.name)
    raise ClientError("INVALID_ARGUMENT", f"no signature {signature!r}; the model has {names}",
                      f"Predict {model} at {url}") from None


def prediction(answer: Any, outputs_info: dict[str, Any], model: ModelRef,
               inputs: dict[str, np.ndarray], call: Call, where: str) -> Prediction:
  outputs = _field(answer, "outputs", where)
  named = isinstance(outputs, dict) and set(outputs) <= set(outputs_info)
  if len(outputs_info) == 1 and not named:
    outputs = {next(iter(outputs_info)): outputs}  # TF Serving drops a lone output's name
  elif not named:
    raise ClientError("INTERNAL", f"unexpected outputs in the response: {str(outputs)[:200]}",
                      where)
  unknown = set(call.output_filter) - set(outputs_info)
  if unknown:
    raise ClientError("INVALID_ARGUMENT", f"output_filter names {sorted(unknown)}, not outputs "
                      f"of the signature ({sorted(outputs_info)})", where)
  keep = set(call.output_filter or outputs)
  arrays = {name: _from_json(value, outputs_info[name].dtype)
            for name, value in outputs.items() if name in keep}
  rows = next(iter(inputs.values())).shape[0]
  return Prediction(arrays, model.version, (model.version,) * rows)


def metadata_result(answer: Any, model: ModelRef, where: str) -> ModelMetadata:
  signature_map = _field(_field(answer, "metadata", where), "signature_def", where)
  signatures = json_format.ParseDict(signature_map, protos.SignatureDefMap(),
                                     ignore_unknown_fields=True)
  spec = answer.get("model_spec", {})
  answered = int(spec["version"]) if spec.get("version") not in (None, "") else None
  return metadata_from_proto(spec.get("name") or model.name, answered, signatures)


def status_result(answer: Any) -> list[VersionStatus]:
  return status_from_proto(json_format.ParseDict(
      answer, protos.GetModelStatusResponse(), ignore_unknown_fields=True))


def _to_json(array: np.ndarray) -> Any:
  if array.dtype == object or array.dtype.kind in "SU":
    flat = [{"b64": base64.b64encode(tensors.as_bytes(v)).decode("ascii")}
            for v in array.reshape(-1)]
    return np.array(flat, dtype=object).reshape(array.shape).tolist()
  return array.tolist()


def _from_json(value: Any, datatype: str) -> np.ndarray:
  dtype = tensors.datatype_numpy(datatype)
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
