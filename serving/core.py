"""The request logic both front ends share: resolve the ModelSpec, check the
inputs against the signature, run (batched or not), record metrics.

Requests and responses are TF Serving's own proto messages; REST builds
arrays from JSON and calls `predict_arrays` directly (no detour through
TensorProto), everything else goes through the same methods as gRPC.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_pb2, predict_pb2, regression_pb2, status_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving import tensors
from serving.config import validate_model_server_config
from serving.errors import ServingError, deadline_exceeded, invalid_argument
from serving.metrics import Metrics
from serving.model_manager import ModelManager, VersionState
from serving.servable import CLASSIFY_METHOD, REGRESS_METHOD, Servable

if TYPE_CHECKING:
  from serving.batching import Batcher

_STATES = {name: value for name, value in
           get_model_status_pb2.ModelVersionStatus.State.items()}


@dataclasses.dataclass
class _Call:
  """What the metrics learn about a request as it is handled."""
  model: str
  api: str
  entrypoint: str
  version: int | None = None
  signature: str = ""


class Core:

  def __init__(self, manager: ModelManager, metrics: Metrics,
               executor: "Batcher | None" = None):
    """`executor`: the batcher with --enable_batching; None calls the model
    directly."""
    self.manager = manager
    self.metrics = metrics
    self.executor = executor

  # ----------------------------------------------------------------- helpers

  def execute(self, servable: Servable, key: str, inputs: Mapping[str, np.ndarray],
              deadline: float | None) -> dict[str, np.ndarray]:
    if deadline is not None and time.monotonic() >= deadline:
      raise deadline_exceeded()
    if self.executor is not None:
      return self.executor(servable, key, inputs, deadline)
    return servable.call(key, inputs)

  def resolve(self, spec: model_pb2.ModelSpec) -> Servable:
    version = spec.version.value if spec.HasField("version") else None
    return self.manager.resolve(spec.name, version, spec.version_label)

  @contextlib.contextmanager
  def observe(self, model: str, api: str, entrypoint: str) -> Iterator[_Call]:
    call = _Call(model, api, entrypoint)
    started = time.perf_counter()
    status = "OK"
    try:
      yield call
    except ServingError as e:
      status = e.code_name
      raise
    except Exception:
      status = "INTERNAL"
      raise
    finally:
      self.metrics.record_request(
          model=model, version=call.version, signature=call.signature, api=api,
          entrypoint=entrypoint, status=status,
          latency_us=(time.perf_counter() - started) * 1e6)

  # ----------------------------------------------------------------- predict

  def predict_arrays(self, servable: Servable, signature_name: str,
                     inputs: Mapping[str, np.ndarray], output_filter: Sequence[str],
                     deadline: float | None, call: _Call) -> tuple[str, dict[str, np.ndarray]]:
    """(signature key, outputs) of a Predict on an already resolved servable."""
    key, names = _check_predict(servable, signature_name, inputs, output_filter, call)
    outputs = self.execute(servable, key, inputs, deadline)
    return key, {n: outputs[n] for n in names}

  def predict(self, request: predict_pb2.PredictRequest, entrypoint: str = "GRPC",
              deadline: float | None = None) -> predict_pb2.PredictResponse:
    with self.observe(request.model_spec.name, "Predict", entrypoint) as call:
      servable = self.resolve(request.model_spec)
      inputs = {k: tensors.to_numpy(v, k) for k, v in request.inputs.items()}
      key, outputs = self.predict_arrays(servable, request.model_spec.signature_name, inputs,
                                         request.output_filter, deadline, call)
      return _predict_response(servable, key, outputs)

  async def predict_batched(self, request: predict_pb2.PredictRequest, entrypoint: str = "GRPC",
                            deadline: float | None = None) -> predict_pb2.PredictResponse:
    """`predict` for an asyncio front end with --enable_batching: the same
    steps, but the request waits for its batch on the event loop (see
    Batcher.submit) instead of blocking a thread."""
    assert self.executor is not None
    with self.observe(request.model_spec.name, "Predict", entrypoint) as call:
      servable = self.resolve(request.model_spec)
      inputs = {k: tensors.to_numpy(v, k) for k, v in request.inputs.items()}
      key, names = _check_predict(servable, request.model_spec.signature_name, inputs,
                                  request.output_filter, call)
      if deadline is not None and time.monotonic() >= deadline:
        raise deadline_exceeded()
      outputs = await self.executor.submit(servable, key, inputs, deadline)
      return _predict_response(servable, key, {n: outputs[n] for n in names})

  # --------------------------------------------------------- classify/regress

  def classify(self, request: classification_pb2.ClassificationRequest,
               entrypoint: str = "GRPC", deadline: float | None = None
               ) -> classification_pb2.ClassificationResponse:
    with self.observe(request.model_spec.name, "Classify", entrypoint) as call:
      servable = self.resolve(request.model_spec)
      key = self._note(call, servable, request.model_spec.signature_name)
      result = servable.classify(key, request.input, self._executor_for(deadline))
      response = classification_pb2.ClassificationResponse(result=result)
      _fill_spec(response.model_spec, servable, key)
      return response

  def regress(self, request: regression_pb2.RegressionRequest, entrypoint: str = "GRPC",
              deadline: float | None = None) -> regression_pb2.RegressionResponse:
    with self.observe(request.model_spec.name, "Regress", entrypoint) as call:
      servable = self.resolve(request.model_spec)
      key = self._note(call, servable, request.model_spec.signature_name)
      result = servable.regress(key, request.input, self._executor_for(deadline))
      response = regression_pb2.RegressionResponse(result=result)
      _fill_spec(response.model_spec, servable, key)
      return response

  def multi_inference(self, request: inference_pb2.MultiInferenceRequest,
                      entrypoint: str = "GRPC", deadline: float | None = None
                      ) -> inference_pb2.MultiInferenceResponse:
    tasks = request.tasks
    with self.observe(tasks[0].model_spec.name if tasks else "", "MultiInference",
                      entrypoint) as call:
      if not tasks:
        raise invalid_argument("Tasks field is empty")
      if len({t.model_spec.name for t in tasks}) > 1:
        raise invalid_argument(
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
      servable = self.resolve(tasks[0].model_spec)
      seen: set[str] = set()
      response = inference_pb2.MultiInferenceResponse()
      execute = self._executor_for(deadline)
      for task in tasks:
        key = self._note(call, servable, task.model_spec.signature_name)
        if key in seen:
          raise invalid_argument(f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        result = response.results.add()
        _fill_spec(result.model_spec, servable, key)
        if task.method_name == CLASSIFY_METHOD:
          result.classification_result.CopyFrom(servable.classify(key, request.input, execute))
        elif task.method_name == REGRESS_METHOD:
          result.regression_result.CopyFrom(servable.regress(key, request.input, execute))
        else:
          raise invalid_argument(f"Unsupported signature method_name: {task.method_name}")
      return response

  def _note(self, call: _Call, servable: Servable, signature_name: str) -> str:
    call.version = servable.version
    call.signature = servable.signature(signature_name).key
    return call.signature

  def _executor_for(self, deadline: float | None):
    return lambda servable, key, inputs: self.execute(servable, key, inputs, deadline)

  # ---------------------------------------------------------------- metadata

  def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
               entrypoint: str = "GRPC") -> get_model_metadata_pb2.GetModelMetadataResponse:
    with self.observe(request.model_spec.name, "GetModelMetadata", entrypoint) as call:
      if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one "
                               "metadata_field")
      for field in request.metadata_field:
        if field != "signature_def":
          raise invalid_argument(f"Metadata field {field} is not supported")
      servable = self.resolve(request.model_spec)
      call.version = servable.version
      response = get_model_metadata_pb2.GetModelMetadataResponse()
      response.model_spec.name = servable.name
      response.model_spec.version.value = servable.version
      response.metadata["signature_def"].Pack(servable.metadata())
      return response

  # ------------------------------------------------------------ model service

  def status(self, request: get_model_status_pb2.GetModelStatusRequest
             ) -> get_model_status_pb2.GetModelStatusResponse:
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    states = self.manager.status(spec.name, version, spec.version_label)
    response = get_model_status_pb2.GetModelStatusResponse()
    for vs in states:
      _fill_status(response.model_version_status.add(), vs)
    return response

  def reload(self, request: model_management_pb2.ReloadConfigRequest
             ) -> model_management_pb2.ReloadConfigResponse:
    config = model_server_config_pb2.ModelServerConfig()
    config.CopyFrom(request.config)
    validate_model_server_config(config, "ReloadConfigRequest")
    self.manager.apply_config(config)
    return model_management_pb2.ReloadConfigResponse(
        status=status_pb2.StatusProto(error_code=0, error_message=""))


def _check_predict(servable: Servable, signature_name: str, inputs: Mapping[str, np.ndarray],
                   output_filter: Sequence[str], call: _Call) -> tuple[str, list[str]]:
  """(signature key, output names) of a Predict whose inputs fit the signature."""
  call.version = servable.version
  sig = servable.signature(signature_name)
  call.signature = sig.key
  sig.check_inputs(inputs)
  return sig.key, sig.check_output_filter(output_filter)


def _predict_response(servable: Servable, key: str,
                      outputs: Mapping[str, np.ndarray]) -> predict_pb2.PredictResponse:
  response = predict_pb2.PredictResponse()
  _fill_spec(response.model_spec, servable, key)
  for name, value in outputs.items():
    response.outputs[name].CopyFrom(tensors.to_proto(value))
  return response


def _fill_spec(spec: model_pb2.ModelSpec, servable: Servable, signature: str) -> None:
  spec.name = servable.name
  spec.version.value = servable.version
  spec.signature_name = signature


def _fill_status(out: get_model_status_pb2.ModelVersionStatus, vs: VersionState) -> None:
  out.version = vs.version
  out.state = _STATES[vs.state]
  if vs.error is not None:
    out.status.error_code = vs.error.code_number
    out.status.error_message = vs.error.message
  else:
    out.status.error_code = 0


__all__ = ["Core"]
