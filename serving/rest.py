"""HTTP/REST front end: TF Serving's `/v1/...` API on aiohttp's server.

aiohttp parses HTTP (chunked and gzip request bodies included, so no byte
of one request is ever read as the next); this module only routes, as
TF Serving's http_server.cc and http_rest_api_handler.cc do: the URL
grammar of http_rest_api_util.cc, the body turned into the request proto
by serving.rest_json, one call to a service (services.py), the response
proto written back as JSON, and the status code from errors.ServingError
(http_server.cc: ToHTTPStatusCode).  As http_server.cc, it records every
/v1 request it processes in request_count (by model and status, also those
refused before reaching a model) and the successful ones in
request_latency, under the URL verb as the API label ("" for GETs).

Connections wait on an event loop of their own thread, so an idle or slow
client holds no thread: the listen backlog is large, and a connection
that has not sent a complete request within --rest_api_timeout_in_ms is
closed.  JSON decoding and encoding (CPU work proportional to the body)
run on a pool of --rest_api_num_threads so one large body does not stall
every other connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
import ssl
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, predict_pb2,
                                     regression_pb2)

from serving import rest_json, tensors
from serving.errors import Code, ServingError, invalid_argument
from serving.metrics import Call, Metrics
from serving.services import ModelService, PredictionService
from serving.inference import signature_key

log = logging.getLogger("serving")

BACKLOG = 1024
_INT64_MAX = 2**63 - 1

# http_rest_api_util.h / .cc: the dispatcher's path filter, then the POST
# and GET grammars (RE2 FullMatch, case-insensitive; `\d` is ASCII there).
_V1_PATH = re.compile(r"(?i)/v1/.*", re.ASCII | re.DOTALL)
_PREDICTION_API = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)", re.ASCII)
_MODEL_STATUS_API = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?", re.ASCII)
_CORS_HEADERS = {"Access-Control-Allow-Origin": "*",            # http_rest_api_util.cc
                 "Access-Control-Allow-Methods": "POST, GET",
                 "Access-Control-Allow-Headers": "Content-Type"}


class RestServer:
  """The aiohttp server, the thread running its event loop, and routing."""

  def __init__(self, prediction_service: PredictionService, model_service: ModelService,
               metrics: Metrics, *, bind: str, port: int, num_threads: int, timeout_ms: int,
               max_body_bytes: int, prometheus_path: str | None, cors: bool = False,
               ssl_context: ssl.SSLContext | None = None):
    self.prediction_service = prediction_service
    self.model_service = model_service
    self.metrics = metrics
    self.timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
    self.max_body_bytes = max_body_bytes
    self.prometheus_path = prometheus_path
    self.cors = cors
    self.port = port
    self._bind = bind
    self._ssl_context = ssl_context
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, num_threads), "rest")
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, name="rest-loop",
                                    daemon=True)
    self._runner: web.ServerRunner | None = None

  def start(self) -> None:
    """Binds and starts serving; OSError when the port cannot be bound."""
    self._thread.start()
    try:
      self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(60)
    except BaseException:
      self._stop_loop()
      raise

  async def _start(self) -> int:
    # Idle connections and requests whose headers do not arrive in time
    # are closed after the REST timeout (TF Serving's libevent server
    # closes them after its own fixed timeout); with no timeout, aiohttp's
    # default applies.
    idle = {"keepalive_timeout": self.timeout_s} if self.timeout_s else {}
    # lingering_time=0: a body left unread (refused, or undecodable) closes the
    # connection instead of being drained.
    server = web.Server(self._handle, access_log=None, lingering_time=0,
                        logger=_ClientFaultLog(log, {}), **idle)
    self._runner = web.ServerRunner(server, handle_signals=False)
    await self._runner.setup()
    site = web.TCPSite(self._runner, self._bind, self.port, backlog=BACKLOG,
                       ssl_context=self._ssl_context)
    await site.start()
    return self._runner.addresses[0][1]

  def stop(self) -> None:
    if self._runner is not None:
      asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
    self._stop_loop()

  def _stop_loop(self) -> None:
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(timeout=10)
    self._pool.shutdown(wait=False, cancel_futures=True)

  # ------------------------------------------------------------- one request

  async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
    started = time.monotonic()
    deadline = None if self.timeout_s is None else started + self.timeout_s
    uri = request.raw_path  # path?query#fragment, as evhttp's uri_path()
    path = re.split(r"[?#]", uri, maxsplit=1)[0]
    if self.prometheus_path and path == self.prometheus_path:
      return self._prometheus(uri)
    if not _V1_PATH.fullmatch(uri):
      return self._reply(404, rest_json.error_response(
          f"Not found: {tensors.clip(uri)} (the API is under /v1/)"))
    declared = request.content_length
    if declared is not None and declared > self.max_body_bytes:
      response = self._error(request, invalid_argument(
          f"Request body of {declared} bytes exceeds the limit of {self.max_body_bytes} bytes "
          "(--rest_api_max_body_bytes)"), status=413)
      response.force_close()  # the body is never read
      return response
    try:
      body = await asyncio.wait_for(self._read_body(request), _remaining(deadline))
    except asyncio.TimeoutError:
      response = self._error(request, ServingError(
          Code.DEADLINE_EXCEEDED, "Request body not received within --rest_api_timeout_in_ms"),
          status=408)
      response.force_close()
      return response
    except _BodyError as e:
      response = self._error(request, e.error, status=e.status)
      response.force_close()
      return response
    return await self._answer(request, uri, body, deadline)

  async def _answer(self, request: web.BaseRequest, uri: str, body: bytes,
                    deadline: float | None) -> web.Response:
    """http_server.cc ProcessRequest after the body is read: the request is
    processed and recorded, whatever its outcome."""
    call = Call(entrypoint="REST", api="")
    try:
      with self.metrics.observe(call):
        if request.method == "OPTIONS":
          output = self._preflight(request)
        else:
          output = await self._process(call, request.method, uri, body, deadline)
    except ServingError as e:
      return self._error(request, e)
    except Exception as e:  # noqa: BLE001  (a bug must cost one request, not the server)
      log.exception("REST %s %s: internal error", request.method, tensors.clip(uri))
      return self._reply(500, rest_json.error_response(f"{type(e).__name__}: {e}"))
    return self._reply(200, output)

  async def _read_body(self, request: web.BaseRequest) -> bytes:
    """The whole body, de-chunked and gunzipped by aiohttp (TF Serving
    reads both: evhttp_request.cc), at most --rest_api_max_body_bytes."""
    chunks: list[bytes] = []
    size = 0
    try:
      async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > self.max_body_bytes:
          raise _BodyError(413, invalid_argument(
              f"Request body exceeds the limit of {self.max_body_bytes} bytes "
              "(--rest_api_max_body_bytes)"))
        chunks.append(chunk)
    except _CLIENT_FAULTS as e:  # bad chunks or gzip data
      raise _BodyError(400, invalid_argument(
          f"Cannot read the request body: {_fault_text(e)}")) from None
    return b"".join(chunks)

  def _preflight(self, request: web.BaseRequest) -> bytes:
    """http_server.cc: an OPTIONS request is a CORS preflight."""
    if re.search(r"https?://", request.headers.get("Origin", "")):
      return b""
    raise ServingError(Code.FAILED_PRECONDITION, "Origin header is missing in CORS preflight")

  async def _process(self, call: Call, method: str, uri: str, body: bytes,
                     deadline: float | None) -> bytes:
    """http_rest_api_handler.cc: ProcessRequest."""
    malformed = invalid_argument(f"Malformed request: {method} {tensors.clip(uri)}")
    if method == "POST":
      match = _PREDICTION_API.fullmatch(uri)
      if match is None:
        raise malformed
      spec = _model_spec(*match.groups()[:3])
      call.model, call.api = spec.name, match[4]
      if call.api == "predict":
        request = predict_pb2.PredictRequest(model_spec=spec)
        may_have_bools = b"true" in body or b"false" in body
        fmt = await self._in_pool(lambda: rest_json.fill_predict_request(
            rest_json.parse(body), functools.partial(self._signature_inputs, spec), request,
            may_have_bools=may_have_bools))
        call.method = "Predict"
        response = await self.prediction_service.predict(request, deadline=deadline,
                                                         call=call)
        return await self._in_pool(lambda: rest_json.predict_response(response, fmt))
      if call.api in ("classify", "regress"):
        classify = call.api == "classify"
        request = (classification_pb2.ClassificationRequest if classify
                   else regression_pb2.RegressionRequest)(model_spec=spec)
        await self._in_pool(lambda: rest_json.fill_example_request(rest_json.parse(body),
                                                                   request))
        if classify:
          call.method = "Classify"
          response = await self.prediction_service.classify(request, deadline=deadline,
                                                            call=call)
          return rest_json.classification_response(response.result)
        call.method = "Regress"
        response = await self.prediction_service.regress(request, deadline=deadline, call=call)
        return rest_json.regression_response(response.result)
      raise malformed  # e.g. ":PREDICT": the regex ignores case, the dispatch does not
    if method == "GET":
      match = _MODEL_STATUS_API.fullmatch(uri)
      if match is None:
        raise malformed
      spec = _model_spec(*match.groups()[:3])
      call.model = spec.name
      if not spec.name:
        raise invalid_argument("Missing model name in request.")
      if match[4]:
        call.method = "GetModelMetadata"
        response = await self.prediction_service.metadata(
            get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=spec, metadata_field=["signature_def"]), call=call)
        return rest_json.metadata_response(response)
      call.method = "GetModelStatus"
      response = await self.model_service.status(
          get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
      return rest_json.status_response(response)
    raise malformed

  def _signature_inputs(self, spec: model_pb2.ModelSpec,
                        signature_name: str) -> dict[str, meta_graph_pb2.TensorInfo]:
    """http_rest_api_handler.cc: GetInfoMap."""
    key = signature_key(signature_name)
    signature = self.prediction_service.signature_defs(spec).get(key)
    if signature is None:
      raise invalid_argument(f"Serving signature name: \"{tensors.clip(key)}\" not "
                             "found in signature def")
    return dict(signature.inputs)

  async def _in_pool(self, fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

  # -------------------------------------------------------------- replies

  def _prometheus(self, uri: str) -> web.Response:
    """http_server.cc: ProcessPrometheusRequest."""
    if uri != self.prometheus_path:
      text = f"Unexpected path: {tensors.clip(uri)}. Should be {self.prometheus_path}"
      return web.Response(status=400, text=text, content_type="text/plain")
    return web.Response(text=self.metrics.prometheus_text(), content_type="text/plain")

  def _error(self, request: web.BaseRequest, error: ServingError,
             status: int | None = None) -> web.Response:
    """One log line per failed request (no traceback: bad input is not a
    server fault), then TF Serving's {"error": ...} body."""
    status = status or error.http_status
    log.info("REST %s %s -> %d %s: %s", request.method, tensors.clip(request.raw_path, 200), status,
             error.code_name, tensors.clip(error.message, 300))
    return self._reply(status, rest_json.error_response(error.message))

  def _reply(self, status: int, body: bytes) -> web.Response:
    response = web.Response(status=status, body=body, content_type="application/json")
    if self.cors:
      response.headers.update(_CORS_HEADERS)
    return response


