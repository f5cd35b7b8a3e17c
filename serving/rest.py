"""HTTP/REST front end: TF Serving's `/v1/models/...` API on the stdlib's
ThreadingHTTPServer (no web framework to install or audit).

Routes, JSON shapes and error bodies follow TF Serving's REST API: predict
in row ("instances" -> "predictions") and columnar ("inputs" -> "outputs")
formats, classify/regress on JSON tf.Examples, GET model status and
metadata, `{"error": ...}` with the HTTP code TF Serving maps each status to.
Requests run on a pool of `--rest_api_num_threads` and are cut off after
`--rest_api_timeout_in_ms`; bodies over the size limit are refused unread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import logging
import re
import threading
import time
import urllib.parse
from typing import Any

from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, input_pb2, model_pb2,
                                     predict_pb2, regression_pb2)

from serving import tensors
from serving.core import Core
from serving.errors import Code, ServingError, deadline_exceeded, invalid_argument

log = logging.getLogger("serving")

_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>:predict|:classify|:regress|/metadata)?/?$")


class RestServer:
  """Owns the HTTP server, its worker pool and the request routing."""

  def __init__(self, core: Core, *, bind: str, port: int, num_threads: int, timeout_ms: int,
               max_body_bytes: int, prometheus_path: str | None, cors: bool = False):
    self.core = core
    self.timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
    self.max_body_bytes = max_body_bytes
    self.prometheus_path = prometheus_path
    self.cors = cors
    self.pool = concurrent.futures.ThreadPoolExecutor(max(1, num_threads), "rest")
    handler = type("Handler", (_Handler,), {"rest": self})
    self.httpd = http.server.ThreadingHTTPServer((bind, port), handler)
    self.httpd.daemon_threads = True
    self.port = self.httpd.server_address[1]
    self._thread = threading.Thread(target=self.httpd.serve_forever, name="rest", daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
    self.pool.shutdown(wait=False, cancel_futures=True)

  # ------------------------------------------------------------------ routing

  def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
    """(HTTP status, content type, body) for one request."""
    path = path.split("?", 1)[0]
    if self.prometheus_path and path == self.prometheus_path and method == "GET":
      return 200, "text/plain; version=0.0.4", self.core.metrics.prometheus_text().encode()
    deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
    future = self.pool.submit(self._dispatch, method, path, body, deadline)
    try:
      doc = future.result(timeout=self.timeout_s)
      return 200, "application/json", tensors.dumps(doc)
    except concurrent.futures.TimeoutError:
      future.cancel()
      error = deadline_exceeded(f"Request timed out after {self.timeout_s * 1000:.0f} ms "
                                "(--rest_api_timeout_in_ms)")
    except ServingError as e:
      error = e
    except Exception as e:  # noqa: BLE001  (never let one request kill the server)
      log.exception("internal error on %s %s", method, path)
      error = ServingError(Code.INTERNAL, f"{type(e).__name__}: {e}")
    return error.http_status, "application/json", tensors.dumps({"error": error.message})

  def _dispatch(self, method: str, path: str, body: bytes, deadline: float | None) -> Any:
    m = _MODEL_PATH.match(path)
    if m is None or (method == "GET") != (m["verb"] in (None, "/metadata")) or \
        method not in ("GET", "POST"):
      if path.startswith("/v1/"):
        raise invalid_argument(f"Malformed request: {method} {path}")
      raise ServingError(Code.NOT_FOUND,
                         f"Not found: {method} {path} (the API is under /v1/models/)")
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(m["name"]))
    if m["version"] is not None:
      spec.version.value = int(m["version"])
    if m["label"] is not None:
      spec.version_label = urllib.parse.unquote(m["label"])
    verb = m["verb"]
    if verb is None:
      return _status_json(asyncio.run(self.core.status(
          get_model_status_pb2.GetModelStatusRequest(model_spec=spec), api="rest")))
    if verb == "/metadata":
      return self._metadata(spec)
    doc = tensors.parse_json(body)
    spec.signature_name = tensors.signature_name(doc)
    if verb == ":predict":
      return self._predict(spec, doc, body, deadline)
    request_input = _json_input(doc, verb[1:])
    if verb == ":classify":
      result = asyncio.run(self.core.classify(classification_pb2.ClassificationRequest(
          model_spec=spec, input=request_input), api="rest", deadline=deadline)).result
      return {"results": [[[c.label, c.score] for c in row.classes]
                          for row in result.classifications]}
    result = asyncio.run(self.core.regress(regression_pb2.RegressionRequest(
        model_spec=spec, input=request_input), api="rest", deadline=deadline)).result
    return {"results": [r.value for r in result.regressions]}

  def _predict(self, spec: model_pb2.ModelSpec, doc: dict, body: bytes,
               deadline: float | None) -> Any:
    key = spec.signature_name or "serving_default"
    sig = self.core.signature_defs(spec).get(key)
    if sig is None:
      raise ServingError(Code.FAILED_PRECONDITION,
                         f"Serving signature key \"{tensors.clip(key)}\" not found.")
    inputs, fmt = tensors.json_to_inputs(doc, {k: v.dtype for k, v in sig.inputs.items()},
                                         may_have_bools=b"true" in body or b"false" in body)
    request = predict_pb2.PredictRequest(model_spec=spec)
    for name, value in inputs.items():
      request.inputs[name].CopyFrom(tensors.to_proto(value, tensor_content=True))
    response = asyncio.run(self.core.predict(request, api="rest", deadline=deadline))
    outputs = {k: tensors.to_numpy(v, k) for k, v in response.outputs.items()}
    return tensors.outputs_to_json(outputs, fmt)

  def _metadata(self, spec: model_pb2.ModelSpec) -> Any:
    response = asyncio.run(self.core.metadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec, metadata_field=["signature_def"]), api="rest"))
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    return {"model_spec": _to_dict(response.model_spec),
            "metadata": {"signature_def": _to_dict(sigs)}}


def _to_dict(message) -> dict:
  return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                   always_print_fields_with_no_presence=True)


def _status_json(response: get_model_status_pb2.GetModelStatusResponse) -> dict:
  return _to_dict(response)


# ---------------------------------------------------------- JSON tf.Examples

def _json_input(doc: dict, method: str) -> input_pb2.Input:
  """An Input from {"context": {...}, "examples": [{...}, ...]}, following
  TF Serving's MakeExampleFromJsonObject rules."""
  out = input_pb2.Input()
  context = doc.get("context")
  if context is not None:
    _fill_example(context, out.example_list_with_context.context)
  examples = doc.get("examples")
  if examples is None:
    raise invalid_argument(f"JSON Value: {tensors.short_json(doc)} When method is {method}, key "
                           "'examples' is expected and was not found")
  if not isinstance(examples, list):
    raise invalid_argument(f"JSON Value: {tensors.short_json(doc)} Expecting 'examples' value to "
                           "be an list/array")
  if not examples:
    raise invalid_argument(f"JSON Value: {tensors.short_json(doc)} 'examples' value is an empty "
                           "array")
  target = (out.example_list_with_context.examples if context is not None
            else out.example_list.examples)
  for item in examples:
    _fill_example(item, target.add())
  return out


