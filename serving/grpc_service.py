"""gRPC front end: TF Serving's PredictionService and ModelService through
the official generated servicers, plus grpc.health.v1.

Every failure leaves as the ServingError's status code and message; a bug
becomes INTERNAL for that one call, never a dead server.  Message size
limits default to TF Serving's (INT_MAX), so large 224 px batches fit, and
`--grpc_channel_arguments` can change them.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import time
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.config import BatchingOptions
from serving.core import Core
from serving.errors import ServingError
from serving.flags import INT_MAX

log = logging.getLogger("serving")


def _deadline(context: grpc.ServicerContext) -> float | None:
  remaining = context.time_remaining()
  return None if remaining is None else time.monotonic() + remaining


def _guard(method: Callable) -> Callable:
  @functools.wraps(method)
  def wrapper(self, request, context):
    try:
      return method(self, request, context)
    except ServingError as e:
      context.abort(e.code, e.message)
    except Exception as e:  # noqa: BLE001  (one bad call must not hurt the others)
      log.exception("internal error in %s", method.__name__)
      context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
  return wrapper


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):

  def __init__(self, core: Core):
    self.core = core

  @_guard
  def Predict(self, request, context):
    return self.core.predict(request, "GRPC", _deadline(context))

  @_guard
  def Classify(self, request, context):
    return self.core.classify(request, "GRPC", _deadline(context))

  @_guard
  def Regress(self, request, context):
    return self.core.regress(request, "GRPC", _deadline(context))

  @_guard
  def MultiInference(self, request, context):
    return self.core.multi_inference(request, "GRPC", _deadline(context))

  @_guard
  def GetModelMetadata(self, request, context):
    return self.core.metadata(request, "GRPC")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):

  def __init__(self, core: Core):
    self.core = core

  @_guard
  def GetModelStatus(self, request, context):
    return self.core.status(request)

  @_guard
  def HandleReloadConfigRequest(self, request, context):
    return self.core.reload(request)


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
  """`a=1,b=x` -> [("a", 1), ("b", "x")], as TF Serving reads the flag."""
  out: list[tuple[str, int | str]] = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
    out.append((key, int(value) if value.lstrip("-").isdigit() else value))
  return out


def default_max_threads(batching: BatchingOptions | None) -> int:
  """Handler threads when --grpc_max_threads is 0: 4 x cores (at least 8).

  A handler thread stays with its request while the request waits in the
  batcher, so with --enable_batching the threads also bound the batch size:
  8 threads would cap every batch at 8 and make each wait out the timeout.
  Enough for full batches on every batch thread plus one forming; waiting
  threads cost no CPU, and past them requests queue inside gRPC.
  """
  threads = max(8, 4 * len(os.sched_getaffinity(0)))
  if batching is not None:
    threads = max(threads, min(1024, batching.max_batch_size * (batching.num_batch_threads + 1)))
  return threads


def start(core: Core, *, bind: str, port: int, socket_path: str, channel_arguments: str,
          max_threads: int, health_service: bool = True) -> tuple[grpc.Server, int | None]:
  """A started server and its bound TCP port (None when `port` is 0)."""
  options = {"grpc.max_receive_message_length": INT_MAX,
             "grpc.max_send_message_length": INT_MAX}
  options.update(parse_channel_arguments(channel_arguments))
  threads = max_threads or default_max_threads(None)
  server = grpc.server(concurrent.futures.ThreadPoolExecutor(threads, "grpc"),
                       options=list(options.items()))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionService(core), server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
  if health_service:
    checker = health.HealthServicer()
    for service in ("", "tensorflow.serving.PredictionService",
                    "tensorflow.serving.ModelService"):
      checker.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
  bound = None
  if port:
    host = f"[{bind}]" if ":" in bind else bind
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
      raise OSError(f"cannot bind gRPC to {bind}:{port} (address in use?)")
  if socket_path:
    if not server.add_insecure_port(f"unix:{socket_path}"):
      raise OSError(f"cannot bind gRPC to UNIX socket {socket_path}")
  server.start()
  return server, bound
