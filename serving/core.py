"""The one request path every front end shares: gRPC, REST and model warmup.

Each public method takes TF Serving's request proto and returns its response
proto (or raises ServingError), and is a coroutine that works on whichever
asyncio loop awaits it: blocking work (model calls, config reloads) runs on
the core's thread pool, and batched model calls wait for their batch on the
caller's loop (Batcher.submit), so a waiting request holds no thread.

A request is resolved to a servable, observed (TF Serving's metrics: see
metrics.py) and executed directly or through the batcher that applies to
its servable; the API logic itself lives in inference.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_pb2, predict_pb2, prediction_log_pb2, regression_pb2,
                                     status_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving import inference, tensors
from serving.batching import Batcher, warn_unwarmed
from serving.config import BatchingOptions, validate_model_server_config
from serving.errors import ServingError, deadline_exceeded, invalid_argument
from serving.metrics import Metrics
from serving.model_manager import ModelManager, VersionState
from serving.servable import Servable

log = logging.getLogger("serving")

_STATES = dict(get_model_status_pb2.ModelVersionStatus.State.items())
# servables/tensorflow/saved_model_warmup_util.cc: the warmup file and its cap.
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000
APIS = ("grpc", "rest")


@dataclasses.dataclass
class _Call:
  """What the metrics learn about a request while it is handled."""
  version: int | None = None
  signature: str = ""


class Core:
  """TF Serving's ServerCore plus its service implementations."""

  def __init__(self, manager: ModelManager, metrics: Metrics, *,
               batching: BatchingOptions | None = None, per_model_batching: bool = False,
               options: inference.Options | None = None, threads: int = 0):
    """`batching`: --enable_batching's parameters (None: off); with
    `per_model_batching` (--enable_per_model_batching_parameters) a version
    is batched only with the batching_params.pbtxt it was loaded with.
    `threads`: the pool for blocking calls (0: 4 x cores, at least 8)."""
    self.manager = manager
    self.metrics = metrics
    self.options = options or inference.Options()
    self._batching = batching
    self._per_model = per_model_batching
    self._batchers: dict[BatchingOptions, Batcher] = {}
    self._lock = threading.Lock()
    self._pool = concurrent.futures.ThreadPoolExecutor(
        threads or max(8, 4 * len(os.sched_getaffinity(0))), "core")
    manager.warmup = self.warmup

  def stop(self) -> None:
    """Fails queued batched requests (UNAVAILABLE) and ends the pool."""
    with self._lock:
      batchers = list(self._batchers.values())
    for batcher in batchers:
      batcher.stop()
    self._pool.shutdown(wait=False, cancel_futures=True)

  # ---------------------------------------------------------------- requests

  async def predict(self, request: predict_pb2.PredictRequest, *, api: str = "grpc",
                    deadline: float | None = None) -> predict_pb2.PredictResponse:
    """PredictionService.Predict (predict_impl.cc)."""
    return await self._infer("Predict", request, request.model_spec, api, deadline,
                             inference.predict)

  async def classify(self, request: classification_pb2.ClassificationRequest, *,
                     api: str = "grpc", deadline: float | None = None
                     ) -> classification_pb2.ClassificationResponse:
    """PredictionService.Classify (classification_service.cc)."""
    return await self._infer("Classify", request, request.model_spec, api, deadline,
                             inference.classify)

  async def regress(self, request: regression_pb2.RegressionRequest, *, api: str = "grpc",
                    deadline: float | None = None) -> regression_pb2.RegressionResponse:
    """PredictionService.Regress (regression_service.cc)."""
    return await self._infer("Regress", request, request.model_spec, api, deadline,
                             inference.regress)

  async def multi_inference(self, request: inference_pb2.MultiInferenceRequest, *,
                            api: str = "grpc", deadline: float | None = None
                            ) -> inference_pb2.MultiInferenceResponse:
    """PredictionService.MultiInference (multi_inference_helper.cc: the first
    task's ModelSpec picks the servable; TF Serving records no request
    metrics for it)."""
    spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
    with self._observe("MultiInference", None, spec.name, api) as call:
      servable = self._resolve(spec)
      call.version = servable.version
      return await inference.multi_inference(servable, request, self._runner(servable, deadline),
                                             self.options)

  async def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, *,
                     api: str = "grpc") -> get_model_metadata_pb2.GetModelMetadataResponse:
    """PredictionService.GetModelMetadata (get_model_metadata_impl.cc)."""
    with self._observe("GetModelMetadata", _rest_get(api), request.model_spec.name,
                       api) as call:
      _require_spec(request)
      if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one "
                               "metadata_field")
      for field in request.metadata_field:
        if field != "signature_def":
          raise invalid_argument(f"Metadata field {tensors.clip(field)} is not supported")
      servable = self._resolve(request.model_spec)
      call.version = servable.version
      response = get_model_metadata_pb2.GetModelMetadataResponse()
      response.model_spec.name = servable.name
      response.model_spec.version.value = servable.version
      signatures = get_model_metadata_pb2.SignatureDefMap()
      for key, sig in servable.signature_defs.items():
        signatures.signature_def[key].CopyFrom(sig)
      response.metadata["signature_def"].Pack(signatures)
      return response

  async def status(self, request: get_model_status_pb2.GetModelStatusRequest, *,
                   api: str = "grpc") -> get_model_status_pb2.GetModelStatusResponse:
    """ModelService.GetModelStatus (get_model_status_impl.cc)."""
    with self._observe("GetModelStatus", _rest_get(api), request.model_spec.name, api,
                       per_version=False):
      _require_spec(request)
      spec = request.model_spec
      version = spec.version.value if spec.HasField("version") else None
      states = self.manager.status(spec.name, version)    # label ignored, as TF Serving
      response = get_model_status_pb2.GetModelStatusResponse()
      for vs in states:
        _fill_status(response.model_version_status.add(), vs)
      return response

  async def reload(self, request: model_management_pb2.ReloadConfigRequest
                   ) -> model_management_pb2.ReloadConfigResponse:
    """ModelService.HandleReloadConfigRequest (model_service_impl.cc)."""
    config = model_server_config_pb2.ModelServerConfig()
    config.CopyFrom(request.config)
    validate_model_server_config(config, "ReloadConfigRequest", reload_request=True)
    await self._blocking(self.manager.apply_config, config)
    return model_management_pb2.ReloadConfigResponse(
        status=status_pb2.StatusProto(error_code=0, error_message=""))

  def signature_defs(self, spec: model_pb2.ModelSpec) -> Mapping[str, Any]:
    """The SignatureDefs of the version `spec` resolves to: what the REST
    front end needs to read JSON into tensors of the right dtypes
    (http_rest_api_handler.cc resolves the servable for it too)."""
    return self._resolve(spec).signature_defs

  # ------------------------------------------------------------------ warmup

  def warmup(self, servable: Servable, iterations: int = 1) -> int:
    """Replays the version's assets.extra/tf_serving_warmup_requests through
    the request path (batched if requests would be), before the version is
    AVAILABLE; the number of records.  Blocking: called by the loader.

    As in TF Serving (saved_model_warmup_util.cc) warmup requests run on the
    servable directly and are not counted as requests."""
    warn_unwarmed(servable, servable.batching if self._per_model else self._batching)
    path = servable.path / WARMUP_FILE
    if not path.exists():
      return 0
    try:
      records = [bytes(r.numpy()) for r in
                 tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS + 1)]
    except tf.errors.OpError as e:
      raise invalid_argument(f"Cannot read warmup records {path}: {e.message}") from None
    if len(records) > MAX_WARMUP_RECORDS:
      raise invalid_argument(
          f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
    asyncio.run(self._replay(servable, records, iterations, path))
    return len(records)

  async def _replay(self, servable: Servable, records: Sequence[bytes], iterations: int,
                    path: Path) -> None:
    run = self._runner(servable, None)
    for number, record in enumerate(records, 1):
      try:
        entry = prediction_log_pb2.PredictionLog.FromString(record)
        kind = entry.WhichOneof("log_type")
        if kind == "predict_log":
          call = functools.partial(inference.predict, servable, entry.predict_log.request)
        elif kind == "classify_log":
          call = functools.partial(inference.classify, servable, entry.classify_log.request)
        elif kind == "regress_log":
          call = functools.partial(inference.regress, servable, entry.regress_log.request)
        elif kind == "multi_inference_log":
          call = functools.partial(inference.multi_inference, servable,
                                   entry.multi_inference_log.request)
        else:
          raise invalid_argument(f"Unsupported log_type for warmup: {kind}")
        for _ in range(iterations):
          await call(run, self.options)
      except ServingError as e:
        raise ServingError(e.code, f"Warmup request {number} of {path} failed: "
                           f"{e.message}") from None
      except Exception as e:  # noqa: BLE001  (DecodeError and the like: a bad file)
        raise invalid_argument(f"Warmup request {number} of {path} failed: "
                               f"{type(e).__name__}: {e}") from None

  # --------------------------------------------------------------- internals

  async def _infer(self, api_name: str, request: Any, spec: model_pb2.ModelSpec, api: str,
                   deadline: float | None,
                   method: Callable[..., Awaitable[Any]]) -> Any:
    tf_api = api_name if api == "grpc" else api_name.lower()   # http_rest_api_handler.cc
    with self._observe(api_name, tf_api, spec.name, api) as call:
      _require_spec(request)
      servable = self._resolve(spec)
      call.version = servable.version
      call.signature = inference.signature_key(spec.signature_name)
      return await method(servable, request, self._runner(servable, deadline), self.options)

  def _resolve(self, spec: model_pb2.ModelSpec) -> Servable:
    """server_core.cc ServableRequestFromModelSpec, then the manager."""
    if not spec.name:
      raise invalid_argument("ModelSpec has no name specified.")
    version = spec.version.value if spec.HasField("version") else None
    try:
      return self.manager.resolve(spec.name, version, spec.version_label)
    except ServingError as e:          # messages quote the client's names
      raise ServingError(e.code, tensors.clip(e.message, 1000)) from None

  def _runner(self, servable: Servable, deadline: float | None) -> inference.Run:
    """Session::Run for `servable`: through its batcher when batching
    applies to it (bundle_factory_util.cc GetPerModelBatchingParams), else
    on the pool."""
    options = servable.batching if self._per_model else self._batching
    if options is None:
      async def run(feeds: Mapping[str, np.ndarray], fetches: Sequence[str]
                    ) -> dict[str, np.ndarray]:
        if deadline is not None and time.monotonic() >= deadline:
          raise deadline_exceeded()
        return await self._blocking(servable.run, feeds, fetches)
      return run
    batcher = self._batchers.get(options)
    if batcher is None:
      with self._lock:
        batcher = self._batchers.get(options)
        if batcher is None:
          batcher = self._batchers[options] = Batcher(options, self.metrics)
    return functools.partial(batcher.submit, servable, deadline=deadline)

  def _blocking(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

  @contextlib.contextmanager
  def _observe(self, method: str, tf_api: str | None, model: str, api: str,
               per_version: bool = True) -> Iterator[_Call]:
    """Records a request as TF Serving does (prediction_service_impl.cc,
    http_server.cc) under its API label `tf_api`, or not at all when it is
    None (TF Serving records no gRPC metadata, status or MultiInference
    calls); the per-version metrics record every call under `method`."""
    if api not in APIS:
      raise ValueError(f"api must be one of {APIS}, got {api!r}")
    call = _Call()
    started = time.perf_counter()
    status = "OK"
    try:
      yield call
    except ServingError as e:
      status = e.code_name
      raise
    except asyncio.CancelledError:          # the client went away
      status = "CANCELLED"
      raise
    except Exception:
      status = "INTERNAL"
      raise
    finally:
      self.metrics.record_request(
          model=model, version=call.version, signature=call.signature, method=method,
          entrypoint=api.upper(), status=status, tf_api=tf_api, per_version=per_version,
          latency_us=(time.perf_counter() - started) * 1e6)


def _rest_get(api: str) -> str | None:
  """TF Serving counts REST GETs (status, metadata) with an empty API label:
  http_rest_api_util.cc ParseModelInfo sets the method only for POSTs."""
  return "" if api == "rest" else None


def _require_spec(request: Any) -> None:
  """predict_impl.cc, classification_service.cc, ...: "Missing ModelSpec"."""
  if not request.HasField("model_spec"):
    raise invalid_argument("Missing ModelSpec")


def _fill_status(out: get_model_status_pb2.ModelVersionStatus, vs: VersionState) -> None:
  out.version = vs.version
  out.state = _STATES[vs.state]
  if vs.error is not None:
    out.status.error_code = vs.error.code_number
    out.status.error_message = vs.error.message
  else:
    out.status.error_code = 0


__all__ = ["APIS", "Core", "MAX_WARMUP_RECORDS", "WARMUP_FILE"]
