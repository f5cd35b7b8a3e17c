"""TF Serving's service implementations: PredictionService
(prediction_service_impl.cc and the *_impl.cc it calls) and ModelService
(model_service_impl.cc).

They take TF Serving's request protos and return its response protos (or
raise ServingError) and know nothing of transports: the gRPC and REST front
ends call the same methods and record the request metrics themselves.  A
front end may pass a metrics.Call, which a service fills with the version
and signature it resolved.  Every method is a coroutine that works on
whichever event loop awaits it; blocking work runs on the Runner's pool.
The API logic itself lives in inference.py.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_pb2, predict_pb2, regression_pb2, status_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving import inference, tensors
from serving.config import validate_model_server_config
from serving.errors import invalid_argument
from serving.metrics import Call
from serving.runner import Runner
from serving.server_core import ServerCore, VersionState

_STATES = dict(get_model_status_pb2.ModelVersionStatus.State.items())


class PredictionService:
  """Predict, Classify, Regress, MultiInference and GetModelMetadata."""

  def __init__(self, core: ServerCore, runner: Runner,
               options: inference.Options | None = None):
    self.core = core
    self.runner = runner
    self.options = options or inference.Options()

  async def predict(self, request: predict_pb2.PredictRequest, *,
                    deadline: float | None = None, call: Call | None = None
                    ) -> predict_pb2.PredictResponse:
    """Predict (predict_impl.cc); `deadline`: time.monotonic() at which the
    model call is given up (DEADLINE_EXCEEDED)."""
    return await self._infer(request, request.model_spec, deadline, call, inference.predict)

  async def classify(self, request: classification_pb2.ClassificationRequest, *,
                     deadline: float | None = None, call: Call | None = None
                     ) -> classification_pb2.ClassificationResponse:
    """Classify (classification_service.cc)."""
    return await self._infer(request, request.model_spec, deadline, call, inference.classify)

  async def regress(self, request: regression_pb2.RegressionRequest, *,
                    deadline: float | None = None, call: Call | None = None
                    ) -> regression_pb2.RegressionResponse:
    """Regress (regression_service.cc)."""
    return await self._infer(request, request.model_spec, deadline, call, inference.regress)

  async def multi_inference(self, request: inference_pb2.MultiInferenceRequest, *,
                            deadline: float | None = None, call: Call | None = None
                            ) -> inference_pb2.MultiInferenceResponse:
    """MultiInference (multi_inference_helper.cc): the first task's
    ModelSpec picks the servable."""
    spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
    servable = self.core.servable(spec)
    _filled(call).version = servable.version
    return await inference.multi_inference(
        servable, request, self.runner.run_for(servable, deadline), self.options)

  async def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, *,
                     call: Call | None = None
                     ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadata (get_model_metadata_impl.cc)."""
    _require_spec(request)
    if not request.metadata_field:
      raise invalid_argument("GetModelMetadataRequest must specify at least one "
                             "metadata_field")
    for field in request.metadata_field:
      if field != "signature_def":
        raise invalid_argument(f"Metadata field {tensors.clip(field)} is not supported")
    servable = self.core.servable(request.model_spec)
    _filled(call).version = servable.version
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
      signatures.signature_def[key].CopyFrom(sig)
    response.metadata["signature_def"].Pack(signatures)
    return response

  def signature_defs(self, spec: model_pb2.ModelSpec) -> Mapping[str, Any]:
    """The SignatureDefs of the version `spec` resolves to: what the REST
    front end needs to read JSON into tensors of the right dtypes
    (http_rest_api_handler.cc resolves the servable for it too)."""
    return self.core.servable(spec).signature_defs

  async def _infer(self, request: Any, spec: model_pb2.ModelSpec, deadline: float | None,
                   call: Call | None, method: Callable[..., Awaitable[Any]]) -> Any:
    _require_spec(request)
    servable = self.core.servable(spec)
    call = _filled(call)
    call.version = servable.version
    call.signature = inference.signature_key(spec.signature_name)
    return await method(servable, request, self.runner.run_for(servable, deadline),
                        self.options)


class ModelService:
  """GetModelStatus and HandleReloadConfigRequest."""

  def __init__(self, core: ServerCore, runner: Runner):
    self.core = core
    self.runner = runner

  async def status(self, request: get_model_status_pb2.GetModelStatusRequest
                   ) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatus (get_model_status_impl.cc)."""
    _require_spec(request)
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    states = self.core.status(spec.name, version)    # label ignored, as TF Serving
    response = get_model_status_pb2.GetModelStatusResponse()
    for vs in states:
      _fill_status(response.model_version_status.add(), vs)
    return response

  async def reload(self, request: model_management_pb2.ReloadConfigRequest
                   ) -> model_management_pb2.ReloadConfigResponse:
    """HandleReloadConfigRequest (model_service_impl.cc); the reload blocks
    on the runner's pool until the models new to the config are loaded."""
    config = model_server_config_pb2.ModelServerConfig()
    config.CopyFrom(request.config)
    validate_model_server_config(config, "ReloadConfigRequest", reload_request=True)
    await self.runner.blocking(self.core.reload_config, config)
    return model_management_pb2.ReloadConfigResponse(
        status=status_pb2.StatusProto(error_code=0, error_message=""))


def _filled(call: Call | None) -> Call:
  """The caller's record, or a throwaway one when nobody records the call."""
  return call if call is not None else Call()


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


__all__ = ["ModelService", "PredictionService"]