def _fill_example(value: Any, example: example_pb2.Example) -> None:
  if not isinstance(value, dict):
    raise invalid_argument(f"Example must be JSON object but got JSON {tensors.json_type(value)}")
  for name, content in value.items():
    feature = feature_pb2.Feature()
    for item in content if isinstance(content, list) else [content]:
      _add_feature_value(item, name, feature)
    example.features.feature[name].CopyFrom(feature)


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
  def need(kind: str) -> None:
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
      expected = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[current]
      raise invalid_argument(
          f"Unexpected element type in feature: {name} expecting type: {expected}")

  if isinstance(value, bool):
    need("int64_list")
    feature.int64_list.value.append(int(value))
  elif isinstance(value, int):
    need("int64_list")
    if not -2**63 <= value < 2**63:
      raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
    feature.int64_list.value.append(value)
  elif isinstance(value, float):
    need("float_list")
    feature.float_list.value.append(value)
  elif isinstance(value, str):
    need("bytes_list")
    feature.bytes_list.value.append(value.encode("utf-8"))
  elif tensors.is_b64(value):
    need("bytes_list")
    feature.bytes_list.value.append(tensors.decode_b64(value))
  else:
    raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: "
                           f"{tensors.json_type(value)}")


# -------------------------------------------------------------- HTTP handler

class _Handler(http.server.BaseHTTPRequestHandler):
  rest: RestServer
  protocol_version = "HTTP/1.1"
  server_version = "embedded-tf-serving"

  def do_GET(self) -> None:
    self._serve("GET")

  def do_POST(self) -> None:
    self._serve("POST")

  def do_PUT(self) -> None:
    self._serve("PUT")

  def do_DELETE(self) -> None:
    self._serve("DELETE")

  def do_OPTIONS(self) -> None:
    if self.rest.cors:
      self._reply(204, "text/plain", b"", extra={
          "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
          "Access-Control-Allow-Headers": "Content-Type"})
    else:
      self._serve("OPTIONS")

  def _serve(self, method: str) -> None:
    try:
      length = int(self.headers.get("Content-Length") or 0)
    except ValueError:
      length = -1
    if length < 0 or length > self.rest.max_body_bytes:
      self.close_connection = True
      message = (f"Request body of {length} bytes exceeds the limit of "
                 f"{self.rest.max_body_bytes} bytes" if length > 0
                 else "Invalid Content-Length header")
      self._reply(413 if length > 0 else 400, "application/json",
                  tensors.dumps({"error": message}))
      return
    body = self.rfile.read(length) if length else b""
    status, content_type, payload = self.rest.handle(method, self.path, body)
    self._reply(status, content_type, payload)

  def _reply(self, status: int, content_type: str, payload: bytes,
             extra: dict[str, str] | None = None) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(payload)))
    if self.rest.cors:
      self.send_header("Access-Control-Allow-Origin", "*")
    for k, v in (extra or {}).items():
      self.send_header(k, v)
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(payload)

  def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (stdlib signature)
    log.debug("REST %s - %s", self.address_string(), format % args)


__all__ = ["RestServer"]