_CLIENT_FAULTS = (HttpProcessingError, web.RequestPayloadError)


def _fault_text(error: BaseException) -> str:
  """aiohttp's multi-line message of a client fault, on one line."""
  cause = error.__cause__ if isinstance(error.__cause__, HttpProcessingError) else error
  return tensors.clip(" ".join(str(getattr(cause, "message", cause)).split()), 300)


class _ClientFaultLog(logging.LoggerAdapter):
  """aiohttp logs every malformed HTTP request with a traceback; that is the
  client's fault, so one line, like the other bad requests.  Anything else
  keeps its traceback."""

  def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
    error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
    if isinstance(error, _CLIENT_FAULTS):
      self.logger.info(f"REST {msg}: %s", *args, _fault_text(error))
    else:
      self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


class _BodyError(Exception):
  def __init__(self, status: int, error: ServingError):
    super().__init__(error.message)
    self.status, self.error = status, error


def _model_spec(name: str | None, version: str | None,
                label: str | None) -> model_pb2.ModelSpec:
  """http_rest_api_util.cc: ParseModelInfo and
  FillModelSpecWithNameVersionAndLabel (names are percent-decoded)."""
  spec = model_pb2.ModelSpec(name=_decode(name or "", "model name"))
  if version:
    number = int(version)
    if number > _INT64_MAX:
      raise invalid_argument(f"Failed to convert version: {tensors.clip(version)} to numeric.")
    spec.version.value = number
  if label:
    spec.version_label = _decode(label, "model version label")
  return spec


def _decode(text: str, what: str) -> str:
  try:
    return urllib.parse.unquote_to_bytes(text).decode("utf-8")
  except UnicodeDecodeError:
    raise invalid_argument(f"Failed to decode {what}:{tensors.clip(text)}") from None


def _remaining(deadline: float | None) -> float | None:
  return None if deadline is None else max(0.0, deadline - time.monotonic())


__all__ = ["BACKLOG", "RestServer"]
