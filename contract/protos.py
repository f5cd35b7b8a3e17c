"""TF Serving's API messages and gRPC methods, without importing TensorFlow.

The messages (and grpc.health.v1's) come from `tf_serving_protos.binpb` (written by
`contract._gen_protos` from the installed `tensorflow-serving-api` wheel) and
live in a private descriptor pool, so they neither need TensorFlow nor clash
with the official classes when a caller has imported those too. On the wire
they are the same messages: bytes written by one side parse on the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FILE = Path(__file__).with_name("tf_serving_protos.binpb")


def _load_pool() -> descriptor_pool.DescriptorPool:
  fds = descriptor_pb2.FileDescriptorSet.FromString(_FILE.read_bytes())
  pool = descriptor_pool.DescriptorPool()
  for file in fds.file:  # written in dependency order
    pool.Add(file)
  return pool


POOL = _load_pool()


def message_class(full_name: str) -> type[Any]:
  """The message class for a full proto name, e.g. "tensorflow.TensorProto"."""
  return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


_S = "tensorflow.serving."
TensorProto = message_class("tensorflow.TensorProto")
TensorShapeProto = message_class("tensorflow.TensorShapeProto")
SignatureDefMap = message_class(_S + "SignatureDefMap")
ModelSpec = message_class(_S + "ModelSpec")
PredictRequest = message_class(_S + "PredictRequest")
PredictResponse = message_class(_S + "PredictResponse")
GetModelMetadataRequest = message_class(_S + "GetModelMetadataRequest")
GetModelMetadataResponse = message_class(_S + "GetModelMetadataResponse")
GetModelStatusRequest = message_class(_S + "GetModelStatusRequest")
GetModelStatusResponse = message_class(_S + "GetModelStatusResponse")
ClassificationRequest = message_class(_S + "ClassificationRequest")
ClassificationResponse = message_class(_S + "ClassificationResponse")
RegressionRequest = message_class(_S + "RegressionRequest")
RegressionResponse = message_class(_S + "RegressionResponse")
MultiInferenceRequest = message_class(_S + "MultiInferenceRequest")
MultiInferenceResponse = message_class(_S + "MultiInferenceResponse")
ReloadConfigRequest = message_class(_S + "ReloadConfigRequest")
ReloadConfigResponse = message_class(_S + "ReloadConfigResponse")
HealthCheckRequest = message_class("grpc.health.v1.HealthCheckRequest")
HealthCheckResponse = message_class("grpc.health.v1.HealthCheckResponse")
SERVING = HealthCheckResponse.SERVING

# tensorflow.DataType, e.g. DATA_TYPES["DT_FLOAT"] == 1, and back.
_DT = POOL.FindEnumTypeByName("tensorflow.DataType")
DATA_TYPES: dict[str, int] = {v.name: v.number for v in _DT.values}
DATA_TYPE_NAMES: dict[int, str] = {v.number: v.name for v in _DT.values}

# tensorflow.error.Code, e.g. 3 -> "INVALID_ARGUMENT" (gRPC's status codes).
ERROR_CODES: dict[int, str] = {
    v.number: v.name for v in POOL.FindEnumTypeByName("tensorflow.error.Code").values}

# tensorflow.serving.ModelVersionStatus.State, e.g. 30 -> "AVAILABLE".
MODEL_STATES: dict[int, str] = {
    v.number: v.name
    for v in POOL.FindEnumTypeByName(_S + "ModelVersionStatus.State").values}


class Method(NamedTuple):
  """One unary gRPC method: its path and how to (de)serialize its messages."""
  path: str
  request_serializer: Callable[[Any], bytes]
  response_deserializer: Callable[[bytes], Any]


def _method(service: str, name: str, request: type[Any], response: type[Any]) -> Method:
  return Method(f"/{_S}{service}/{name}", request.SerializeToString, response.FromString)


PREDICT = _method("PredictionService", "Predict", PredictRequest, PredictResponse)
CLASSIFY = _method("PredictionService", "Classify", ClassificationRequest,
                   ClassificationResponse)
REGRESS = _method("PredictionService", "Regress", RegressionRequest, RegressionResponse)
MULTI_INFERENCE = _method("PredictionService", "MultiInference", MultiInferenceRequest,
                          MultiInferenceResponse)
GET_MODEL_METADATA = _method("PredictionService", "GetModelMetadata",
                             GetModelMetadataRequest, GetModelMetadataResponse)
GET_MODEL_STATUS = _method("ModelService", "GetModelStatus", GetModelStatusRequest,
                           GetModelStatusResponse)
HANDLE_RELOAD_CONFIG = _method("ModelService", "HandleReloadConfigRequest",
                               ReloadConfigRequest, ReloadConfigResponse)
# grpc.health.v1, served by TF Serving with --enable_grpc_healthcheck_service
# (model_servers/server.cc), by the embedded server by default.
HEALTH_CHECK = Method("/grpc.health.v1.Health/Check", HealthCheckRequest.SerializeToString,
                      HealthCheckResponse.FromString)
