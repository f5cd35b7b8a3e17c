"""gRPC front end: TF Serving's PredictionService and ModelService through
the official generated servicers, plus grpc.health.v1.

The server is grpc.aio on an event loop of its own thread.  Batched Predicts
wait for their batch on that loop (Core.predict_batched), so a waiting
request holds no thread and costs no thread wake-ups: with the synchronous
server every request took a handler thread that slept in the batcher, and
those hand-offs cost several times the Python gRPC server's own per-request
CPU.  Everything else (unbatched Predict, the model calls, config reloads)
blocks, so it runs on a thread pool of `max_threads`.

Every failure leaves as the ServingError's status code and message; a bug
becomes INTERNAL for that one call, never a dead server.  Message size
limits default to TF Serving's (INT_MAX), so large 224 px batches fit, and
`--grpc_channel_arguments` can change them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
import time
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.config import BatchingOptions
from serving.core import Core
from serving.errors import ServingError
from serving.flags import INT_MAX

log = logging.getLogger("serving")


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
  remaining = context.time_remaining()
  return None if remaining is None else time.monotonic() + remaining


def _guard(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
  @functools.wraps(method)
  async def wrapper(self, request, context):
    try:
      return await method(self, request, context)
    except ServingError as e:
      await context.abort(e.code, e.message)
    except Exception as e:  # noqa: BLE001  (one bad call must not hurt the others)
      log.exception("internal error in %s", method.__name__)
      await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
  return wrapper


class _Service:

  def __init__(self, core: Core, pool: concurrent.futures.ThreadPoolExecutor):
    self.core = core
    self.pool = pool

  def blocking(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))


class PredictionService(_Service, prediction_service_pb2_grpc.PredictionServiceServicer):

  @_guard
  async def Predict(self, request, context):
    if self.core.executor is not None:
      return await self.core.predict_batched(request, "GRPC", _deadline(context))
    return await self.blocking(self.core.predict, request, "GRPC", _deadline(context))

  @_guard
  async def Classify(self, request, context):
    return await self.blocking(self.core.classify, request, "GRPC", _deadline(context))

  @_guard
  async def Regress(self, request, context):
    return await self.blocking(self.core.regress, request, "GRPC", _deadline(context))

  @_guard
  async def MultiInference(self, request, context):
    return await self.blocking(self.core.multi_inference, request, "GRPC", _deadline(context))

  @_guard
  async def GetModelMetadata(self, request, context):
    return await self.blocking(self.core.metadata, request, "GRPC")


class ModelService(_Service, model_service_pb2_grpc.ModelServiceServicer):

  @_guard
  async def GetModelStatus(self, request, context):
    return await self.blocking(self.core.status, request)

  @_guard
  async def HandleReloadConfigRequest(self, request, context):
    return await self.blocking(self.core.reload, request)


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
  """Threads for blocking calls when --grpc_max_threads is 0: 4 x cores (at
  least 8).

  Batched gRPC Predicts wait on the event loop, but gRPC Classify, Regress
  and MultiInference calls that the batcher serves hold one of these threads
  while they wait, so with --enable_batching the threads also bound their
  batches: enough for full batches on every batch thread plus one forming;
  waiting threads cost no CPU.
  """
  threads = max(8, 4 * len(os.sched_getaffinity(0)))
  if batching is not None:
    threads = max(threads, min(1024, batching.max_batch_size * (batching.num_batch_threads + 1)))
  return threads


class Server:
  """A started grpc.aio server and the thread running its event loop."""

  def __init__(self, loop: asyncio.AbstractEventLoop, server: grpc.aio.Server,
               thread: threading.Thread, pool: concurrent.futures.ThreadPoolExecutor):
    self._loop, self._server, self._thread, self._pool = loop, server, thread, pool

  def stop(self, grace: float) -> None:
    """Lets calls in flight finish for up to `grace` seconds, then ends them."""
    asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result(grace + 5)
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(timeout=5)
    self._pool.shutdown(wait=False, cancel_futures=True)


def start(core: Core, *, bind: str, port: int, socket_path: str, channel_arguments: str,
          max_threads: int, health_service: bool = True) -> tuple[Server, int | None]:
  """A started server and its bound TCP port (None when `port` is 0)."""
  options = {"grpc.max_receive_message_length": INT_MAX,
             "grpc.max_send_message_length": INT_MAX}
  options.update(parse_channel_arguments(channel_arguments))
  pool = concurrent.futures.ThreadPoolExecutor(max_threads or default_max_threads(None), "grpc")
  loop = asyncio.new_event_loop()
  thread = threading.Thread(target=loop.run_forever, name="grpc-loop", daemon=True)
  thread.start()

  async def build() -> tuple[grpc.aio.Server, int | None]:
    server = grpc.aio.server(options=list(options.items()))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, pool), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, pool), server)
    if health_service:
      checker = health.aio.HealthServicer()
      for service in ("", "tensorflow.serving.PredictionService",
                      "tensorflow.serving.ModelService"):
        await checker.set(service, health_pb2.HealthCheckResponse.SERVING)
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
    await server.start()
    return server, bound

  try:
    server, bound = asyncio.run_coroutine_threadsafe(build(), loop).result(60)
  except BaseException:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    pool.shutdown(wait=False)
    raise
  return Server(loop, server, thread, pool), bound
