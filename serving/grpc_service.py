"""gRPC front end: TF Serving's PredictionService and ModelService, plus
grpc.health.v1.

The server is grpc.aio on an event loop of its own thread; every call awaits
a service's coroutine (services.py), which runs blocking work on the
Runner's pool, so a waiting request holds no thread.  Each call is recorded
here, as prediction_service_impl.cc records it: request_count and
request_latency for Predict, Classify and Regress under their names as the
API label, the embedded per-version metrics for every call about a version.

Requests are parsed here rather than by grpc's generated handlers, so that
bytes that are not the method's protobuf are INVALID_ARGUMENT (with grpc's
own deserializer they become an opaque server error).  Every failure leaves
as the ServingError's status code and message, capped in length (a client's
megabyte name must not overflow the trailer), with one log line; a bug
becomes INTERNAL for that one call, with its traceback, never a dead server.
Message size limits default to TF Serving's (INT_MAX), so large 224 px
batches fit, and `--grpc_channel_arguments` can change them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

import grpc
from google.protobuf import message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     predict_pb2, regression_pb2)

from serving.errors import ServingError, invalid_argument
from serving.flags import INT_MAX
from serving.metrics import Call, Metrics
from serving.services import ModelService, PredictionService
from serving.tensors import clip

log = logging.getLogger("serving")
MAX_MESSAGE_CHARS = 4000


class _Malformed:
  """What a request that does not parse deserializes to."""

  def __init__(self, error: Exception):
    self.error = error


def _parser(cls: type[message.Message]) -> Callable[[bytes], Any]:
  def parse(data: bytes) -> Any:
    try:
      return cls.FromString(data)
    except Exception as e:  # noqa: BLE001  (DecodeError, RecursionError, ...)
      return _Malformed(e)
  return parse


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
  remaining = context.time_remaining()
  return None if remaining is None else time.monotonic() + remaining


def _model_name(request: Any) -> str:
  """The model a call is counted on (MultiInference: its first task's)."""
  if isinstance(request, inference_pb2.MultiInferenceRequest):
    return request.tasks[0].model_spec.name if request.tasks else ""
  spec = getattr(request, "model_spec", None)
  return "" if spec is None else spec.name


# The methods TF Serving keeps request metrics for, under their own names as
# the API label (prediction_service_impl.cc); the others have none.
_WITH_REQUEST_METRICS = ("Predict", "Classify", "Regress")

Invoke = Callable[[Any, grpc.aio.ServicerContext, Call], Any]


def _handler(name: str, request_cls: type[message.Message],
             response_cls: type[message.Message], invoke: Invoke,
             metrics: Metrics) -> grpc.RpcMethodHandler:
  async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
    try:
      if isinstance(request, _Malformed):
        raise invalid_argument(f"Could not parse the {request_cls.DESCRIPTOR.name}: "
                               f"{clip(str(request.error) or type(request.error).__name__)}")
      call = Call(entrypoint="GRPC", api=name if name in _WITH_REQUEST_METRICS else None,
                  method=name, model=_model_name(request))
      with metrics.observe(call):
        return await invoke(request, context, call)
    except ServingError as e:
      text = clip(e.message, MAX_MESSAGE_CHARS)
      log.info("%s failed: %s: %s", name, e.code_name, clip(text, 300))
      await context.abort(e.code, text)
    except Exception as e:  # noqa: BLE001  (one bad call must not hurt the others)
      log.exception("internal error in %s", name)
      await context.abort(grpc.StatusCode.INTERNAL,
                          clip(f"{type(e).__name__}: {e}", MAX_MESSAGE_CHARS))
  return grpc.unary_unary_rpc_method_handler(
      handle, request_deserializer=_parser(request_cls),
      response_serializer=response_cls.SerializeToString)


def _services(prediction_service: PredictionService, model_service: ModelService,
              metrics: Metrics) -> list[grpc.GenericRpcHandler]:
  ps, ms = prediction_service, model_service
  prediction = {
      "Predict": (predict_pb2.PredictRequest, predict_pb2.PredictResponse,
                  lambda r, c, call: ps.predict(r, deadline=_deadline(c), call=call)),
      "Classify": (classification_pb2.ClassificationRequest,
                   classification_pb2.ClassificationResponse,
                   lambda r, c, call: ps.classify(r, deadline=_deadline(c), call=call)),
      "Regress": (regression_pb2.RegressionRequest, regression_pb2.RegressionResponse,
                  lambda r, c, call: ps.regress(r, deadline=_deadline(c), call=call)),
      "MultiInference": (inference_pb2.MultiInferenceRequest,
                         inference_pb2.MultiInferenceResponse,
                         lambda r, c, call: ps.multi_inference(r, deadline=_deadline(c),
                                                               call=call)),
      "GetModelMetadata": (get_model_metadata_pb2.GetModelMetadataRequest,
                           get_model_metadata_pb2.GetModelMetadataResponse,
                           lambda r, c, call: ps.metadata(r, call=call)),
  }
  model = {
      "GetModelStatus": (get_model_status_pb2.GetModelStatusRequest,
                         get_model_status_pb2.GetModelStatusResponse,
                         lambda r, c, call: ms.status(r)),
      "HandleReloadConfigRequest": (model_management_pb2.ReloadConfigRequest,
                                    model_management_pb2.ReloadConfigResponse,
                                    lambda r, c, call: ms.reload(r)),
  }
  return [grpc.method_handlers_generic_handler(
      service, {name: _handler(name, *spec, metrics) for name, spec in methods.items()})
      for service, methods in (("tensorflow.serving.PredictionService", prediction),
                               ("tensorflow.serving.ModelService", model))]


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
  """`a=1,b=x` -> [("a", 1), ("b", "x")], as TF Serving reads the flag."""
  out: list[tuple[str, int | str]] = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
    out.append((key, int(value) if value.lstrip("-").isdigit() else value))
  return out


class GrpcServer:
  """A started grpc.aio server and the thread running its event loop."""

  def __init__(self, loop: asyncio.AbstractEventLoop, server: grpc.aio.Server,
               thread: threading.Thread):
    self._loop, self._server, self._thread = loop, server, thread

  def stop(self, grace: float) -> None:
    """Lets calls in flight finish for up to `grace` seconds, then ends them."""
    asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result(grace + 5)
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(timeout=5)


def start(prediction_service: PredictionService, model_service: ModelService,
          metrics: Metrics, *, bind: str, port: int, socket_path: str, channel_arguments: str,
          health_service: bool = True, credentials: grpc.ServerCredentials | None = None
          ) -> tuple[GrpcServer, int | None]:
  """A started server and its bound TCP port (None when `port` is 0).
  `credentials` (TLS, from --ssl_config_file) apply to the TCP port and the
  UNIX socket alike, as in server.cc; None serves plaintext."""
  # SO_REUSEPORT off: with gRPC's default a second server on a busy port
  # starts and takes half the connections; without it the bind fails.
  options = {"grpc.max_receive_message_length": INT_MAX,
             "grpc.max_send_message_length": INT_MAX, "grpc.so_reuseport": 0}
  options.update(parse_channel_arguments(channel_arguments))
  loop = asyncio.new_event_loop()
  thread = threading.Thread(target=loop.run_forever, name="grpc-loop", daemon=True)
  thread.start()

  async def build() -> tuple[grpc.aio.Server, int | None]:
    server = grpc.aio.server(options=list(options.items()))
    server.add_generic_rpc_handlers(_services(prediction_service, model_service, metrics))
    add_port = (server.add_insecure_port if credentials is None
                else lambda address: server.add_secure_port(address, credentials))
    if health_service:
      checker = health.aio.HealthServicer()
      # The names tensorflow_model_server registers (server.cc): unqualified.
      for service in ("", "ModelService", "PredictionService"):
        await checker.set(service, health_pb2.HealthCheckResponse.SERVING)
      health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    bound = None
    if port:
      host = f"[{bind}]" if ":" in bind else bind
      bound = add_port(f"{host}:{port}")
      if not bound:
        raise OSError(f"cannot listen for gRPC on {bind}:{port}: address already in use "
                      "(or not an address of this machine)")
    if socket_path:
      if not add_port(f"unix:{socket_path}"):
        raise OSError(f"cannot bind gRPC to UNIX socket {socket_path}")
    await server.start()
    return server, bound

  try:
    server, bound = asyncio.run_coroutine_threadsafe(build(), loop).result(60)
  except BaseException:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    raise
  return GrpcServer(loop, server, thread), bound
